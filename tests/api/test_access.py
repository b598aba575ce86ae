"""API keys and personal tokens: authentication, scopes, revocation, throttling."""

import io
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiKey, ApiScope
from accounts.selectors import api_key_by_hash
from accounts.services import api_key_changed, api_key_hash, api_key_revoke, api_key_touch
from deals.models import Deal

pytestmark = pytest.mark.django_db

LEAD = {"company": "ACME"}


def test_create_api_key_prints_the_key_alone_on_the_last_line(funnel):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_api_key",
        "--name",
        "Site form",
        "--funnel",
        "B2B",
        "--scope",
        "leads:write",
        stdout=out,
        stderr=err,
    )

    raw_key = out.getvalue().strip().splitlines()[-1]
    api_key = ApiKey.objects.get()
    assert raw_key.startswith("vrk_") and len(raw_key) == 47
    assert (api_key.name, api_key.funnel, api_key.scopes) == ("Site form", funnel, ["leads:write"])
    assert (api_key.key_hash, api_key.prefix) == (api_key_hash(raw_key), raw_key[:12])
    assert raw_key not in err.getvalue()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.post("/api/v1/leads/", LEAD, format="json").status_code == 201


def test_create_api_key_refuses_an_unknown_funnel(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No funnel named “Nope”"):
        call_command("create_api_key", "--name", "x", "--funnel", "Nope", stdout=io.StringIO())


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "Authentication credentials were not provided."),
        ("Bearer vrk_wrong", "The API key is invalid."),
        ("Bearer", "Send the key as: Authorization: Bearer KEY."),
    ],
)
def test_without_a_valid_key_the_answer_is_401(header, detail, db):
    client = APIClient(HTTP_ACCEPT_LANGUAGE="en")
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post("/api/v1/leads/", LEAD, format="json")
    assert response.status_code == 401
    assert response.json()["detail"] == detail
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize("used_before", [False, True])
def test_a_revoked_key_is_refused(leads_client, used_before):
    # A key used before is in the cache: the revocation drops it there too.
    if used_before:
        assert leads_client.post("/api/v1/leads/", LEAD, format="json").status_code == 201
    api_key_revoke(api_key=leads_client.api_key)

    response = leads_client.post("/api/v1/leads/", LEAD, format="json")

    assert (response.status_code, response.json()["detail"]) == (
        401,
        "The API key has been revoked.",
    )
    assert Deal.objects.count() == (1 if used_before else 0)


def test_a_copy_read_before_the_revocation_cannot_bring_the_key_back(leads_client):
    # A request read the key from the database, the revocation committed, then that
    # request stored its copy and recorded its use: the key stays refused.
    before = api_key_by_hash(leads_client.api_key.key_hash)
    cache.delete(f"apikey:{before.key_hash}")  # the request's read found no copy
    api_key_revoke(api_key=leads_client.api_key)
    stale = {
        field.attname: getattr(before, field.attname) for field in ApiKey._meta.concrete_fields
    }
    assert not cache.add(f"apikey:{before.key_hash}", stale, 60)  # it cannot store it
    api_key_touch(api_key=before)

    response = leads_client.post("/api/v1/leads/", LEAD, format="json")

    assert (response.status_code, response.json()["detail"]) == (
        401,
        "The API key has been revoked.",
    )


def test_a_changed_key_is_read_again(leads_client):
    assert leads_client.post("/api/v1/leads/", LEAD, format="json").status_code == 201
    ApiKey.objects.filter(pk=leads_client.api_key.pk).update(scopes=[ApiScope.DEALS_READ])
    api_key_changed(api_key=leads_client.api_key)

    assert leads_client.post("/api/v1/leads/", LEAD, format="json").status_code == 403
    assert Deal.objects.count() == 1


def _key_statements(queries) -> list[str]:
    return [q["sql"].split()[0] for q in queries if "accounts_apikey" in q["sql"]]


def test_an_integration_key_is_read_from_the_database_once_then_from_the_cache(leads_client):
    with CaptureQueriesContext(connection) as first:
        leads_client.post("/api/v1/leads/", LEAD, format="json")
    with CaptureQueriesContext(connection) as second:
        leads_client.post("/api/v1/leads/", LEAD, format="json")

    assert _key_statements(first.captured_queries) == ["SELECT", "UPDATE"]  # read, last use
    assert _key_statements(second.captured_queries) == []


def test_a_personal_token_is_read_from_the_database_every_time(make_client, manager, funnel):
    client = make_client(user=manager, funnel=funnel)
    client.post("/api/v1/leads/", LEAD, format="json")
    with CaptureQueriesContext(connection) as second:
        client.post("/api/v1/leads/", LEAD, format="json")

    assert _key_statements(second.captured_queries) == ["SELECT"]


def test_use_is_written_at_most_once_a_minute(leads_client, monkeypatch):
    start = timezone.now()
    for seconds in (0, 30, 59, 61, 90):
        monkeypatch.setattr(timezone, "now", lambda s=seconds: start + timedelta(seconds=s))
        assert leads_client.post("/api/v1/leads/", LEAD, format="json").status_code == 201
        leads_client.api_key.refresh_from_db()
        assert leads_client.api_key.last_used_at == start + timedelta(
            seconds=0 if seconds < 61 else 61
        )


def test_use_is_recorded(leads_client):
    assert leads_client.api_key.last_used_at is None
    leads_client.post("/api/v1/leads/", LEAD, format="json")
    leads_client.api_key.refresh_from_db()
    assert (timezone.now() - leads_client.api_key.last_used_at).total_seconds() < 60


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/deals/"),
        ("post", "/api/v1/deals/"),
        ("get", "/api/v1/deals/1/"),
        ("post", "/api/v1/deals/1/win/"),
        ("get", "/api/v1/funnels/"),
        ("get", "/api/v1/analytics/snapshots/"),
        ("get", "/api/v1/analytics/funnels/1/report/"),
        ("post", "/api/v1/analytics/funnels/1/recompute/"),
    ],
)
def test_a_lead_intake_key_can_do_nothing_else(leads_client, method, url):
    response = getattr(leads_client, method)(url, {}, format="json")
    assert response.status_code == 403
    assert response.json() == {
        "code": "forbidden",
        "detail": "This API key's scopes do not allow this request.",
        "fields": {},
    }


def test_a_read_only_key_cannot_write(make_client, funnel):
    client = make_client(scopes=[ApiScope.DEALS_READ], funnel=funnel)
    assert client.get("/api/v1/deals/").status_code == 200
    assert client.post("/api/v1/deals/", {"funnel": funnel.pk, "title": "x"}).status_code == 403
    assert client.post("/api/v1/leads/", LEAD, format="json").status_code == 403


def test_a_browser_session_reaches_the_api(manager, funnel):
    client = APIClient(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(manager)
    assert client.get("/api/v1/deals/").status_code == 200


@override_settings(
    REST_FRAMEWORK={
        "DEFAULT_THROTTLE_RATES": {"api": "2/min", "leads": "2/min"},
    }
)
def test_too_many_requests_get_429_with_retry_after(leads_client, make_client, funnel):
    responses = [
        leads_client.post("/api/v1/leads/", {"company": f"C{n}"}, format="json") for n in range(3)
    ]

    assert [r.status_code for r in responses] == [201, 201, 429]
    assert responses[2].json()["code"] == "throttled"
    assert 1 <= int(responses[2].headers["Retry-After"]) <= 60
    assert Deal.objects.count() == 2
    # Counted per key: another key is not slowed down.
    other = make_client(funnel=funnel)
    assert other.post("/api/v1/leads/", LEAD, format="json").status_code == 201
