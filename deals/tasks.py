"""Celery tasks for deals: thin, idempotent, safe to run twice."""

from celery import shared_task

from deals.services import deals_resume_due_postponed


@shared_task(acks_late=True)
def resume_due_postponed_deals() -> int:
    """Return postponed deals whose next-contact date has come to open."""
    return deals_resume_due_postponed()
