"""Dashboard routes of the notification channels (docs/approvals.md)."""

urlpatterns: list = []
