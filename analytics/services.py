"""Writes of the analytics app: snapshots of funnel reports.

A snapshot is keyed by its parameters. Computing it is idempotent: running
twice stores the same figures. The result and ``computed_at`` change only when
a run succeeds, so a failed or killed run leaves the previous figures in place.
"""

import dataclasses
import datetime
import logging
import time
from collections.abc import Sequence

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from analytics.engine import funnel_report
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.selectors import (
    STALE_AFTER,
    snapshot_is_stale,
    snapshot_key,
    standard_snapshot_queries,
)
from analytics.types import FunnelQuery, FunnelReport
from deals.models import Deal
from funnels.models import Funnel

logger = logging.getLogger(__name__)

# Ad-hoc reports over more deals than this are computed by a worker, not in the request.
DIRECT_REPORT_MAX_DEALS = 300_000


def snapshot_ensure(*, query: FunnelQuery, label: str = "") -> FunnelSnapshot:
    """The snapshot row for these parameters, created (queued) if new.

    Identical parameters share one row (this week is also the trend's last
    week): read snapshots by ``snapshot_key``, not by label.
    """
    return _snapshot_get_or_create(query=query, label=label)[0]


def _snapshot_get_or_create(*, query: FunnelQuery, label: str) -> tuple[FunnelSnapshot, bool]:
    return FunnelSnapshot.objects.get_or_create(
        key=snapshot_key(query),
        defaults={"funnel_id": query.funnel_id, "label": label, "params": query.to_dict()},
    )


def snapshots_queue(snapshot_ids: list[int]) -> None:
    """Mark snapshots queued and send them to the workers after the transaction commits."""
    from analytics.tasks import compute_snapshot

    FunnelSnapshot.objects.filter(pk__in=snapshot_ids).exclude(
        status=SnapshotStatus.RUNNING
    ).update(status=SnapshotStatus.QUEUED, progress=0, requested_at=timezone.now())
    for snapshot_id in snapshot_ids:
        transaction.on_commit(lambda pk=snapshot_id: compute_snapshot.delay(pk))


def snapshots_refresh(*, funnel_id: int | None = None, current_only: bool = False) -> list[int]:
    """Ensure and queue the standard snapshots of every active funnel (or one).

    ``current_only``: those whose period contains today, and any other that has no
    figures yet (a period that moved with the date: the new week, the period before
    this month), so that the dashboard's presets never wait for the nightly run.
    """
    today = timezone.localdate()
    funnels = Funnel.objects.filter(is_active=True)
    if funnel_id is not None:
        funnels = Funnel.objects.filter(pk=funnel_id)
    ids = []
    with transaction.atomic():
        for funnel in funnels:
            current = {
                snapshot_key(query)
                for _label, query in standard_snapshot_queries(
                    funnel_id=funnel.pk, today=today, current_only=True
                )
            }
            for label, query in standard_snapshot_queries(funnel_id=funnel.pk, today=today):
                snapshot = snapshot_ensure(query=query, label=label)
                if not current_only or snapshot.key in current or snapshot.result is None:
                    ids.append(snapshot.pk)
        # A period can be standard twice (last month is also the one before this
        # month): each snapshot is computed once.
        ids = list(dict.fromkeys(ids))
        snapshots_queue(ids)
    return ids


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
    if _is_small(query):
        return funnel_report(query), None
    snapshot, created = _snapshot_get_or_create(query=query, label="ad hoc")
    finished = snapshot.status == SnapshotStatus.DONE and snapshot.result is not None
    # A client polls by asking again: a snapshot that runs or waits in the queue is
    # not sent to the workers a second time.
    if not finished and _needs_queueing(snapshot, created=created, now=timezone.now()):
        with transaction.atomic():
            snapshots_queue([snapshot.pk])
    return None, snapshot


def _is_small(query: FunnelQuery) -> bool:
    """Whether the period's deals are few enough to compute the report in the request.

    Counts at most one past the limit, over the (funnel, created_at/closed_at) indexes
    (datetimes, not __date lookups, so that the indexes serve it).
    """
    start = timezone.make_aware(datetime.datetime.combine(query.date_from, datetime.time.min))
    period_deals = Deal.objects.filter(funnel_id=query.funnel_id).filter(
        Q(created_at__gte=start) | Q(closed_at__gte=start)
    )
    return period_deals[: DIRECT_REPORT_MAX_DEALS + 1].count() <= DIRECT_REPORT_MAX_DEALS


def _needs_queueing(snapshot: FunnelSnapshot, *, created: bool, now: datetime.datetime) -> bool:
    """Whether a snapshot the dashboard needs should be sent to the workers: not while
    it runs, nor while it waits in the queue, unless it has waited so long that its
    message must have been lost."""
    if created:
        return True
    if snapshot.status == SnapshotStatus.RUNNING:
        return False
    if snapshot.status == SnapshotStatus.QUEUED:
        return snapshot.requested_at < now - STALE_AFTER
    return True  # failed, or done but stale


@dataclasses.dataclass
class ReportRead:
    """A report for display and where it came from."""

    report: FunnelReport | None  # None: no figures yet, ``snapshot`` is being computed
    snapshot: FunnelSnapshot | None  # the stored snapshot read or queued; None: computed now
    stale: bool = False  # from a snapshot that misses part of its period; a new run is queued


def reports_read(
    queries: Sequence[FunnelQuery], *, now: datetime.datetime | None = None
) -> list[ReportRead]:
    """The reports of ``queries``, from stored snapshots where there are fresh ones.

    One query reads every stored snapshot of the parameters. A report without a
    fresh snapshot (an ad-hoc combination, or one whose snapshot misses more than
    ``STALE_AFTER`` of its period) is computed now when its population is small
    enough; otherwise its last figures, if any, are shown as stale while it is
    queued (once: a queued or running snapshot is not queued again).
    """
    now = now or timezone.now()
    keys = [snapshot_key(query) for query in queries]
    stored = {s.key: s for s in FunnelSnapshot.objects.filter(key__in=set(keys)).order_by()}
    small: dict[tuple[int, datetime.date], bool] = {}
    reads: list[ReportRead] = []
    for query, key in zip(queries, keys, strict=True):
        same = next((r for q, r in zip(queries, reads, strict=False) if q == query), None)
        if same is not None:  # the previous period of last week is also a trend week
            reads.append(same)
            continue
        snapshot = stored.get(key)
        stale = snapshot is not None and snapshot_is_stale(
            date_to=query.date_to, computed_at=snapshot.computed_at, now=now
        )
        if snapshot is not None and snapshot.result is not None and not stale:
            reads.append(ReportRead(FunnelReport.from_dict(snapshot.result), snapshot))
            continue
        # The size check depends on the funnel and the first day only (trend weeks differ).
        size_key = (query.funnel_id, query.date_from)
        if size_key not in small:
            small[size_key] = _is_small(query)
        if small[size_key]:
            reads.append(ReportRead(funnel_report(query), None))
            continue
        created = snapshot is None
        if created:
            snapshot, created = _snapshot_get_or_create(query=query, label="ad hoc")
            stored[key] = snapshot
        if _needs_queueing(snapshot, created=created, now=now):
            with transaction.atomic():
                snapshots_queue([snapshot.pk])
            snapshot.status, snapshot.progress = SnapshotStatus.QUEUED, 0
        reads.append(
            ReportRead(
                None if snapshot.result is None else FunnelReport.from_dict(snapshot.result),
                snapshot,
                stale=snapshot.result is not None,
            )
        )
    return reads
