from django.urls import path, re_path

from governance import (
    alert_api,
    alert_views,
    api,
    approval_api,
    approval_views,
    channel_urls,
    detector_api,
    detector_views,
    export_api,
    hold_views,
    mcp_api,
    mcp_gateway,
    mcp_urls,
    policy_code_api,
    policy_code_urls,
    replay_urls,
    run_caps_api,
    run_caps_views,
    shadow_api,
    shadow_views,
    verify_views,
    views,
)

app_name = "governance"

# Dashboard pages address an agent by its row's primary key, scoped to the operator's account
# (selectors.get_agent_for_account), never by its agent id: an agent id may contain "/" and end like a page's suffix
# ("bot/policy"), so `agents/<agent id>/policy/` could name two pages. There are no agent-id routes to keep old
# links working: an agent id may also be all digits, so `agents/<agent id>/` and `agents/<pk>/` would collide.
urlpatterns = [
    path("overview/operations/", views.operations, name="operations"),
    path("agents/", views.agents, name="agents"),
    path("agents/<int:pk>/", views.agent_detail, name="agent-detail"),
    path("agents/<int:pk>/kill-switch/", views.agent_kill_switch, name="agent-kill-switch"),
    path("agents/<int:pk>/release/", detector_views.release, name="agent-release"),
    path("agents/<int:pk>/policy/", views.policy_edit, name="policy-edit"),
    path("agents/<int:pk>/policy/rollback/", views.policy_rollback, name="policy-rollback"),
    path("agents/<int:pk>/policy/template/", views.policy_template, name="policy-template"),
    path("agents/<int:pk>/policy/shadow/", shadow_views.policy_shadow, name="policy-shadow"),
    path("decisions/", views.decisions, name="decisions"),
    path("decisions/export/", views.decisions_export, name="decisions-export"),
    path("decisions/<int:decision_id>/", views.decision_detail, name="decision-detail"),
    path("tools/", views.tools_list, name="tools"),
    path("tools/new/", views.tool_edit, name="tool-new"),
    path("tools/<int:tool_id>/", views.tool_edit, name="tool-edit"),
    path("tools/<int:tool_id>/toggle/", views.tool_toggle, name="tool-toggle"),
    path("tools/<int:tool_id>/delete/", views.tool_delete, name="tool-delete"),
    path("tools/<int:tool_id>/test/", views.tool_test, name="tool-test"),
    path("runs/resume/<int:pk>/", run_caps_views.resume, name="run-resume"),
    path("audit/", views.audit_log, name="audit"),
    path("audit/export/", views.audit_export, name="audit-export"),
    path("settings/legal-hold/", hold_views.account_hold, name="account-legal-hold"),
    path("agents/<int:pk>/legal-hold/", hold_views.agent_hold, name="agent-legal-hold"),
    path("audit/verify/", verify_views.verify_log, name="verify"),
    path("audit/verify/<str:job_id>/", verify_views.verify_log_job, name="verify-job"),
    path("alerts/", alert_views.feed, name="alerts"),
    path("approvals/", approval_views.queue, name="approvals"),
    path("approvals/<str:public_id>/", approval_views.detail, name="approval"),
    path("approvals/<str:public_id>/decide/", approval_views.decide, name="approval-decide"),
    *mcp_urls.urlpatterns,
    *channel_urls.urlpatterns,
    *policy_code_urls.urlpatterns,
    *replay_urls.urlpatterns,
]

# Mounted under /v1/ before idempotency's routes (whose `runs/<run id>` timeline takes any suffix).
run_api_urlpatterns = [
    re_path(r"^runs/(?P<run_id>[\s\S]+)/resume$", run_caps_api.RunResumeApi.as_view(), name="run-resume"),
]

