from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from crm.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/", include("crm.api_urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("accounts/", include("accounts.urls")),
    path("funnels/", include("funnels.urls")),
    path("dashboard/", include("analytics.urls")),
    path("", include("deals.urls")),
    path("", RedirectView.as_view(pattern_name="deals:board_default", permanent=False)),
]
