"""The dashboard's figures and tables, made from the typed funnel report.

The engine returns data (``analytics.types``); this module turns it into
Plotly figures (as plain JSON-ready dicts) and display tables; the templates
only lay them out. Colours are the Okabe–Ito palette, safe for colour-blind
readers; every label goes through gettext.
"""

import dataclasses
import functools
import json
import textwrap
from collections.abc import Sequence

import plotly.graph_objects as go
from django.utils.formats import get_format, number_format
from django.utils.translation import gettext as _

from analytics.periods import Period
from analytics.stats import Bottleneck, Projection, StepDifference, step_differences
from analytics.types import (
    Durations,
    FunnelFigures,
    FunnelReport,
    Step,
)

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",  # black
)
BLUE, ORANGE, GREEN, PURPLE, SKY, VERMILLION, YELLOW, BLACK = OKABE_ITO
CONFIG = {"displaylogo": False, "responsive": True}
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}


# ------------------------------------------------------------ formatting


def percent(fraction: float | None, digits: int = 1) -> str:
    if fraction is None:
        return "—"
    return f"{number_format(round(fraction * 100, digits), digits)} %"


def count(value: float | None) -> str:
    if value is None:
        return "—"
    return number_format(round(value), 0, force_grouping=True)


def money(amount: float | None, currency: str) -> str:
    if amount is None:
        return "—"
    return f"{number_format(round(amount, 2), 0, force_grouping=True)} {currency}"


def human_duration(seconds: float | None) -> str:
    """``3 d 4 h``, ``5 h 20 min``, ``12 min``, ``40 s``: two units at most."""
    if seconds is None:
        return "—"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return _("%(days)d d %(hours)d h") % {"days": days, "hours": hours}
    if hours:
        return _("%(hours)d h %(minutes)d min") % {"hours": hours, "minutes": minutes}
    if minutes:
        return _("%(minutes)d min") % {"minutes": minutes}
    return _("%(seconds)d s") % {"seconds": secs}


def below_target(step: Step) -> bool:
    return (
        step.target_conversion is not None
        and step.step_conversion is not None
        and step.step_conversion < step.target_conversion
    )


def bottleneck_sentence(bottleneck: Bottleneck) -> str:
    """``Offer → Invoice fell from 69.0 % to 41.0 % this period`` and the like."""
    values = {
        "from_step": bottleneck.from_name,
        "to_step": bottleneck.to_name,
        "previous": percent(bottleneck.previous),
        "current": percent(bottleneck.current),
        "target": percent(bottleneck.target),
    }
    if bottleneck.fell and bottleneck.below_target:
        return (
            _(
                "%(from_step)s → %(to_step)s fell from %(previous)s to %(current)s "
                "this period, below its target of %(target)s"
            )
            % values
        )
    if bottleneck.fell:
        return _(
            "%(from_step)s → %(to_step)s fell from %(previous)s to %(current)s this period"
        ) % (values)
    return _("%(from_step)s → %(to_step)s is at %(current)s, below its target of %(target)s") % (
        values
    )


def wrap(text: str, width: int = 22) -> str:
    """Long stage names over several lines (Plotly breaks lines only at ``<br>``)."""
    return "<br>".join(textwrap.wrap(text, width)) or text


# A Plotly figure as plain data, ``{"data": [trace, ...], "layout": {...}}``, exactly what
# ``plotly.graph_objects.Figure.to_json()`` gives for it. Built as dicts: the graph
# objects validate every property, some 20 ms a chart, and a dashboard page draws six.
Figure = dict


def figure_json(figure: Figure) -> dict:
    """The figure for ``json_script`` and ``Plotly.newPlot``."""
    return {**figure, "config": CONFIG}


@functools.cache
def _template() -> dict:
    """Plotly's default theme, as its figures carry it (computed once per process)."""
    return json.loads(go.Figure().to_json())["layout"]["template"]


def _figure(traces: list[dict], title: str, **layout) -> Figure:
    return {
        "data": traces,
        "layout": {
            "template": _template(),
            "title": {"text": title, "x": 0, "font": {"size": 15}},
            "font": FONT,
            "margin": {"l": 10, "r": 10, "t": 48, "b": 10},
            "paper_bgcolor": "#ffffff",
            "plot_bgcolor": "#ffffff",
            "colorway": list(OKABE_ITO),
            "legend": {"orientation": "h", "y": -0.2},
            "separators": get_format("DECIMAL_SEPARATOR") + get_format("THOUSAND_SEPARATOR"),
            **layout,
        },
    }


