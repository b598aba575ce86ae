"""The deals API and the lead intake: parse input, call one service or selector, render.

Visibility is ``deals_visible_to`` everywhere: a deal the caller may not see is
404, exactly like one that does not exist. People act as themselves; an
integration key (no person) acts as the system within its funnel.
"""

import hashlib
import json

from django.db.models import QuerySet
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts.authentication import request_api_key
from accounts.models import ApiScope, User
from crm.api import (
    ApiView,
    LeadIntakeRateThrottle,
    NewestFirstPagination,
    error_responses,
    flatten_errors,
)
from crm.errors import Forbidden, InvalidInput, NotFound
from deals import services
from deals.intake import MAX_BATCH, IntakeClient, LeadData, lead_intake
from deals.models import Deal, Note, StageChange, StatusChange, Task
from deals.selectors import deals_visible_to
from deals.serializers import (
    DealAssignInput,
    DealCreateInput,
    DealFilterInput,
    DealHistoryOutput,
    DealLoseInput,
    DealMoveInput,
    DealOutput,
    DealPageOutput,
    DealPostponeInput,
    DealReopenInput,
    DealUpdateInput,
    DealWinInput,
    LeadBatchInput,
    LeadBatchOutput,
    LeadInput,
    LeadResultOutput,
    NoteInput,
    NoteOutput,
    TaskInput,
    TaskOutput,
    lead_values,
)
from funnels.models import Funnel, Stage

# ---------------------------------------------------------------- leads

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description=(
        "Any unique string up to 255 characters. A retry with the same key and body "
        "returns the original result (header `Idempotent-Replayed: true`), never a second "
        "deal; the same key with another body is refused with 422."
    ),
)


def _lead_data(values: dict, raw: dict) -> LeadData:
    contact = values.get("contact") or {}
    return LeadData(
        title=values["title"],
        contact_name=contact.get("name", ""),
        contact_phone=contact.get("phone", ""),
        contact_email=contact.get("email", ""),
        company=values["company"],
        source=values["source"],
        utm={k: v for k, v in (values.get("utm") or {}).items() if v},
        amount=values.get("amount"),
        product=values["product"],
        region=values["region"],
        temperature=values["temperature"],
        comment=values["comment"],
        funnel_id=values.get("funnel"),
        owner_id=values.get("owner_id"),
        custom_fields=values["custom_fields"],
        external_id=values.get("external_id") or None,
        payload=raw,
    )


def _fingerprint(data) -> str:
    body = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


