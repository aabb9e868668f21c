from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance: agents, policies, tools and decisions"

    def ready(self) -> None:
        from billing import panels
        from governance.panels import operations_panel
        from governance.runs import execute_action
        from idempotency import jobs

        panels.register(operations_panel, with_request=True, first=True)
        jobs.set_action_executor(execute_action)

    def warm(self) -> None:
        """At a web process's boot (onceonly_site/wsgi.py): the pooled HTTP client of signed dispatch, built once
        rather than by several of the process's first requests at once (each with a TLS context of its own)."""
        from governance import dispatch

        dispatch.client()
