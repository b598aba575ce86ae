"""Reads of the accounts app: the API key behind a secret, cached for a short time.

Every API request looks up its key. An integration key (one without a person)
is kept in the shared cache for ``API_KEY_CACHE_SECONDS``, so that most requests
skip the database; ``api_key_revoke`` and every other change of a key drop the
cached copy once committed, so a revoked key stops working at once. A personal
token is always read from the database: its person may be deactivated at any
moment, by paths that know nothing of keys.
"""

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, transaction

from accounts.models import ApiKey

API_KEY_CACHE_SECONDS = 60
_FIELDS = tuple(field.attname for field in ApiKey._meta.concrete_fields)


def _cache_key(key_hash: str) -> str:
    return f"apikey:{key_hash}"


def api_key_by_hash(key_hash: str) -> ApiKey | None:
    """The key with this hash (its person and funnel loaded when it has them), or None."""
    values = cache.get(_cache_key(key_hash))
    if values is not None:
        return ApiKey.from_db(DEFAULT_DB_ALIAS, _FIELDS, values)
    api_key = ApiKey.objects.select_related("user", "funnel").filter(key_hash=key_hash).first()
    if api_key is not None:
        api_key_cache_store(api_key)
    return api_key


def api_key_cache_store(api_key: ApiKey) -> None:
    """Keep an integration key's current row in the cache (personal tokens: never)."""
    if api_key.user_id is None:
        values = tuple(getattr(api_key, name) for name in _FIELDS)
        cache.set(_cache_key(api_key.key_hash), values, API_KEY_CACHE_SECONDS)


def api_key_cache_drop(key_hash: str) -> None:
    """Forget the cached copy now and again once the current transaction commits: in
    between, a concurrent request may have cached the row as it was before."""
    cache.delete(_cache_key(key_hash))
    transaction.on_commit(lambda: cache.delete(_cache_key(key_hash)))