class LeadIntakeApi(ApiView):
    write_scope = ApiScope.LEADS_WRITE
    throttle_classes = [LeadIntakeRateThrottle]

    @extend_schema(
        operation_id="leads_create",
        summary="Post one lead or a batch of up to 1,000",
        description=(
            'One lead (an object) or a batch (`{"leads": [...]}`). A lead becomes a deal '
            "at the funnel's first stage (its task templates fire), owned by the given "
            "`owner_id` or the next manager in turn (active managers of the funnel who are "
            "not away). A lead whose phone or email matches an open deal of the funnel is "
            "attached to it as a note (`status: attached`). A lead whose `external_id` was "
            "taken before returns that outcome (`replayed: true`).\n\n"
            "One lead: 201 when a deal was created, 200 when attached; an invalid lead is "
            "400 and nothing is stored. A batch: each lead's outcome at its index, bad "
            "leads `rejected` with their errors; 201 when at least one deal was created."
        ),
        parameters=[IDEMPOTENCY_HEADER],
        request=PolymorphicProxySerializer(
            component_name="LeadOrBatch",
            serializers=[LeadInput, LeadBatchInput],
            resource_type_field_name=None,
        ),
        responses={
            201: PolymorphicProxySerializer(
                component_name="LeadOrBatchResult",
                serializers=[LeadResultOutput, LeadBatchOutput],
                resource_type_field_name=None,
            ),
            200: PolymorphicProxySerializer(
                component_name="LeadOrBatchResultNothingCreated",
                serializers=[LeadResultOutput, LeadBatchOutput],
                resource_type_field_name=None,
            ),
            **error_responses(400, 413, 422),
        },
        examples=[
            OpenApiExample(
                "A lead from a site form",
                request_only=True,
                value={
                    "title": "Request from the site",
                    "contact": {"name": "Ivan", "phone": "+7 900 123-45-67"},
                    "source": "site",
                    "utm": {"source": "yandex", "campaign": "spring"},
                    "comment": "Call me after 18:00",
                    "external_id": "form-8812",
                },
            )
        ],
    )
    def post(self, request):
        api_key = request_api_key(request)
        client = (
            IntakeClient.for_api_key(api_key) if api_key else IntakeClient.for_user(request.user)
        )
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not 1 <= len(idempotency_key.strip()) <= 255:
            raise InvalidInput(
                _("The Idempotency-Key header must be 1 to 255 characters."),
                fields={"Idempotency-Key": _("Send 1 to 255 characters.")},
            )
        idempotency_key = idempotency_key.strip() if idempotency_key else None
        data = request.data
        if not isinstance(data, dict):
            raise InvalidInput(
                _('Send one lead as an object, or a batch as {"leads": [...]}.'),
                fields={"non_field_errors": _("Expected an object.")},
            )
        if "leads" in data:
            items = data["leads"]
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
                raise InvalidInput(
                    _("A batch is a list of 1 to %(max)s leads.") % {"max": MAX_BATCH},
                    fields={"leads": _("Send a list of 1 to %(max)s leads.") % {"max": MAX_BATCH}},
                )
            checker = LeadInput()  # one instance for the batch: its fields are built once
            leads = [self._parse(item, checker) for item in items]
            result = lead_intake(
                client=client,
                leads=leads,
                idempotency_key=idempotency_key,
                fingerprint=_fingerprint(data) if idempotency_key else "",
            )
            counts = {"created": 0, "attached": 0, "rejected": 0}
            for item in result.results:
                counts[item["status"]] += 1
            body = {"results": result.results, **counts}
        else:
            values = lead_values(data)
            if values is None:  # not plain, or an error: LeadInput says which
                serializer = LeadInput(data=data)
                serializer.is_valid(raise_exception=True)
                values = serializer.validated_data
            result = lead_intake(
                client=client,
                leads=[_lead_data(values, data)],
                idempotency_key=idempotency_key,
                fingerprint=_fingerprint(data) if idempotency_key else "",
                raise_on_reject=True,
            )
            body = result.results[0]
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return Response(body, status=code, headers=headers)

    @staticmethod
    def _parse(item, checker: LeadInput) -> LeadData | InvalidInput:
        if not isinstance(item, dict):
            return InvalidInput(
                _("A lead is an object."), fields={"non_field_errors": _("Expected an object.")}
            )
        values = lead_values(item)
        if values is not None:
            return _lead_data(values, item)
        try:
            values = checker.run_validation(item)  # what is_valid() runs, without a new instance
        except ValidationError as error:
            return InvalidInput(
                _("The lead has errors: fix the marked fields."),
                fields=flatten_errors(error.detail),
            )
        return _lead_data(values, item)


# ---------------------------------------------------------------- helpers


def _actor(request) -> User | None:
    """The person acting, or None for an integration key (the system)."""
    return request.user if request.user.is_authenticated else None


def _visible_deals(request) -> QuerySet[Deal]:
    actor = _actor(request)
    deals = deals_visible_to(actor) if actor is not None else Deal.objects.all()
    api_key = request_api_key(request)
    if api_key is not None and api_key.funnel_id is not None:
        deals = deals.filter(funnel_id=api_key.funnel_id)
    return deals


def _deal(request, pk: int) -> Deal:
    deal = (
        _visible_deals(request).select_related("stage", "contact").filter(pk=pk).first()
        if pk < 2**63
        else None
    )
    if deal is None:
        raise NotFound(_("Deal %(id)s does not exist.") % {"id": pk})
    return deal


def _user(pk: int | None, field: str) -> User | None:
    if pk is None:
        return None
    user = User.objects.filter(pk=pk).first()
    if user is None:
        raise InvalidInput(
            _("User %(id)s does not exist.") % {"id": pk}, fields={field: _("No such user.")}
        )
    return user


