"""API authentication: ``Authorization: Bearer KEY`` and scope checks.

After authentication ``request.auth`` is the ``ApiKey`` (``None`` for a browser
session). A personal token sets ``request.user`` to its person; an integration
key leaves ``request.user`` anonymous and acts as the system, within its funnel.
"""

from django.contrib.auth.models import AnonymousUser
from django.utils.translation import gettext_lazy as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from accounts.models import ApiKey
from accounts.selectors import api_key_by_hash
from accounts.services import api_key_hash, api_key_touch


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(_("Send the key as: Authorization: Bearer KEY."))
        try:
            raw_key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(_("The API key is invalid.")) from None
        api_key = api_key_by_hash(api_key_hash(raw_key))
        if api_key is None:
            raise exceptions.AuthenticationFailed(_("The API key is invalid."))
        if not api_key.is_active:
            raise exceptions.AuthenticationFailed(_("The API key has been revoked."))
        if api_key.user is not None and not api_key.user.is_active:
            raise exceptions.AuthenticationFailed(_("The key's owner is deactivated."))
        api_key_touch(api_key=api_key)
        return (api_key.user or AnonymousUser(), api_key)

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return f'{self.keyword} realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key or personal token: `Authorization: Bearer vrk_…`.",
        }


def request_api_key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


class HasScope(permissions.BasePermission):
    """The caller is authenticated and its key (if any) has the view's scope.

    A view names ``read_scope`` (safe methods) and ``write_scope`` (the rest).
    A browser session has every scope its person's role allows; a key only
    those it lists. An integration key (no person) is a client in its own right.
    """

    message = _("This API key's scopes do not allow this request.")

    def has_permission(self, request, view) -> bool:
        api_key = request_api_key(request)
        if api_key is None and not (request.user and request.user.is_authenticated):
            raise exceptions.NotAuthenticated()
        safe = request.method in permissions.SAFE_METHODS
        scope = getattr(view, "read_scope" if safe else "write_scope", None)
        if scope is None:
            return False
        return api_key is None or api_key.has_scope(scope)
