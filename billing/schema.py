"""Teach drf-spectacular how /v1 authenticates (imported by BillingConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "billing.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "once_live_…",
            "description": "An account API key. Missing or malformed → 401; unknown or revoked → 403.",
        }
