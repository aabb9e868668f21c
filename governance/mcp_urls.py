"""Dashboard routes of the upstream MCP servers, under the Tools page (docs/mcp.md §"Upstream MCP servers")."""

from django.urls import path

from governance import mcp_views

urlpatterns = [
    path("tools/mcp/new/", mcp_views.server_new, name="mcp-server-new"),
    path("tools/mcp/<int:pk>/", mcp_views.server_edit, name="mcp-server"),
    path("tools/mcp/<int:pk>/discover/", mcp_views.server_discover, name="mcp-server-discover"),
    path("tools/mcp/<int:pk>/delete/", mcp_views.server_delete, name="mcp-server-delete"),
]
