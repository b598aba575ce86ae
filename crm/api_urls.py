"""``/api/``: the v1 REST API, its OpenAPI schema and the Swagger UI (assets served locally)."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from analytics import apis as analytics_apis
from deals import apis as deals_apis
from deals import webhook_apis
from funnels import apis as funnels_apis

v1 = [
    path("leads/", deals_apis.LeadIntakeApi.as_view(), name="leads"),
    path("deals/", deals_apis.DealListApi.as_view(), name="deals"),
    path("deals/<int:pk>/", deals_apis.DealDetailApi.as_view(), name="deal"),
    path("deals/<int:pk>/move/", deals_apis.DealMoveApi.as_view(), name="deal-move"),
    path("deals/<int:pk>/win/", deals_apis.DealWinApi.as_view(), name="deal-win"),
    path("deals/<int:pk>/lose/", deals_apis.DealLoseApi.as_view(), name="deal-lose"),
    path("deals/<int:pk>/postpone/", deals_apis.DealPostponeApi.as_view(), name="deal-postpone"),
    path("deals/<int:pk>/reopen/", deals_apis.DealReopenApi.as_view(), name="deal-reopen"),
    path("deals/<int:pk>/assign/", deals_apis.DealAssignApi.as_view(), name="deal-assign"),
    path("deals/<int:pk>/history/", deals_apis.DealHistoryApi.as_view(), name="deal-history"),
    path("deals/<int:pk>/tasks/", deals_apis.DealTasksApi.as_view(), name="deal-tasks"),
    path("deals/<int:pk>/notes/", deals_apis.DealNotesApi.as_view(), name="deal-notes"),
    path("funnels/", funnels_apis.FunnelListApi.as_view(), name="funnels"),
    path("funnels/<int:pk>/", funnels_apis.FunnelDetailApi.as_view(), name="funnel"),
    path("funnels/<int:pk>/stages/", funnels_apis.StageListApi.as_view(), name="funnel-stages"),
    path(
        "funnels/<int:pk>/stages/reorder/",
        funnels_apis.StagesReorderApi.as_view(),
        name="funnel-stages-reorder",
    ),
    path(
        "funnels/<int:pk>/stages/<int:stage_id>/",
        funnels_apis.StageDetailApi.as_view(),
        name="funnel-stage",
    ),
    path(
        "funnels/<int:pk>/loss-reasons/",
        funnels_apis.LossReasonListApi.as_view(),
        name="funnel-loss-reasons",
    ),
    path(
        "funnels/<int:pk>/loss-reasons/<int:reason_id>/",
        funnels_apis.LossReasonDetailApi.as_view(),
        name="funnel-loss-reason",
    ),
    path(
        "funnels/<int:pk>/custom-fields/",
        funnels_apis.CustomFieldListApi.as_view(),
        name="funnel-custom-fields",
    ),
    path(
        "funnels/<int:pk>/custom-fields/<slug:key>/",
        funnels_apis.CustomFieldDetailApi.as_view(),
        name="funnel-custom-field",
    ),
    path("webhooks/", webhook_apis.WebhookListApi.as_view(), name="webhooks"),
    path("webhooks/<int:pk>/", webhook_apis.WebhookDetailApi.as_view(), name="webhook"),
    path(
        "webhooks/<int:pk>/deliveries/",
        webhook_apis.WebhookDeliveryListApi.as_view(),
        name="webhook-deliveries",
    ),
    path(
        "analytics/funnels/<int:pk>/report/",
        analytics_apis.FunnelReportApi.as_view(),
        name="funnel-report",
    ),
    path(
        "analytics/funnels/<int:pk>/recompute/",
        analytics_apis.FunnelRecomputeApi.as_view(),
        name="funnel-recompute",
    ),
    path("analytics/snapshots/", analytics_apis.SnapshotListApi.as_view(), name="snapshots"),
    path(
        "analytics/snapshots/<int:pk>/",
        analytics_apis.SnapshotDetailApi.as_view(),
        name="snapshot",
    ),
]

app_name = "api"
urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]
