"""factory_boy factories. Funnels and deals are made through the service functions,
so a factory-built deal has its first StageChange and its tasks like any other."""

import factory
from factory.django import DjangoModelFactory

from accounts.models import Role, Team, User
from deals.models import Contact, Deal
from deals.services import deal_create
from funnels.models import Funnel, LossReason, Stage
from funnels.services import funnel_create

DEFAULT_STAGES = ("S1", "S2", "S3", "S4")


class TeamFactory(DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Team {n}")


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    first_name = factory.LazyAttribute(lambda user: user.username.capitalize())
    role = Role.MANAGER
    # No password hashing: the suite logs in with force_login.
    password = "!"


class FunnelFactory(DjangoModelFactory):
    """``FunnelFactory(stages=["S1", {"name": "S2", "required_fields": ["amount"]}])``."""

    class Meta:
        model = Funnel

    name = factory.Sequence(lambda n: f"Funnel {n}")
    stages = DEFAULT_STAGES
    members = ()

    @classmethod
    def _create(cls, model_class, **kwargs):
        return funnel_create(actor=None, **kwargs)


class StageFactory(DjangoModelFactory):
    """A bare stage row, for constraint tests. Funnels get stages through ``funnel_create``."""

    class Meta:
        model = Stage

    funnel = factory.SubFactory(FunnelFactory, stages=["First"])
    name = factory.Sequence(lambda n: f"Stage {n}")
    position = factory.Sequence(lambda n: n + 100)


class LossReasonFactory(DjangoModelFactory):
    class Meta:
        model = LossReason

    funnel = factory.SubFactory(FunnelFactory)
    name = factory.Sequence(lambda n: f"Reason {n}")
    position = factory.Sequence(lambda n: n + 100)


class ContactFactory(DjangoModelFactory):
    class Meta:
        model = Contact

    name = factory.Sequence(lambda n: f"Client {n}")


class DealFactory(DjangoModelFactory):
    """A deal opened by the system with ``deal_create`` at the funnel's first stage."""

    class Meta:
        model = Deal

    funnel = factory.SubFactory(FunnelFactory)
    title = factory.Sequence(lambda n: f"Deal {n}")
    owner = None
    stage = None
    values = None

    @classmethod
    def _create(cls, model_class, **kwargs):
        return deal_create(actor=None, **kwargs)
