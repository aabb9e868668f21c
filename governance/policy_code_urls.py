"""Dashboard routes of policies as code: download, upload with its dry-run diff, and the drift view
(docs/policies-as-code.md). Under /agents/ (the Agents section of the navigation), without an agent's row number."""

from django.urls import path

from governance import policy_code_views

urlpatterns = [
    path("agents/policies/", policy_code_views.policy_code_page, name="policy-code"),
    path("agents/policies/export/", policy_code_views.policy_code_export, name="policy-code-export"),
    path("agents/policies/upload/", policy_code_views.policy_code_upload, name="policy-code-upload"),
    path("agents/policies/preview/<str:sha256>/", policy_code_views.policy_code_preview, name="policy-code-preview"),
    path(
        "agents/policies/preview/<str:sha256>/apply/",
        policy_code_views.policy_code_apply,
        name="policy-code-apply",
    ),
]
