"""What every API view shares: authentication, scopes, throttling, the body limit,
cursor pagination and one shape for every error.

Every error answers ``{"code": ..., "detail": ..., "fields": {name: message}}``:
a ``DomainError`` from a service function keeps its code and status (400, 403,
404, 409, 422); DRF's own errors (validation, authentication, throttling) are
put in the same shape, nested field names joined with dots (``contact.phone``,
``leads.3.amount``).
"""

import math

from django.conf import settings
from django.core.cache.backends.redis import RedisCacheClient
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.translation import gettext as _
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView, set_rollback
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.authentication import ApiKeyAuthentication, HasScope, request_api_key
from crm.errors import DomainError

# Used when settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] does not name the scope.
DEFAULT_THROTTLE_RATES = {"api": "1200/min", "leads": "6000/min"}
# The largest request body the API reads: a batch of 1,000 leads fits with room to spare.
DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024

_DRF_CODES = {"permission_denied": "forbidden", "not_found": "not_found"}


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


def flatten_errors(detail, prefix: str = "") -> dict[str, str]:
    """DRF's nested error detail as {"a.b.0.c": "message"}."""
    if isinstance(detail, dict):
        fields: dict[str, str] = {}
        for name, value in detail.items():
            fields.update(flatten_errors(value, f"{prefix}.{name}" if prefix else str(name)))
        return fields
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix or "non_field_errors": " ".join(str(item) for item in detail)}
        fields = {}
        for index, item in enumerate(detail):
            if item:
                fields.update(flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)))
        return fields
    return {prefix or "non_field_errors": str(detail)}


def api_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        set_rollback()
        return Response(exc.as_dict(), status=exc.http_status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "code": "invalid",
            "detail": _("The request has errors: fix the marked fields."),
            "fields": flatten_errors(exc.detail),
        }
    else:
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        response.data = {
            "code": _DRF_CODES.get(code, code),
            "detail": str(exc.detail),
            "fields": {},
        }
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        response["Retry-After"] = str(max(1, math.ceil(exc.wait)))
    return response


class ApiRateThrottle(SimpleRateThrottle):
    """Requests per API key, per person, or per address for anonymous callers.

    A counter per fixed window (``rate`` = N per second, minute, hour or day),
    incremented atomically in the shared cache: constant work per request,
    where DRF's default keeps and rewrites the time of every request in the
    window. A client may burst up to twice the rate across a window's edge.
    """

    scope = "api"

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        now = self.timer()
        window = int(now // self.duration)
        count = self._count(f"{self.key}:{window}", self.duration + 1)
        self._retry_after = (window + 1) * self.duration - now
        return count <= self.num_requests

    def _count(self, key: str, timeout: int) -> int:
        """Add one to the window's counter; return it. On Redis one round trip (a
        pipeline of SET NX and INCR), elsewhere the cache's add and incr."""
        client = getattr(self.cache, "_cache", None)
        if isinstance(client, RedisCacheClient):
            key = self.cache.make_and_validate_key(key)
            pipe = client.get_client(key, write=True).pipeline(transaction=False)
            pipe.set(key, 0, ex=timeout, nx=True)
            pipe.incr(key)
            return pipe.execute()[1]
        self.cache.add(key, 0, timeout)
        try:
            return self.cache.incr(key)
        except ValueError:  # expired between add and incr
            self.cache.add(key, 1, timeout)
            return 1

    def wait(self) -> float:
        return max(self._retry_after, 1.0)

    def get_rate(self) -> str | None:
        # Read at each request, not at import, so that settings overrides take effect.
        rates = api_settings.DEFAULT_THROTTLE_RATES or {}
        return rates.get(self.scope, DEFAULT_THROTTLE_RATES.get(self.scope))

    def get_cache_key(self, request, view) -> str:
        api_key = request_api_key(request)
        if api_key is not None:
            ident = f"key:{api_key.prefix}:{api_key.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return f"throttle:{self.scope}:{ident}"


class LeadIntakeRateThrottle(ApiRateThrottle):
    scope = "leads"


class ApiView(APIView):
    """Base of every ``/api/v1/`` view. Subclasses name ``read_scope``/``write_scope``."""

    authentication_classes = [ApiKeyAuthentication, SessionAuthentication]
    permission_classes = [HasScope]
    throttle_classes = [ApiRateThrottle]
    schema = AutoSchema()
    read_scope: str | None = None
    write_scope: str | None = None

    def get_exception_handler(self):
        return api_exception_handler

    def initial(self, request, *args, **kwargs) -> None:
        limit = getattr(settings, "API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise PayloadTooLarge(
                _("The request body is %(size)s bytes; the limit is %(limit)s.")
                % {"size": length, "limit": limit}
            )
        super().initial(request, *args, **kwargs)


class NewestFirstPagination(CursorPagination):
    """Stable under inserts: a cursor, not a page number."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


# ---------------------------------------------------------------- documentation


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable: invalid, forbidden, not_found, …")
    detail = serializers.CharField(help_text="What went wrong, for a person.")
    fields = serializers.DictField(
        child=serializers.CharField(), help_text="Field name (dotted when nested): message."
    )


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The documented errors of an endpoint: always 401, 403 and 429, plus ``statuses``."""
    descriptions = {
        400: "Invalid input: `fields` names each bad field.",
        401: "No or invalid credentials (`Authorization: Bearer KEY` or a session).",
        403: "The key's scopes or the person's role do not allow this.",
        404: "No such object, or not visible to the caller.",
        409: "Conflict: the object changed meanwhile (stale `expected_version`).",
        413: "The request body is larger than the limit.",
        422: "The Idempotency-Key was used before for a different request.",
        429: "Too many requests: wait for `Retry-After` seconds.",
    }
    return {
        status: OpenApiResponse(ErrorSerializer, description=descriptions[status])
        for status in sorted({401, 403, 429, *statuses})
    }
