from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing.urls import api_urlpatterns as billing_api
from governance.urls import api_urlpatterns as governance_api
from governance.urls import mcp_urlpatterns
from governance.urls import run_api_urlpatterns as governance_run_api
from idempotency.urls import api_urlpatterns as idempotency_api
from onceonly_site import api, health, metrics, well_known

# The /v1 API (docs/api.md). Paths have no trailing slash, as the SDKs send them. The last pattern answers any
# unknown /v1 route with a JSON 404 instead of an HTML page.
v1_patterns = [
    *billing_api,
    *governance_run_api,  # /v1/runs/<run id>/resume, before the timeline's catch-all
    *idempotency_api,
    *governance_api,
    re_path(r"^[\s\S]*$", api.api_not_found),
]


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico on pages without an icon link (a 404 would be a console error on each)."""
    return HttpResponseRedirect(static("favicon.svg"))  # 302: the manifest's hashed name changes with the file


urlpatterns = [
    path("v1", api.api_not_found),  # not an HTML redirect to /v1/ (APPEND_SLASH)
    path("v1/", include((v1_patterns, "v1"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("metrics", metrics.prometheus, name="prometheus"),
    path(".well-known/onceonly-checkpoint-keys.json", well_known.checkpoint_keys, name="checkpoint-keys"),
    *mcp_urlpatterns,
    path("admin/", admin.site.urls),
    path("", include("governance.urls")),
    path("", include("idempotency.urls")),
    path("", include("billing.urls")),
]

handler400 = "onceonly_site.api.bad_request"
handler404 = "onceonly_site.api.page_not_found"
handler500 = "onceonly_site.api.server_error"
