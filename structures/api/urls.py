from django.urls import path

from structures.api import views

app_name = "api"

urlpatterns = [
    path("leads/", views.LeadCreateView.as_view(), name="lead-create"),
    path("leads/<str:pcid>/", views.LeadDetailView.as_view(), name="lead-detail"),
]
