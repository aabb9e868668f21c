from django.urls import path, re_path

from idempotency import api, views

app_name = "idempotency"

urlpatterns = [
    path("locks/", views.locks, name="locks"),
    path("locks/release/", views.lock_release, name="lock-release"),
    path("locks/reset/", views.lease_reset, name="lease-reset"),
    path("runs/", views.runs, name="runs"),
    path("runs/timeline/", views.run_timeline, name="run-timeline"),
    path("runs/export/", views.runs_export, name="runs-export"),
    path("runs/timeline/export/", views.run_timeline_export, name="run-timeline-export"),
]

# Mounted under /v1/ by onceonly_site/urls.py (paths exactly as the SDKs send them, no trailing slash).
api_urlpatterns = [
    path("check-lock", api.CheckLockApi.as_view(), name="check-lock"),
    path("ai/lease", api.LeaseApi.as_view(), name="ai-lease"),
    path("ai/extend", api.LeaseExtendApi.as_view(), name="ai-extend"),
    path("ai/complete", api.LeaseCompleteApi.as_view(), name="ai-complete"),
    path("ai/fail", api.LeaseFailApi.as_view(), name="ai-fail"),
    path("ai/cancel", api.LeaseCancelApi.as_view(), name="ai-cancel"),
    path("ai/status", api.LeaseStatusApi.as_view(), name="ai-status"),
    path("ai/result", api.LeaseResultApi.as_view(), name="ai-result"),
    # Run ids may contain "/" (percent-encoded by the SDKs; the router sees it decoded): a catch-all.
    re_path(r"^runs/(?P<run_id>[\s\S]+)$", api.RunTimelineApi.as_view(), name="run-timeline"),
]
