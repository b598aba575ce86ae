"""Writes of the analytics app: snapshots of funnel reports.

A snapshot is keyed by its parameters. Computing it is idempotent: running
twice stores the same figures. The result and ``computed_at`` change only when
a run succeeds, so a failed or killed run leaves the previous figures in place.
"""

import datetime
import hashlib
import json
import logging
import time

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from analytics.engine import funnel_report
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.periods import snapshot_specs
from analytics.types import FunnelQuery, FunnelReport
from deals.models import Deal
from funnels.models import Funnel

logger = logging.getLogger(__name__)

# Ad-hoc reports over more deals than this are computed by a worker, not in the request.
DIRECT_REPORT_MAX_DEALS = 300_000


def snapshot_key(query: FunnelQuery) -> str:
    return hashlib.sha256(json.dumps(query.to_dict(), sort_keys=True).encode()).hexdigest()


def snapshot_ensure(*, query: FunnelQuery, label: str = "") -> FunnelSnapshot:
    """The snapshot row for these parameters, created (queued) if new.

    Identical parameters share one row (this week is also the trend's last
    week): read snapshots by ``snapshot_key``, not by label.
    """
    snapshot, _created = FunnelSnapshot.objects.get_or_create(
        key=snapshot_key(query),
        defaults={"funnel_id": query.funnel_id, "label": label, "params": query.to_dict()},
    )
    return snapshot


def snapshots_queue(snapshot_ids: list[int]) -> None:
    """Mark snapshots queued and send them to the workers after the transaction commits."""
    from analytics.tasks import compute_snapshot

    FunnelSnapshot.objects.filter(pk__in=snapshot_ids).exclude(
        status=SnapshotStatus.RUNNING
    ).update(status=SnapshotStatus.QUEUED, progress=0)
    for snapshot_id in snapshot_ids:
        transaction.on_commit(lambda pk=snapshot_id: compute_snapshot.delay(pk))


def snapshots_refresh(*, funnel_id: int | None = None, current_only: bool = False) -> list[int]:
    """Ensure and queue the standard snapshots of every active funnel (or one)."""
    today = timezone.localdate()
    funnels = Funnel.objects.filter(is_active=True)
    if funnel_id is not None:
        funnels = Funnel.objects.filter(pk=funnel_id)
    ids = []
    with transaction.atomic():
        for funnel in funnels:
            for label, query in standard_snapshot_queries(
                funnel_id=funnel.pk, today=today, current_only=current_only
            ):
                ids.append(snapshot_ensure(query=query, label=label).pk)
        snapshots_queue(ids)
    return ids


def standard_snapshot_queries(
    *, funnel_id: int, today: datetime.date, current_only: bool = False
) -> list[tuple[str, FunnelQuery]]:
    """Label and query of each standard snapshot of a funnel (what ``snapshots_refresh`` keeps)."""
    return [
        (
            spec.label,
            FunnelQuery(
                funnel_id=funnel_id,
                date_from=spec.period.date_from,
                date_to=spec.period.date_to,
                mode=spec.mode,
                group_by=spec.group_by,
            ),
        )
        for spec in snapshot_specs(today, current_only=current_only)
    ]


def snapshot_compute(*, snapshot_id: int) -> FunnelSnapshot | None:
    """Compute one snapshot now. Returns None if the row is gone (a deleted funnel)."""
    updated = FunnelSnapshot.objects.filter(pk=snapshot_id).update(
        status=SnapshotStatus.RUNNING, progress=10, started_at=timezone.now(), error=""
    )
    if not updated:
        return None
    snapshot = FunnelSnapshot.objects.get(pk=snapshot_id)
    started = time.monotonic()
    try:
        report = funnel_report(FunnelQuery.from_dict(snapshot.params))
    except Exception as exc:
        FunnelSnapshot.objects.filter(pk=snapshot_id).update(
            status=SnapshotStatus.FAILED, progress=0, error=f"{type(exc).__name__}: {exc}"
        )
        logger.exception("Snapshot %s failed", snapshot_id)
        raise
    FunnelSnapshot.objects.filter(pk=snapshot_id).update(
        status=SnapshotStatus.DONE,
        progress=100,
        result=report.to_dict(),
        computed_at=report.computed_at,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    return FunnelSnapshot.objects.get(pk=snapshot_id)


def report_or_snapshot(query: FunnelQuery) -> tuple[FunnelReport | None, FunnelSnapshot | None]:
    """An ad-hoc report: computed right away when the population is small enough,
    otherwise queued as a snapshot to poll (a finished one is returned as is)."""
    # Datetimes, not __date lookups, so the (funnel, created_at/closed_at) indexes serve it.
    start = timezone.make_aware(datetime.datetime.combine(query.date_from, datetime.time.min))
    period_deals = Deal.objects.filter(funnel_id=query.funnel_id).filter(
        Q(created_at__gte=start) | Q(closed_at__gte=start)
    )
    if period_deals.count() <= DIRECT_REPORT_MAX_DEALS:
        return funnel_report(query), None
    snapshot = snapshot_ensure(query=query, label="ad hoc")
    if snapshot.status in (SnapshotStatus.QUEUED, SnapshotStatus.FAILED) or (
        snapshot.status == SnapshotStatus.DONE and snapshot.result is None
    ):
        with transaction.atomic():
            snapshots_queue([snapshot.pk])
    return None, snapshot
