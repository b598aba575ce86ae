"""The webhook subscriptions API: parse input, call one function of ``deals.webhooks``, render.

For administrators: a session or a personal token of an administrator (with
``webhooks:manage``), or an integration key given ``webhooks:manage``, which
sees and changes only the subscriptions of its funnel when it has one. The
signing secret is made by the server and shown once, in the answer to create.
"""

from django.db.models import QuerySet
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.authentication import request_api_key
from accounts.models import ApiScope, User
from crm.api import ApiView, NewestFirstPagination, error_responses
from crm.errors import Forbidden, InvalidInput, NotFound
from deals.models import (
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEvent,
    WebhookSubscription,
)
from deals.webhooks import (
    webhook_subscription_create,
    webhook_subscription_delete,
    webhook_subscription_update,
    webhooks_check_manager,
)
from funnels.models import Funnel

SUBSCRIPTION_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)

# ---------------------------------------------------------------- serializers


class WebhookSubscriptionInput(serializers.Serializer):
    url = serializers.CharField(
        help_text="An http:// or https:// address that accepts POST.", trim_whitespace=False
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.choices),
        help_text="One or more deal events to receive.",
    )
    funnel = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Only this funnel's deals; null for every funnel (the default).",
    )
    is_active = serializers.BooleanField(
        default=True,
        help_text="Off: nothing is posted. Turning it back on forgets past failures.",
    )


class WebhookSubscriptionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=WebhookEvent.choices))
    funnel = serializers.IntegerField(source="funnel_id", allow_null=True)
    is_active = serializers.BooleanField()
    failure_count = serializers.IntegerField(
        help_text="Deliveries failed in a row; the subscription turns itself off at a limit."
    )
    disabled_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class WebhookSubscriptionCreatedOutput(WebhookSubscriptionOutput):
    secret = serializers.CharField(
        help_text=(
            "Signs each body: `X-Voronka-Signature: sha256=HMAC-SHA256(secret, body)`. "
            "Shown only in this answer: store it now."
        )
    )


class WebhookDeliveryOutput(serializers.Serializer):
    id = serializers.IntegerField(help_text="Sent as `X-Voronka-Delivery`.")
    event = serializers.ChoiceField(choices=WebhookEvent.choices)
    status = serializers.ChoiceField(choices=WebhookDeliveryStatus.choices)
    attempts = serializers.IntegerField()
    response_code = serializers.IntegerField(
        allow_null=True, help_text="The receiver's HTTP status at the last attempt."
    )
    error = serializers.CharField(help_text="Why the last attempt failed; empty on success.")
    payload = serializers.DictField(help_text="The JSON body that is posted.")
    created_at = serializers.DateTimeField()
    delivered_at = serializers.DateTimeField(allow_null=True)


class WebhookDeliveryPageOutput(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next page's URL (a cursor).")
    previous = serializers.URLField(allow_null=True)
    results = WebhookDeliveryOutput(many=True)


class WebhookDeliveryFilterInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=WebhookDeliveryStatus.choices, required=False)


# ---------------------------------------------------------------- helpers


def _actor(request) -> User | None:
    """The person acting, or None for an integration key (the system)."""
    user = request.user if request.user.is_authenticated else None
    webhooks_check_manager(user)
    return user


def _subscriptions(request) -> QuerySet[WebhookSubscription]:
    subscriptions = WebhookSubscription.objects.all()
    api_key = request_api_key(request)
    if api_key is not None and api_key.funnel_id is not None:
        subscriptions = subscriptions.filter(funnel_id=api_key.funnel_id)
    return subscriptions.order_by("id")


def _subscription(request, pk: int) -> WebhookSubscription:
    subscription = _subscriptions(request).filter(pk=pk).first() if pk < 2**63 else None
    if subscription is None:
        raise NotFound(_("Webhook subscription %(id)s does not exist.") % {"id": pk})
    return subscription


def _funnel(request, data: dict) -> dict:
    """``data`` with ``funnel`` as a Funnel (or None), within the key's funnel if it has one."""
    api_key = request_api_key(request)
    key_funnel = api_key.funnel_id if api_key is not None else None
    if "funnel" not in data:
        return data
    funnel = None
    if data["funnel"] is not None:
        funnel = Funnel.objects.filter(pk=data["funnel"]).first()
        if funnel is None:
            raise InvalidInput(_("No such funnel."), fields={"funnel": _("No such funnel.")})
    if key_funnel is not None and (funnel is None or funnel.pk != key_funnel):
        raise Forbidden(_("This key works only in its own funnel."))
    return {**data, "funnel": funnel}


