from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from crm.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/", include("crm.api_urls")),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
