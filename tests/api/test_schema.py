"""The OpenAPI schema and the Swagger UI, and a bounded schemathesis run against the schema:
no server error and no response that breaks the schema."""

import pytest
from django.core.wsgi import get_wsgi_application

pytestmark = pytest.mark.django_db


def test_the_schema_documents_every_endpoint_and_the_error_shape(client):
    response = client.get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = response.json()
    assert sorted(schema["paths"]) == [
        "/api/v1/analytics/funnels/{id}/recompute/",
        "/api/v1/analytics/funnels/{id}/report/",
        "/api/v1/analytics/snapshots/",
        "/api/v1/analytics/snapshots/{id}/",
        "/api/v1/deals/",
        "/api/v1/deals/{id}/",
        "/api/v1/deals/{id}/assign/",
        "/api/v1/deals/{id}/history/",
        "/api/v1/deals/{id}/lose/",
        "/api/v1/deals/{id}/move/",
        "/api/v1/deals/{id}/notes/",
        "/api/v1/deals/{id}/postpone/",
        "/api/v1/deals/{id}/reopen/",
        "/api/v1/deals/{id}/tasks/",
        "/api/v1/deals/{id}/win/",
        "/api/v1/funnels/",
        "/api/v1/funnels/{id}/",
        "/api/v1/funnels/{id}/custom-fields/",
        "/api/v1/funnels/{id}/custom-fields/{key}/",
        "/api/v1/funnels/{id}/loss-reasons/",
        "/api/v1/funnels/{id}/loss-reasons/{reason_id}/",
        "/api/v1/funnels/{id}/stages/",
        "/api/v1/funnels/{id}/stages/reorder/",
        "/api/v1/funnels/{id}/stages/{stage_id}/",
        "/api/v1/leads/",
        "/api/v1/webhooks/",
        "/api/v1/webhooks/{id}/",
        "/api/v1/webhooks/{id}/deliveries/",
    ]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert {"401", "403", "429"} <= documented, (path, method)
    leads = schema["paths"]["/api/v1/leads/"]["post"]
    assert {"201", "200", "400", "413", "422"} <= set(leads["responses"])
    # The signing secret is in the answer to create only.
    components = schema["components"]["schemas"]
    assert "secret" in components["WebhookSubscriptionCreatedOutput"]["properties"]
    assert "secret" not in components["WebhookSubscriptionOutput"]["properties"]
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key or personal token: `Authorization: Bearer vrk_…`.",
    }


def test_swagger_ui_is_served_with_local_assets(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn.jsdelivr.net" not in html


schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture
def auth_header(sales_admin, funnel):
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from accounts.models import ApiScope
    from accounts.services import api_key_create
    from tests.factories import DealFactory

    DealFactory(funnel=funnel, title="Existing")
    _api_key, raw_key = api_key_create(name="fuzz", scopes=ApiScope.values, user=sales_admin)
    # Schemathesis calls the WSGI app directly: keep Django from closing the test's
    # connection (and its open transaction) after each request, as its test client does.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield {"Authorization": f"Bearer {raw_key}"}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_keeps_to_its_schema(case, auth_header):
    case.call_and_validate(
        headers=auth_header, checks=[not_a_server_error, response_schema_conformance]
    )
