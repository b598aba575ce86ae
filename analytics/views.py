"""The head-of-sales dashboard (``/dashboard/``): HTML and CSV.

The view validates the controls (``analytics.forms``), narrows them to what the
user may see, reads every report the page needs with one ``reports_read`` (the
stored snapshots where they are fresh, so that the presets of a large funnel are
read rather than computed in the request) and hands the typed results to
``analytics.charts``; the template only lays them out.

Who sees what: an administrator, every funnel and manager; a head of sales, the
funnels his teams work and the deals of his team members and himself; a
manager, his own deals only. The narrowing is a filter on the report's query,
so no figure of anyone else's deal is ever computed for him.
"""

import csv
import datetime
import io

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.views.decorators.http import require_GET, require_POST
from openpyxl import Workbook

from accounts.models import User
from analytics import charts
from analytics.forms import DashboardForm, WhatIfForm
from analytics.periods import period_before, trend_weeks
from analytics.selectors import (
    dashboard_funnels,
    dashboard_owners,
    snapshot_progress,
    stuck_deals,
)
from analytics.services import ReportRead, reports_read, snapshots_refresh
from analytics.stats import bottlenecks, what_if
from analytics.types import FunnelFigures, FunnelQuery, FunnelReport, Mode
from deals.selectors import deals_visible_to

STUCK_LIMIT = 50
# Past this many stuck deals the panel says "1000+": counting them all would read them all.
STUCK_COUNT_LIMIT = 1000
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# The slices panel: one grouped report per field, computed only when the panel is opened.
SLICE_FIELDS = (
    ("source", _lazy("Source")),
    ("product", _lazy("Product")),
    ("region", _lazy("Region")),
    ("client_type", _lazy("Client type")),
    ("temperature", _lazy("Temperature")),
)


def _stuck(form: DashboardForm, user: User):
    deals = deals_visible_to(user)
    filters = form.filters()
    if "owner" in filters:
        deals = deals.filter(owner__username__in=filters["owner"])
    if "client_type" in filters:  # the engine's first/repeat slice
        deals = deals.filter(is_repeat_client__in=[v == "repeat" for v in filters["client_type"]])
    for field in ("source", "product", "region", "temperature"):
        if field in filters:
            deals = deals.filter(**{f"{field}__in": filters[field]})
    return stuck_deals(
        funnel=form.cleaned_data["funnel"],
        deals=deals,
        limit=STUCK_LIMIT,
        count_limit=STUCK_COUNT_LIMIT,
    )


def _page_queries(form: DashboardForm) -> list[FunnelQuery]:
    """The reports the page shows: by manager (the funnel, table and manager panels),
    the period of equal length before (bottlenecks) and the 12 trend weeks."""
    date_from, date_to = period_before(form.cleaned_data["date_from"], form.cleaned_data["date_to"])
    return [
        form.query(group_by="owner"),
        form.query(date_from=date_from, date_to=date_to),
        *(
            form.query(date_from=week.date_from, date_to=week.date_to)
            for week in trend_weeks(form.today)
        ),
    ]


def _oldest(reads: list[ReportRead]) -> datetime.datetime | None:
    """When the oldest of the figures shown was computed: a panel of several reports is as old."""
    return min((read.report.computed_at for read in reads if read.report), default=None)


def _bottlenecks(totals: FunnelFigures, previous: FunnelFigures | None) -> list[str]:
    steps = totals.steps
    before = [None] * len(steps)
    # A stage added or removed since the previous period: the steps no longer line up.
    if previous is not None and [s.name for s in previous.steps] == [s.name for s in steps]:
        before = [s.step_conversion for s in previous.steps]
    found = bottlenecks(
        names=[s.name for s in steps],
        current=[s.step_conversion for s in steps],
        previous=before,
        targets=[s.target_conversion for s in steps],
    )
    return [charts.bottleneck_sentence(bottleneck) for bottleneck in found]


def _export_name(report: FunnelReport, form: DashboardForm) -> str:
    data = form.cleaned_data
    return "-".join(
        [
            "funnel",
            slugify(report.funnel) or str(data["funnel"].pk),
            data["date_from"].isoformat(),
            data["date_to"].isoformat(),
            data["mode"],
        ]
    )


def _csv(report: FunnelReport, form: DashboardForm) -> HttpResponse:
    name = _export_name(report, form)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    csv.writer(response).writerows(charts.conversion_table(report.totals).csv_rows())
    return response


def _xlsx(report: FunnelReport, form: DashboardForm) -> HttpResponse:
    """The conversion table as a workbook: the CSV's columns and values, numbers as numbers."""
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = _("Conversion by step")[:31]
    for row in charts.conversion_table(report.totals).csv_rows():
        sheet.append([None if value == "" else value for value in row])
    buffer = io.BytesIO()
    workbook.save(buffer)
    response = HttpResponse(buffer.getvalue(), content_type=XLSX_TYPE)
    response["Content-Disposition"] = f'attachment; filename="{_export_name(report, form)}.xlsx"'
    return response


