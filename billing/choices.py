from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    VIEWER = "viewer", "Viewer"


class ApiKeyScope(models.TextChoices):
    """What an API key may do: an agent's key calls the API; an admin key may also decide approvals
    (docs/security.md §"API keys (exists)")."""

    AGENT = "agent", "Agent"
    ADMIN = "admin", "Admin (may also decide approvals)"


class PlanCode(models.TextChoices):
    FREE = "free", "Free"
    STARTER = "starter", "Starter"
    PRO = "pro", "Pro"
    AGENCY = "agency", "Agency"


# Roles that may change things (create/revoke keys, edit policies…). Viewers look only.
EDITOR_ROLES = frozenset({Role.OWNER, Role.ADMIN})
