"""The analytics API: the funnel report with every parameter of ``funnel_report``,
stored snapshots and their status, and a recompute action.

Reports are for heads of sales and administrators (and integration keys with
``analytics:read``, within their funnel); a manager gets 403.

A head of sales sees the figures the dashboard shows him: his own and his
teams' deals (``analytics.selectors.dashboard_owners``). His report is narrowed
by an ``owner`` filter (echoed in the report's ``query``), an owner outside his
teams is 403, and so is a stored snapshot whose figures are not narrowed to his
people (the funnel's standard snapshots: he polls their status in the list).
"""

import datetime

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.authentication import request_api_key
from accounts.models import ApiScope
from analytics.models import FunnelSnapshot, SnapshotStatus
from analytics.selectors import dashboard_owners
from analytics.services import report_or_snapshot, snapshots_refresh
from analytics.types import GROUP_FIELDS, FunnelQuery, Mode
from crm.api import ApiView, error_responses
from crm.errors import Forbidden, NotFound
from funnels.models import Funnel

FUNNEL_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


class ReportQueryInput(serializers.Serializer):
    mode = serializers.ChoiceField(choices=[m.value for m in Mode], default=Mode.COHORT.value)
    to = serializers.DateField(required=False, help_text="Last day, inclusive. Default: today.")
    window = serializers.IntegerField(
        required=False, min_value=1, max_value=3650, help_text="Conversion window, days."
    )
    group_by = serializers.ChoiceField(choices=GROUP_FIELDS, required=False)
    filter = serializers.ListField(
        child=serializers.RegexField(r"^[a-z_]+=.*$", max_length=200),
        required=False,
        default=list,
        help_text="FIELD=VALUE, repeatable; the same field twice means either value.",
    )

    def get_fields(self):
        fields = super().get_fields()
        # "from" is a Python keyword: declared here rather than as an attribute.
        fields["from"] = serializers.DateField(
            required=False, help_text="First day. Default: 364 days before `to`."
        )
        return fields


class SnapshotOutput(serializers.Serializer):
    id = serializers.IntegerField()
    funnel = serializers.IntegerField(source="funnel_id")
    label = serializers.CharField()
    params = serializers.DictField()
    status = serializers.ChoiceField(choices=SnapshotStatus.choices)
    progress = serializers.IntegerField()
    computed_at = serializers.DateTimeField(allow_null=True)
    requested_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()


class SnapshotDetailOutput(SnapshotOutput):
    result = serializers.DictField(
        allow_null=True, help_text="The report of the latest successful run."
    )


class PendingReportOutput(serializers.Serializer):
    snapshot = SnapshotOutput(help_text="Poll GET /api/v1/analytics/snapshots/{id}/.")


class RecomputeInput(serializers.Serializer):
    current_only = serializers.BooleanField(
        default=False, help_text="Only the periods that contain today."
    )


class RecomputeOutput(serializers.Serializer):
    snapshot_ids = serializers.ListField(child=serializers.IntegerField())


def _check_reader(request) -> None:
    user = request.user
    if user.is_authenticated and not (user.is_admin_role or user.is_head):
        raise Forbidden(_("Funnel reports are for heads of sales and administrators."))


def _owner_scope(request) -> list[str] | None:
    """Usernames whose deals the caller's figures may cover; None for everyone's
    (administrators and integration keys). The dashboard's rule."""
    user = request.user
    if not user.is_authenticated:
        return None
    owners, owners_only = dashboard_owners(user)
    return [owner.username for owner in owners] if owners_only else None


def _scoped_filters(request, filters: dict[str, list[str]]) -> dict[str, list[str]]:
    """``filters`` with the owner narrowed to the caller's people; 403 for anyone else."""
    scope = _owner_scope(request)
    if scope is None:
        return filters
    outside = sorted(set(filters.get("owner", [])) - set(scope))
    if outside:
        raise Forbidden(
            _("You see the figures of your own teams only; not in them: %(owners)s.")
            % {"owners": ", ".join(outside)},
            fields={"filter": _("Choose among: %(owners)s.") % {"owners": ", ".join(scope)}},
        )
    return {**filters, "owner": filters.get("owner") or scope}


def _check_snapshot_readable(request, snapshot: FunnelSnapshot) -> None:
    """403 unless the snapshot's figures are all within the caller's people."""
    scope = _owner_scope(request)
    if scope is None:
        return
    owners = (snapshot.params.get("filters") or {}).get("owner") or []
    if not owners or set(owners) - set(scope):
        raise Forbidden(
            _(
                "This snapshot holds figures of people outside your teams. Poll its status "
                "in the snapshot list, or ask for the report: it is narrowed to your teams."
            )
        )


