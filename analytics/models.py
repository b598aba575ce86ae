"""Per-deal summaries that make the funnel maths fast, and stored snapshots.

``StageReach`` and ``StageTime`` are derived from the immutable history
(``deals.StageChange`` / ``deals.StatusChange``). The service functions keep
them up to date in the same transaction as the change (``analytics/facts.py``),
and ``facts_rebuild`` recomputes them from the history alone, so they can be
checked against it at any time.
"""

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class StageReach(models.Model):
    """The moment a deal first reached the stage at ``position`` (entered it,
    skipped over it, or was won). A backward move never removes a row."""

    # No index of their own: ``stagereach_once`` starts with the deal and the indexes
    # below with the funnel, and each index costs every new deal.
    deal = models.ForeignKey(
        "deals.Deal", on_delete=models.CASCADE, related_name="reaches", db_index=False
    )
    funnel = models.ForeignKey(
        "funnels.Funnel", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    # The deal's entry into the funnel (its created_at), so cohort windows need no join.
    entered_at = models.DateTimeField()
    position = models.PositiveIntegerField()
    reached_at = models.DateTimeField()

    class Meta:
        verbose_name = _("stage reach")
        verbose_name_plural = _("stage reaches")
        constraints = [
            models.UniqueConstraint(fields=["deal", "position"], name="stagereach_once"),
        ]
        indexes = [
            # Covering (PostgreSQL): calendar mode reads the reaches that cross the
            # period's edge from these indexes alone.
            models.Index(
                fields=["funnel", "reached_at"],
                include=["position", "entered_at", "deal"],
                name="stagereach_calendar_idx",
            ),
            models.Index(
                fields=["funnel", "entered_at"],
                include=["position", "reached_at", "deal"],
                name="stagereach_cohort_idx",
            ),
            # How long after the deal's entry: a conversion window's late reaches.
            models.Index(
                models.F("funnel"),
                models.F("reached_at") - models.F("entered_at"),
                include=["position", "entered_at", "deal"],
                name="stagereach_lag_idx",
            ),
            # A reach before the deal's entry (imported history can have one): normally
            # empty, so calendar mode's edge corrections look these up at no cost.
            models.Index(
                fields=["funnel", "reached_at"],
                include=["position", "entered_at", "deal"],
                condition=models.Q(reached_at__lt=models.F("entered_at")),
                name="stagereach_before_entry_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"deal {self.deal_id} reached position {self.position} at {self.reached_at}"


class StageTime(models.Model):
    """Time a deal spent in a stage, summed over its visits.

    ``seconds`` counts finished visits only; ``visit_started_at`` is set while
    the deal is in the stage (an unfinished visit is not a sample).
    """

    # No index of its own: ``stagetime_once`` starts with it.
    deal = models.ForeignKey(
        "deals.Deal", on_delete=models.CASCADE, related_name="stage_times", db_index=False
    )
    funnel = models.ForeignKey("funnels.Funnel", on_delete=models.CASCADE, related_name="+")
    stage = models.ForeignKey("funnels.Stage", on_delete=models.CASCADE, related_name="+")
    # The deal's current owner, kept on reassignment, so per-manager time in stage needs no join.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The deal's entry into the funnel (its created_at), so cohort figures need no join.
    entered_at = models.DateTimeField()
    seconds = models.FloatField(default=0)
    visits = models.PositiveIntegerField(default=0)
    visit_started_at = models.DateTimeField(null=True, blank=True)
    last_left_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("time in stage")
        verbose_name_plural = _("times in stage")
        constraints = [
            models.UniqueConstraint(fields=["deal", "stage"], name="stagetime_once"),
        ]
        indexes = [
            # Covering and partial (PostgreSQL): time in stage is read from the index
            # alone, one stage at a time, and the index holds only the finished visits
            # that are its samples.
            models.Index(
                fields=["funnel", "stage", "last_left_at"],
                include=["owner", "seconds", "deal"],
                condition=models.Q(visit_started_at__isnull=True, visits__gt=0),
                name="stagetime_calendar_idx",
            ),
            models.Index(
                fields=["funnel", "stage", "entered_at"],
                include=["owner", "seconds", "deal"],
                condition=models.Q(visit_started_at__isnull=True, visits__gt=0),
                name="stagetime_cohort_idx",
            ),
            # By owner, and by duration within each owner: a report by manager reads
            # its groups in order, each group's samples already sorted for its
            # percentiles, with no sort of the stage's visits by owner.
            models.Index(
                fields=["funnel", "stage", "owner", "seconds"],
                include=["entered_at", "last_left_at"],
                condition=models.Q(visit_started_at__isnull=True, visits__gt=0),
                name="stagetime_owner_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"deal {self.deal_id} in stage {self.stage_id}: {self.seconds:.0f} s"


class SnapshotStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class FunnelSnapshot(models.Model):
    """A stored funnel report for one set of parameters.

    ``status`` and ``progress`` describe the latest run; ``result`` and
    ``computed_at`` hold the latest *successful* one, and are only replaced
    when a run finishes, so a failed or killed run leaves them in place.
    """

    funnel = models.ForeignKey("funnels.Funnel", on_delete=models.CASCADE, related_name="snapshots")
    key = models.CharField(max_length=64, unique=True, help_text=_("Hash of the parameters."))
    label = models.CharField(_("label"), max_length=120, blank=True)
    params = models.JSONField(_("parameters"))
    status = models.CharField(
        _("status"), max_length=10, choices=SnapshotStatus.choices, default=SnapshotStatus.QUEUED
    )
    progress = models.PositiveSmallIntegerField(_("progress, %"), default=0)
    result = models.JSONField(_("result"), null=True, blank=True)
    computed_at = models.DateTimeField(_("computed at"), null=True, blank=True)
    requested_at = models.DateTimeField(_("requested at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    duration_ms = models.PositiveIntegerField(_("duration, ms"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        ordering = ["funnel", "label"]
        verbose_name = _("funnel snapshot")
        verbose_name_plural = _("funnel snapshots")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__lte=100), name="snapshot_progress_0_100"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.funnel_id}: {self.label or self.key[:8]} ({self.status})"
