"""Group commit (deals/intake.py): concurrent single leads of one process share one
transaction, and each request still gets what it would have got alone."""

import threading

import pytest
from django.db import connection
from django.utils import translation

from crm.errors import InvalidInput
from deals import intake
from deals.intake import (
    IdempotencyKeyReused,
    IntakeClient,
    IntakeRequest,
    IntakeResult,
    LeadData,
    lead_intake,
)
from deals.models import (
    Contact,
    Deal,
    FunnelIntakeState,
    IntakeIdempotencyRecord,
    LeadReceipt,
    Note,
)
from tests.factories import FunnelFactory, UserFactory

# ---------------------------------------------------------------- several requests, one transaction


@pytest.fixture
def client(funnel):
    return IntakeClient(label="key:1", funnel_id=funnel.pk)


def lead(n: int, **values) -> LeadData:
    return LeadData(
        **{"contact_name": f"Client {n}", "contact_phone": f"+7 900 000 00 {n:02d}"} | values
    )


def single(client, one: LeadData, key: str | None = None, fingerprint: str = "") -> IntakeRequest:
    return IntakeRequest(client, [one], key, fingerprint or (key or ""), raise_on_reject=True)


@pytest.mark.django_db
def test_each_request_of_a_group_gets_its_own_deal_in_turn(manager, other_manager):
    third = UserFactory(username="third")
    funnel = FunnelFactory(members=[manager, other_manager, third])
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)

    answers = intake._requests_intake([single(client, lead(n)) for n in range(4)])

    deals = {deal.pk: deal for deal in Deal.objects.all()}
    assert [answer.results[0]["status"] for answer in answers] == ["created"] * 4
    assert [answer.results[0]["index"] for answer in answers] == [0, 0, 0, 0]
    owners = [deals[answer.results[0]["deal_id"]].owner_id for answer in answers]
    assert owners == [manager.pk, other_manager.pk, third.pk, manager.pk]
    assert LeadReceipt.objects.count() == 4


@pytest.mark.django_db
def test_the_same_external_id_twice_in_a_group_makes_one_deal(client):
    first, retry = intake._requests_intake(
        [
            single(client, lead(1, external_id="form-1")),
            single(client, lead(1, external_id="form-1")),
        ]
    )

    assert Deal.objects.count() == 1
    assert first.results[0]["status"] == "created"
    assert retry.results[0]["deal_id"] == first.results[0]["deal_id"]
    assert retry.results[0]["replayed"] is True


@pytest.mark.django_db
def test_a_clients_second_lead_in_a_group_is_attached_to_his_first(client):
    first, second = intake._requests_intake(
        [single(client, lead(1, title="Call me")), single(client, lead(1, title="Again"))]
    )

    assert Deal.objects.count() == 1
    assert second.results[0]["status"] == "attached"
    assert second.results[0]["deal_id"] == first.results[0]["deal_id"]
    assert Note.objects.filter(deal_id=first.results[0]["deal_id"]).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "requests",
    [
        pytest.param(
            lambda c: [single(c, lead(1), "k-1", "body-1"), single(c, lead(1), "k-1", "body-1")],
            id="a key twice",
        ),
        pytest.param(
            lambda c: [single(c, lead(1), "k-1", "body-1"), single(c, lead(2), "k-1", "body-2")],
            id="a key reused with another body",
        ),
    ],
)
def test_a_group_that_cannot_be_sure_of_the_lone_outcome_is_split(client, requests):
    with pytest.raises(intake._SplitGroup):
        intake._requests_intake(requests(client))

    assert Deal.objects.count() == 0
    assert Contact.objects.count() == 0
    assert IntakeIdempotencyRecord.objects.count() == 0


@pytest.mark.django_db
def test_a_rejected_lead_splits_its_group_and_alone_leaves_no_trace(manager):
    funnel = FunnelFactory(
        members=[manager], stages=[{"name": "S1", "required_fields": ["source"]}]
    )
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)
    phone = "+7 900 000 00 01"
    # Rejected (no source) after naming a client that the next lead shares: alone it
    # stores nothing, so it must not name that client in a group either.
    ann = single(client, LeadData(contact_name="Ann", contact_phone=phone), "k-ann")
    bob = single(client, LeadData(contact_name="Bob", contact_phone=phone, source="site"))

    with pytest.raises(intake._SplitGroup):
        intake._requests_intake([ann, bob])
    assert (Deal.objects.count(), Contact.objects.count()) == (0, 0)

    # What the threads of a split group do next: each runs its request alone.
    rejected, created = [intake._requests_intake([request])[0] for request in (ann, bob)]
    assert isinstance(rejected, InvalidInput)
    assert created.results[0]["status"] == "created"
    assert Contact.objects.get().name == "Bob"
    assert IntakeIdempotencyRecord.objects.count() == 0  # the rejected one's key is free