# ------------------------------------------------------------ tables


@dataclasses.dataclass
class Cell:
    text: str
    value: object = None  # the raw value for CSV; defaults to the text
    style: str = ""
    css_class: str = ""
    title: str = ""

    def __post_init__(self) -> None:
        if self.value is None:
            self.value = "" if self.text == "—" else self.text


@dataclasses.dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]

    def csv_rows(self) -> list[list[object]]:
        return [self.header, *([cell.value for cell in row] for row in self.rows)]


def _csv_percent(fraction: float | None) -> object:
    return "" if fraction is None else round(fraction * 100, 1)


def _csv_seconds(seconds: float | None) -> object:
    return "" if seconds is None else round(seconds)


def conversion_table(figures: FunnelFigures) -> Table:
    """One row per step: the METRICS.md per-step figures.

    CSV values: counts as integers, conversions and shares in percent with one
    decimal, times in seconds, lost reasons as ``reason: n; …``.
    """
    header = [
        _("Step"),
        _("Count"),
        _("Step conversion, %"),
        _("From first, %"),
        _("Drop-off"),
        _("Drop-off, %"),
        _("Target, %"),
        _("Lost"),
        _("Lost by reason"),
        _("Open"),
        _("Median time in stage, s"),
        _("P90 time in stage, s"),
    ]
    rows = []
    for step in figures.steps:
        times = step.time_in_stage or Durations()
        reasons = "; ".join(
            f"{reason or _('No reason')}: {n}" for reason, n in step.lost_by_reason.items()
        )
        low = below_target(step)
        rows.append(
            [
                Cell(step.name, css_class="below-target" if low else ""),
                Cell(count(step.count), step.count),
                Cell(
                    percent(step.step_conversion) + (" ▼" if low else ""),
                    _csv_percent(step.step_conversion),
                    css_class="below-target" if low else "",
                    title=_("Below the target of %(target)s")
                    % {"target": percent(step.target_conversion)}
                    if low
                    else "",
                ),
                Cell(percent(step.conversion_from_first), _csv_percent(step.conversion_from_first)),
                Cell(count(step.drop_off), "" if step.drop_off is None else step.drop_off),
                Cell(percent(step.drop_off_share), _csv_percent(step.drop_off_share)),
                Cell(percent(step.target_conversion), _csv_percent(step.target_conversion)),
                Cell(count(step.lost), step.lost),
                Cell(reasons or "—", reasons, css_class="reasons"),
                Cell(count(step.open), step.open),
                Cell(human_duration(times.median), _csv_seconds(times.median)),
                Cell(human_duration(times.p90), _csv_seconds(times.p90)),
            ]
        )
    return Table(header=header, rows=rows)


def _heat(fraction: float | None) -> str:
    """A single-hue (Okabe–Ito blue) scale: readable without telling hues apart."""
    if fraction is None:
        return ""
    alpha = 0.08 + 0.72 * max(0.0, min(1.0, fraction))
    text = "#ffffff" if alpha > 0.5 else "#1d2330"
    return f"background: rgba(0, 114, 178, {alpha:.2f}); color: {text};"


def manager_differences(report: FunnelReport) -> dict[tuple[str, int], StepDifference]:
    """(owner key, step index) -> the test of his step conversion against the rest."""
    # Unassigned deals ("" key) are nobody's performance: neither tested nor in "the rest".
    counts = {
        group.key: [s.count for s in group.figures.steps] for group in report.groups if group.key
    }
    if len(counts) < 2:
        return {}
    return {(d.member, d.step): d for d in step_differences(counts)}


