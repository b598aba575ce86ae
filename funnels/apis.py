"""The funnels API: funnels with their stages, loss reasons and custom fields.

Reading: a manager sees the funnels he works; heads, admins and integration
keys without a funnel see all; a key with a funnel sees only that one.

Writing (scope ``funnels:write``) calls ``funnels.services``, which lets the
same people change settings as the settings pages: administrators and heads of
sales (a manager gets 403), and integration keys given the scope, within their
funnel. Loss reasons are retired, never deleted; stages are reordered, never
deleted from the API, so deal history keeps every stage it names.
"""

from django.db.models import Prefetch, QuerySet
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.authentication import request_api_key
from accounts.models import ApiScope, User
from crm.api import ApiView, error_responses
from crm.errors import Forbidden, InvalidInput, NotFound
from funnels import services
from funnels.models import CustomField, CustomFieldType, Funnel, LossReason, Stage

# Integers stored in PositiveIntegerField columns: larger ones would not fit.


class TaskTemplateOutput(serializers.Serializer):
    title = serializers.CharField()
    due_in_minutes = serializers.IntegerField()


class StageOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    position = serializers.IntegerField()
    probability = serializers.IntegerField()
    rotting_days = serializers.IntegerField(allow_null=True)
    target_conversion = serializers.DecimalField(max_digits=5, decimal_places=2, allow_null=True)
    required_fields = serializers.ListField(child=serializers.CharField())
    task_templates = TaskTemplateOutput(many=True)


class LossReasonOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    is_active = serializers.BooleanField()
    requires_comment = serializers.BooleanField()


class CustomFieldOutput(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    type = serializers.ChoiceField(choices=CustomFieldType.choices)
    choices = serializers.ListField(child=serializers.CharField())


class FunnelOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    is_active = serializers.BooleanField()
    currency = serializers.CharField()
    target_response_minutes = serializers.IntegerField()
    stages = StageOutput(many=True)
    loss_reasons = LossReasonOutput(many=True)
    custom_fields = CustomFieldOutput(many=True)


def funnels_visible(request) -> QuerySet[Funnel]:
    funnels = Funnel.objects.prefetch_related(
        Prefetch("stages", Stage.objects.order_by("position").prefetch_related("task_templates")),
        Prefetch("loss_reasons", LossReason.objects.order_by("position", "id")),
        Prefetch("custom_fields", CustomField.objects.order_by("position", "id")),
    )
    api_key = request_api_key(request)
    if api_key is not None and api_key.funnel_id is not None:
        funnels = funnels.filter(pk=api_key.funnel_id)
    user = request.user
    if user.is_authenticated and not (user.is_admin_role or user.is_head):
        funnels = funnels.filter(members=user)
    return funnels.order_by("name")


# ---------------------------------------------------------------- input


class TaskTemplateInput(serializers.Serializer):
    title = serializers.CharField(allow_blank=True)
    due_in_minutes = serializers.IntegerField(
        max_value=services.MAX_INT, help_text="Counted from the moment the deal enters the stage."
    )


class StageInput(serializers.Serializer):
    name = serializers.CharField(allow_blank=True)
    probability = serializers.IntegerField(
        required=False, help_text="Chance that a deal here is won, 0–100."
    )
    rotting_days = serializers.IntegerField(
        required=False,
        allow_null=True,
        max_value=services.MAX_INT,
        help_text="A deal longer than this in the stage is stuck.",
    )
    target_conversion = serializers.DecimalField(
        max_digits=5, decimal_places=2, required=False, allow_null=True
    )
    required_fields = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Deal fields or custom field keys that must be filled to enter the stage.",
    )


class StageCreateInput(StageInput):
    tasks = TaskTemplateInput(
        many=True, required=False, help_text="Tasks the owner gets when a deal enters."
    )


class FunnelValuesInput(serializers.Serializer):
    currency = serializers.CharField(required=False, help_text="Three letters, such as RUB.")
    target_response_minutes = serializers.IntegerField(required=False, max_value=services.MAX_INT)
    members = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        help_text="User ids of the managers who work the funnel (replaces the list).",
    )


class FunnelCreateInput(FunnelValuesInput):
    name = serializers.CharField(allow_blank=True)
    stages = StageCreateInput(many=True, help_text="In order; at least one.")


