"""Concurrent lead intake against a live server on PostgreSQL: retries arriving at the
same moment make one deal, and round-robin stays fair across parallel requests."""

import json
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest

from accounts.models import ApiScope
from accounts.services import api_key_create
from deals.models import Deal, IntakeIdempotencyRecord, LeadReceipt
from tests.factories import FunnelFactory, UserFactory

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db(transaction=True)]


def post_at_once(url: str, requests: list[tuple[dict, dict]]) -> list[tuple[int, dict, dict]]:
    """POST each (body, headers) from its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(requests))
    outcomes: list = [None] * len(requests)

    def run(index, body, headers):
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept-Language": "en", **headers},
            method="POST",
        )
        barrier.wait(timeout=10)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                outcomes[index] = (response.status, json.load(response), dict(response.headers))
        except urllib.error.HTTPError as error:
            outcomes[index] = (error.code, json.load(error), dict(error.headers))

    threads = [
        threading.Thread(target=run, args=(i, body, headers))
        for i, (body, headers) in enumerate(requests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


@pytest.fixture
def cast():
    managers = [UserFactory(username=name) for name in ("anna", "boris", "vera")]
    away = UserFactory(username="gleb", is_away=True)
    funnel = FunnelFactory(name="Site", members=[*managers, away])
    _api_key, raw_key = api_key_create(name="form", scopes=[ApiScope.LEADS_WRITE], funnel=funnel)
    return funnel, {"Authorization": f"Bearer {raw_key}"}


def test_identical_requests_at_the_same_moment_make_one_deal(live_server, cast):
    _funnel, auth = cast
    body = {"contact": {"name": "Ivan", "phone": "+7 900 123 45 67"}, "source": "site"}
    headers = {**auth, "Idempotency-Key": "retry-1"}

    outcomes = post_at_once(f"{live_server.url}/api/v1/leads/", [(body, headers)] * 8)

    assert Deal.objects.count() == 1
    deal = Deal.objects.get()
    assert [(status, result["deal_id"]) for status, result, _ in outcomes] == [(201, deal.pk)] * 8
    assert sorted(h.get("Idempotent-Replayed", "no") for *_, h in outcomes) == ["no"] + ["true"] * 7
    assert IntakeIdempotencyRecord.objects.count() == 1


def test_identical_batches_at_the_same_moment_make_their_deals_once(live_server, cast):
    _funnel, auth = cast
    batch = {"leads": [{"company": f"C{n}"} for n in range(20)]}
    headers = {**auth, "Idempotency-Key": "batch-1"}

    outcomes = post_at_once(f"{live_server.url}/api/v1/leads/", [(batch, headers)] * 4)

    assert Deal.objects.count() == 20
    assert len({json.dumps(result, sort_keys=True) for _, result, _ in outcomes}) == 1


def test_the_same_external_id_at_the_same_moment_makes_one_deal(live_server, cast):
    _funnel, auth = cast
    requests = [({"company": "ACME", "external_id": "lead-7"}, auth)] * 6

    outcomes = post_at_once(f"{live_server.url}/api/v1/leads/", requests)

    deal = Deal.objects.get()
    assert [result["deal_id"] for _, result, _ in outcomes] == [deal.pk] * 6
    assert sorted(result["replayed"] for _, result, _ in outcomes) == [False] + [True] * 5
    assert LeadReceipt.objects.count() == 1


def test_one_client_sending_twice_at_once_gets_one_deal(live_server, cast):
    _funnel, auth = cast
    requests = [
        ({"contact": {"phone": "+7 900 555 00 11"}, "title": f"T{n}"}, auth) for n in range(5)
    ]

    outcomes = post_at_once(f"{live_server.url}/api/v1/leads/", requests)

    assert Deal.objects.count() == 1
    assert sorted(result["status"] for _, result, _ in outcomes) == ["attached"] * 4 + ["created"]


def test_round_robin_is_fair_across_concurrent_requests(live_server, cast):
    _funnel, auth = cast
    requests = [({"company": f"Client {n}"}, auth) for n in range(9)]

    outcomes = post_at_once(f"{live_server.url}/api/v1/leads/", requests)

    assert [status for status, _, _ in outcomes] == [201] * 9
    assert Counter(Deal.objects.values_list("owner__username", flat=True)) == {
        "anna": 3,
        "boris": 3,
        "vera": 3,
    }