def managers_table(report: FunnelReport) -> Table:
    """Per-manager entered, step conversions (heat scale) and won; significant
    differences from the rest of the team (95 %) marked ▲ / ▼."""
    steps = report.totals.steps
    header = [
        _("Manager"),
        _("Entered"),
        *(f"{steps[k - 1].name} → {steps[k].name}" for k in range(1, len(steps))),
        _("Overall"),
        _("Won"),
        _("Won amount"),
    ]
    differences = manager_differences(report)
    rows = []
    for group in report.groups:
        figures = group.figures
        cells = [Cell(group.label, group.key or ""), Cell(count(figures.entered), figures.entered)]
        for k in range(1, len(figures.steps)):
            step = figures.steps[k]
            difference = differences.get((group.key, k))
            text, css_class, title = percent(step.step_conversion), "", ""
            if difference is not None and difference.test.significant:
                higher = difference.own > difference.rest
                text += " ▲" if higher else " ▼"
                css_class = "outlier-high" if higher else "outlier-low"
                title = _("%(own)s against %(rest)s for the rest of the team (p = %(p)s)") % {
                    "own": percent(difference.own),
                    "rest": percent(difference.rest),
                    "p": f"{difference.test.p_value:.3f}",
                }
            cells.append(
                Cell(
                    text,
                    _csv_percent(step.step_conversion),
                    style=_heat(step.step_conversion),
                    css_class=css_class,
                    title=title,
                )
            )
        cells += [
            Cell(percent(figures.overall_conversion), _csv_percent(figures.overall_conversion)),
            Cell(count(figures.won.count), figures.won.count),
            Cell(money(figures.won.amount, report.currency), figures.won.amount),
        ]
        rows.append(cells)
    return Table(header=header, rows=rows)


# ------------------------------------------------------------ figures


def funnel_figure(figures: FunnelFigures) -> Figure:
    """Count per step with % of previous and % of first; steps below target in vermillion."""
    names, labels, colours = [], [], []
    for index, step in enumerate(figures.steps):
        low = below_target(step)
        names.append(wrap(step.name + (" ▼" if low else "")))
        if index == 0:
            labels.append(count(step.count))
        else:
            labels.append(
                _("%(count)s · %(previous)s of previous · %(first)s of first")
                % {
                    "count": count(step.count),
                    "previous": percent(step.step_conversion),
                    "first": percent(step.conversion_from_first),
                }
            )
        if step.stage_id is None:
            colours.append(GREEN)
        else:
            colours.append(VERMILLION if low else BLUE)
    trace = {
        "type": "funnel",
        "y": names,
        "x": [step.count for step in figures.steps],
        "text": labels,
        "textinfo": "text",
        "textposition": "outside",
        "textfont": {"color": "#1d2330"},
        "cliponaxis": False,
        "marker": {"color": colours},
        "connector": {"line": {"color": "#9ca3af", "width": 1}},
        "hovertemplate": "%{y}: %{text}<extra></extra>",
    }
    return _figure(
        [trace],
        _("Funnel"),
        height=80 + 56 * len(figures.steps),
        margin={"l": 10, "r": 260, "t": 48, "b": 10},
    )


def managers_figure(report: FunnelReport) -> Figure:
    steps = report.totals.steps
    transitions = [wrap(f"→ {steps[k].name}", 18) for k in range(1, len(steps))]
    bars = [
        {
            "type": "bar",
            "name": group.label,
            "x": transitions,
            "y": [
                None if s.step_conversion is None else round(s.step_conversion * 100, 1)
                for s in group.figures.steps[1:]
            ],
            "marker": {"color": OKABE_ITO[index % len(OKABE_ITO)]},
            "hovertemplate": "%{x}: %{y} %<extra>" + group.label + "</extra>",
        }
        for index, group in enumerate(report.groups)
    ]
    return _figure(
        bars,
        _("Step conversion by manager"),
        barmode="group",
        yaxis={"title": {"text": _("Step conversion, %")}, "rangemode": "tozero"},
        xaxis={"tickangle": 0},
        height=400,
    )


def loss_figure(figures: FunnelFigures) -> Figure:
    """Deals lost at each stage, stacked by loss reason."""
    stages = [step for step in figures.steps if step.stage_id is not None]
    reasons: list[str] = []
    for step in stages:
        for reason in step.lost_by_reason:
            if reason not in reasons:
                reasons.append(reason)
    bars = [
        {
            "type": "bar",
            "name": reason or _("No reason"),
            "x": [wrap(step.name, 11) for step in stages],
            "y": [step.lost_by_reason.get(reason, 0) for step in stages],
            "marker": {"color": OKABE_ITO[index % len(OKABE_ITO)]},
        }
        for index, reason in enumerate(reasons)
    ]
    return _figure(
        bars,
        _("Lost deals by stage and reason"),
        barmode="stack",
        yaxis={"title": {"text": _("Deals lost")}, "rangemode": "tozero"},
        xaxis={"tickangle": 0},
        height=420,
    )


@dataclasses.dataclass
class TrendPoint:
    period: Period
    figures: FunnelFigures | None  # None while its snapshot is being computed


