"""Reads for the analytics screens that are not period figures, and which snapshots
a funnel keeps for whom."""

import dataclasses
import datetime
import hashlib
import json
from collections import Counter, defaultdict

from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Role, User
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.periods import snapshot_specs
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
    # More than ``count_limit`` are stuck: the counts are of the ``count_limit`` longest stuck.
    more: bool = False


def stuck_deals(
    *,
    funnel: Funnel,
    now: datetime.datetime | None = None,
    deals=None,
    limit: int = 100,
    count_limit: int | None = None,
) -> StuckDeals:
    """Open deals longer in their stage than the stage's rotting threshold.

    ``deals`` narrows the search (e.g. what a user may see); postponed deals
    are on hold by decision and are not stuck. At most two queries, both read
    in the order of the ``deal_stuck_idx`` index and stopped early: the
    ``limit`` longest stuck, and (when there are that many) the stage and
    owner of up to ``count_limit`` of them for the counts.
    """
    now = now or timezone.now()
    stages = {stage.pk: stage for stage in funnel.stages.filter(rotting_days__isnull=False)}
    rotting = Q(pk__in=[])
    for stage in stages.values():
        rotting |= Q(
            stage=stage, stage_entered_at__lt=now - datetime.timedelta(days=stage.rotting_days)
        )
    rows = (
        (deals if deals is not None else Deal.objects.all())
        .filter(rotting, funnel=funnel, status=DealStatus.OPEN)
        .order_by("stage_entered_at", "pk")
    )
    longest = list(rows.select_related("stage", "owner")[:limit])
    more = False
    if len(longest) < limit:  # these are all of them
        counted = [(deal.stage_id, _username(deal)) for deal in longest]
    else:
        sample = rows.values_list("stage_id", "owner__username")
        counted = list(sample if count_limit is None else sample[: count_limit + 1])
        if count_limit is not None and len(counted) > count_limit:
            more, counted = True, counted[:count_limit]
    by_stage_and_owner: dict[str, Counter] = defaultdict(Counter)
    for stage_id, owner in counted:
        by_stage_and_owner[stages[stage_id].name][owner or ""] += 1
    by_owner: Counter = Counter()
    for owners in by_stage_and_owner.values():
        by_owner.update(owners)
    return StuckDeals(
        total=sum(by_owner.values()),
        by_stage={stage: sum(owners.values()) for stage, owners in by_stage_and_owner.items()},
        by_owner=dict(by_owner),
        by_stage_and_owner={stage: dict(owners) for stage, owners in by_stage_and_owner.items()},
        deals=[
            StuckDeal(
                deal_id=deal.pk,
                title=deal.title,
                stage=deal.stage.name,
                owner=_username(deal),
                owner_label=str(deal.owner) if deal.owner else "",
                days_in_stage=round((now - deal.stage_entered_at).total_seconds() / 86400, 1),
                threshold_days=deal.stage.rotting_days,
                amount=None if deal.amount is None else float(deal.amount),
            )
            for deal in longest
        ],
        more=more,
    )


def _username(deal: Deal) -> str:
    return deal.owner.username if deal.owner else ""


FILTER_VALUE_FIELDS = ("source", "product", "region")


def deal_field_values(*, funnel: Funnel) -> dict[str, list[str]]:
    """The distinct non-empty sources, products and regions of the funnel's deals, sorted.

    One query: a recursive walk over the (funnel, field) indexes that jumps from
    one value to the next (a loose index scan), so it costs one index probe per
    distinct value, not a read of every deal.
    """
    quote = connection.ops.quote_name
    table, funnel_column = quote(Deal._meta.db_table), quote(Deal._meta.get_field("funnel").column)
    walks, selects = [], []
    for field in FILTER_VALUE_FIELDS:
        column = quote(Deal._meta.get_field(field).column)
        walk = f"walk_{field}"
        # The smallest value after {after}: one probe of the (funnel, field) index.
        after = (
            f"(SELECT {column} FROM {table} WHERE {funnel_column} = %s AND {column} > {{after}} "
            f"ORDER BY {column} LIMIT 1)"
        )
        first, following = after.format(after="''"), after.format(after=f"{walk}.value")
        walks.append(
            f"{walk}(value, n) AS (SELECT {first}, 1 UNION ALL "
            f"SELECT {following}, n + 1 FROM {walk} WHERE value IS NOT NULL)"
        )
        selects.append(f"SELECT '{field}', value, n FROM {walk} WHERE value IS NOT NULL")
    sql = f"WITH RECURSIVE {', '.join(walks)} {' UNION ALL '.join(selects)} ORDER BY 1, 3"
    values: dict[str, list[str]] = {field: [] for field in FILTER_VALUE_FIELDS}
    with connection.cursor() as cursor:
        cursor.execute(sql, [funnel.pk] * 2 * len(FILTER_VALUE_FIELDS))
        for field, value, _n in cursor.fetchall():
            values[field].append(value)
    return values