# Mounted under /v1/ by onceonly_site/urls.py. Agent ids may contain `:` `.` `-` `_` and, percent-encoded, `/`:
# the router sees the decoded path, so the suffixed routes are matched first and the id is a catch-all.
# [\s\S]: any character, a newline included (a control character in an id is the view's 422, never a 404).
api_urlpatterns = [
    path("ai/run", api.AiRunApi.as_view(), name="ai-run"),
    path("events", api.EventsApi.as_view(), name="events"),
    path("metrics", api.MetricsApi.as_view(), name="metrics"),
    path("policies", api.PolicyListApi.as_view(), name="policies"),
    path("tools", api.ToolsApi.as_view(), name="tools"),
    path("approvals", approval_api.ApprovalListApi.as_view(), name="approvals"),
    path("alerts", alert_api.AlertListApi.as_view(), name="alerts"),
    path("export/decisions", export_api.DecisionsExportApi.as_view(), name="export-decisions"),
    path("export/runs", export_api.RunsExportApi.as_view(), name="export-runs"),
    path("export/run-events", export_api.RunEventsExportApi.as_view(), name="export-run-events"),
    path("export/audit", export_api.AuditExportApi.as_view(), name="export-audit"),
    path("legal-hold", export_api.LegalHoldApi.as_view(), name="legal-hold"),
    path("approvals/<str:approval_id>", approval_api.ApprovalApi.as_view(), name="approval"),
    path(
        "approvals/<str:approval_id>/approve",
        approval_api.ApprovalDecideApi.as_view(action="approve"),
        name="approval-approve",
    ),
    path(
        "approvals/<str:approval_id>/deny", approval_api.ApprovalDecideApi.as_view(action="deny"), name="approval-deny"
    ),
    path("tools/<str:name>/toggle", api.ToolToggleApi.as_view(), name="tool-toggle"),
    path("tools/<str:name>", api.ToolApi.as_view(), name="tool"),
    path("mcp/servers", mcp_api.McpServersApi.as_view(), name="mcp-servers"),
    path("mcp/servers/<str:name>/discover", mcp_api.McpServerDiscoverApi.as_view(), name="mcp-server-discover"),
    path("mcp/servers/<str:name>/tools/<str:tool>", mcp_api.McpServerToolApi.as_view(), name="mcp-server-tool"),
    path("mcp/servers/<str:name>", mcp_api.McpServerApi.as_view(), name="mcp-server"),
    # Before the agent-id catch-all: GET /v1/policies/export and POST /v1/policies/apply (policies as code).
    path("policies/export", policy_code_api.PolicyExportApi.as_view(), name="policies-export"),
    path("policies/apply", policy_code_api.PolicyApplyApi.as_view(), name="policies-apply"),
    re_path(r"^policies/(?P<agent_id>[\s\S]+)/from-template$", api.PolicyTemplateApi.as_view(), name="policy-template"),
    re_path(
        r"^policies/(?P<agent_id>[\s\S]+)/shadow/promote$",
        shadow_api.ShadowPromoteApi.as_view(),
        name="policy-shadow-promote",
    ),
    re_path(r"^policies/(?P<agent_id>[\s\S]+)/shadow$", shadow_api.ShadowApi.as_view(), name="policy-shadow"),
    re_path(r"^policies/(?P<agent_id>[\s\S]+)$", api.PolicyApi.as_view(), name="policy"),
    re_path(r"^agents/(?P<agent_id>[\s\S]+)/disable$", api.AgentDisableApi.as_view(), name="agent-disable"),
    re_path(r"^agents/(?P<agent_id>[\s\S]+)/enable$", api.AgentEnableApi.as_view(), name="agent-enable"),
    re_path(r"^agents/(?P<agent_id>[\s\S]+)/release$", detector_api.AgentReleaseApi.as_view(), name="agent-release"),
    re_path(r"^agents/(?P<agent_id>[\s\S]+)/logs$", api.AgentLogsApi.as_view(), name="agent-logs"),
    re_path(r"^agents/(?P<agent_id>[\s\S]+)/metrics$", api.AgentMetricsApi.as_view(), name="agent-metrics"),
]


# Mounted at the root by onceonly_site/urls.py: the MCP gateway (docs/mcp.md). `/mcp` and `/mcp/` both answer (an
# APPEND_SLASH redirect of a POST would lose its body); the agent id after `/mcp/` is decoded, so `a%2Fb` is `a/b`.
mcp_urlpatterns = [
    path("mcp", mcp_gateway.endpoint, name="mcp"),
    path("mcp/", mcp_gateway.endpoint, name="mcp-root"),
    re_path(r"^mcp/(?P<agent_id>[\s\S]+)$", mcp_gateway.endpoint, name="mcp-agent"),
]