@pytest.mark.django_db
def test_alone_after_the_split_a_reused_key_is_refused(client):
    first = single(client, lead(1), "k-1", "body-1")
    reused = single(client, lead(2), "k-1", "body-2")
    answers = [intake._requests_intake([request])[0] for request in (first, reused)]

    assert answers[0].results[0]["status"] == "created"
    assert isinstance(answers[1], IdempotencyKeyReused)
    assert Deal.objects.count() == 1


@pytest.mark.django_db
def test_requests_of_several_clients_and_funnels_share_a_group(funnel, manager):
    other = FunnelFactory(name="Other", members=[manager])
    site = IntakeClient(label="key:1", funnel_id=funnel.pk)
    ads = IntakeClient(label="key:2", funnel_id=other.pk)

    answers = intake._requests_intake([single(site, lead(1)), single(ads, lead(1))])

    assert answers[0].results[0]["status"] == "created"
    assert answers[1].results[0]["status"] == "created"  # the same client, another funnel
    assert sorted(Deal.objects.values_list("funnel_id", flat=True)) == [funnel.pk, other.pk]


# ---------------------------------------------------------------- the threads


def _ok(request: IntakeRequest) -> IntakeResult:
    return IntakeResult(results=[{"index": 0, "status": "created", "lead": request.leads[0]}])


class _Recorder:
    """Stands in for ``_take_requests`` (and no database): records each group; the first
    one waits until released, so that the others queue behind it."""

    def __init__(self, fail_groups_over: int | None = None):
        self.groups: list[list[IntakeRequest]] = []
        self.alone: list[IntakeRequest] = []
        self.first_running = threading.Event()
        self.release = threading.Event()
        self.fail_groups_over = fail_groups_over
        self.lock = threading.Lock()

    def __call__(self, requests):
        with self.lock:
            first = not self.groups and not self.alone
            if len(requests) == 1 and self.groups and self.fail_groups_over is not None:
                self.alone.append(requests[0])
            else:
                self.groups.append(list(requests))
        if first:
            self.first_running.set()
            assert self.release.wait(10)
        if self.fail_groups_over is not None and len(requests) > self.fail_groups_over:
            raise RuntimeError("the group's transaction failed")
        return [_ok(request) for request in requests]


class _Commit:
    """Stands in for ``_own_transaction``; with ``fails`` its commit raises."""

    def __init__(self, fails: type[Exception] | None = None):
        self.fails = fails

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None and self.fails:
            raise self.fails("COMMIT failed")
        return False


class _Refused(Exception):
    sqlstate = "23503"  # PostgreSQL's answer: a deferred foreign key failed, all rolled back


def _post_concurrently(
    recorder, monkeypatch, count: int, languages=None, commit=None, labels=None
) -> list:
    monkeypatch.setattr(intake, "_take_requests", recorder)
    monkeypatch.setattr(intake, "_own_transaction", commit or _Commit())
    committer = intake._GroupCommit()
    client = IntakeClient(label="key:1", funnel_id=1)
    answers: list = [None] * count

    def post(n: int) -> None:
        try:
            who = IntakeClient(label=labels[n], funnel_id=1) if labels else client
            with translation.override(languages[n] if languages else "en"):
                answers[n] = committer.take(single(who, lead(n)))
        except Exception as error:  # the test looks at it
            answers[n] = error

    first = threading.Thread(target=post, args=(0,))
    first.start()
    assert recorder.first_running.wait(10)
    others = [threading.Thread(target=post, args=(n,)) for n in range(1, count)]
    for thread in others:
        thread.start()
    # The others queue behind the running group.
    for _ in range(1000):
        if len(committer._queue) == count - 1:
            break
        threading.Event().wait(0.005)
    assert len(committer._queue) == count - 1
    recorder.release.set()
    for thread in [first, *others]:
        thread.join(10)
        assert not thread.is_alive()  # every thread got its answer
    assert not committer._running and not committer._queue
    return answers


def test_leads_that_arrive_while_a_group_runs_go_together_in_the_next(monkeypatch):
    recorder = _Recorder()

    answers = _post_concurrently(recorder, monkeypatch, 6)

    assert [len(group) for group in recorder.groups] == [1, 5]
    # Each thread gets the answer to its own lead.
    assert [answer.results[0]["lead"].contact_name for answer in answers] == [
        f"Client {n}" for n in range(6)
    ]


