"""The funnel maths: a ``FunnelQuery`` in, a ``FunnelReport`` out.

Every figure follows METRICS.md and is computed by the database (aggregates with
``FILTER``, grouped by the slice) over the deals and the per-deal summaries
kept by ``analytics/facts.py``; Python only assembles the steps. PostgreSQL
computes percentiles itself; on SQLite the same ``percentile_cont`` is taken in
Python, so both give the same figures.

The building blocks:
- the population: the funnel's deals matching the filters, and in cohort mode
  those that entered in the period;
- step k counts deals that reached stage k: the deals that entered in the period
  with ``reached_position`` >= k, corrected by the few ``StageReach`` rows that
  fall outside (a conversion window's late reaches) or cross the period's edge
  (calendar mode); Won counts won deals (won within the window, or won in the
  period);
- lost and open deals per stage; time in stage over finished visits; funnel
  length; response time; money.
"""

import dataclasses
import datetime
import functools
import math
import operator
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from django.db import connection, transaction
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
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
from crm.sql import Seconds
from deals.models import CLOSED_STATUSES, OPEN_STATUSES, Deal, DealStatus, Temperature
from funnels.models import Funnel, LossReason

TOTAL = "__all__"


# ------------------------------------------------------------ SQL helpers


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
    rows: QuerySet,
    query: FunnelQuery,
    prefix: str = "",
    owner_prefix: str | None = None,
    *,
    raw_owner: bool = False,
) -> QuerySet:
    """Apply the query's filters and annotate the group key ``_g``.

    ``prefix`` leads from ``rows`` to the deal's fields, ``owner_prefix`` to
    the deal's owner when ``rows`` keep their own copy of it (StageTime). With
    ``raw_owner``, grouping by owner keys on the owner column itself (NULL for
    unassigned deals; ``_aggregate`` reads it as ``NO_OWNER``), so an index in
    owner order can feed the grouping without a sort.
    """
    owner_prefix = prefix if owner_prefix is None else owner_prefix
    for field, values in query.filters:
        if field == "owner":
            # On the owner column itself, so that the indexes that lead with the owner
            # read only these owners' rows (a head's or a manager's view).
            ids = _owner_ids(values)
            owned = Q(**{f"{owner_prefix}owner_id__in": [pk for pk in ids if pk != NO_OWNER]})
            if NO_OWNER in ids:
                owned |= Q(**{f"{owner_prefix}owner_id__isnull": True})
            rows = rows.filter(owned)
            continue
        rows = rows.annotate(
            **{f"_f_{field}": _slice_expression(field, prefix, owner_prefix)}
        ).filter(**{f"_f_{field}__in": values})
    if query.group_by == "owner" and raw_owner:
        return rows.annotate(_g=F(f"{owner_prefix}owner_id"))
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
    """A duration statistic: ``value`` over the rows matching ``when`` (all: None)."""

    name: str
    value: object
    when: Q | None = None


@dataclasses.dataclass
class _Measure:
    """Durations measured over the deals matching ``rows``."""

    rows: Q
    durations: list[_Duration]


def _aggregate(
    rows: QuerySet, durations: list[_Duration], *, grouped: bool, null_key: object = None
) -> dict[tuple, dict]:
    """Count, mean, median and 90th percentile of each duration over all rows (under
    ``TOTAL``), and when ``grouped`` also per group ``_g``; a NULL group is keyed
    ``null_key`` (``NO_OWNER`` for the raw owner column of ``_scoped(raw_owner=True)``).

    PostgreSQL does it in one pass: ``FILTER``ed ``percentile_cont`` over the rows
    sorted once by group, and ``GROUPING SETS`` for the total (percentiles do not
    add up, so the total is measured, not summed). SQLite computes the same
    percentiles in Python.
    """
    if connection.vendor == "postgresql":
        return _aggregate_postgresql(rows, durations, grouped=grouped, null_key=null_key)
    out: dict[tuple, dict] = defaultdict(dict)
    for d in durations:
        values: dict[tuple, list[float]] = defaultdict(list)
        matching = rows.filter(d.when) if d.when is not None else rows
        matching = matching.annotate(_v=d.value).filter(_v__isnull=False)
        for group, value in matching.values_list("_g", "_v"):
            if grouped:
                values[(null_key if group is None else group,)].append(round(value, 3))
            values[(TOTAL,)].append(round(value, 3))
        for key, vals in values.items():
            vals.sort()
            out[key][d.name] = Durations(
                count=len(vals),
                mean=_round(sum(vals) / len(vals)),
                median=_round(percentile_cont(vals, 0.5)),
                p90=_round(percentile_cont(vals, 0.9)),
            )
    return out