def _validated(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _values(data: dict) -> dict:
    """Validated deal values in the form the service functions take."""
    return {name: value for name, value in data.items() if name != "expected_version"}


def _render(deal: Deal, code: int = status.HTTP_200_OK) -> Response:
    deal = Deal.objects.select_related("stage", "contact").get(pk=deal.pk)
    return Response(DealOutput(deal).data, status=code)


DEAL_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


# ---------------------------------------------------------------- deals


class DealListApi(ApiView):
    read_scope = ApiScope.DEALS_READ
    write_scope = ApiScope.DEALS_WRITE

    @extend_schema(
        operation_id="deals_list",
        summary="Deals the caller may see, newest first",
        parameters=[DealFilterInput],
        responses={200: DealPageOutput, **error_responses(400)},
    )
    def get(self, request):
        filters = _validated(DealFilterInput, request.query_params)
        deals = _visible_deals(request).select_related("stage", "contact")
        for name in ("funnel", "stage", "status", "source"):
            if name in filters:
                deals = deals.filter(**{f"{name}": filters[name]})
        if "owner" in filters:
            owner = filters["owner"]
            deals = (
                deals.filter(owner__isnull=True)
                if owner == "none"
                else deals.filter(owner_id=int(owner))
            )
        if "created_from" in filters:
            deals = deals.filter(created_at__date__gte=filters["created_from"])
        if "created_to" in filters:
            deals = deals.filter(created_at__date__lte=filters["created_to"])
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(deals, request, view=self)
        return paginator.get_paginated_response(DealOutput(page, many=True).data)

    @extend_schema(
        operation_id="deals_create",
        summary="Open a deal (the same rules as the board)",
        request=DealCreateInput,
        responses={201: DealOutput, **error_responses(400, 409)},
    )
    def post(self, request):
        data = dict(_validated(DealCreateInput, request.data))
        funnel = Funnel.objects.filter(pk=data.pop("funnel")).first()
        api_key = request_api_key(request)
        if funnel is None:
            raise InvalidInput(_("No such funnel."), fields={"funnel": _("No such funnel.")})
        if api_key is not None and api_key.funnel_id not in (None, funnel.pk):
            raise Forbidden(_("This key works only in its own funnel."))
        stage = None
        if "stage" in data:
            stage = Stage.objects.filter(pk=data.pop("stage")).first()
            if stage is None:
                raise InvalidInput(_("No such stage."), fields={"stage": _("No such stage.")})
        deal = services.deal_create(
            actor=_actor(request),
            funnel=funnel,
            title=data.pop("title"),
            stage=stage,
            owner=_user(data.pop("owner", None), "owner"),
            external_id=data.pop("external_id", None) or None,
            values=data,
        )
        return _render(deal, status.HTTP_201_CREATED)


class DealDetailApi(ApiView):
    read_scope = ApiScope.DEALS_READ
    write_scope = ApiScope.DEALS_WRITE

    @extend_schema(
        operation_id="deals_retrieve",
        parameters=[DEAL_ID],
        responses={200: DealOutput, **error_responses(404)},
    )
    def get(self, request, pk: int):
        return Response(DealOutput(_deal(request, pk)).data)

    @extend_schema(
        operation_id="deals_update",
        summary="Edit a deal's fields and client (not stage or status: use the actions)",
        parameters=[DEAL_ID],
        request=DealUpdateInput,
        responses={200: DealOutput, **error_responses(400, 404, 409)},
    )
    def patch(self, request, pk: int):
        deal = _deal(request, pk)
        data = _validated(DealUpdateInput, request.data)
        deal = services.deal_update(
            actor=_actor(request),
            deal=deal,
            values=_values(data),
            expected_version=data.get("expected_version"),
        )
        return _render(deal)


class _DealActionApi(ApiView):
    """POST /deals/{id}/<action>/: one service function, the same rules as the board."""

    read_scope = ApiScope.DEALS_READ
    write_scope = ApiScope.DEALS_WRITE
    input_serializer: type = DealReopenInput

    def post(self, request, pk: int):
        deal = _deal(request, pk)
        data = _validated(self.input_serializer, request.data)
        deal = self.perform(_actor(request), deal, data)
        return _render(deal)

    def perform(self, actor, deal: Deal, data: dict) -> Deal:
        raise NotImplementedError


def _action_schema(name: str, serializer, summary: str):
    return extend_schema(
        operation_id=f"deals_{name}",
        summary=summary,
        parameters=[DEAL_ID],
        request=serializer,
        responses={200: DealOutput, **error_responses(400, 404, 409)},
    )


class DealMoveApi(_DealActionApi):
    input_serializer = DealMoveInput

    @_action_schema("move", DealMoveInput, "Move to any stage of the funnel")
    def post(self, request, pk: int):
        return super().post(request, pk)

    def perform(self, actor, deal, data):
        stage = Stage.objects.filter(pk=data["stage"]).first()
        if stage is None:
            raise InvalidInput(_("No such stage."), fields={"stage": _("No such stage.")})
        return services.deal_move_to_stage(
            actor=actor,
            deal=deal,
            stage=stage,
            values=dict(data.get("values") or {}),
            expected_version=data.get("expected_version"),
        )


class DealWinApi(_DealActionApi):
    input_serializer = DealWinInput

    @_action_schema("win", DealWinInput, "Close as won")
    def post(self, request, pk: int):
        return super().post(request, pk)

    def perform(self, actor, deal, data):
        return services.deal_win(
            actor=actor,
            deal=deal,
            values=dict(data.get("values") or {}),
            expected_version=data.get("expected_version"),
        )


class DealLoseApi(_DealActionApi):
    input_serializer = DealLoseInput

    @_action_schema("lose", DealLoseInput, "Close as lost, with a loss reason")
    def post(self, request, pk: int):
        return super().post(request, pk)

    def perform(self, actor, deal, data):
        return services.deal_lose(
            actor=actor,
            deal=deal,
            loss_reason=data["loss_reason"],
            comment=data["comment"],
            expected_version=data.get("expected_version"),
        )


class DealPostponeApi(_DealActionApi):
    input_serializer = DealPostponeInput

    @_action_schema("postpone", DealPostponeInput, "Put on hold until the next contact")
    def post(self, request, pk: int):
        return super().post(request, pk)

    def perform(self, actor, deal, data):
        return services.deal_postpone(
            actor=actor,
            deal=deal,
            next_contact_at=data["next_contact_at"],
            comment=data["comment"],
            expected_version=data.get("expected_version"),
        )


class DealReopenApi(_DealActionApi):
    input_serializer = DealReopenInput

    @_action_schema("reopen", DealReopenInput, "Return a won, lost or postponed deal to work")
    def post(self, request, pk: int):
        return super().post(request, pk)

    def perform(self, actor, deal, data):
        return services.deal_reopen(
            actor=actor,
            deal=deal,
            comment=data["comment"],
            expected_version=data.get("expected_version"),
        )


class DealAssignApi(_DealActionApi):
    input_serializer = DealAssignInput

    @_action_schema("assign", DealAssignInput, "Give the deal to another owner (or none)")
    def post(self, request, pk: int):
        return super().post(request, pk)

    def perform(self, actor, deal, data):
        return services.deal_assign(
            actor=actor,
            deal=deal,
            owner=_user(data["owner"], "owner"),
            expected_version=data.get("expected_version"),
        )


class DealHistoryApi(ApiView):
    read_scope = ApiScope.DEALS_READ

    @extend_schema(
        operation_id="deals_history",
        summary="Stage and status changes, oldest first",
        parameters=[DEAL_ID],
        responses={200: DealHistoryOutput, **error_responses(404)},
    )
    def get(self, request, pk: int):
        deal = _deal(request, pk)
        return Response(
            DealHistoryOutput(
                {
                    "stage_changes": StageChange.objects.filter(deal=deal),
                    "status_changes": StatusChange.objects.filter(deal=deal),
                }
            ).data
        )


class DealTasksApi(ApiView):
    read_scope = ApiScope.DEALS_READ
    write_scope = ApiScope.DEALS_WRITE

    @extend_schema(
        operation_id="deals_tasks_list",
        parameters=[DEAL_ID],
        responses={200: TaskOutput(many=True), **error_responses(404)},
    )
    def get(self, request, pk: int):
        deal = _deal(request, pk)
        return Response(TaskOutput(Task.objects.filter(deal=deal), many=True).data)

    @extend_schema(
        operation_id="deals_tasks_create",
        parameters=[DEAL_ID],
        request=TaskInput,
        responses={201: TaskOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        deal = _deal(request, pk)
        data = _validated(TaskInput, request.data)
        task = services.task_create(
            actor=_actor(request),
            deal=deal,
            title=data["title"],
            due_at=data["due_at"],
            assignee=_user(data.get("assignee"), "assignee"),
        )
        return Response(TaskOutput(task).data, status=status.HTTP_201_CREATED)


class DealNotesApi(ApiView):
    read_scope = ApiScope.DEALS_READ
    write_scope = ApiScope.DEALS_WRITE

    @extend_schema(
        operation_id="deals_notes_list",
        parameters=[DEAL_ID],
        responses={200: NoteOutput(many=True), **error_responses(404)},
    )
    def get(self, request, pk: int):
        deal = _deal(request, pk)
        return Response(NoteOutput(Note.objects.filter(deal=deal), many=True).data)

    @extend_schema(
        operation_id="deals_notes_create",
        parameters=[DEAL_ID],
        request=NoteInput,
        responses={201: NoteOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        deal = _deal(request, pk)
        data = _validated(NoteInput, request.data)
        note = services.note_add(actor=_actor(request), deal=deal, text=data["text"])
        return Response(NoteOutput(note).data, status=status.HTTP_201_CREATED)