def snapshot_key(query: FunnelQuery) -> str:
    return hashlib.sha256(json.dumps(query.to_dict(), sort_keys=True).encode()).hexdigest()


# A snapshot of a period containing today is refreshed every 15 minutes: older than
# this, a refresh was missed. Past periods are refreshed nightly and are not judged by it.
STALE_AFTER = datetime.timedelta(minutes=30)


def snapshot_is_stale(
    *, date_to: datetime.date, computed_at: datetime.datetime | None, now: datetime.datetime
) -> bool:
    """Whether figures computed at ``computed_at`` miss more than ``STALE_AFTER`` of the
    events of a period that ends with the day ``date_to``: a period that has not ended,
    computed more than ``STALE_AFTER`` ago, or one computed before it ended."""
    if computed_at is None:
        return False
    end = timezone.make_aware(
        datetime.datetime.combine(date_to + datetime.timedelta(days=1), datetime.time.min)
    )
    return computed_at < min(now, end) - STALE_AFTER


def head_people(head: User) -> QuerySet[User]:
    """The people whose figures a head of sales sees: himself and the members of his teams."""
    return User.objects.filter(Q(pk=head.pk) | Q(team__head=head)).distinct()


def snapshot_audiences(funnel_id: int) -> list[tuple[str, dict[str, list[str]]]]:
    """Whose figures the funnel's standard snapshots are kept for, as (label suffix, filters):
    everyone's (administrators), and each active head of sales' who works the funnel,
    narrowed to his people exactly as his dashboard narrows them."""
    heads = (
        User.objects.filter(role=Role.HEAD, is_active=True)
        .filter(Q(funnels=funnel_id) | Q(headed_teams__members__funnels=funnel_id))
        .distinct()
        .order_by("username")
    )
    audiences: list[tuple[str, dict[str, list[str]]]] = [("", {})]
    for head in heads:
        people = list(head_people(head).order_by("username").values_list("username", flat=True))
        audiences.append((f"@{head.username}", {"owner": people}))
    return audiences


def standard_snapshot_queries(
    *, funnel_id: int, today: datetime.date, current_only: bool = False
) -> list[tuple[str, FunnelQuery]]:
    """Label and query of each standard snapshot of a funnel (what ``snapshots_refresh`` keeps):
    the specs of ``analytics.periods.snapshot_specs`` for each of its audiences."""
    specs = snapshot_specs(today, current_only=current_only)
    return [
        (
            f"{spec.label}{suffix}",
            FunnelQuery.build(
                funnel_id=funnel_id,
                date_from=spec.period.date_from,
                date_to=spec.period.date_to,
                mode=spec.mode,
                group_by=spec.group_by,
                filters=filters,
            ),
        )
        for suffix, filters in snapshot_audiences(funnel_id)
        for spec in specs
    ]


@dataclasses.dataclass
class SnapshotProgress:
    total: int  # the funnel's standard snapshots for today
    done: int  # finished their latest run
    failed: int
    stale: (
        int  # done, but missing more than ``STALE_AFTER`` of their period (``snapshot_is_stale``)
    )
    errors: list[str]  # the failed runs' error messages, distinct, in label order


def snapshot_progress(*, funnel: Funnel, now: datetime.datetime | None = None) -> SnapshotProgress:
    """How far the funnel's standard snapshots (``snapshots_refresh``) have got."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    keys = {
        snapshot_key(query)
        for _label, query in standard_snapshot_queries(funnel_id=funnel.pk, today=today)
    }
    rows = list(
        FunnelSnapshot.objects.filter(funnel=funnel, key__in=keys)
        .order_by("label")
        .values_list("status", "computed_at", "error", "params__date_to")
    )
    errors = []
    for status, _computed_at, error, _date_to in rows:
        if status == SnapshotStatus.FAILED and error and error not in errors:
            errors.append(error)
    return SnapshotProgress(
        total=len(keys),
        done=sum(status == SnapshotStatus.DONE for status, _c, _e, _d in rows),
        failed=sum(status == SnapshotStatus.FAILED for status, _c, _e, _d in rows),
        stale=sum(
            status == SnapshotStatus.DONE
            and snapshot_is_stale(
                date_to=datetime.date.fromisoformat(date_to), computed_at=computed_at, now=now
            )
            for status, computed_at, _e, date_to in rows
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
        return list(head_people(user).order_by("username")), True
    return [user], True