def _aggregate_postgresql(
    rows: QuerySet, durations: list[_Duration], *, grouped: bool, null_key: object
) -> dict[tuple, dict]:
    # The rows are a subquery kept apart (OFFSET 0): each value and condition is
    # computed once per row, not once per aggregate that reads it.
    values: list = []  # distinct value expressions: several durations may share one
    columns = {}
    for i, d in enumerate(durations):
        if d.value not in values:
            values.append(d.value)
        columns[f"_v{values.index(d.value)}"] = d.value
        if d.when is not None:
            columns[f"_c{i}"] = Case(When(d.when, then=Value(True)), default=Value(False))
    inner = rows.annotate(**columns).values("_g", *columns)
    # Sorted by group inside the subquery: an index in group order (owners' stage
    # time) then feeds the grouping with no sort at all, and within each group the
    # rows come in the order its percentiles sort them.
    inner = inner.order_by("_g") if grouped else inner.order_by()
    sql, params = inner.query.sql_with_params()
    selects = []
    for i, d in enumerate(durations):
        value = f"t._v{values.index(d.value)}"
        when = "" if d.when is None else f"FILTER (WHERE t._c{i})"
        selects += [
            f"count({value}) {when}",
            # In whole microseconds: an exact sum, the same whatever order the rows come in.
            f"avg(round({value} * 1000000)::bigint) {when} / 1000000",
            f"percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY {value}) {when}",
        ]
    if grouped:
        head, grouping = "t._g, GROUPING(t._g)", " GROUP BY GROUPING SETS ((t._g), ())"
    else:  # not even by the constant key: that would sort every row by it
        head, grouping = "NULL, 1", ""
    out: dict[tuple, dict] = defaultdict(dict)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {head}, {', '.join(selects)} FROM ({sql} OFFSET 0) AS t{grouping}", params
        )
        for group, total, *figures in cursor.fetchall():
            key = (TOTAL,) if total else (null_key if group is None else group,)
            for i, d in enumerate(durations):
                count, mean, percentiles = figures[3 * i : 3 * i + 3]
                median, p90 = percentiles or (None, None)
                out[key][d.name] = Durations(
                    count=count, mean=_round(mean), median=_round(median), p90=_round(p90)
                )
    return out


