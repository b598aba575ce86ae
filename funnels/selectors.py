"""Reads of funnel settings."""

from django.db.models import Count, Prefetch, QuerySet

from funnels.models import Funnel, Stage, TaskTemplate


def funnels_for_settings() -> QuerySet[Funnel]:
    """Every funnel, active first, with its number of stages."""
    return Funnel.objects.annotate(stage_count=Count("stages")).order_by("-is_active", "name")


def funnel_with_settings(funnel_id: int) -> Funnel | None:
    """A funnel with its stages (and their task templates), loss reasons and custom
    fields, each in order: four queries."""
    return (
        Funnel.objects.prefetch_related(
            Prefetch(
                "stages",
                queryset=Stage.objects.order_by("position").prefetch_related(
                    Prefetch("task_templates", queryset=TaskTemplate.objects.order_by("id"))
                ),
            ),
            "loss_reasons",
            "custom_fields",
        )
        .filter(pk=funnel_id)
        .first()
    )
