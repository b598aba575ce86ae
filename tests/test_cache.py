"""crm.cache.RedisCache: Django's Redis cache with one client per connection pool."""

import pytest
from django.conf import settings

from crm.cache import RedisCache

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (REDIS_URL=...)")


def test_the_redis_cache_keeps_one_client_and_works_as_django_s():
    cache = RedisCache(settings.REDIS_URL, {"KEY_PREFIX": "test-crm-cache"})
    client = cache._cache.get_client("a", write=True)

    assert cache._cache.get_client("b") is client
    cache.set("a", {"n": 1}, 5)
    assert cache.add("a", 2, 5) is False
    assert cache.get("a") == {"n": 1}
    assert (cache.add("c", 0, 5), cache.incr("c"), cache.incr("c")) == (True, 1, 2)
    cache.delete_many(["a", "c"])
    assert (cache.get("a"), cache.get("c")) == (None, None)
