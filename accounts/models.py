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
