"""A Celery worker whose funnel computation hangs: the test kills it mid-run.

Run as ``python -m tests.analytics.slow_worker`` with the test's environment.
"""

import os
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm.settings")
django.setup()

from analytics import services  # noqa: E402
from crm.celery import app  # noqa: E402


def hanging_report(query):
    time.sleep(600)
    raise RuntimeError("should have been killed")


services.funnel_report = hanging_report

if __name__ == "__main__":
    app.worker_main(
        ["worker", "--pool=solo", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
    )
