from django.urls import path, re_path

from governance import api, views

app_name = "governance"

# Agent ids may contain "/" (percent-encoded): the agent routes end with a catch-all after a fixed prefix.
urlpatterns = [
    path("agents/", views.agents, name="agents"),
    re_path(r"^agents/(?P<agent_id>.+)/kill-switch/$", views.agent_kill_switch, name="agent-kill-switch"),
    re_path(r"^agents/(?P<agent_id>.+)/policy/rollback/$", views.policy_rollback, name="policy-rollback"),
    re_path(r"^agents/(?P<agent_id>.+)/policy/template/$", views.policy_template, name="policy-template"),
    re_path(r"^agents/(?P<agent_id>.+)/policy/$", views.policy_edit, name="policy-edit"),
    re_path(r"^agents/(?P<agent_id>.+)/$", views.agent_detail, name="agent-detail"),
    path("decisions/", views.decisions, name="decisions"),
    path("decisions/<int:decision_id>/", views.decision_detail, name="decision-detail"),
    path("tools/", views.tools_list, name="tools"),
    path("tools/new/", views.tool_edit, name="tool-new"),
    path("tools/<int:tool_id>/", views.tool_edit, name="tool-edit"),
    path("tools/<int:tool_id>/toggle/", views.tool_toggle, name="tool-toggle"),
    path("tools/<int:tool_id>/delete/", views.tool_delete, name="tool-delete"),
    path("tools/<int:tool_id>/test/", views.tool_test, name="tool-test"),
    path("audit/", views.audit_log, name="audit"),
    path("audit/verify/", views.verify_log, name="verify"),
]

# Mounted under /v1/ by onceonly_site/urls.py. Agent ids may contain `:` `.` `-` `_` and, percent-encoded, `/`:
# the router sees the decoded path, so the suffixed routes are matched first and the id is a catch-all.
api_urlpatterns = [
    path("ai/run", api.AiRunApi.as_view(), name="ai-run"),
    path("events", api.EventsApi.as_view(), name="events"),
    path("metrics", api.MetricsApi.as_view(), name="metrics"),
    path("policies", api.PolicyListApi.as_view(), name="policies"),
    path("tools", api.ToolsApi.as_view(), name="tools"),
    path("tools/<str:name>/toggle", api.ToolToggleApi.as_view(), name="tool-toggle"),
    path("tools/<str:name>", api.ToolApi.as_view(), name="tool"),
    re_path(r"^policies/(?P<agent_id>.+)/from-template$", api.PolicyTemplateApi.as_view(), name="policy-template"),
    re_path(r"^policies/(?P<agent_id>.+)$", api.PolicyApi.as_view(), name="policy"),
    re_path(r"^agents/(?P<agent_id>.+)/disable$", api.AgentDisableApi.as_view(), name="agent-disable"),
    re_path(r"^agents/(?P<agent_id>.+)/enable$", api.AgentEnableApi.as_view(), name="agent-enable"),
    re_path(r"^agents/(?P<agent_id>.+)/logs$", api.AgentLogsApi.as_view(), name="agent-logs"),
    re_path(r"^agents/(?P<agent_id>.+)/metrics$", api.AgentMetricsApi.as_view(), name="agent-metrics"),
]
