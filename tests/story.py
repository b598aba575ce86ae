"""Helpers that let a test read like the story it checks.

    story = DealStory(funnel, owner=masha).enters("S1").moves_to("S3").moves_to("S2").won()
    assert story.stage_path() == [(None, "S1"), ("S1", "S3"), ("S3", "S2")]

Every step happens one hour after the previous one on a fixed clock, so the
history's timestamps are exact. ``nothing_changes`` wraps a call that must fail.
"""

import datetime
from contextlib import contextmanager

from deals.models import Contact, Deal, Note, StageChange, StatusChange, Task
from deals.services import (
    deal_create,
    deal_lose,
    deal_move_to_stage,
    deal_postpone,
    deal_reopen,
    deal_win,
)

START = datetime.datetime(2025, 3, 3, 9, 0, tzinfo=datetime.UTC)
STEP = datetime.timedelta(hours=1)


class DealStory:
    def __init__(self, funnel, *, owner=None, actor=None, start=START):
        self.funnel = funnel
        self.owner = owner
        self.actor = actor
        self.clock = start
        self.deal: Deal | None = None

    def stage(self, name: str):
        return self.funnel.stages.get(name=name)

    def _next(self) -> datetime.datetime:
        self.clock += STEP
        return self.clock

    def enters(self, stage_name: str, *, title: str = "Story deal", **values) -> "DealStory":
        self.deal = deal_create(
            actor=self.actor,
            funnel=self.funnel,
            title=title,
            stage=self.stage(stage_name),
            owner=self.owner,
            values=values,
            at=self.clock,
        )
        return self

    def moves_to(self, stage_name: str, **values) -> "DealStory":
        self.deal = deal_move_to_stage(
            actor=self.actor,
            deal=self.deal,
            stage=self.stage(stage_name),
            values=values,
            at=self._next(),
        )
        return self

    def won(self, **values) -> "DealStory":
        self.deal = deal_win(actor=self.actor, deal=self.deal, values=values, at=self._next())
        return self

    def lost(self, reason_name: str, comment: str = "") -> "DealStory":
        reason = self.funnel.loss_reasons.get(name=reason_name)
        self.deal = deal_lose(
            actor=self.actor,
            deal=self.deal,
            loss_reason=reason,
            comment=comment,
            at=self._next(),
        )
        return self

    def postponed_for(self, delay: datetime.timedelta) -> "DealStory":
        at = self._next()
        self.deal = deal_postpone(
            actor=self.actor, deal=self.deal, next_contact_at=at + delay, at=at
        )
        return self

    def reopened(self) -> "DealStory":
        self.deal = deal_reopen(actor=self.actor, deal=self.deal, at=self._next())
        return self

    def stage_path(self) -> list[tuple[str | None, str]]:
        """(from, to) stage names of the deal's StageChange rows, in history order."""
        return [
            (change.from_stage.name if change.from_stage else None, change.to_stage.name)
            for change in StageChange.objects.filter(deal=self.deal).select_related(
                "from_stage", "to_stage"
            )
        ]

    def status_path(self) -> list[tuple[str, str, str]]:
        """(from status, to status, stage name) of the deal's StatusChange rows."""
        return [
            (change.from_status, change.to_status, change.stage.name)
            for change in StatusChange.objects.filter(deal=self.deal).select_related("stage")
        ]


def deal_row(deal: Deal) -> dict:
    """The deal as stored, every column."""
    return Deal.objects.filter(pk=deal.pk).values().get()


def row_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (Deal, StageChange, StatusChange, Task, Note, Contact)
    }


@contextmanager
def nothing_changes(*deals: Deal):
    """The wrapped block may fail, but it must leave the deals and all history as they were."""
    rows_before = [deal_row(deal) for deal in deals]
    counts_before = row_counts()
    yield
    assert [deal_row(deal) for deal in deals] == rows_before
    assert row_counts() == counts_before