def _funnels(request) -> QuerySet[Funnel]:
    funnels = Funnel.objects.all()
    api_key = request_api_key(request)
    if api_key is not None and api_key.funnel_id is not None:
        funnels = funnels.filter(pk=api_key.funnel_id)
    return funnels


def _funnel(request, pk: int) -> Funnel:
    _check_reader(request)
    funnel = _funnels(request).filter(pk=pk).first() if pk < 2**63 else None
    if funnel is None:
        raise NotFound(_("Funnel %(id)s does not exist.") % {"id": pk})
    return funnel


class FunnelReportApi(ApiView):
    read_scope = ApiScope.ANALYTICS_READ

    @extend_schema(
        operation_id="analytics_report",
        summary="The funnel report (METRICS.md), as `funnel_report --format json`",
        description=(
            "Computed at once for up to 300,000 deals (200); a larger report is queued as a "
            "snapshot (202) to poll.\n\n"
            "A head of sales gets his own and his teams' figures only: without an `owner` "
            "filter the report is narrowed to them (listed in `query.filters.owner`); an "
            "owner outside his teams is 403."
        ),
        parameters=[FUNNEL_ID, ReportQueryInput],
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="The report."),
            202: PendingReportOutput,
            **error_responses(400, 404),
        },
    )
    def get(self, request, pk: int):
        funnel = _funnel(request, pk)
        params = ReportQueryInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        date_to = data.get("to") or timezone.localdate()
        date_from = data.get("from") or date_to - datetime.timedelta(days=364)
        filters: dict[str, list[str]] = {}
        for item in data["filter"]:
            field, _sep, value = item.partition("=")
            filters.setdefault(field, []).append(value)
        filters = _scoped_filters(request, filters)
        query = FunnelQuery.build(
            funnel_id=funnel.pk,
            date_from=date_from,
            date_to=date_to,
            mode=Mode(data["mode"]),
            window_days=data.get("window"),
            group_by=data.get("group_by"),
            filters=filters,
        )
        report, snapshot = report_or_snapshot(query)
        if report is not None:
            return Response(report.to_dict())
        return Response(
            {"snapshot": SnapshotOutput(snapshot).data}, status=status.HTTP_202_ACCEPTED
        )


class FunnelRecomputeApi(ApiView):
    # Recomputing changes no business data: reading analytics is enough.
    write_scope = ApiScope.ANALYTICS_READ

    @extend_schema(
        operation_id="analytics_recompute",
        summary="Queue the funnel's standard snapshots; poll them by id",
        parameters=[FUNNEL_ID],
        request=RecomputeInput,
        responses={202: RecomputeOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        funnel = _funnel(request, pk)
        params = RecomputeInput(data=request.data)
        params.is_valid(raise_exception=True)
        ids = snapshots_refresh(
            funnel_id=funnel.pk, current_only=params.validated_data["current_only"]
        )
        return Response({"snapshot_ids": ids}, status=status.HTTP_202_ACCEPTED)


class SnapshotFilterInput(serializers.Serializer):
    funnel = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)
    status = serializers.ChoiceField(choices=SnapshotStatus.choices, required=False)


class SnapshotListApi(ApiView):
    read_scope = ApiScope.ANALYTICS_READ

    @extend_schema(
        operation_id="analytics_snapshots_list",
        summary="Stored snapshots and their status (without results)",
        parameters=[SnapshotFilterInput],
        responses={200: SnapshotOutput(many=True), **error_responses(400)},
    )
    def get(self, request):
        _check_reader(request)
        params = SnapshotFilterInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        snapshots = FunnelSnapshot.objects.filter(funnel__in=_funnels(request)).defer("result")
        if "funnel" in params.validated_data:
            snapshots = snapshots.filter(funnel_id=params.validated_data["funnel"])
        if "status" in params.validated_data:
            snapshots = snapshots.filter(status=params.validated_data["status"])
        return Response(SnapshotOutput(snapshots.order_by("funnel_id", "label"), many=True).data)


class SnapshotDetailApi(ApiView):
    read_scope = ApiScope.ANALYTICS_READ

    @extend_schema(
        operation_id="analytics_snapshots_retrieve",
        summary="A snapshot with its result",
        description=(
            "A head of sales reads only snapshots narrowed to his own and his teams' "
            "people (those his reports queue); any other is 403."
        ),
        parameters=[OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)],
        responses={200: SnapshotDetailOutput, **error_responses(404)},
    )
    def get(self, request, pk: int):
        _check_reader(request)
        snapshot = (
            FunnelSnapshot.objects.filter(funnel__in=_funnels(request), pk=pk).first()
            if pk < 2**63
            else None
        )
        if snapshot is None:
            raise NotFound(_("Snapshot %(id)s does not exist.") % {"id": pk})
        _check_snapshot_readable(request, snapshot)
        return Response(SnapshotDetailOutput(snapshot).data)
