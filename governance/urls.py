from django.urls import path, re_path

from governance import api

app_name = "governance"

urlpatterns: list = []  # the governance pages (agents, policy editor, decision timeline) come with their part

# Mounted under /v1/ by onceonly_site/urls.py. Agent ids may contain `:` `.` `-` `_` and, percent-encoded, `/`:
# the router sees the decoded path, so the suffixed routes are matched first and the id is a catch-all.
api_urlpatterns = [
    path("ai/run", api.AiRunApi.as_view(), name="ai-run"),
    path("policies", api.PolicyListApi.as_view(), name="policies"),
    re_path(r"^policies/(?P<agent_id>.+)/from-template$", api.PolicyTemplateApi.as_view(), name="policy-template"),
    re_path(r"^policies/(?P<agent_id>.+)$", api.PolicyApi.as_view(), name="policy"),
    re_path(r"^agents/(?P<agent_id>.+)/disable$", api.AgentDisableApi.as_view(), name="agent-disable"),
    re_path(r"^agents/(?P<agent_id>.+)/enable$", api.AgentEnableApi.as_view(), name="agent-enable"),
    re_path(r"^agents/(?P<agent_id>.+)/logs$", api.AgentLogsApi.as_view(), name="agent-logs"),
    re_path(r"^agents/(?P<agent_id>.+)/metrics$", api.AgentMetricsApi.as_view(), name="agent-metrics"),
]
