"""API fixtures: keys and clients that send ``Authorization: Bearer KEY``."""

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiScope
from accounts.services import api_key_create


@pytest.fixture
def make_client():
    """``make_client(scopes=[...], funnel=..., user=...)``: an APIClient with a fresh key."""

    def make(*, scopes=(ApiScope.LEADS_WRITE,), funnel=None, user=None, **options):
        api_key, raw_key = api_key_create(
            name="test", scopes=scopes, funnel=funnel, user=user, **options
        )
        client = APIClient(HTTP_ACCEPT_LANGUAGE="en")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        client.api_key = api_key
        return client

    return make


@pytest.fixture
def leads_client(make_client, funnel):
    """An integration key of the B2B funnel that may only post leads."""
    return make_client(funnel=funnel)


@pytest.fixture
def everything():
    return list(ApiScope.values)
