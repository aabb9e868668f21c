"""Dashboard routes of policies as code: download, upload with its dry-run diff, and the drift view."""

urlpatterns: list = []
