"""Reads for the analytics screens that are not period figures."""

import dataclasses
import datetime
from collections import Counter

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import User
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.services import snapshot_key, standard_snapshot_queries
from analytics.types import FunnelQuery
from deals.models import Deal, DealStatus
from funnels.models import Funnel


@dataclasses.dataclass
class StuckDeal:
    deal_id: int
    title: str
    stage: str
    owner: str  # username, "" when unassigned
    owner_label: str
    days_in_stage: float
    threshold_days: int
    amount: float | None


@dataclasses.dataclass
class StuckDeals:
    total: int
    by_stage: dict[str, int]
    by_owner: dict[str, int]
    by_stage_and_owner: dict[str, dict[str, int]]
    deals: list[StuckDeal]  # the longest-stuck first, at most ``limit``


def stuck_deals(
    *, funnel: Funnel, now: datetime.datetime | None = None, deals=None, limit: int = 100
) -> StuckDeals:
    """Open deals longer in their stage than the stage's rotting threshold.

    ``deals`` narrows the search (e.g. what a user may see); postponed deals
    are on hold by decision and are not stuck.
    """
    now = now or timezone.now()
    rotting = Q(pk__in=[])
    for stage in funnel.stages.filter(rotting_days__isnull=False):
        rotting |= Q(
            stage=stage, stage_entered_at__lt=now - datetime.timedelta(days=stage.rotting_days)
        )
    rows = (deals if deals is not None else Deal.objects.all()).filter(
        rotting, funnel=funnel, status=DealStatus.OPEN
    )
    stuck = [
        StuckDeal(
            deal_id=deal.pk,
            title=deal.title,
            stage=deal.stage.name,
            owner=deal.owner.username if deal.owner else "",
            owner_label=str(deal.owner) if deal.owner else "",
            days_in_stage=round((now - deal.stage_entered_at).total_seconds() / 86400, 1),
            threshold_days=deal.stage.rotting_days,
            amount=None if deal.amount is None else float(deal.amount),
        )
        for deal in rows.select_related("stage", "owner").order_by("stage_entered_at")
    ]
    by_stage_and_owner: dict[str, Counter] = {}
    for deal in stuck:
        by_stage_and_owner.setdefault(deal.stage, Counter())[deal.owner] += 1
    return StuckDeals(
        total=len(stuck),
        by_stage=dict(Counter(deal.stage for deal in stuck)),
        by_owner=dict(Counter(deal.owner for deal in stuck)),
        by_stage_and_owner={stage: dict(c) for stage, c in by_stage_and_owner.items()},
        deals=stuck[:limit],
    )


def snapshot_for(query: FunnelQuery) -> FunnelSnapshot | None:
    """The stored snapshot of exactly these parameters, if any."""
    return FunnelSnapshot.objects.filter(key=snapshot_key(query)).first()


# A snapshot of a period containing today is refreshed every 15 minutes: older than
# this, a refresh was missed. Past periods are refreshed nightly and are not judged by it.
STALE_AFTER = datetime.timedelta(minutes=30)


@dataclasses.dataclass
class SnapshotProgress:
    total: int  # the funnel's standard snapshots for today
    done: int  # finished their latest run
    failed: int
    stale: int  # current-period snapshots last computed more than ``STALE_AFTER`` ago
    errors: list[str]  # the failed runs' error messages, distinct, in label order


def snapshot_progress(*, funnel: Funnel, now: datetime.datetime | None = None) -> SnapshotProgress:
    """How far the funnel's standard snapshots (``snapshots_refresh``) have got."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    keys = {
        snapshot_key(query)
        for _label, query in standard_snapshot_queries(funnel_id=funnel.pk, today=today)
    }
    current = {
        snapshot_key(query)
        for _label, query in standard_snapshot_queries(
            funnel_id=funnel.pk, today=today, current_only=True
        )
    }
    rows = list(
        FunnelSnapshot.objects.filter(funnel=funnel, key__in=keys)
        .order_by("label")
        .values_list("key", "status", "computed_at", "error")
    )
    errors = []
    for _key, status, _computed_at, error in rows:
        if status == SnapshotStatus.FAILED and error and error not in errors:
            errors.append(error)
    return SnapshotProgress(
        total=len(keys),
        done=sum(status == SnapshotStatus.DONE for _k, status, _c, _e in rows),
        failed=sum(status == SnapshotStatus.FAILED for _k, status, _c, _e in rows),
        stale=sum(
            key in current and computed_at is not None and now - computed_at > STALE_AFTER
            for key, _status, computed_at, _e in rows
        ),
        errors=errors,
    )


def dashboard_funnels(user: User) -> QuerySet[Funnel]:
    """Active funnels the user's figures come from."""
    funnels = Funnel.objects.filter(is_active=True)
    if user.is_admin_role:
        return funnels.order_by("name")
    if user.is_head:
        ids = funnels.filter(Q(members=user) | Q(members__team__head=user)).values("pk")
        return Funnel.objects.filter(pk__in=ids).order_by("name")
    return user.funnels.filter(is_active=True).order_by("name")


def dashboard_owners(user: User) -> tuple[list[User], bool]:
    """The managers the user may pick, and whether his figures are limited to them."""
    if user.is_admin_role:
        return list(User.objects.filter(is_active=True).order_by("username")), False
    if user.is_head:
        people = User.objects.filter(Q(pk=user.pk) | Q(team__head=user)).distinct()
        return list(people.order_by("username")), True
    return [user], True
