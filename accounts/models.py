from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils.translation import gettext_lazy as _


class Role(models.TextChoices):
    MANAGER = "manager", _("Manager")
    HEAD = "head", _("Head of sales")
    ADMIN = "admin", _("Administrator")


class Team(models.Model):
    """A sales team: managers led by one head of sales."""

    name = models.CharField(_("name"), max_length=120, unique=True)
    head = models.ForeignKey(
        "accounts.User",
        verbose_name=_("head of sales"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="headed_teams",
    )

    class Meta:
        ordering = ["name"]
        verbose_name = _("team")
        verbose_name_plural = _("teams")

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """A person who works in Voronka. The role decides what he sees and changes."""

    role = models.CharField(_("role"), max_length=16, choices=Role.choices, default=Role.MANAGER)
    team = models.ForeignKey(
        Team,
        verbose_name=_("team"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="members",
    )
    is_away = models.BooleanField(
        _("away"), default=False, help_text=_("Away managers get no new leads.")
    )

    class Meta:
        ordering = ["username"]
        verbose_name = _("user")
        verbose_name_plural = _("users")

    def __str__(self) -> str:
        return self.get_full_name() or self.username

    @property
    def is_admin_role(self) -> bool:
        return self.is_superuser or self.role == Role.ADMIN

    @property
    def is_head(self) -> bool:
        return self.role == Role.HEAD


class ApiScope(models.TextChoices):
    """What an API key may do. A key with only ``leads:write`` can do nothing else."""

    LEADS_WRITE = "leads:write", _("Post leads")
    DEALS_READ = "deals:read", _("Read deals")
    DEALS_WRITE = "deals:write", _("Change deals")
    FUNNELS_READ = "funnels:read", _("Read funnels")
    FUNNELS_WRITE = "funnels:write", _("Change funnel settings")
    ANALYTICS_READ = "analytics:read", _("Read analytics")
    WEBHOOKS_MANAGE = "webhooks:manage", _("Manage webhook subscriptions")


class ApiKey(models.Model):
    """A key for ``Authorization: Bearer KEY``: an integration's, or a person's token.

    Only a hash of the key is stored; the key itself is shown once, when created.
    A key with a ``user`` acts as that person (his role and visibility, narrowed by
    the scopes); a key without one is an integration that acts as the system,
    limited to its ``funnel`` when one is set.
    """

    name = models.CharField(_("name"), max_length=120)
    prefix = models.CharField(
        _("prefix"),
        max_length=16,
        editable=False,
        help_text=_("The start of the key, to tell keys apart."),
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    user = models.ForeignKey(
        User,
        verbose_name=_("person"),
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text=_("Set for a personal token; empty for an integration."),
    )
    funnel = models.ForeignKey(
        "funnels.Funnel",
        verbose_name=_("funnel"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text=_("Leads go here by default; the key reaches no other funnel."),
    )
    scopes = models.JSONField(_("scopes"), default=list, blank=True)
    attach_duplicates = models.BooleanField(
        _("attach duplicates"),
        default=True,
        help_text=_("A lead matching an open deal by phone or email is added to it as a note."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])
