"""Celery tasks of the analytics app: thin, take ids, safe to run twice.

``acks_late`` (settings) means a message is acknowledged only after the task
finishes: a worker killed mid-run leaves the message to be delivered again,
and the snapshot keeps its previous result until a run succeeds.
"""

from celery import shared_task
from django.db import OperationalError

from analytics.services import snapshot_compute, snapshots_refresh


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def compute_snapshot(snapshot_id: int) -> str:
    snapshot = snapshot_compute(snapshot_id=snapshot_id)
    return "gone" if snapshot is None else snapshot.status


@shared_task(acks_late=True)
def refresh_snapshots(funnel_id: int | None = None, current_only: bool = False) -> int:
    """Queue the standard snapshots (the beat schedule calls this)."""
    return len(snapshots_refresh(funnel_id=funnel_id, current_only=current_only))
