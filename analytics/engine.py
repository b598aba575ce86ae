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

import dataclasses
import datetime
import math
from collections import defaultdict
from collections.abc import Iterable

from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    Avg,
    Case,
    CharField,
    Count,
    F,
    FloatField,
    Func,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
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


# ------------------------------------------------------------ slices


def _client_type(prefix: str = ""):
    """'repeat' when the client had another won deal closed before this one closed
    (or before now, while it is open): ``Deal.is_repeat_client``, kept by analytics/facts.py."""
    return Case(
        When(**{f"{prefix}is_repeat_client": True}, then=Value("repeat")),
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


@dataclasses.dataclass
class _Duration:
    """A duration statistic: ``value`` over the rows matching ``when``."""

    name: str
    value: object
    when: Q


def _aggregate(
    rows: QuerySet, keys: list[str], counts: dict[str, Aggregate], durations: list[_Duration]
) -> dict[tuple, dict]:
    """One grouped pass: plain aggregates, and count/mean/median/p90 of each duration.

    PostgreSQL does it all in one query (``FILTER`` and ``percentile_cont``);
    SQLite computes the same percentiles in Python.
    """
    out: dict[tuple, dict] = defaultdict(dict)
    postgres = connection.vendor == "postgresql"
    aggregates = dict(counts)
    if postgres:
        for d in durations:
            when = d.when & Q(**{f"_{d.name}__isnull": False})
            aggregates[f"{d.name}__n"] = Count("pk", filter=when)
            aggregates[f"{d.name}__mean"] = Avg(f"_{d.name}", filter=when)
            aggregates[f"{d.name}__median"] = PercentileCont(f"_{d.name}", 0.5, filter=when)
            aggregates[f"{d.name}__p90"] = PercentileCont(f"_{d.name}", 0.9, filter=when)
        rows_pg = rows.annotate(**{f"_{d.name}": d.value for d in durations})
        source = rows_pg.values(*keys).annotate(**aggregates) if aggregates else []
    else:
        source = rows.values(*keys).annotate(**aggregates) if aggregates else []
    for row in source:
        key = tuple(row[k] for k in keys)
        out[key].update({name: row[name] for name in counts})
        for d in durations if postgres else ():
            out[key][d.name] = Durations(
                count=row[f"{d.name}__n"],
                mean=_round(row[f"{d.name}__mean"]),
                median=_round(row[f"{d.name}__median"]),
                p90=_round(row[f"{d.name}__p90"]),
            )
    if not postgres:
        for d in durations:
            values: dict[tuple, list[float]] = defaultdict(list)
            matching = rows.filter(d.when).annotate(_v=d.value).filter(_v__isnull=False)
            for row in matching.values_list(*keys, "_v"):
                values[tuple(row[:-1])].append(round(row[-1], 3))
            for key, vals in values.items():
                vals.sort()
                out[key][d.name] = Durations(
                    count=len(vals),
                    mean=_round(sum(vals) / len(vals)),
                    median=_round(percentile_cont(vals, 0.5)),
                    p90=_round(percentile_cont(vals, 0.9)),
                )
    return out


def _analytics_session() -> None:
    """Exact percentiles sort in memory: give this transaction room to do it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '256MB'")


def funnel_report(query: FunnelQuery) -> FunnelReport:
    """Compute every figure of METRICS.md for one funnel, period and slice."""
    with transaction.atomic():
        _analytics_session()
        return _funnel_report(query)


def _funnel_report(query: FunnelQuery) -> FunnelReport:
    funnel = Funnel.objects.get(pk=query.funnel_id)
    stages = list(funnel.stages.order_by("position"))
    period = _Period(query)
    window = datetime.timedelta(days=query.window_days) if query.window_days else None
    cohort = query.mode == Mode.COHORT
    target = funnel.target_response_minutes * 60

    # No default ordering: it would join the GROUP BY.
    deals = _scoped(Deal.objects.filter(funnel_id=funnel.pk).order_by(), query)
    won_q = Q(status=DealStatus.WON)
    if cohort and window is not None:
        won_q &= Q(closed_at__lt=F("created_at") + window)
    lost_q = Q(status=DealStatus.LOST)
    open_q = Q(status__in=OPEN_STATUSES)
    repeat_q = Q(is_repeat_client=True)
    response_seconds = Seconds(F("first_response_at"), F("created_at"))

    closing = {  # won and lost deals: money and funnel length
        "won": Count("pk", filter=won_q),
        "won_amount": Sum("amount", filter=won_q),
        "repeat_n": Count("pk", filter=won_q & repeat_q),
        "repeat_amount": Sum("amount", filter=won_q & repeat_q),
        "lost": Count("pk", filter=lost_q),
    }
    closing_durations = [
        _Duration("length_won", Seconds(F("closed_at"), F("created_at")), won_q),
        _Duration("length_lost", Seconds(F("closed_at"), F("created_at")), lost_q),
    ]
    entering = {  # new leads: response time
        "responded": Count("pk", filter=Q(first_response_at__isnull=False)),
        "waiting": Count("pk", filter=Q(first_response_at__isnull=True) & open_q),
        "within": Count(
            "pk",
            filter=Q(first_response_at__isnull=False)
            & Q(first_response_at__lte=F("created_at") + datetime.timedelta(seconds=target)),
        ),
    }
    entering_durations = [
        _Duration("response", response_seconds, Q(first_response_at__isnull=False))
    ]
    pipeline = {}  # open deals per stage, and their amount for the weighted pipeline
    for stage in stages:
        pipeline[f"open_{stage.pk}"] = Count("pk", filter=open_q & Q(stage_id=stage.pk))
        pipeline[f"open_amount_{stage.pk}"] = Sum("amount", filter=open_q & Q(stage_id=stage.pk))

    figures_by_group: dict[tuple, dict] = defaultdict(dict)
    if cohort:
        population = deals.filter(period.q("created_at"))
        reached = {}
        if window is None:
            reached = {
                f"s{stage.position}": Count("pk", filter=Q(reached_position__gte=stage.position))
                for stage in stages
            }
        rows = _aggregate(
            population,
            ["_g"],
            {**reached, **closing, **entering, **pipeline},
            closing_durations + entering_durations,
        )
        _merge(figures_by_group, rows)
        lost_deals = population.filter(lost_q)
    else:
        closed = deals.filter(period.q("closed_at"))
        _merge(figures_by_group, _aggregate(closed, ["_g"], closing, closing_durations))
        entered = deals.filter(period.q("created_at"))
        _merge(figures_by_group, _aggregate(entered, ["_g"], entering, entering_durations))
        _merge(figures_by_group, _aggregate(deals.filter(open_q), ["_g"], pipeline, []))
        lost_deals = closed.filter(lost_q)

    if not cohort or window is not None:
        reaches = _scoped(StageReach.objects.filter(funnel_id=funnel.pk), query, "deal__")
        if cohort:
            reaches = reaches.filter(period.q("deal__created_at")).filter(
                reached_at__lt=F("deal__created_at") + window
            )
        else:
            reaches = reaches.filter(period.q("reached_at"))
        counts = {
            f"s{stage.position}": Count("pk", filter=Q(position=stage.position)) for stage in stages
        }
        _merge(figures_by_group, _aggregate(reaches, ["_g"], counts, []))

    reasons = dict(LossReason.objects.filter(funnel=funnel).values_list("pk", "name"))
    lost: dict[str, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for row in lost_deals.values("_g", "stage_id", "loss_reason_id").annotate(n=Count("pk")):
        lost[row["_g"]][row["stage_id"]][reasons.get(row["loss_reason_id"], "")] = row["n"]

    # Time in stage over finished visits.
    times = _scoped(
        StageTime.objects.filter(funnel_id=funnel.pk, visit_started_at__isnull=True, visits__gt=0),
        query,
        "deal__",
    ).filter(period.q("deal__created_at") if cohort else period.q("last_left_at"))
    stage_times = _aggregate(times, ["_g", "stage_id"], {}, [_Duration("time", F("seconds"), Q())])

    def figures(key: str) -> FunnelFigures:
        row = figures_by_group.get((key,), {})
        step_counts = [row.get(f"s{stage.position}") or 0 for stage in stages]
        won_count = row.get("won") or 0
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
                    open=row.get(f"open_{stage.pk}") or 0,
                    time_in_stage=stage_times.get((key, stage.pk), {}).get("time", Durations()),
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
        won_amount = float(row.get("won_amount") or 0)
        repeat = Money(count=row.get("repeat_n") or 0, amount=float(row.get("repeat_amount") or 0))
        weighted = sum(
            float(row.get(f"open_amount_{stage.pk}") or 0) * stage.probability / 100
            for stage in stages
        )
        responded = row.get("responded") or 0
        return FunnelFigures(
            entered=entered,
            steps=steps,
            overall_conversion=_ratio(won_count, entered),
            won=Money(count=won_count, amount=won_amount),
            average_check=_round(_ratio(won_amount, won_count), 2),
            first_sales=Money(count=won_count - repeat.count, amount=won_amount - repeat.amount),
            repeat_sales=repeat,
            lost_total=row.get("lost") or 0,
            open_total=sum(row.get(f"open_{stage.pk}") or 0 for stage in stages),
            weighted_pipeline=round(weighted, 2),
            length_to_won=row.get("length_won", Durations()),
            length_to_lost=row.get("length_lost", Durations()),
            response=Response(
                responded=responded,
                waiting=row.get("waiting") or 0,
                median=row.get("response", Durations()).median,
                within_target_share=_ratio(row.get("within") or 0, responded),
                target_seconds=target,
            ),
        )

    if query.group_by:
        keys = sorted(
            {key for (key,) in figures_by_group} | set(lost) - {TOTAL},
            key=lambda k: (k == "", k),
        )
        labels = _labels(query.group_by, keys)
        groups = [Group(key=k, label=labels[k], figures=figures(k)) for k in keys]
        totals = _funnel_report(dataclasses.replace(query, group_by=None)).totals
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


def _merge(target: dict[tuple, dict], rows: dict[tuple, dict]) -> None:
    for key, values in rows.items():
        target[key].update(values)


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
