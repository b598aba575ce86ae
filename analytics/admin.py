"""Analytics in the admin: snapshots to inspect and recompute; summaries derived
from history are shown read-only, like the history itself."""

from django.contrib import admin, messages
from django.db import transaction

from analytics.models import FunnelSnapshot, StageReach, StageTime
from analytics.services import snapshots_queue
from deals.admin import HistoryAdmin


@admin.register(FunnelSnapshot)
class FunnelSnapshotAdmin(admin.ModelAdmin):
    list_display = ("funnel", "label", "status", "progress", "computed_at", "duration_ms")
    list_filter = ("funnel", "status")
    readonly_fields = (
        "funnel",
        "key",
        "label",
        "params",
        "status",
        "progress",
        "result",
        "computed_at",
        "requested_at",
        "started_at",
        "duration_ms",
        "error",
    )
    actions = ["recompute"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Recompute the selected snapshots")
    def recompute(self, request, queryset) -> None:
        with transaction.atomic():
            snapshots_queue(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{queryset.count()} snapshots queued.", messages.SUCCESS)


@admin.register(StageReach)
class StageReachAdmin(HistoryAdmin):
    list_display = ("deal", "position", "reached_at")
    list_filter = ("funnel",)
    raw_id_fields = ("deal",)


@admin.register(StageTime)
class StageTimeAdmin(HistoryAdmin):
    list_display = ("deal", "stage", "visits", "seconds", "visit_started_at", "last_left_at")
    list_filter = ("funnel",)
    raw_id_fields = ("deal",)
