"""The typed query that goes into the funnel engine and the typed report that comes out.

Every figure is defined in METRICS.md; fractions are 0..1, durations seconds.
"""

import dataclasses
import datetime
from enum import StrEnum

from django.utils.translation import gettext as _

from crm.errors import InvalidInput


class Mode(StrEnum):
    COHORT = "cohort"  # population: deals that entered in the period (true conversion)
    CALENDAR = "calendar"  # events in the period; mixes cohorts


# What a report can be grouped and filtered by (METRICS.md, "Slices").
GROUP_FIELDS = ("owner", "team", "source", "product", "region", "client_type", "temperature")
FILTER_FIELDS = GROUP_FIELDS
CLIENT_TYPES = ("first", "repeat")


@dataclasses.dataclass(frozen=True)
class FunnelQuery:
    funnel_id: int
    date_from: datetime.date
    date_to: datetime.date  # inclusive: the period is [date_from 00:00, date_to + 1 day 00:00)
    mode: Mode = Mode.COHORT
    window_days: int | None = None
    group_by: str | None = None
    # ((field, (value, ...)), ...): a deal matches when its field has any of the values.
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        errors = {}
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
        except ValueError:
            errors["mode"] = _("Choose cohort or calendar.")
        if self.date_from > self.date_to:
            errors["date_from"] = _("The period starts after it ends.")
        if self.window_days is not None and self.window_days < 1:
            errors["window_days"] = _("The conversion window is a whole number of days, 1 or more.")
        if self.group_by not in (None, "", *GROUP_FIELDS):
            errors["group_by"] = _("Group by one of: %(fields)s.") % {
                "fields": ", ".join(GROUP_FIELDS)
            }
        for field, values in self.filters:
            if field not in FILTER_FIELDS:
                errors["filters"] = _("Filter by one of: %(fields)s.") % {
                    "fields": ", ".join(FILTER_FIELDS)
                }
            elif field == "client_type" and set(values) - set(CLIENT_TYPES):
                errors["filters"] = _("Client type is first or repeat.")
        if errors:
            raise InvalidInput(_("The report's parameters are invalid."), fields=errors)
        if self.group_by == "":
            object.__setattr__(self, "group_by", None)

    @classmethod
    def build(cls, *, filters: dict[str, list[str]] | None = None, **values) -> "FunnelQuery":
        """Build from plain values, with filters as a dict (order-independent)."""
        normalized = tuple(
            sorted(
                (field, tuple(sorted(set(map(str, vals)))))
                for field, vals in (filters or {}).items()
            )
        )
        return cls(filters=normalized, **values)

    def filters_dict(self) -> dict[str, list[str]]:
        return {field: list(values) for field, values in self.filters}

    def to_dict(self) -> dict:
        return {
            "funnel_id": self.funnel_id,
            "date_from": self.date_from.isoformat(),
            "date_to": self.date_to.isoformat(),
            "mode": str(self.mode),
            "window_days": self.window_days,
            "group_by": self.group_by,
            "filters": self.filters_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FunnelQuery":
        return cls.build(
            funnel_id=data["funnel_id"],
            date_from=datetime.date.fromisoformat(data["date_from"]),
            date_to=datetime.date.fromisoformat(data["date_to"]),
            mode=Mode(data.get("mode", Mode.COHORT)),
            window_days=data.get("window_days"),
            group_by=data.get("group_by"),
            filters=data.get("filters") or {},
        )


@dataclasses.dataclass
class Durations:
    count: int = 0
    mean: float | None = None
    median: float | None = None
    p90: float | None = None


@dataclasses.dataclass
class Step:
    name: str
    stage_id: int | None  # None for the Won step
    count: int
    step_conversion: float | None  # c_k / c_(k-1); None for the first step
    conversion_from_first: float | None  # c_k / c_1
    drop_off: int | None  # c_(k-1) - c_k
    drop_off_share: float | None
    target_conversion: float | None = None  # the stage's target, as a fraction
    lost: int = 0
    lost_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    open: int = 0
    time_in_stage: Durations | None = None


@dataclasses.dataclass
class Money:
    count: int = 0
    amount: float = 0.0


@dataclasses.dataclass
class Response:
    responded: int = 0
    waiting: int = 0  # new leads nobody has acted on yet
    median: float | None = None
    within_target_share: float | None = None
    target_seconds: int = 0


@dataclasses.dataclass
class FunnelFigures:
    entered: int
    steps: list[Step]
    overall_conversion: float | None
    won: Money
    average_check: float | None
    first_sales: Money
    repeat_sales: Money
    lost_total: int
    open_total: int
    weighted_pipeline: float
    length_to_won: Durations
    length_to_lost: Durations
    response: Response


@dataclasses.dataclass
class Group:
    key: str
    label: str
    figures: FunnelFigures


@dataclasses.dataclass
class FunnelReport:
    query: FunnelQuery
    funnel: str
    currency: str
    totals: FunnelFigures
    groups: list[Group]
    computed_at: datetime.datetime

    def to_dict(self) -> dict:
        """Plain JSON-ready data: the shape of ``funnel_report --format json`` and the API."""
        totals = dataclasses.asdict(self.totals)
        return {
            "funnel": self.funnel,
            "currency": self.currency,
            "computed_at": self.computed_at.isoformat(),
            "query": self.query.to_dict(),
            **totals,
            "groups": [
                {"key": g.key, "label": g.label, **dataclasses.asdict(g.figures)}
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FunnelReport":
        """Rebuild a typed report from ``to_dict()`` (a stored snapshot)."""

        def durations(value: dict | None) -> Durations | None:
            return None if value is None else Durations(**value)

        def figures(value: dict) -> FunnelFigures:
            steps = [
                Step(**{**step, "time_in_stage": durations(step.get("time_in_stage"))})
                for step in value["steps"]
            ]
            return FunnelFigures(
                entered=value["entered"],
                steps=steps,
                overall_conversion=value["overall_conversion"],
                won=Money(**value["won"]),
                average_check=value["average_check"],
                first_sales=Money(**value["first_sales"]),
                repeat_sales=Money(**value["repeat_sales"]),
                lost_total=value["lost_total"],
                open_total=value["open_total"],
                weighted_pipeline=value["weighted_pipeline"],
                length_to_won=Durations(**value["length_to_won"]),
                length_to_lost=Durations(**value["length_to_lost"]),
                response=Response(**value["response"]),
            )

        return cls(
            query=FunnelQuery.from_dict(data["query"]),
            funnel=data["funnel"],
            currency=data["currency"],
            totals=figures(data),
            groups=[
                Group(key=group["key"], label=group["label"], figures=figures(group))
                for group in data["groups"]
            ],
            computed_at=datetime.datetime.fromisoformat(data["computed_at"]),
        )