class FunnelUpdateInput(FunnelValuesInput):
    name = serializers.CharField(required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


class StagesReorderInput(serializers.Serializer):
    stage_ids = serializers.ListField(
        child=serializers.IntegerField(), help_text="Every stage id of the funnel, once, in order."
    )


class LossReasonInput(serializers.Serializer):
    name = serializers.CharField(allow_blank=True)
    requires_comment = serializers.BooleanField(required=False)


class LossReasonUpdateInput(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True)
    requires_comment = serializers.BooleanField(required=False)
    is_active = serializers.BooleanField(
        required=False, help_text="False retires the reason; deals lost with it keep it."
    )


class CustomFieldInput(serializers.Serializer):
    key = serializers.CharField(allow_blank=True, help_text="Letters, digits, _ and -.")
    label = serializers.CharField(allow_blank=True)
    type = serializers.ChoiceField(choices=CustomFieldType.choices)
    choices = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="For a choice field."
    )


class CustomFieldUpdateInput(serializers.Serializer):
    label = serializers.CharField(required=False, allow_blank=True)
    choices = serializers.ListField(child=serializers.CharField(), required=False)


# ---------------------------------------------------------------- helpers


def _writer(request) -> User | None:
    """The person changing settings (None for an integration key); 403 for anyone else."""
    actor = request.user if request.user.is_authenticated else None
    services.funnels_check_configurer(actor)
    return actor


def _validated(serializer_class, data, *, partial: bool = False) -> dict:
    """Validated input; ``partial`` for PATCH: a field left out is left alone."""
    serializer = serializer_class(data=data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _funnel(request, pk: int) -> Funnel:
    funnel = funnels_visible(request).filter(pk=pk).first() if pk < 2**63 else None
    if funnel is None:
        raise NotFound(_("Funnel %(id)s does not exist.") % {"id": pk})
    return funnel


def _members(ids: list[int]) -> list[User]:
    users = list(User.objects.filter(pk__in=ids))
    missing = sorted(set(ids) - {user.pk for user in users})
    if missing:
        message = _("No such users: %(ids)s.") % {"ids": ", ".join(map(str, missing))}
        raise InvalidInput(message, fields={"members": message})
    return users


def _stage_spec(data: dict) -> dict:
    """A validated stage as ``stage_add`` takes it: tasks as (title, minutes)."""
    tasks = data.pop("tasks", [])
    return {**data, "tasks": [(task["title"], task["due_in_minutes"]) for task in tasks]}


def _render_funnel(request, funnel: Funnel, code: int = status.HTTP_200_OK) -> Response:
    return Response(FunnelOutput(_funnel(request, funnel.pk)).data, status=code)


FUNNEL_PK = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


# ---------------------------------------------------------------- funnels


class FunnelListApi(ApiView):
    read_scope = ApiScope.FUNNELS_READ
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_list",
        summary="Funnels with their stages, loss reasons and custom fields",
        responses={200: FunnelOutput(many=True), **error_responses()},
    )
    def get(self, request):
        return Response(FunnelOutput(funnels_visible(request), many=True).data)

    @extend_schema(
        operation_id="funnels_create",
        summary="Create a funnel with its stages (administrators and heads of sales)",
        description="The funnel gets the standard loss reasons, ending with “Other”.",
        request=FunnelCreateInput,
        responses={201: FunnelOutput, **error_responses(400)},
    )
    def post(self, request):
        actor = _writer(request)
        api_key = request_api_key(request)
        if api_key is not None and api_key.funnel_id is not None:
            raise Forbidden(_("This key works only in its own funnel."))
        data = _validated(FunnelCreateInput, request.data)
        if "members" in data:
            data["members"] = _members(data["members"])
        data["stages"] = [_stage_spec(stage) for stage in data["stages"]]
        funnel = services.funnel_create(actor=actor, **data)
        return _render_funnel(request, funnel, status.HTTP_201_CREATED)


