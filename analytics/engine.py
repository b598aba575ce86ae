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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

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


class MedianAndP90(Aggregate):
    """PostgreSQL's ``percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY x)``:
    both percentiles from one sort, as a two-element array."""

    function = "percentile_cont"
    template = "%(function)s(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, **extra):
        from django.contrib.postgres.fields import ArrayField

        super().__init__(expression, output_field=ArrayField(FloatField()), **extra)


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


NO_OWNER = 0  # the group key of unassigned deals when grouping by owner


def _slice_expression(field: str, prefix: str, owner_prefix: str):
    if field == "owner":
        # Grouped by id, no join to users: usernames are put on the keys afterwards.
        return Coalesce(F(f"{owner_prefix}owner_id"), Value(NO_OWNER))
    if field == "team":
        return Coalesce(F(f"{owner_prefix}owner__team__name"), Value(""), output_field=CharField())
    if field == "client_type":
        return _client_type(prefix)
    return F(f"{prefix}{field}")


def _owner_ids(usernames: Iterable[str]) -> list[int]:
    usernames = list(usernames)
    ids = list(User.objects.filter(username__in=usernames).values_list("pk", flat=True))
    return ids + ([NO_OWNER] if "" in usernames else [])


def _scoped(
    rows: QuerySet, query: FunnelQuery, prefix: str = "", owner_prefix: str | None = None
) -> QuerySet:
    """Apply the query's filters and annotate the group key ``_g``.

    ``prefix`` leads from ``rows`` to the deal's fields, ``owner_prefix`` to
    the deal's owner when ``rows`` keep their own copy of it (StageTime).
    """
    owner_prefix = prefix if owner_prefix is None else owner_prefix
    for field, values in query.filters:
        if field == "owner":
            values = _owner_ids(values)
        rows = rows.annotate(
            **{f"_f_{field}": _slice_expression(field, prefix, owner_prefix)}
        ).filter(**{f"_f_{field}__in": values})
    if query.group_by:
        return rows.annotate(_g=_slice_expression(query.group_by, prefix, owner_prefix))
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
            aggregates[f"{d.name}__n"] = Count(f"_{d.name}", filter=when)
            aggregates[f"{d.name}__mean"] = Avg(f"_{d.name}", filter=when)
            aggregates[f"{d.name}__pct"] = MedianAndP90(f"_{d.name}", filter=when)
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
                median=_round((row[f"{d.name}__pct"] or [None, None])[0]),
                p90=_round((row[f"{d.name}__pct"] or [None, None])[1]),
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
    """Compute every figure of METRICS.md for one funnel, period and slice.

    Its queries are independent reads. On PostgreSQL, outside a transaction,
    they run two at a time on two connections (the machine's two cores);
    inside a transaction (whose uncommitted rows other connections cannot
    see) and on SQLite, one after another.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _funnel_report(query, _run_on_two_connections)
    with transaction.atomic():
        _analytics_session()
        return _funnel_report(query, _run_in_order)


def _run_in_order(jobs: dict[str, Callable]) -> dict[str, object]:
    return {name: job() for name, job in jobs.items()}


def _run_on_two_connections(jobs: dict[str, Callable]) -> dict[str, object]:
    def run(job: Callable):
        try:
            with transaction.atomic():
                _analytics_session()
                return job()
        finally:
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


class _Cube:
    """Deal counts and amounts per (group, furthest position, status, stage, reason, ...).

    One plain GROUP BY (a hash aggregate the database can run in parallel) gives
    a few thousand rows at most; every count, sum and conversion of the report
    is then added up from them.
    """

    KEYS = (
        "_g",
        "reached_position",
        "status",
        "stage_id",
        "loss_reason_id",
        "is_repeat_client",
        "_in_window",
        "_response",
    )

    def __init__(self, rows: QuerySet, *, window, target_seconds: int) -> None:
        in_window = (
            Case(When(closed_at__lt=F("created_at") + window, then=Value(1)), default=Value(0))
            if window is not None
            else Value(1)
        )
        response = Case(
            When(first_response_at__isnull=True, then=Value(0)),
            When(
                first_response_at__lte=F("created_at") + datetime.timedelta(seconds=target_seconds),
                then=Value(1),
            ),
            default=Value(2),
        )
        self.rows = list(
            rows.annotate(_in_window=in_window, _response=response)
            .values(*self.KEYS)
            .annotate(n=Count("*"), amount=Sum("amount"))
        )

    def total(self, key: str, amount: bool = False, **conditions) -> float:
        checks = [
            (name, value if callable(value) else value.__eq__) for name, value in conditions.items()
        ]
        field = "amount" if amount else "n"
        return sum(
            float(row[field] or 0) if amount else row[field]
            for row in self.rows
            if key in (TOTAL, row["_g"]) and all(check(row[name]) for name, check in checks)
        )


def _funnel_report(query: FunnelQuery, run: Callable) -> FunnelReport:
    funnel = Funnel.objects.get(pk=query.funnel_id)
    stages = list(funnel.stages.order_by("position"))
    period = _Period(query)
    window = datetime.timedelta(days=query.window_days) if query.window_days else None
    cohort = query.mode == Mode.COHORT
    target = funnel.target_response_minutes * 60

    # No default ordering: it would join the GROUP BY.
    deals = _scoped(Deal.objects.filter(funnel_id=funnel.pk).order_by(), query)
    won_q = Q(status=DealStatus.WON)
    if window is not None:
        won_q &= Q(closed_at__lt=F("created_at") + window)
    lost_q = Q(status=DealStatus.LOST)
    lengths = [
        _Duration("length_won", Seconds(F("closed_at"), F("created_at")), won_q),
        _Duration("length_lost", Seconds(F("closed_at"), F("created_at")), lost_q),
    ]
    responses = [
        _Duration(
            "response",
            Seconds(F("first_response_at"), F("created_at")),
            Q(first_response_at__isnull=False),
        )
    ]

    def cube(rows: QuerySet) -> _Cube:
        return _Cube(rows, window=window, target_seconds=target)

    def measure_deals(scope: FunnelQuery) -> dict[tuple, dict]:
        """Funnel length and response time (not additive: measured per group and again
        for the total)."""
        rows = _scoped(Deal.objects.filter(funnel_id=funnel.pk).order_by(), scope)
        out: dict[tuple, dict] = defaultdict(dict)
        if cohort:
            finished = rows.filter(period.q("created_at")).filter(
                Q(status__in=(DealStatus.WON, DealStatus.LOST)) | Q(first_response_at__isnull=False)
            )
            _merge(out, _aggregate(finished, ["_g"], {}, lengths + responses))
        else:
            _merge(out, _aggregate(rows.filter(period.q("closed_at")), ["_g"], {}, lengths))
            entered = rows.filter(period.q("created_at"), first_response_at__isnull=False)
            _merge(out, _aggregate(entered, ["_g"], {}, responses))
        return out

    def measure_times(scope: FunnelQuery) -> dict[tuple, dict]:
        """Time in stage over finished visits; one FILTERed percentile per stage, so
        the whole set is never sorted by stage first."""
        times = _scoped(
            StageTime.objects.filter(
                funnel_id=funnel.pk, visit_started_at__isnull=True, visits__gt=0
            ),
            scope,
            "deal__",
            owner_prefix="",
        ).filter(period.q("entered_at") if cohort else period.q("last_left_at"))
        per_stage = [
            _Duration(f"time_{stage.pk}", F("seconds"), Q(stage_id=stage.pk)) for stage in stages
        ]
        return _aggregate(times, ["_g"], {}, per_stage)

    def reached() -> dict[tuple, dict]:
        """Deals that first reached each position within the window or the period."""
        counts: dict[tuple, dict] = defaultdict(dict)
        reaches = _scoped(StageReach.objects.filter(funnel_id=funnel.pk), query, "deal__")
        if cohort:
            reaches = reaches.filter(period.q("entered_at")).filter(
                reached_at__lt=F("entered_at") + window
            )
        else:
            reaches = reaches.filter(period.q("reached_at"))
        for row in reaches.values("_g", "position").annotate(n=Count("*")):
            counts[(row["_g"],)][row["position"]] = row["n"]
            if query.group_by:
                total = counts[(TOTAL,)]
                total[row["position"]] = total.get(row["position"], 0) + row["n"]
        return counts

    jobs: dict[str, Callable] = {"times": lambda: measure_times(query)}
    if cohort:
        jobs["closing"] = lambda: cube(deals.filter(period.q("created_at")))
    else:
        jobs["closing"] = lambda: cube(deals.filter(period.q("closed_at")))
        jobs["entering"] = lambda: cube(deals.filter(period.q("created_at")))
        jobs["opening"] = lambda: cube(deals.filter(status__in=OPEN_STATUSES))
    jobs["lengths"] = lambda: measure_deals(query)
    if query.group_by:
        total_scope = dataclasses.replace(query, group_by=None)
        jobs["total_times"] = lambda: measure_times(total_scope)
        jobs["total_lengths"] = lambda: measure_deals(total_scope)
    if not cohort or window is not None:
        jobs["reached"] = reached
    results = run(jobs)
    closing = results["closing"]
    entering = results.get("entering", closing)
    opening = results.get("opening", closing)
    reach_counts = results.get("reached", {})
    durations: dict[tuple, dict] = defaultdict(dict)
    for name in ("times", "lengths", "total_times", "total_lengths"):
        _merge(durations, results.get(name, {}))

    reasons = dict(LossReason.objects.filter(funnel=funnel).values_list("pk", "name"))

    def step_count(key: str, stage) -> int:
        if cohort and window is None:
            return closing.total(key, reached_position=lambda p: p >= stage.position)
        return reach_counts.get((key,), {}).get(stage.position, 0)

    def lost_by_stage(key: str, stage) -> dict[str, int]:
        by_reason: dict[str, int] = defaultdict(int)
        for row in closing.rows:
            if (
                key in (TOTAL, row["_g"])
                and row["status"] == DealStatus.LOST
                and row["stage_id"] == stage.pk
            ):
                by_reason[reasons.get(row["loss_reason_id"], "")] += row["n"]
        return dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))

    def is_open(status: str) -> bool:
        return status in OPEN_STATUSES

    def figures(key: str) -> FunnelFigures:
        won_conditions = {"status": DealStatus.WON, "_in_window": 1}
        step_counts = [step_count(key, stage) for stage in stages]
        won_count = closing.total(key, **won_conditions)
        entered = step_counts[0] if step_counts else 0
        steps: list[Step] = []
        previous = None
        for stage, count in zip(stages, step_counts, strict=True):
            by_reason = lost_by_stage(key, stage)
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
                    lost_by_reason=by_reason,
                    open=opening.total(key, status=is_open, stage_id=stage.pk),
                    time_in_stage=durations.get((key,), {}).get(f"time_{stage.pk}", Durations()),
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
        won_amount = closing.total(key, amount=True, **won_conditions)
        repeat = Money(
            count=closing.total(key, is_repeat_client=True, **won_conditions),
            amount=closing.total(key, amount=True, is_repeat_client=True, **won_conditions),
        )
        weighted = sum(
            opening.total(key, amount=True, status=is_open, stage_id=stage.pk)
            * stage.probability
            / 100
            for stage in stages
        )
        responded = entering.total(key, _response=lambda r: r != 0)
        row = durations.get((key,), {})
        return FunnelFigures(
            entered=entered,
            steps=steps,
            overall_conversion=_ratio(won_count, entered),
            won=Money(count=won_count, amount=won_amount),
            average_check=_round(_ratio(won_amount, won_count), 2),
            first_sales=Money(count=won_count - repeat.count, amount=won_amount - repeat.amount),
            repeat_sales=repeat,
            lost_total=closing.total(key, status=DealStatus.LOST),
            open_total=opening.total(key, status=is_open),
            weighted_pipeline=round(weighted, 2),
            length_to_won=row.get("length_won", Durations()),
            length_to_lost=row.get("length_lost", Durations()),
            response=Response(
                responded=responded,
                waiting=entering.total(key, _response=0, status=is_open),
                median=row.get("response", Durations()).median,
                within_target_share=_ratio(entering.total(key, _response=1), responded),
                target_seconds=target,
            ),
        )

    if query.group_by:
        keys = {row["_g"] for c in (closing, entering, opening) for row in c.rows} | {
            key for (key,) in reach_counts
        } - {TOTAL}
        names = _keys_and_labels(query.group_by, keys)  # internal key -> (key, label)
        groups = sorted(
            (Group(key=names[k][0], label=names[k][1], figures=figures(k)) for k in keys),
            key=lambda group: (group.key == "", group.key),
        )
        totals = figures(TOTAL)
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


def _keys_and_labels(field: str, keys: Iterable) -> dict:
    """The public key and the label of each group; owners are keyed by username."""
    keys = list(keys)
    if field == "owner":
        users = {u.pk: u for u in User.objects.filter(pk__in=keys)}
        return {
            k: (users[k].username, str(users[k])) if k in users else ("", _("Unassigned"))
            for k in keys
        }
    if field == "client_type":
        labels = {"first": _("First sale"), "repeat": _("Repeat sale")}
    elif field == "temperature":
        labels = {"warm": _("Warm"), "cold": _("Cold")}
    else:
        labels = {}
    return {k: (k, labels.get(k) or k or _("Not set")) for k in keys}
