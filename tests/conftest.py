"""Fixtures shared by the whole suite: eager Celery, English messages, a cast of users
and a four-stage funnel they work in."""

import pytest
from django.db import connection
from django.utils import translation

from accounts.models import Role
from tests import factories


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "postgres_only: needs PostgreSQL row locks (skipped on the embedded SQLite default)",
    )
    # WhiteNoise looks for collected static files, which tests never collect.
    config.addinivalue_line("filterwarnings", "ignore:No directory at:UserWarning")


def pytest_collection_modifyitems(config, items):
    # Row locks and the history trigger exist only on PostgreSQL; SQLite serialises writers.
    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (DATABASE_URL=postgres://...)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def eager_celery():
    from crm.celery import app

    previous = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture(autouse=True)
def english():
    """Messages are asserted word for word, whatever LANGUAGE_CODE says."""
    with translation.override("en"):
        yield


# ---------------------------------------------------------------- factories


@pytest.fixture
def user_factory():
    return factories.UserFactory


@pytest.fixture
def team_factory():
    return factories.TeamFactory


@pytest.fixture
def funnel_factory():
    return factories.FunnelFactory


@pytest.fixture
def deal_factory():
    return factories.DealFactory


@pytest.fixture
def contact_factory():
    return factories.ContactFactory


# ---------------------------------------------------------------- the cast


@pytest.fixture
def head(db):
    return factories.UserFactory(username="head", role=Role.HEAD)


@pytest.fixture
def team(head):
    return factories.TeamFactory(name="Moscow", head=head)


@pytest.fixture
def manager(team):
    return factories.UserFactory(username="masha", team=team)


@pytest.fixture
def other_manager(team):
    return factories.UserFactory(username="petya", team=team)


@pytest.fixture
def outsider(db):
    """A manager of another team who does not work the funnel."""
    return factories.UserFactory(username="kolya", team=factories.TeamFactory(name="Kazan"))


@pytest.fixture
def sales_admin(db):
    return factories.UserFactory(username="boss", role=Role.ADMIN)


@pytest.fixture
def funnel(manager, other_manager):
    """B2B: stages S1..S4, worked by masha and petya."""
    return factories.FunnelFactory(name="B2B", members=[manager, other_manager])


@pytest.fixture
def stages(funnel):
    """The funnel's stages by name: ``stages["S2"]``."""
    return {stage.name: stage for stage in funnel.stages.all()}
