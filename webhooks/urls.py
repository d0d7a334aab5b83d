"""Public URLs of the webhooks app (included at /webhooks/ in config/urls.py)."""

from django.urls import path

from webhooks import views

app_name = "webhooks"

urlpatterns = [
    path("<str:webhook_id>/<str:token>/", views.callback, name="callback"),
]
