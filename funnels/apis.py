"""The funnels API (read): stages, loss reasons and custom fields.

A manager sees the funnels he works; heads, admins and integration keys
without a funnel see all; a key with a funnel sees only that one.
"""

from django.db.models import Prefetch, QuerySet
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from accounts.authentication import request_api_key
from accounts.models import ApiScope
from crm.api import ApiView, error_responses
from crm.errors import NotFound
from funnels.models import CustomField, CustomFieldType, Funnel, LossReason, Stage


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


class FunnelListApi(ApiView):
    read_scope = ApiScope.FUNNELS_READ

    @extend_schema(
        operation_id="funnels_list",
        summary="Funnels with their stages, loss reasons and custom fields",
        responses={200: FunnelOutput(many=True), **error_responses()},
    )
    def get(self, request):
        return Response(FunnelOutput(funnels_visible(request), many=True).data)


class FunnelDetailApi(ApiView):
    read_scope = ApiScope.FUNNELS_READ

    @extend_schema(
        operation_id="funnels_retrieve",
        parameters=[OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)],
        responses={200: FunnelOutput, **error_responses(404)},
    )
    def get(self, request, pk: int):
        funnel = funnels_visible(request).filter(pk=pk).first() if pk < 2**63 else None
        if funnel is None:
            raise NotFound(_("Funnel %(id)s does not exist.") % {"id": pk})
        return Response(FunnelOutput(funnel).data)