def test_only_leads_in_the_same_language_share_a_group(monkeypatch):
    # The group's messages, deal titles and notes are in its thread's language.
    recorder = _Recorder()

    answers = _post_concurrently(recorder, monkeypatch, 5, languages=["en", "ru", "en", "ru", "en"])

    names = [[request.leads[0].contact_name[-1] for request in g] for g in recorder.groups]
    assert sorted(sorted(group) for group in names) == [["0"], ["1", "3"], ["2", "4"]]
    assert [answer.results[0]["lead"].contact_name for answer in answers] == [
        f"Client {n}" for n in range(5)
    ]


def test_if_a_groups_transaction_fails_each_request_runs_again_alone(monkeypatch):
    recorder = _Recorder(fail_groups_over=1)

    answers = _post_concurrently(recorder, monkeypatch, 4)

    assert [len(group) for group in recorder.groups] == [1, 3]
    assert sorted(request.leads[0].contact_name for request in recorder.alone) == [
        "Client 1",
        "Client 2",
        "Client 3",
    ]
    assert all(isinstance(answer, IntakeResult) for answer in answers)


def test_when_the_commit_fails_no_request_runs_again(monkeypatch):
    # The commit may have gone in: running the leads again could take them twice.
    recorder = _Recorder(fail_groups_over=None)

    answers = _post_concurrently(recorder, monkeypatch, 3, commit=_Commit(fails=OSError))

    assert [len(group) for group in recorder.groups] == [1, 2]
    assert all(isinstance(answer, OSError) for answer in answers)


def test_when_postgresql_refuses_the_commit_each_request_runs_again_alone(monkeypatch):
    # An error answered by the server (a deferred foreign key, say) rolled it all back.
    recorder = _Recorder()

    class RefusedForGroups(_Commit):
        def __exit__(self, kind, error, trace):
            if kind is None and len(recorder.groups[-1]) > 1:
                raise _Refused("COMMIT failed")
            return False

    answers = _post_concurrently(recorder, monkeypatch, 3, commit=RefusedForGroups())

    assert [len(group) for group in recorder.groups] == [1, 2, 1, 1]
    assert all(isinstance(answer, IntakeResult) for answer in answers)


def test_only_leads_of_one_client_share_a_group(monkeypatch):
    # One client and funnel make one batch, checked whole before anything is written.
    recorder = _Recorder()

    labels = ["key:1", "key:2", "key:1", "key:2", "key:1"]
    _post_concurrently(recorder, monkeypatch, 5, labels=labels)

    names = [[request.leads[0].contact_name[-1] for request in g] for g in recorder.groups]
    assert sorted(sorted(group) for group in names) == [["0"], ["1", "3"], ["2", "4"]]


def test_a_lone_requests_failure_is_its_own(monkeypatch):
    def broken(requests):
        raise RuntimeError("database gone")

    monkeypatch.setattr(intake, "_take_requests", broken)
    monkeypatch.setattr(intake, "_own_transaction", _Commit())
    committer = intake._GroupCommit()

    with pytest.raises(RuntimeError, match="database gone"):
        committer.take(single(IntakeClient(label="key:1", funnel_id=1), lead(1)))
    assert not committer._running  # the next request is not stuck behind it


@pytest.mark.django_db
def test_inside_a_transaction_a_lead_is_taken_alone(client, monkeypatch):
    # Another thread's lead must never end up in a transaction that its caller may
    # still roll back.
    def no_group(request):
        raise AssertionError("grouped inside a transaction")

    monkeypatch.setattr(intake._group_commit, "take", no_group)

    result = lead_intake(client=client, leads=[lead(1)])

    assert result.results[0]["status"] == "created"


# ---------------------------------------------------------------- turns apart


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL takes turns apart")
@pytest.mark.django_db(transaction=True)
def test_turns_are_taken_apart_and_a_failed_lead_uses_its_turn_up(monkeypatch):
    first, second, third = (UserFactory(username=name) for name in ("m1", "m2", "m3"))
    funnel = FunnelFactory(members=[first, second, third])
    client = IntakeClient(label="key:1", funnel_id=funnel.pk)

    def owner(n: int) -> int:
        result = lead_intake(client=client, leads=[lead(n)], raise_on_reject=True)
        return result.results[0]["owner_id"]

    assert [owner(1), owner(2)] == [first.pk, second.pk]
    # The third lead's transaction fails after its turn was taken, and rolls back.
    real = intake.insert_rows

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(intake, "insert_rows", real)
        raise RuntimeError("lost connection")

    monkeypatch.setattr(intake, "insert_rows", fail_once)
    with pytest.raises(RuntimeError):
        owner(3)
    assert Deal.objects.count() == 2
    # Its turn (the third manager's) is used up: the rotation goes on after it.
    assert [owner(4), owner(5)] == [first.pk, second.pk]
    assert FunnelIntakeState.objects.get(funnel=funnel).last_assigned_id == second.pk
