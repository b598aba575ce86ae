"""The standard periods every active funnel keeps snapshots of: the dashboard's presets,
the periods of equal length just before them (its bottlenecks compare with those), and
the weeks of its trend."""

import dataclasses
import datetime

from analytics.types import Mode


@dataclasses.dataclass(frozen=True)
class Period:
    name: str  # this_week, last_month, week:2026-11-16, ...
    date_from: datetime.date
    date_to: datetime.date  # inclusive
    current: bool  # contains today: refreshed every 15 minutes, the rest nightly


def _quarter_start(day: datetime.date) -> datetime.date:
    return datetime.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def _months_back(day: datetime.date, months: int) -> datetime.date:
    index = day.year * 12 + day.month - 1 - months
    return datetime.date(index // 12, index % 12 + 1, 1)


def standard_periods(today: datetime.date) -> list[Period]:
    """This and last week, month and quarter (weeks start on Monday)."""
    week = today - datetime.timedelta(days=today.weekday())
    month = today.replace(day=1)
    quarter = _quarter_start(today)
    last_quarter = _months_back(quarter, 3)
    day = datetime.timedelta(days=1)
    return [
        Period("this_week", week, today, True),
        Period("last_week", week - 7 * day, week - day, False),
        Period("this_month", month, today, True),
        Period("last_month", _months_back(month, 1), month - day, False),
        Period("this_quarter", quarter, today, True),
        Period("last_quarter", last_quarter, quarter - day, False),
    ]


def period_before(
    date_from: datetime.date, date_to: datetime.date
) -> tuple[datetime.date, datetime.date]:
    """First and last day of the period of equal length that ends the day before ``date_from``."""
    length = date_to - date_from + datetime.timedelta(days=1)
    return date_from - length, date_to - length


def trend_weeks(today: datetime.date, weeks: int = 12) -> list[Period]:
    """The last ``weeks`` weeks, Monday to Sunday, oldest first; the current one is partial."""
    monday = today - datetime.timedelta(days=today.weekday())
    periods = []
    for back in range(weeks - 1, -1, -1):
        start = monday - datetime.timedelta(weeks=back)
        end = min(start + datetime.timedelta(days=6), today)
        periods.append(Period(f"week:{start.isoformat()}", start, end, back == 0))
    return periods


LAST_12_WEEKS = "last_12_weeks"


def dashboard_periods(today: datetime.date) -> list[Period]:
    """The dashboard's preset periods: the standard ones and the trend's 12 weeks as one."""
    weeks = trend_weeks(today)
    return [
        *standard_periods(today),
        Period(LAST_12_WEEKS, weeks[0].date_from, weeks[-1].date_to, True),
    ]


@dataclasses.dataclass(frozen=True)
class SnapshotSpec:
    label: str
    period: Period
    mode: Mode
    group_by: str | None


def snapshot_specs(today: datetime.date, *, current_only: bool = False) -> list[SnapshotSpec]:
    """What the dashboard reads for its presets: each preset period in both modes, overall
    and by manager, the period of equal length before it (overall), and the 12-week trend
    in both modes."""
    specs = []
    for period in dashboard_periods(today):
        for mode in Mode:
            for group_by in (None, "owner"):
                label = f"{period.name}:{mode}" + (f":{group_by}" if group_by else "")
                specs.append(SnapshotSpec(label, period, mode, group_by))
            before = Period(
                f"{period.name}:previous", *period_before(period.date_from, period.date_to), False
            )
            specs.append(SnapshotSpec(f"{before.name}:{mode}", before, mode, None))
    for period in trend_weeks(today):
        for mode in Mode:
            specs.append(SnapshotSpec(f"{period.name}:{mode}", period, mode, None))
    if current_only:
        specs = [spec for spec in specs if spec.period.current]
    return specs