def trend_figure(points: Sequence[TrendPoint]) -> Figure:
    """Entered and won per week (bars), overall conversion (line, right axis)."""
    weeks = [point.period.date_from.isoformat() for point in points]

    def series(value):
        return [None if p.figures is None else value(p.figures) for p in points]

    traces = [
        {
            "type": "bar",
            "name": _("Entered"),
            "x": weeks,
            "y": series(lambda f: f.entered),
            "marker": {"color": SKY},
        },
        {
            "type": "bar",
            "name": _("Won"),
            "x": weeks,
            "y": series(lambda f: f.won.count),
            "marker": {"color": GREEN},
        },
        {
            "type": "scatter",
            "name": _("Overall conversion, %"),
            "x": weeks,
            "y": series(
                lambda f: (
                    None if f.overall_conversion is None else round(f.overall_conversion * 100, 1)
                )
            ),
            "mode": "lines+markers",
            "line": {"color": ORANGE, "width": 3},
            "yaxis": "y2",
        },
    ]
    return _figure(
        traces,
        _("Last 12 weeks"),
        barmode="group",
        xaxis={"title": {"text": _("Week starting")}, "type": "category"},
        yaxis={"title": {"text": _("Deals")}, "rangemode": "tozero"},
        yaxis2={
            "title": {"text": _("Overall conversion, %")},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "showgrid": False,
        },
        height=360,
    )


def projection_table(figures: FunnelFigures, projection: Projection, currency: str) -> Table:
    header = [_("Step"), _("Now"), _("Projected")]
    rows = [
        [Cell(step.name), Cell(count(step.count), step.count), Cell(count(value), round(value, 1))]
        for step, value in zip(figures.steps, projection.counts, strict=True)
    ]
    rows.append(
        [
            Cell(_("Revenue")),
            Cell(money(figures.won.amount, currency), figures.won.amount),
            Cell(money(projection.revenue, currency), round(projection.revenue, 2)),
        ]
    )
    return Table(header=header, rows=rows)


# ------------------------------------------------------------ managers: response, won, losses


def response_table(report: FunnelReport) -> Table:
    """Per manager: median first response, the share answered within the funnel's
    target (marked ▼ when the median itself misses the target), won count and amount."""
    header = [
        _("Manager"),
        _("Median response"),
        _("Within target, %"),
        _("Won"),
        _("Won amount"),
    ]
    target = report.totals.response.target_seconds
    rows = []
    for group in report.groups:
        figures = group.figures
        response = figures.response
        slow = bool(target) and response.median is not None and response.median > target
        rows.append(
            [
                Cell(group.label, group.key or ""),
                Cell(
                    human_duration(response.median) + (" ▼" if slow else ""),
                    _csv_seconds(response.median),
                    css_class="below-target" if slow else "",
                    title=_("Slower than the target of %(target)s")
                    % {"target": human_duration(target)}
                    if slow
                    else "",
                ),
                Cell(
                    percent(response.within_target_share),
                    _csv_percent(response.within_target_share),
                    style=_heat(response.within_target_share),
                ),
                Cell(count(figures.won.count), figures.won.count),
                Cell(money(figures.won.amount, report.currency), figures.won.amount),
            ]
        )
    return Table(header=header, rows=rows)


def response_figure(report: FunnelReport) -> Figure:
    """Median response per manager in minutes (bars) against the target (dashed line)."""
    target = report.totals.response.target_seconds
    labels = [group.label for group in report.groups]
    medians = [
        None if g.figures.response.median is None else round(g.figures.response.median / 60, 1)
        for g in report.groups
    ]
    colours = [
        VERMILLION if target and value is not None and value * 60 > target else BLUE
        for value in medians
    ]
    traces = [
        {
            "type": "bar",
            "name": _("Median response, min"),
            "x": labels,
            "y": medians,
            "marker": {"color": colours},
            "hovertemplate": "%{x}: %{y}<extra></extra>",
        }
    ]
    if target:
        traces.append(
            {
                "type": "scatter",
                "name": _("Target, min"),
                "x": labels,
                "y": [round(target / 60, 1)] * len(labels),
                "mode": "lines",
                "line": {"color": BLACK, "dash": "dash", "width": 2},
            }
        )
    return _figure(
        traces,
        _("Response time by manager"),
        yaxis={"title": {"text": _("Median response, min")}, "rangemode": "tozero"},
        xaxis={"type": "category"},
        height=320,
    )