def _slices(form: DashboardForm) -> tuple[list[dict], datetime.datetime | None]:
    """The funnel split by each slice field (a figure, or None while its snapshot is
    computed), and when the oldest of them was computed."""
    slices = []
    reads = reports_read([form.query(group_by=field) for field, _label in SLICE_FIELDS])
    for (field, label), read in zip(SLICE_FIELDS, reads, strict=True):
        report = read.report
        slices.append(
            {
                "field": field,
                "label": label,
                "chart": f"slice-{field}",
                "figure": None
                if report is None or not report.groups
                else charts.figure_json(charts.slice_figure(report, str(label))),
                "pending": report is None,
            }
        )
    return slices, _oldest(reads)


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    owners, owners_only = dashboard_owners(user)
    form = DashboardForm(
        request.GET, funnels=dashboard_funnels(user), owners=owners, owners_only=owners_only
    )
    if not form.is_valid():
        return render(request, "analytics/dashboard.html", {"form": form}, status=400)

    export = request.GET.get("export")
    if export in ("csv", "xlsx"):
        main = reports_read([form.query(group_by="owner")])[0]
        if main.report is not None:
            return (_csv if export == "csv" else _xlsx)(main.report, form)
        reads = [main]
    else:
        reads = reports_read(_page_queries(form))
    main = reads[0]
    report = main.report

    context = {
        "form": form,
        "report": report,
        # The snapshot being computed: no figures yet, or older figures shown meanwhile.
        "snapshot": main.snapshot if report is None or main.stale else None,
        "calendar": form.cleaned_data["mode"] == Mode.CALENDAR,
        "now": timezone.now(),
        "progress": snapshot_progress(funnel=form.cleaned_data["funnel"]),
        "can_recompute": _can_recompute(user),
        "recompute_query": request.GET.urlencode(),
    }
    chart_data = {}
    if report is not None:
        previous, weeks = reads[1], reads[2:]
        totals = report.totals
        whatif_form = WhatIfForm(request.GET, step_names=[s.name for s in totals.steps])
        projection = None
        if whatif_form.is_valid():
            projection = what_if(
                counts=[s.count for s in totals.steps],
                # Unrounded, so that an unchanged scenario projects exactly today's revenue.
                average_check=totals.won.amount / totals.won.count if totals.won.count else None,
                entered=whatif_form.cleaned_data.get("wi_entered"),
                conversions=whatif_form.conversions(),
            )
        trend = [
            charts.TrendPoint(period=week, figures=read.report and read.report.totals)
            for week, read in zip(trend_weeks(form.today), weeks, strict=True)
        ]
        chart_data = {
            "funnel": charts.figure_json(charts.funnel_figure(totals)),
            "loss": charts.figure_json(charts.loss_figure(totals)),
            "trend": charts.figure_json(charts.trend_figure(trend)),
            "time": charts.figure_json(charts.time_figure(totals)),
        }
        if report.groups:
            chart_data["managers"] = charts.figure_json(charts.managers_figure(report))
            chart_data["response"] = charts.figure_json(charts.response_figure(report))
        slices = slices_computed_at = None
        if request.GET.get("slices") == "1":
            slices, slices_computed_at = _slices(form)
            chart_data.update({s["chart"]: s["figure"] for s in slices if s["figure"]})
        context.update(
            totals=totals,
            computed_at=report.computed_at,
            stale=main.stale,
            conversion_table=charts.conversion_table(totals),
            managers_table=charts.managers_table(report),
            response_table=charts.response_table(report),
            response_target=charts.human_duration(totals.response.target_seconds),
            loss_managers_table=charts.loss_reasons_by_manager_table(report),
            time_table=charts.time_table(totals),
            slices=slices,
            slices_computed_at=slices_computed_at,
            slices_query=_with(request.GET, slices="1"),
            below_target=[s for s in totals.steps if charts.below_target(s)],
            bottlenecks=_bottlenecks(totals, previous.report and previous.report.totals),
            bottlenecks_computed_at=_oldest([main, previous]),
            previous_pending=previous.report is None,
            stuck=_stuck(form, user),
            trend_pending=sum(point.figures is None for point in trend),
            trend_computed_at=_oldest(weeks),
            trend_stale=sum(read.stale for read in weeks),
            whatif_form=whatif_form,
            projection=projection and charts.projection_table(totals, projection, report.currency),
            csv_query=_with(request.GET, export="csv"),
            xlsx_query=_with(request.GET, export="xlsx"),
            keep_params=[
                (key, value)
                for key, values in request.GET.lists()
                if not key.startswith("wi_") and key != "export"
                for value in values
            ],
            won_amount=charts.money(totals.won.amount, report.currency),
            average_check=charts.money(totals.average_check, report.currency),
            overall=charts.percent(totals.overall_conversion),
            weighted_pipeline=charts.money(totals.weighted_pipeline, report.currency),
        )
    context["charts"] = chart_data
    return render(request, "analytics/dashboard.html", context)


def _can_recompute(user: User) -> bool:
    return user.is_admin_role or user.is_head


@login_required
@require_POST
def dashboard_recompute(request: HttpRequest) -> HttpResponse:
    """Queue the standard snapshots of the funnel in the POST (heads and admins only),
    then back to the dashboard with the query string this was posted with."""
    if not _can_recompute(request.user):
        raise PermissionDenied
    raw = request.POST.get("funnel", "")
    funnel = None
    if raw.isdigit() and len(raw) < 10:
        funnel = dashboard_funnels(request.user).filter(pk=int(raw)).first()
    if funnel is None:
        raise Http404
    queued = snapshots_refresh(funnel_id=funnel.pk)
    messages.success(
        request,
        _("Snapshots queued for recomputation: %(count)s (“%(funnel)s”).")
        % {"count": len(set(queued)), "funnel": funnel.name},
    )
    url = reverse("analytics:dashboard")
    # Only the query string comes from the request, so the redirect never leaves the dashboard.
    query = request.GET.urlencode()
    return HttpResponseRedirect(f"{url}?{query}" if query else url)


def _with(params, **changes) -> str:
    query = params.copy()
    for key, value in changes.items():
        query[key] = value
    return query.urlencode()
