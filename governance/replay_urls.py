"""Dashboard routes of the impact preview (replay of recorded decisions through a draft policy)."""

urlpatterns: list = []
