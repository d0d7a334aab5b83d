"""URL map for benchmarks: the product's URLs plus the bare baseline endpoint.

Used with ``ROOT_URLCONF=bench.urls`` (and ``EXTRA_INSTALLED_APPS=bench.bareapp``)."""

from django.urls import path

from bench.bareapp.views import BareLeadCreateView
from config.urls import urlpatterns as product_urlpatterns

urlpatterns = [
    *product_urlpatterns,
    path("bench/bare/leads/", BareLeadCreateView.as_view(), name="bench-bare-lead-create"),
]
