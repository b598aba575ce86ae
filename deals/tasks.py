"""Celery tasks for deals: thin, idempotent, safe to run twice."""

from celery import shared_task

from deals import webhooks
from deals.services import deals_resume_due_postponed


@shared_task(acks_late=True)
def resume_due_postponed_deals() -> int:
    """Return postponed deals whose next-contact date has come to open."""
    return deals_resume_due_postponed()


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self, delivery_id: int) -> None:
    """Post one webhook delivery; retry with exponential backoff (base 2 s by default:
    2, 4, 8, 16, 32 s) up to ``WEBHOOK_MAX_ATTEMPTS`` attempts, then mark it failed."""
    attempt = self.request.retries + 1
    while not webhooks.webhook_deliver(delivery_id):
        if attempt >= webhooks.max_attempts():
            webhooks.webhook_give_up(delivery_id)
            return
        if not self.request.is_eager:
            raise self.retry(countdown=webhooks.retry_base_seconds() * 2 ** (attempt - 1))
        # Eager (the embedded demo, tests): no worker will come back later and an
        # eager retry would raise into a request whose change is already committed,
        # so retry in place, without the wait, as Celery's eager retry would.
        attempt += 1