def loss_reasons_by_manager_table(report: FunnelReport) -> Table:
    """Manager × loss reason: deals lost, summed over the stages, most frequent reason first."""
    per_group: list[dict[str, int]] = []
    totals: dict[str, int] = {}
    for group in report.groups:
        lost: dict[str, int] = {}
        for step in group.figures.steps:
            for reason, n in step.lost_by_reason.items():
                lost[reason] = lost.get(reason, 0) + n
                totals[reason] = totals.get(reason, 0) + n
        per_group.append(lost)
    reasons = sorted(totals, key=lambda reason: (-totals[reason], reason))
    header = [_("Manager"), *(reason or _("No reason") for reason in reasons), _("Total")]
    rows = []
    for group, lost in zip(report.groups, per_group, strict=True):
        if not lost:
            continue
        rows.append(
            [
                Cell(group.label, group.key or ""),
                *(Cell(count(lost.get(reason, 0)), lost.get(reason, 0)) for reason in reasons),
                Cell(count(sum(lost.values())), sum(lost.values())),
            ]
        )
    return Table(header=header, rows=rows)


# ------------------------------------------------------------ time


def time_table(figures: FunnelFigures) -> Table:
    """Median and p90 time in each stage, then the funnel's length to won and to lost."""
    header = [_("Stage"), _("Median"), _("P90"), _("Deals measured")]

    def row(name: str, times: Durations) -> list[Cell]:
        return [
            Cell(name),
            Cell(human_duration(times.median), _csv_seconds(times.median)),
            Cell(human_duration(times.p90), _csv_seconds(times.p90)),
            Cell(count(times.count), times.count),
        ]

    rows = [
        row(step.name, step.time_in_stage or Durations())
        for step in figures.steps
        if step.stage_id is not None
    ]
    rows.append(row(_("Funnel length to won"), figures.length_to_won))
    rows.append(row(_("Funnel length to lost"), figures.length_to_lost))
    return Table(header=header, rows=rows)


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600, 1)


def time_figure(figures: FunnelFigures) -> Figure:
    """Median time per stage and to won / lost (bars, hours), the p90 as an error bar above."""
    names, medians, spreads = [], [], []
    rows = [
        (step.name, step.time_in_stage or Durations())
        for step in figures.steps
        if step.stage_id is not None
    ]
    rows += [
        (_("To won"), figures.length_to_won),
        (_("To lost"), figures.length_to_lost),
    ]
    for name, times in rows:
        names.append(wrap(name, 11))
        medians.append(_hours(times.median))
        spreads.append(
            None
            if times.median is None or times.p90 is None
            else round(_hours(times.p90) - _hours(times.median), 1)
        )
    colours = [BLUE] * (len(rows) - 2) + [GREEN, VERMILLION]
    bar = {
        "type": "bar",
        "name": _("Median, h"),
        "x": names,
        "y": medians,
        "marker": {"color": colours},
        "error_y": {
            "type": "data",
            "symmetric": False,
            "array": spreads,
            "arrayminus": [0] * len(spreads),
            "color": BLACK,
        },
        "hovertemplate": "%{x}: %{y} h<extra></extra>",
    }
    return _figure(
        [bar],
        _("Time in stage and funnel length (median; whisker to p90)"),
        yaxis={"title": {"text": _("Hours")}, "rangemode": "tozero"},
        xaxis={"tickangle": 0, "type": "category"},
        height=360,
    )


# ------------------------------------------------------------ slices


def slice_figure(report: FunnelReport, title: str) -> Figure:
    """One bar per slice value at each step: conversion from the first step, %."""
    steps = report.totals.steps[1:]
    names = [wrap(step.name, 11) for step in steps]
    bars = []
    for index, group in enumerate(report.groups):
        label = group.label or _("Not set")
        bars.append(
            {
                "type": "bar",
                "name": label,
                "x": names,
                "y": [
                    None
                    if s.conversion_from_first is None
                    else round(s.conversion_from_first * 100, 1)
                    for s in group.figures.steps[1:]
                ],
                "marker": {"color": OKABE_ITO[index % len(OKABE_ITO)]},
                "hovertemplate": "%{x}: %{y} %<extra>" + label + "</extra>",
            }
        )
    return _figure(
        bars,
        title,
        barmode="group",
        yaxis={"title": {"text": _("From first, %")}, "rangemode": "tozero"},
        xaxis={"tickangle": 0, "type": "category"},
        height=320,
    )
