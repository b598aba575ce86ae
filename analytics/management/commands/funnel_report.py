"""manage.py funnel_report: the dashboard's figures, for scripts and for checking."""

import csv
import datetime
import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from analytics.engine import funnel_report
from analytics.types import GROUP_FIELDS, FunnelFigures, FunnelQuery, Mode
from crm.errors import DomainError
from funnels.models import Funnel


def _date(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"“{value}” is not a date: use YYYY-MM-DD.") from None


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _hours(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 3600:.1f} h"


class Command(BaseCommand):
    help = "Print a funnel report (every figure of METRICS.md) as JSON, a table or CSV."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--funnel", required=True, help="The funnel's name.")
        parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.COHORT)
        parser.add_argument(
            "--from",
            dest="date_from",
            help="First day, YYYY-MM-DD (default: 365 days before --to).",
        )
        parser.add_argument("--to", dest="date_to", help="Last day, inclusive (default: today).")
        parser.add_argument("--window", type=int, help="Conversion window in days (cohort mode).")
        parser.add_argument("--group-by", choices=GROUP_FIELDS)
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help=f"Keep deals whose FIELD is VALUE; repeatable. Fields: {', '.join(GROUP_FIELDS)}.",
        )
        parser.add_argument("--format", choices=["json", "table", "csv"], default="json")

    def handle(self, *args, **options) -> None:
        try:
            funnel = Funnel.objects.get(name=options["funnel"])
        except Funnel.DoesNotExist:
            names = ", ".join(Funnel.objects.values_list("name", flat=True)) or "none yet"
            raise CommandError(
                f"No funnel named “{options['funnel']}”. Funnels: {names}."
            ) from None
        date_to = _date(options["date_to"]) if options["date_to"] else timezone.localdate()
        date_from = (
            _date(options["date_from"])
            if options["date_from"]
            else date_to - datetime.timedelta(days=364)
        )
        filters: dict[str, list[str]] = {}
        for item in options["filter"]:
            field, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"“{item}”: write filters as FIELD=VALUE.")
            filters.setdefault(field.strip(), []).append(value.strip())
        try:
            query = FunnelQuery.build(
                funnel_id=funnel.pk,
                date_from=date_from,
                date_to=date_to,
                mode=Mode(options["mode"]),
                window_days=options["window"],
                group_by=options["group_by"],
                filters=filters,
            )
        except DomainError as exc:
            details = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
            raise CommandError(f"{exc.message} {details}") from None
        report = funnel_report(query)
        data = report.to_dict()
        if options["format"] == "json":
            self.stdout.write(json.dumps(data, ensure_ascii=False, indent=2))
        elif options["format"] == "csv":
            self._csv(data)
        else:
            self._table(report.funnel, query, report.totals, report.groups)

    def _csv(self, data: dict) -> None:
        writer = csv.writer(self.stdout)
        writer.writerow(
            [
                "group",
                "step",
                "count",
                "step_conversion",
                "conversion_from_first",
                "drop_off",
                "lost",
                "open",
                "time_in_stage_median_s",
                "time_in_stage_p90_s",
            ]
        )
        for key, figures in [("", data), *((g["key"], g) for g in data["groups"])]:
            for step in figures["steps"]:
                times = step["time_in_stage"] or {}
                writer.writerow(
                    [
                        key,
                        step["name"],
                        step["count"],
                        step["step_conversion"],
                        step["conversion_from_first"],
                        step["drop_off"],
                        step["lost"],
                        step["open"],
                        times.get("median"),
                        times.get("p90"),
                    ]
                )

    def _table(self, name: str, query: FunnelQuery, totals: FunnelFigures, groups) -> None:
        out = self.stdout
        out.write(
            f"{name}: {query.mode} mode, {query.date_from} – {query.date_to}"
            + (f", window {query.window_days} days" if query.window_days else "")
        )
        if query.mode == Mode.CALENDAR:
            out.write("Calendar mode counts events in the period and mixes cohorts.")
        sections = [("All deals", totals)] + [(g.label, g.figures) for g in groups]
        for title, figures in sections:
            out.write(f"\n{title}")
            out.write(
                f"{'step':<40} {'count':>8} {'step %':>9} {'from 1st':>9} {'lost':>7} "
                f"{'open':>7} {'median':>9} {'p90':>9}"
            )
            for step in figures.steps:
                times = step.time_in_stage
                out.write(
                    f"{step.name[:40]:<40} {step.count:>8} {_percent(step.step_conversion):>9} "
                    f"{_percent(step.conversion_from_first):>9} {step.lost:>7} {step.open:>7} "
                    f"{_hours(times.median if times else None):>9} "
                    f"{_hours(times.p90 if times else None):>9}"
                )
            out.write(
                f"overall conversion {_percent(figures.overall_conversion)}; "
                f"won {figures.won.count} for {figures.won.amount:,.2f}; "
                f"average check {figures.average_check or 0:,.2f}; "
                f"weighted pipeline {figures.weighted_pipeline:,.2f}"
            )
