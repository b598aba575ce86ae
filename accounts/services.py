"""Writes of the accounts app: API keys.

A key is ``vrk_`` followed by 43 random URL-safe characters. It is shown once;
only its SHA-256 is stored (the key is random and long, so a fast hash is
enough: there is nothing to brute-force).
"""

import hashlib
import secrets
from collections.abc import Iterable

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import ApiKey, ApiScope, User
from accounts.selectors import api_key_cache_drop, api_key_use_mark
from crm.errors import InvalidInput

KEY_PREFIX = "vrk_"
PREFIX_LENGTH = 12  # "vrk_" and 8 random characters: shown in the admin


def api_key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_set_secret(api_key: ApiKey) -> str:
    """Give an unsaved key a new secret; return the secret, which is never stored."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key.prefix = raw_key[:PREFIX_LENGTH]
    api_key.key_hash = api_key_hash(raw_key)
    return raw_key


def _scopes_clean(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(scopes))
    unknown = [scope for scope in scopes if scope not in ApiScope.values]
    if unknown:
        raise InvalidInput(
            _("Unknown scopes: %(scopes)s. Choose from: %(known)s.")
            % {"scopes": ", ".join(unknown), "known": ", ".join(ApiScope.values)},
            fields={"scopes": _("Unknown scope.")},
        )
    if not scopes:
        raise InvalidInput(
            _("A key needs at least one scope."), fields={"scopes": _("Choose a scope.")}
        )
    return scopes


@transaction.atomic
def api_key_create(
    *,
    name: str,
    scopes: Iterable[str],
    funnel=None,
    user: User | None = None,
    attach_duplicates: bool = True,
) -> tuple[ApiKey, str]:
    """Create a key; return it and the secret to show once."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput(_("A key needs a name."), fields={"name": _("Enter a name.")})
    api_key = ApiKey(
        name=name,
        scopes=_scopes_clean(scopes),
        funnel=funnel,
        user=user,
        attach_duplicates=attach_duplicates,
    )
    raw_key = api_key_set_secret(api_key)
    api_key.save()
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> None:
    """Revoke a key at once (its cached copy is dropped on commit). Revoking twice keeps
    the first date."""
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key_cache_drop(api_key.key_hash)


def api_key_changed(*, api_key: ApiKey) -> None:
    """A key was edited (the admin): requests see the change from the next commit on."""
    api_key_cache_drop(api_key.key_hash)


def api_key_touch(*, api_key: ApiKey, min_interval_seconds: int = 60) -> None:
    """Record the key's use, at most once a minute per key: the time of the last write
    is kept in the shared cache, which every worker reads (not in the key's cached
    copy, which only a read of the database may store). A key from ``api_key_by_hash``
    brings that time along (``use_marked_at``): no second read of the cache."""
    now = timezone.now()
    mark = api_key_use_mark(api_key.key_hash)
    last = api_key.use_marked_at if hasattr(api_key, "use_marked_at") else cache.get(mark)
    if last is None or (now - last).total_seconds() >= min_interval_seconds:
        cache.set(mark, now, 2 * min_interval_seconds)
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
