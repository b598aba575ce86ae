"""crm.db.sent_with_next: a statement sent in the same round trip as the next one."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from crm.db import sent_with_next

pytestmark = pytest.mark.django_db

MARK = "UPDATE funnels_funnel SET name = name WHERE id = %s"


def test_the_statement_goes_with_the_next_one_and_its_result_is_the_next_ones(funnel):
    with (
        CaptureQueriesContext(connection) as queries,
        sent_with_next(MARK, [funnel.pk]),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT name FROM funnels_funnel WHERE id = %s", [funnel.pk])
        assert cursor.fetchall() == [(funnel.name,)]
        cursor.execute("SELECT 2")
        assert cursor.fetchall() == [(2,)]

    sent = [query["sql"] for query in queries.captured_queries]
    if connection.vendor == "postgresql":
        assert len(sent) == 2
        assert sent[0].startswith("UPDATE funnels_funnel") and "SELECT name" in sent[0]
    else:  # on its own, at once
        assert len(sent) == 3
        assert sent[0].startswith("UPDATE funnels_funnel")


def test_with_nothing_inside_the_statement_runs_at_the_end(funnel):
    with CaptureQueriesContext(connection) as queries, sent_with_next(MARK, [funnel.pk]):
        pass

    assert [query["sql"].startswith("UPDATE funnels_funnel") for query in queries] == [True]


def test_before_a_statement_without_parameters_it_runs_on_its_own(funnel):
    with (
        CaptureQueriesContext(connection) as queries,
        sent_with_next(MARK, [funnel.pk]),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT 1")
        assert cursor.fetchall() == [(1,)]

    sent = [query["sql"] for query in queries.captured_queries]
    assert len(sent) == 2
    assert sent[0].startswith("UPDATE funnels_funnel")
    assert sent[1] == "SELECT 1"
