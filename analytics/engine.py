"""The funnel maths: a ``FunnelQuery`` in, a ``FunnelReport`` out.

Every figure follows METRICS.md and is computed by the database (aggregates with
``FILTER``, grouped by the slice) over the deals and the per-deal summaries
kept by ``analytics/facts.py``; Python only assembles the steps. PostgreSQL
computes percentiles itself; on SQLite the same ``percentile_cont`` is taken in
Python, so both give the same figures.

The building blocks:
- the population: the funnel's deals matching the filters, and in cohort mode
  those that entered in the period;
- step k counts deals that reached stage k (``reached_position``, or with a
  conversion window or in calendar mode the ``StageReach`` rows); Won counts
  won deals (won within the window, or won in the period);
- lost and open deals per stage; time in stage over finished visits; funnel
  length; response time; money.
"""

import datetime
import math
from collections import defaultdict
from collections.abc import Iterable

from django.db import connection
from django.db.models import (
    Aggregate,
    Avg,
    Case,
    CharField,
    Count,
    DecimalField,
    Exists,
    F,
    FloatField,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Now
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import User
from analytics.models import StageReach, StageTime
from analytics.types import (
    Durations,
    FunnelFigures,
    FunnelQuery,
    FunnelReport,
    Group,
    Mode,
    Money,
    Response,
    Step,
)
from deals.models import Deal, DealStatus
from funnels.models import Funnel, LossReason

OPEN_STATUSES = (DealStatus.OPEN, DealStatus.POSTPONED)
TOTAL = "__all__"


# ------------------------------------------------------------ SQL helpers


class Seconds(Func):
    """``end - start`` in seconds, as a float, on PostgreSQL and SQLite."""

    output_field = FloatField()

    def __init__(self, end, start):
        super().__init__(end, start)

    def as_postgresql(self, compiler, conn, **extra):
        return self.as_sql(
            compiler,
            conn,
            template="EXTRACT(EPOCH FROM (%(expressions)s))",
            arg_joiner=" - ",
            **extra,
        )

    def as_sqlite(self, compiler, conn, **extra):
        return self.as_sql(
            compiler,
            conn,
            template="((julianday(%(expressions)s)) * 86400.0)",
            arg_joiner=") - julianday(",
            **extra,
        )


class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(f) WITHIN GROUP (ORDER BY x)``."""

    function = "percentile_cont"
    output_field = FloatField()
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=fraction, **extra)


def percentile_cont(sorted_values: list[float], fraction: float) -> float | None:
    """The same interpolation as SQL's percentile_cont."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def _duration_stats(rows: QuerySet, value, keys: list[str]) -> dict[tuple, Durations]:
    """Count, mean, median and p90 of ``value`` per ``keys``, computed the same on both DBs."""
    rows = rows.annotate(_v=value).filter(_v__isnull=False)
    stats: dict[tuple, Durations] = {}
    if connection.vendor == "postgresql":
        for row in rows.values(*keys).annotate(
            n=Count("pk"),
            mean=Avg("_v"),
            median=PercentileCont("_v", 0.5),
            p90=PercentileCont("_v", 0.9),
        ):
            stats[tuple(row[k] for k in keys)] = Durations(
                count=row["n"],
                mean=_round(row["mean"]),
                median=_round(row["median"]),
                p90=_round(row["p90"]),
            )
        return stats
    grouped: dict[tuple, list[float]] = defaultdict(list)
    for row in rows.values_list(*keys, "_v"):
        grouped[tuple(row[:-1])].append(round(row[-1], 3))
    for key, values in grouped.items():
        values.sort()
        stats[key] = Durations(
            count=len(values),
            mean=_round(sum(values) / len(values)),
            median=_round(percentile_cont(values, 0.5)),
            p90=_round(percentile_cont(values, 0.9)),
        )
    return stats


# ------------------------------------------------------------ slices


def _client_type(prefix: str = ""):
    """'repeat' when the client had a won deal closed before this deal closed (or now)."""
    earlier_won = Deal.objects.filter(
        contact_id=OuterRef(f"{prefix}contact_id"),
        status=DealStatus.WON,
        closed_at__lt=Coalesce(OuterRef(f"{prefix}closed_at"), Now()),
    ).exclude(pk=OuterRef(f"{prefix}pk"))
    return Case(
        When(Exists(earlier_won), then=Value("repeat")),
        default=Value("first"),
        output_field=CharField(),
    )


def _slice_expression(field: str, prefix: str = ""):
    if field == "owner":
        return Coalesce(F(f"{prefix}owner__username"), Value(""), output_field=CharField())
    if field == "team":
        return Coalesce(F(f"{prefix}owner__team__name"), Value(""), output_field=CharField())
    if field == "client_type":
        return _client_type(prefix)
    return F(f"{prefix}{field}")


def _scoped(rows: QuerySet, query: FunnelQuery, prefix: str = "") -> QuerySet:
    """Apply the query's filters and annotate the group key ``_g``."""
    for field, values in query.filters:
        rows = rows.annotate(**{f"_f_{field}": _slice_expression(field, prefix)}).filter(
            **{f"_f_{field}__in": values}
        )
    if query.group_by:
        return rows.annotate(_g=_slice_expression(query.group_by, prefix))
    return rows.annotate(_g=Value(TOTAL, output_field=CharField()))


# ------------------------------------------------------------ the engine


class _Period:
    def __init__(self, query: FunnelQuery) -> None:
        tz = timezone.get_current_timezone()
        self.start = datetime.datetime.combine(query.date_from, datetime.time.min, tzinfo=tz)
        self.end = datetime.datetime.combine(
            query.date_to + datetime.timedelta(days=1), datetime.time.min, tzinfo=tz
        )

    def q(self, field: str) -> Q:
        return Q(**{f"{field}__gte": self.start, f"{field}__lt": self.end})


def funnel_report(query: FunnelQuery) -> FunnelReport:
    """Compute every figure of METRICS.md for one funnel, period and slice."""
    funnel = Funnel.objects.get(pk=query.funnel_id)
    stages = list(funnel.stages.order_by("position"))
    period = _Period(query)
    window = datetime.timedelta(days=query.window_days) if query.window_days else None
    cohort = query.mode == Mode.COHORT

    # No default ordering: it would join the GROUP BY.
    deals = _scoped(Deal.objects.filter(funnel_id=funnel.pk).order_by(), query)
    population = deals.filter(period.q("created_at")) if cohort else deals

    # Steps: counts of deals that reached each stage, and Won.
    counts: dict[str, dict] = defaultdict(dict)
    if cohort and window is None:
        aggregates = {
            f"s{stage.position}": Count("pk", filter=Q(reached_position__gte=stage.position))
            for stage in stages
        }
        aggregates["won"] = Count("pk", filter=Q(status=DealStatus.WON))
        for row in population.values("_g").annotate(**aggregates):
            counts[row["_g"]] = row
    else:
        reaches = _scoped(StageReach.objects.filter(funnel_id=funnel.pk), query, "deal__")
        if cohort:
            reaches = reaches.filter(period.q("deal__created_at")).filter(
                reached_at__lt=F("deal__created_at") + window
            )
            won = population.filter(status=DealStatus.WON, closed_at__lt=F("created_at") + window)
        else:
            reaches = reaches.filter(period.q("reached_at"))
            won = deals.filter(status=DealStatus.WON).filter(period.q("closed_at"))
        aggregates = {
            f"s{stage.position}": Count("pk", filter=Q(position=stage.position)) for stage in stages
        }
        for row in reaches.values("_g").annotate(**aggregates):
            counts[row["_g"]].update(row)
        for row in won.values("_g").annotate(won=Count("pk")):
            counts[row["_g"]]["won"] = row["won"]

    # Lost and open deals per stage.
    if cohort:
        lost_deals = population.filter(status=DealStatus.LOST)
        won_deals = population.filter(status=DealStatus.WON)
        if window is not None:
            won_deals = won_deals.filter(closed_at__lt=F("created_at") + window)
    else:
        lost_deals = deals.filter(status=DealStatus.LOST).filter(period.q("closed_at"))
        won_deals = deals.filter(status=DealStatus.WON).filter(period.q("closed_at"))
    open_deals = population.filter(status__in=OPEN_STATUSES)
    reasons = dict(LossReason.objects.filter(funnel=funnel).values_list("pk", "name"))
    lost: dict[str, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for row in lost_deals.values("_g", "stage_id", "loss_reason_id").annotate(n=Count("pk")):
        lost[row["_g"]][row["stage_id"]][reasons.get(row["loss_reason_id"], "")] = row["n"]
    opened: dict[str, dict[int, int]] = defaultdict(dict)
    for row in open_deals.values("_g", "stage_id").annotate(n=Count("pk")):
        opened[row["_g"]][row["stage_id"]] = row["n"]
    pipeline: dict[str, float] = {}
    for row in open_deals.values("_g").annotate(
        w=Sum(
            F("amount") * F("stage__probability") / 100,
            output_field=DecimalField(max_digits=20, decimal_places=4),
        )
    ):
        pipeline[row["_g"]] = float(row["w"] or 0)

    # Time in stage over finished visits.
    times = _scoped(
        StageTime.objects.filter(funnel_id=funnel.pk, visit_started_at__isnull=True, visits__gt=0),
        query,
        "deal__",
    )
    times = times.filter(period.q("deal__created_at") if cohort else period.q("last_left_at"))
    stage_times = _duration_stats(times, F("seconds"), ["_g", "stage_id"])

    # Funnel length, money, response time.
    length_won = _duration_stats(won_deals, Seconds(F("closed_at"), F("created_at")), ["_g"])
    length_lost = _duration_stats(lost_deals, Seconds(F("closed_at"), F("created_at")), ["_g"])
    money: dict[str, dict] = {}
    for row in (
        won_deals.annotate(_ct=_client_type())
        .values("_g")
        .annotate(
            n=Count("pk"),
            won_amount=Sum("amount"),
            first_n=Count("pk", filter=Q(_ct="first")),
            first_amount=Sum("amount", filter=Q(_ct="first")),
            repeat_n=Count("pk", filter=Q(_ct="repeat")),
            repeat_amount=Sum("amount", filter=Q(_ct="repeat")),
        )
    ):
        money[row["_g"]] = row
    new_leads = population if cohort else deals.filter(period.q("created_at"))
    target = funnel.target_response_minutes * 60
    response_stats = _duration_stats(
        new_leads, Seconds(F("first_response_at"), F("created_at")), ["_g"]
    )
    response_counts: dict[str, dict] = {}
    for row in (
        new_leads.annotate(_r=Seconds(F("first_response_at"), F("created_at")))
        .values("_g")
        .annotate(
            responded=Count("pk", filter=Q(first_response_at__isnull=False)),
            waiting=Count("pk", filter=Q(first_response_at__isnull=True, status__in=OPEN_STATUSES)),
            within=Count("pk", filter=Q(_r__lte=target)),
        )
    ):
        response_counts[row["_g"]] = row

    def figures(key: str) -> FunnelFigures:
        row = counts.get(key, {})
        step_counts = [row.get(f"s{stage.position}", 0) or 0 for stage in stages]
        won_count = row.get("won", 0) or 0
        entered = step_counts[0] if step_counts else 0
        steps: list[Step] = []
        previous = None
        for stage, count in zip(stages, step_counts, strict=True):
            by_reason = lost[key].get(stage.pk, {})
            steps.append(
                Step(
                    name=stage.name,
                    stage_id=stage.pk,
                    count=count,
                    step_conversion=_ratio(count, previous),
                    conversion_from_first=_ratio(count, entered),
                    drop_off=None if previous is None else previous - count,
                    drop_off_share=None if previous is None else _ratio(previous - count, previous),
                    target_conversion=None
                    if stage.target_conversion is None
                    else float(stage.target_conversion) / 100,
                    lost=sum(by_reason.values()),
                    lost_by_reason=dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
                    open=opened[key].get(stage.pk, 0),
                    time_in_stage=stage_times.get((key, stage.pk), Durations()),
                )
            )
            previous = count
        steps.append(
            Step(
                name=_("Won"),
                stage_id=None,
                count=won_count,
                step_conversion=_ratio(won_count, previous),
                conversion_from_first=_ratio(won_count, entered),
                drop_off=None if previous is None else previous - won_count,
                drop_off_share=None if previous is None else _ratio(previous - won_count, previous),
            )
        )
        m = money.get(key, {})
        won_amount = float(m.get("won_amount") or 0)
        won_n = m.get("n", 0)
        rc = response_counts.get(key, {})
        rs = response_stats.get((key,), Durations())
        return FunnelFigures(
            entered=entered,
            steps=steps,
            overall_conversion=_ratio(won_count, entered),
            won=Money(count=won_n, amount=won_amount),
            average_check=_round(_ratio(won_amount, won_n), 2),
            first_sales=Money(count=m.get("first_n", 0), amount=float(m.get("first_amount") or 0)),
            repeat_sales=Money(
                count=m.get("repeat_n", 0), amount=float(m.get("repeat_amount") or 0)
            ),
            lost_total=sum(sum(r.values()) for r in lost[key].values()),
            open_total=sum(opened[key].values()),
            weighted_pipeline=round(pipeline.get(key, 0.0), 2),
            length_to_won=length_won.get((key,), Durations()),
            length_to_lost=length_lost.get((key,), Durations()),
            response=Response(
                responded=rc.get("responded", 0),
                waiting=rc.get("waiting", 0),
                median=rs.median,
                within_target_share=_ratio(rc.get("within", 0), rc.get("responded", 0)),
                target_seconds=target,
            ),
        )

    if query.group_by:
        keys = sorted(
            {*counts, *lost, *opened, *money, *response_counts} - {TOTAL},
            key=lambda k: (k == "", k),
        )
        labels = _labels(query.group_by, keys)
        groups = [Group(key=k, label=labels[k], figures=figures(k)) for k in keys]
        totals_query = FunnelQuery(
            funnel_id=query.funnel_id,
            date_from=query.date_from,
            date_to=query.date_to,
            mode=query.mode,
            window_days=query.window_days,
            filters=query.filters,
        )
        totals = funnel_report(totals_query).totals
    else:
        groups = []
        totals = figures(TOTAL)
    return FunnelReport(
        query=query,
        funnel=funnel.name,
        currency=funnel.currency,
        totals=totals,
        groups=groups,
        computed_at=timezone.now(),
    )


def _labels(field: str, keys: Iterable[str]) -> dict[str, str]:
    keys = list(keys)
    if field == "owner":
        names = {u.username: str(u) for u in User.objects.filter(username__in=keys)}
        return {k: names.get(k, k) if k else _("Unassigned") for k in keys}
    if field == "client_type":
        return {k: {"first": _("First sale"), "repeat": _("Repeat sale")}.get(k, k) for k in keys}
    if field == "temperature":
        return {k: {"warm": _("Warm"), "cold": _("Cold")}.get(k, k or _("Not set")) for k in keys}
    return {k: k or _("Not set") for k in keys}