class FunnelDetailApi(ApiView):
    read_scope = ApiScope.FUNNELS_READ
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_retrieve",
        parameters=[FUNNEL_PK],
        responses={200: FunnelOutput, **error_responses(404)},
    )
    def get(self, request, pk: int):
        return Response(FunnelOutput(_funnel(request, pk)).data)

    @extend_schema(
        operation_id="funnels_update",
        summary="Rename, (de)activate, set the currency, target response time or members",
        parameters=[FUNNEL_PK],
        request=FunnelUpdateInput,
        responses={200: FunnelOutput, **error_responses(400, 404)},
    )
    def patch(self, request, pk: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        data = _validated(FunnelUpdateInput, request.data, partial=True)
        if "members" in data:
            data["members"] = _members(data["members"])
        funnel = services.funnel_update(actor=actor, funnel=funnel, **data)
        return _render_funnel(request, funnel)


# ---------------------------------------------------------------- stages


STAGE_PK = OpenApiParameter("stage_id", OpenApiTypes.INT, OpenApiParameter.PATH)


class StageListApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_stages_create",
        summary="Append a stage at the end of the funnel, with its task templates",
        parameters=[FUNNEL_PK],
        request=StageCreateInput,
        responses={201: StageOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        data = _stage_spec(_validated(StageCreateInput, request.data))
        stage = services.stage_add(actor=actor, funnel=funnel, **data)
        return Response(StageOutput(stage).data, status=status.HTTP_201_CREATED)


class StageDetailApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_stages_update",
        summary="Change a stage's settings (its place: see reorder)",
        parameters=[FUNNEL_PK, STAGE_PK],
        request=StageInput,
        responses={200: StageOutput, **error_responses(400, 404)},
    )
    def patch(self, request, pk: int, stage_id: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        stage = funnel.stages.filter(pk=stage_id).first() if stage_id < 2**63 else None
        if stage is None:
            raise NotFound(_("Stage %(id)s does not exist.") % {"id": stage_id})
        data = _validated(StageInput, request.data, partial=True)
        stage = services.stage_update(actor=actor, stage=stage, **data)
        return Response(StageOutput(stage).data)


class StagesReorderApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_stages_reorder",
        summary="Put the funnel's stages in a new order; deal history keeps its stages",
        parameters=[FUNNEL_PK],
        request=StagesReorderInput,
        responses={200: FunnelOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        data = _validated(StagesReorderInput, request.data)
        services.stages_reorder(actor=actor, funnel=funnel, stage_ids=data["stage_ids"])
        return _render_funnel(request, funnel)


# ---------------------------------------------------------------- loss reasons


class LossReasonListApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_loss_reasons_create",
        summary="Add a loss reason at the end of the list",
        parameters=[FUNNEL_PK],
        request=LossReasonInput,
        responses={201: LossReasonOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        data = _validated(LossReasonInput, request.data)
        reason = services.loss_reason_add(actor=actor, funnel=funnel, **data)
        return Response(LossReasonOutput(reason).data, status=status.HTTP_201_CREATED)


class LossReasonDetailApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_loss_reasons_update",
        summary="Rename, require a comment, retire (is_active: false) or bring back",
        description="Loss reasons are never deleted: deals lost with one keep it.",
        parameters=[
            FUNNEL_PK,
            OpenApiParameter("reason_id", OpenApiTypes.INT, OpenApiParameter.PATH),
        ],
        request=LossReasonUpdateInput,
        responses={200: LossReasonOutput, **error_responses(400, 404)},
    )
    def patch(self, request, pk: int, reason_id: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        reason = funnel.loss_reasons.filter(pk=reason_id).first() if reason_id < 2**63 else None
        if reason is None:
            raise NotFound(_("Loss reason %(id)s does not exist.") % {"id": reason_id})
        data = _validated(LossReasonUpdateInput, request.data, partial=True)
        reason = services.loss_reason_update(actor=actor, reason=reason, **data)
        return Response(LossReasonOutput(reason).data)


# ---------------------------------------------------------------- custom fields


class CustomFieldListApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_custom_fields_create",
        summary="Add a custom field to the funnel's deals",
        parameters=[FUNNEL_PK],
        request=CustomFieldInput,
        responses={201: CustomFieldOutput, **error_responses(400, 404)},
    )
    def post(self, request, pk: int):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        data = _validated(CustomFieldInput, request.data)
        field = services.custom_field_add(actor=actor, funnel=funnel, **data)
        return Response(CustomFieldOutput(field).data, status=status.HTTP_201_CREATED)


class CustomFieldDetailApi(ApiView):
    write_scope = ApiScope.FUNNELS_WRITE

    @extend_schema(
        operation_id="funnels_custom_fields_update",
        summary="Change a custom field's label or choices (its key and type stay)",
        parameters=[FUNNEL_PK, OpenApiParameter("key", OpenApiTypes.STR, OpenApiParameter.PATH)],
        request=CustomFieldUpdateInput,
        responses={200: CustomFieldOutput, **error_responses(400, 404)},
    )
    def patch(self, request, pk: int, key: str):
        actor = _writer(request)
        funnel = _funnel(request, pk)
        field = funnel.custom_fields.filter(key=key).first()
        if field is None:
            raise NotFound(_("The funnel has no custom field “%(key)s”.") % {"key": key})
        data = _validated(CustomFieldUpdateInput, request.data, partial=True)
        field = services.custom_field_update(actor=actor, field=field, **data)
        return Response(CustomFieldOutput(field).data)