def _validated(request, *, partial: bool) -> dict:
    serializer = WebhookSubscriptionInput(data=request.data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# ---------------------------------------------------------------- views


class WebhookListApi(ApiView):
    read_scope = ApiScope.WEBHOOKS_MANAGE
    write_scope = ApiScope.WEBHOOKS_MANAGE

    @extend_schema(
        operation_id="webhooks_list",
        summary="Webhook subscriptions (administrators), without their secrets",
        responses={200: WebhookSubscriptionOutput(many=True), **error_responses()},
    )
    def get(self, request):
        _actor(request)
        return Response(WebhookSubscriptionOutput(_subscriptions(request), many=True).data)

    @extend_schema(
        operation_id="webhooks_create",
        summary="Subscribe a URL to deal events; the answer shows the signing secret once",
        description=(
            "Each event is posted as JSON after the change is committed, signed with "
            "`X-Voronka-Signature: sha256=<hex HMAC-SHA256 of the body>`, and retried with "
            "backoff; repeated failure turns the subscription off and tells the admins. "
            "A key with a funnel subscribes to its own funnel only (the default)."
        ),
        request=WebhookSubscriptionInput,
        responses={201: WebhookSubscriptionCreatedOutput, **error_responses(400)},
    )
    def post(self, request):
        actor = _actor(request)
        data = _validated(request, partial=False)
        api_key = request_api_key(request)
        if "funnel" not in data and api_key is not None and api_key.funnel_id is not None:
            data["funnel"] = api_key.funnel_id
        data = _funnel(request, data)
        subscription, _secret = webhook_subscription_create(actor=actor, **data)
        return Response(
            WebhookSubscriptionCreatedOutput(subscription).data, status=status.HTTP_201_CREATED
        )


class WebhookDetailApi(ApiView):
    read_scope = ApiScope.WEBHOOKS_MANAGE
    write_scope = ApiScope.WEBHOOKS_MANAGE

    @extend_schema(
        operation_id="webhooks_retrieve",
        parameters=[SUBSCRIPTION_ID],
        responses={200: WebhookSubscriptionOutput, **error_responses(404)},
    )
    def get(self, request, pk: int):
        _actor(request)
        return Response(WebhookSubscriptionOutput(_subscription(request, pk)).data)

    @extend_schema(
        operation_id="webhooks_update",
        summary="Change the URL, events, funnel or on/off (on again forgets past failures)",
        parameters=[SUBSCRIPTION_ID],
        request=WebhookSubscriptionInput,
        responses={200: WebhookSubscriptionOutput, **error_responses(400, 404)},
    )
    def patch(self, request, pk: int):
        actor = _actor(request)
        subscription = _subscription(request, pk)
        data = _funnel(request, _validated(request, partial=True))
        subscription = webhook_subscription_update(actor=actor, subscription=subscription, **data)
        return Response(WebhookSubscriptionOutput(subscription).data)

    @extend_schema(
        operation_id="webhooks_delete",
        summary="Delete the subscription and its delivery log (to pause it, PATCH is_active)",
        parameters=[SUBSCRIPTION_ID],
        responses={
            204: OpenApiResponse(description="Deleted."),
            **error_responses(404),
        },
    )
    def delete(self, request, pk: int):
        actor = _actor(request)
        webhook_subscription_delete(actor=actor, subscription=_subscription(request, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListApi(ApiView):
    read_scope = ApiScope.WEBHOOKS_MANAGE

    @extend_schema(
        operation_id="webhooks_deliveries_list",
        summary="The subscription's delivery log, newest first, with response codes",
        parameters=[SUBSCRIPTION_ID, WebhookDeliveryFilterInput],
        responses={200: WebhookDeliveryPageOutput, **error_responses(400, 404)},
    )
    def get(self, request, pk: int):
        _actor(request)
        subscription = _subscription(request, pk)
        params = WebhookDeliveryFilterInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        deliveries = WebhookDelivery.objects.filter(subscription=subscription)
        if "status" in params.validated_data:
            deliveries = deliveries.filter(status=params.validated_data["status"])
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(WebhookDeliveryOutput(page, many=True).data)
