"""Reads of the accounts app: the API key behind a secret, cached for a short time.

Every API request looks up its key. An integration key (one without a person)
is kept in the shared cache for ``API_KEY_CACHE_SECONDS``, so that most requests
skip the database; ``api_key_revoke`` and every other change of a key mark the
cached copy dropped, now and once committed, so a revoked key stops working at
once and no request can put back a copy it read before the change. A personal
token is always read from the database: its person may be deactivated at any
moment, by paths that know nothing of keys.
"""

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, transaction

from accounts.models import ApiKey

API_KEY_CACHE_SECONDS = 60
# After a key changes, its cache entry holds this mark for a while: requests read the
# database, and a copy a request read before the change cannot be put back (a copy
# is only ever added to an empty entry).
_DROPPED = "dropped"
_DROPPED_SECONDS = 2 * API_KEY_CACHE_SECONDS
_FIELDS = tuple(field.attname for field in ApiKey._meta.concrete_fields)


def _cache_key(key_hash: str) -> str:
    return f"apikey:{key_hash}"


def api_key_use_mark(key_hash: str) -> str:
    """The cache entry holding when the key's last use was written (``api_key_touch``)."""
    return f"apikey-used:{key_hash}"


def api_key_by_hash(key_hash: str) -> ApiKey | None:
    """The key with this hash (its person and funnel loaded when it has them), or None.

    Its ``use_marked_at`` is the cached time its last use was written (None if none),
    read in the same cache round trip as the key, for ``api_key_touch``.
    """
    found = cache.get_many([_cache_key(key_hash), api_key_use_mark(key_hash)])
    cached = found.get(_cache_key(key_hash))
    # By field name: a copy cached by a version with other fields is not used.
    if isinstance(cached, dict) and cached.keys() == set(_FIELDS):
        api_key = ApiKey.from_db(DEFAULT_DB_ALIAS, _FIELDS, [cached[name] for name in _FIELDS])
    else:
        api_key = ApiKey.objects.select_related("user", "funnel").filter(key_hash=key_hash).first()
        if api_key is not None and api_key.user_id is None and cached is None:
            values = {name: getattr(api_key, name) for name in _FIELDS}
            cache.add(_cache_key(key_hash), values, API_KEY_CACHE_SECONDS)
    if api_key is not None:
        api_key.use_marked_at = found.get(api_key_use_mark(key_hash))
    return api_key


def api_key_cache_drop(key_hash: str) -> None:
    """Mark the cached copy dropped now and again once the current transaction commits:
    in between, a concurrent request may have read the row as it was before."""
    cache.set(_cache_key(key_hash), _DROPPED, _DROPPED_SECONDS)
    transaction.on_commit(lambda: cache.set(_cache_key(key_hash), _DROPPED, _DROPPED_SECONDS))