def _analytics_session() -> None:
    """Exact percentiles sort in memory: give this transaction room to do it. The
    queries are short, so compiling them (JIT) would cost more than it saves."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '256MB'")
            cursor.execute("SET LOCAL jit = off")
            cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")


def funnel_report(query: FunnelQuery) -> FunnelReport:
    """Compute every figure of METRICS.md for one funnel, period and slice.

    Its queries are reads. On PostgreSQL, outside a transaction, they run on two
    connections at once (the machine's two cores) that share one snapshot, so
    every figure comes from the same moment; inside a transaction (whose
    uncommitted rows other connections cannot see) and on SQLite, one after
    another.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _funnel_report(query, _run_on_two_connections)
    with transaction.atomic():
        _analytics_session()
        return _funnel_report(query, _run_in_order)


def _run_in_order(jobs: dict[str, Callable]) -> dict[str, object]:
    return {name: job() for name, job in jobs.items()}


def _run_on_two_connections(jobs: dict[str, Callable]) -> dict[str, object]:
    """Two workers, each with its own connection, take the jobs in order (the longest
    first). Both read-only transactions use the snapshot the first one exports, so
    every figure of the report comes from the same moment."""
    queue = list(jobs.items())
    results: dict[str, object] = {}
    state = {"failed": False, "snapshot": None}
    lock = threading.Lock()
    exported, imported = threading.Event(), threading.Event()

    def next_job() -> tuple[str, Callable] | None:
        with lock:
            return None if state["failed"] or not queue else queue.pop(0)

    def work(leader: bool) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                if leader:
                    cursor.execute("SELECT pg_export_snapshot()")
                    state["snapshot"] = cursor.fetchone()[0]
                    exported.set()
                else:
                    exported.wait()
                    if state["snapshot"] is None:
                        return  # the leader failed
                    cursor.execute("SET TRANSACTION SNAPSHOT %s", [state["snapshot"]])
                    imported.set()
                _analytics_session()
                while (item := next_job()) is not None:
                    name, job = item
                    results[name] = job()
                if leader:
                    imported.wait()  # the snapshot lives as long as this transaction
        except BaseException:
            state["failed"] = True
            raise
        finally:
            exported.set()
            if not leader:
                imported.set()
            connection.close()  # this thread's own connection

    with ThreadPoolExecutor(max_workers=2) as pool:
        workers = [pool.submit(work, leader) for leader in (True, False)]
        for worker in workers:
            worker.result()
    return results


class _Cube:
    """Deal counts and amounts per (group, furthest position, status, stage, reason, ...).

    One plain GROUP BY (a hash aggregate) gives a few thousand rows at most; every
    count, sum and conversion of the report is then added up from them. In
    calendar mode one pass serves the deals closed in the period (``_closing``)
    and those that entered in it (``_entering``), and ``open_elsewhere`` adds the
    deals open now that entered outside it, by stage only; in cohort mode all its
    deals entered in the period and both flags are 1.
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
        "_closing",
        "_entering",
    )

    def __init__(
        self,
        rows: QuerySet,
        *,
        window,
        target_seconds: int,
        closing: Q | None,
        entering: Q | None,
        open_elsewhere: QuerySet | None = None,
    ) -> None:
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

        def flag(condition: Q | None):
            if condition is None:
                return Value(1)
            return Case(When(condition, then=Value(1)), default=Value(0))

        self.rows = list(
            rows.annotate(
                _in_window=in_window,
                _response=response,
                _closing=flag(closing),
                _entering=flag(entering),
            )
            .values(*self.KEYS)
            .annotate(n=Count("*"), amount=Sum("amount"))
        )
        if open_elsewhere is not None:
            # Open deals outside the period (calendar mode) count only as open, by
            # stage and amount: read from the open deals' own index, not the table.
            outside = {
                "status": DealStatus.OPEN,
                "reached_position": 0,
                "loss_reason_id": None,
                "is_repeat_client": False,
                "_in_window": 0,
                "_response": 0,
                "_closing": 0,
                "_entering": 0,
            }
            self.rows += [
                outside | row
                for row in open_elsewhere.values("_g", "stage_id").annotate(
                    n=Count("*"), amount=Sum("amount")
                )
            ]
        # Every figure of the report is a sum over some of these rows: one pass adds
        # them all up, per group and in total.
        self.tallies: dict[object, _Tally] = defaultdict(_Tally)
        total = self.tallies[TOTAL]
        for row in self.rows:
            total.add(row)
            if row["_g"] != TOTAL:
                self.tallies[row["_g"]].add(row)


@dataclasses.dataclass
class _Tally:
    """The cube's counts and amounts that the report shows, for one group or in total."""

    reached: dict[int, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    won: int = 0
    won_amount: float = 0.0
    repeat: int = 0
    repeat_amount: float = 0.0
    lost: int = 0
    lost_by_stage: dict[int, dict[int, int]] = dataclasses.field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    open: int = 0
    open_by_stage: dict[int, int] = dataclasses.field(default_factory=lambda: defaultdict(int))
    open_amount_by_stage: dict[int, float] = dataclasses.field(
        default_factory=lambda: defaultdict(float)
    )
    responded: int = 0
    waiting: int = 0
    within_target: int = 0

    def add(self, row: dict) -> None:
        n, status = row["n"], row["status"]
        amount = float(row["amount"] or 0)
        is_open = status in OPEN_STATUSES
        if row["_entering"]:
            # Entered in the period and got as far as this position (step counts).
            self.reached[row["reached_position"]] += n
            if row["_response"]:
                self.responded += n
                self.within_target += n if row["_response"] == 1 else 0
            elif is_open:
                self.waiting += n
        if row["_closing"]:
            if status == DealStatus.WON and row["_in_window"]:
                self.won += n
                self.won_amount += amount
                if row["is_repeat_client"]:
                    self.repeat += n
                    self.repeat_amount += amount
            elif status == DealStatus.LOST:
                self.lost += n
                self.lost_by_stage[row["stage_id"]][row["loss_reason_id"]] += n
        if is_open:
            self.open += n
            self.open_by_stage[row["stage_id"]] += n
            self.open_amount_by_stage[row["stage_id"]] += amount

    def reaching(self, position: int) -> int:
        """Deals that entered in the period and reached ``position``."""
        return sum(n for reached, n in self.reached.items() if reached >= position)


def _funnel_report(query: FunnelQuery, run: Callable) -> FunnelReport:
    funnel = Funnel.objects.get(pk=query.funnel_id)
    stages = list(funnel.stages.order_by("position"))
    period = _Period(query)
    window = datetime.timedelta(days=query.window_days) if query.window_days else None
    cohort = query.mode == Mode.COHORT
    target = funnel.target_response_minutes * 60
    grouped = bool(query.group_by)
    # The raw owner column (stage time, durations) keys unassigned deals as NULL.
    null_key = NO_OWNER if query.group_by == "owner" else None
    # Stage reaches keep none of the deal's fields: look the deal up to group or filter.
    needs_deal = bool(query.group_by or query.filters)
    # Stage time keeps the deal's owner, but no other field of it.
    fields = {field for field, _ in query.filters} | {query.group_by}
    joins_deals = bool(fields - {None, "owner", "team"})

    # No default ordering: it would join the GROUP BY.
    deals = _scoped(Deal.objects.filter(funnel_id=funnel.pk).order_by(), query)
    won_q = Q(status=DealStatus.WON)
    if window is not None:
        won_q &= Q(closed_at__lt=F("created_at") + window)
    closing_q = None if cohort else period.q("closed_at")
    entering_q = None if cohort else period.q("created_at")
    # Funnel length and response time: by owner, each reads its own index of the deals
    # (deals.models), in owner order and sorted by the duration within each owner.
    deals_for_durations = _scoped(
        Deal.objects.filter(funnel_id=funnel.pk).order_by(), query, raw_owner=True
    )
    length = Seconds(F("closed_at"), F("created_at"))
    response = Seconds(F("first_response_at"), F("created_at"))
    measures = {
        # Length to won and to lost over the deals that entered in the period (cohort)
        # or closed in it (calendar).
        "lengths": _Measure(
            Q(status__in=CLOSED_STATUSES) & (period.q("created_at") if cohort else closing_q),
            [
                _Duration("length_won", length, won_q),
                _Duration("length_lost", length, Q(status=DealStatus.LOST)),
            ],
        ),
        # Response time over the deals that entered in the period and were answered.
        "responses": _Measure(
            Q(first_response_at__isnull=False) & period.q("created_at"),
            [_Duration("response", response)],
        ),
    }

    def measure_deals(names: list[str]) -> dict[tuple, dict]:
        """The named duration measures, per group and in total, in one pass over the
        deals: the rows of any of them, each duration counted over its own measure's
        rows (with one measure, its rows are all the rows: no FILTER needed)."""
        chosen = [measures[name] for name in names]
        rows = functools.reduce(operator.or_, (measure.rows for measure in chosen))
        durations = [
            d
            if len(chosen) == 1
            else dataclasses.replace(
                d, when=measure.rows if d.when is None else d.when & measure.rows
            )
            for measure in chosen
            for d in measure.durations
        ]
        return _aggregate(
            deals_for_durations.filter(rows), durations, grouped=grouped, null_key=null_key
        )

    def measure_times(chosen: list) -> dict[tuple, dict]:
        """Time in the chosen stages over finished visits, per group and in total; with
        several stages, one FILTERed percentile each (the rows are never sorted by
        stage first)."""
        visits = _scoped(
            StageTime.objects.filter(
                funnel_id=funnel.pk,
                stage_id__in=[stage.pk for stage in chosen],
                visit_started_at__isnull=True,
                visits__gt=0,
            ),
            query,
            "deal__",
            owner_prefix="",
            raw_owner=True,
        ).filter(period.q("entered_at") if cohort else period.q("last_left_at"))
        if cohort and joins_deals:
            # The same deals (stage time's entry date is its deal's): said again so that
            # the join reads the period's deals, not all of the funnel's.
            visits = visits.filter(period.q("deal__created_at"))
        per_stage = [
            _Duration(
                f"time_{stage.pk}", F("seconds"), Q(stage_id=stage.pk) if len(chosen) > 1 else None
            )
            for stage in chosen
        ]
        return _aggregate(visits, per_stage, grouped=grouped, null_key=null_key)

    def reaches_by_group(parts: list[tuple[int, QuerySet]]) -> dict[tuple, dict]:
        """Signed counts of the given reaches per (group, position). Each row looks its
        deal up by key when the query needs the deal's fields: the rows are few, and a
        join would read every deal of the funnel."""
        counts: dict[tuple, dict] = defaultdict(dict)
        for sign, rows in parts:
            if needs_deal:
                deal = _scoped(Deal.objects.filter(pk=OuterRef("deal_id")).order_by(), query)
                rows = rows.annotate(_g=Subquery(deal.values("_g")[:1]))
            else:
                rows = rows.annotate(_g=Value(TOTAL, output_field=CharField()))
            for row in rows.values("_g", "position").annotate(n=Count("*")).order_by():
                if row["_g"] is None:  # the deal does not match the filters
                    continue
                for key in {row["_g"], TOTAL}:
                    by_position = counts[(key,)]
                    by_position[row["position"]] = (
                        by_position.get(row["position"], 0) + sign * row["n"]
                    )
        return counts

    def late_reaches() -> dict[tuple, dict]:
        """Cohort mode with a conversion window: a deal reached a position within the
        window if it reached it at all (the cube counts those), less the reaches that
        came later. The lag index finds those without reading the others."""
        late = (
            StageReach.objects.filter(funnel_id=funnel.pk)
            .filter(period.q("entered_at"))
            .alias(lag=F("reached_at") - F("entered_at"))
            .filter(lag__gte=window)
        )
        return reaches_by_group([(-1, late)])

    def crossings() -> dict[tuple, dict]:
        """Calendar mode: step counts from the cube's deals that entered in the period.

        Such a deal reached every position up to its ``reached_position`` (the cube
        counts them), less those it reached outside the period; a deal that entered
        outside the period adds those it reached in it. Only these reaches that
        cross the period's edge are read (a reach before the deal's entry is a data
        anomaly, kept in its own small partial index).
        """
        reaches = StageReach.objects.filter(funnel_id=funnel.pk)
        early = Q(reached_at__lt=F("entered_at"))  # before the deal entered: anomalies
        # No deal took longer than this from its entry to a reach (the lag index's
        # last entry): a reach that crosses an edge lies within it of that edge, so
        # only that much of either index is read, not the whole period's.
        longest = reaches.aggregate(lag=Max(F("reached_at") - F("entered_at")))["lag"]
        if longest is None:
            return {}
        # In absolute time: on a local clock, a bound across a daylight-saving change
        # would move by the change and miss reaches.
        start, end = (moment.astimezone(datetime.UTC) for moment in (period.start, period.end))
        return reaches_by_group(
            [
                # Reached in the period by a deal that entered before it.
                (
                    1,
                    reaches.filter(
                        period.q("reached_at"),
                        entered_at__lt=period.start,
                        entered_at__gte=start - longest,
                    ),
                ),
                # Reached after the period by a deal that entered in it.
                (
                    -1,
                    reaches.filter(
                        period.q("entered_at"),
                        reached_at__gte=period.end,
                        reached_at__lt=end + longest,
                    ),
                ),
                # Reached in the period by a deal that entered after it, and reached
                # before the period by a deal that entered in it.
                (1, reaches.filter(early, period.q("reached_at"), entered_at__gte=period.end)),
                (-1, reaches.filter(early, period.q("entered_at"), reached_at__lt=period.start)),
            ]
        )

    def count_cube() -> _Cube:
        if cohort:
            return _Cube(
                deals.filter(period.q("created_at")),
                window=window,
                target_seconds=target,
                closing=None,
                entering=None,
            )
        # The deals closed or entered in the period, and apart from them the deals
        # open now that entered before or after it (those count only as open).
        return _Cube(
            deals.filter(closing_q | entering_q),
            window=window,
            target_seconds=target,
            closing=closing_q,
            entering=entering_q,
            open_elsewhere=deals.filter(status__in=OPEN_STATUSES).exclude(entering_q),
        )

    # The longest first, about: each connection takes the next job when it is free.
    # Stage time keeps the owner: unless the query needs other deal fields (a join
    # that each query would repeat), time in stage is a query per stage, reading only
    # that stage's part of the index, and these small jobs even out the two
    # connections' loads (the first stages hold the most visits).
    jobs: dict[str, Callable] = {}
    if joins_deals:  # one long job: it goes first
        times = {"times": functools.partial(measure_times, stages)}
        jobs |= times
    else:  # small jobs: they go last and fill the gaps
        times = {f"times_{s.pk}": functools.partial(measure_times, [s]) for s in stages}
    jobs["cube"] = count_cube
    if query.group_by == "owner":  # two indexes, each in owner order
        jobs |= {name: functools.partial(measure_deals, [name]) for name in measures}
    else:  # one pass over the deals
        jobs["lengths"] = functools.partial(measure_deals, list(measures))
    if not cohort:
        jobs["reaches"] = crossings
    elif window is not None:
        jobs["reaches"] = late_reaches
    jobs |= times  # in place already when it went first
    results = run(jobs)
    cube = results["cube"]
    # Changes to the step counts of the cube's deals (calendar mode, conversion window).
    reach_changes = results.get("reaches", {})
    durations: dict[tuple, dict] = defaultdict(dict)
    for name in ("lengths", "responses", *times):
        _merge(durations, results.get(name, {}))

    reasons = dict(LossReason.objects.filter(funnel=funnel).values_list("pk", "name"))

    def lost_by_reason(tally: _Tally, stage) -> dict[str, int]:
        by_reason: dict[str, int] = defaultdict(int)
        for reason_id, n in tally.lost_by_stage.get(stage.pk, {}).items():
            by_reason[reasons.get(reason_id, "")] += n
        return dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))

    def figures(key: str) -> FunnelFigures:
        tally = cube.tallies.get(key) or _Tally()
        changes = reach_changes.get((key,), {})
        step_counts = [
            tally.reaching(stage.position) + changes.get(stage.position, 0) for stage in stages
        ]
        won_count = tally.won
        entered = step_counts[0] if step_counts else 0
        steps: list[Step] = []
        previous = None
        for stage, count in zip(stages, step_counts, strict=True):
            by_reason = lost_by_reason(tally, stage)
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
                    open=tally.open_by_stage.get(stage.pk, 0),
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
        won_amount = tally.won_amount
        repeat = Money(count=tally.repeat, amount=tally.repeat_amount)
        weighted = sum(
            tally.open_amount_by_stage.get(stage.pk, 0.0) * stage.probability / 100
            for stage in stages
        )
        row = durations.get((key,), {})
        return FunnelFigures(
            entered=entered,
            steps=steps,
            overall_conversion=_ratio(won_count, entered),
            won=Money(count=won_count, amount=won_amount),
            average_check=_round(_ratio(won_amount, won_count), 2),
            first_sales=Money(count=won_count - repeat.count, amount=won_amount - repeat.amount),
            repeat_sales=repeat,
            lost_total=tally.lost,
            open_total=tally.open,
            weighted_pipeline=round(weighted, 2),
            length_to_won=row.get("length_won", Durations()),
            length_to_lost=row.get("length_lost", Durations()),
            response=Response(
                responded=tally.responded,
                waiting=tally.waiting,
                median=row.get("response", Durations()).median,
                within_target_share=_ratio(tally.within_target, tally.responded),
                target_seconds=target,
            ),
        )

    if query.group_by:
        keys = (set(cube.tallies) | {key for (key,) in reach_changes}) - {TOTAL}
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
        labels = {value: str(label) for value, label in Temperature.choices}
    else:
        labels = {}
    return {k: (k, labels.get(k) or k or _("Not set")) for k in keys}
