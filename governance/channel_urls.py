"""Dashboard routes of the notification channels and of the one-click approval links (docs/notifications.md)."""

from django.urls import path

from governance import channel_views

urlpatterns = [
    path("settings/channels/", channel_views.channel_list, name="channels"),
    path("settings/channels/new/", channel_views.channel_new, name="channel-new"),
    path("settings/channels/<int:pk>/", channel_views.channel_edit, name="channel-edit"),
    path("settings/channels/<int:pk>/toggle/", channel_views.channel_toggle, name="channel-toggle"),
    path("settings/channels/<int:pk>/test/", channel_views.channel_test, name="channel-test"),
    path("settings/channels/<int:pk>/delete/", channel_views.channel_delete, name="channel-delete"),
    # A one-click link's confirm page: the token (django.core.signing) names the approval and the action.
    path("approvals/<str:public_id>/confirm/<str:token>/", channel_views.approval_confirm, name="approval-confirm"),
]
