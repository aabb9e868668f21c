"""Dashboard routes of the impact preview (replay of recorded decisions through a draft policy,
docs/policy-changes.md): the page, and the fragment its htmx poll reads."""

from django.urls import path

from governance import replay_views

urlpatterns = [
    path("agents/<int:pk>/policy/impact/", replay_views.policy_impact, name="policy-impact"),
    path("agents/<int:pk>/policy/impact/<str:job_id>/", replay_views.policy_impact_job, name="policy-impact-job"),
]
