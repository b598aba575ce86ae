"""The Russian catalogue: complete, compiled, and used by models, services and seeds.

Messages are asserted word for word, so a change of wording in the catalogue shows
up here. The catalogue is checked with a tiny .po parser (no polib) and the compiled
.mo is read back with the standard library to prove it matches the .po.
"""

import gettext as stdlib_gettext
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext, ngettext

from crm.errors import InvalidInput
from deals.models import DealStatus
from deals.services import deal_lose, deal_win
from funnels.models import LossReason
from funnels.services import funnel_create

LOCALE_DIR = Path(settings.BASE_DIR) / "locale" / "ru" / "LC_MESSAGES"
PO_PATH = LOCALE_DIR / "django.po"
MO_PATH = LOCALE_DIR / "django.mo"

RUSSIAN_PLURAL_FORMS = (
    "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && "
    "(n%100<10 || n%100>=20) ? 1 : 2);"
)

# Seed 003, “Какие я рекомендую выделять причины отказов”, plus “Другое”.
RUSSIAN_LOSS_REASONS = [
    ("Спам", False),
    ("Купил у конкурента", False),
    ("Передумал покупать", False),
    ("Не устроили сроки или порядок выполнения работ", False),
    ("Сравнивал, не собирался покупать", False),
    ("Другое", True),
]
ENGLISH_LOSS_REASONS = [
    ("Spam", False),
    ("Bought from a competitor", False),
    ("Changed their mind", False),
    ("Terms or timing did not fit", False),
    ("Was only comparing", False),
    ("Other", True),
]


# ---------------------------------------------------------------- a tiny .po parser

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b"}
# Named placeholders, and the doubled percent sign templates use for a literal “%”.
_PLACEHOLDER = re.compile(r"%\(\w+\)[sdif]|%%")


def _unquote(text: str) -> str:
    body = text.strip()
    assert body.startswith('"') and body.endswith('"'), body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body[1:-1])


def parse_po(path: Path) -> list[dict]:
    """Entries as dicts: msgid, msgid_plural, msgstr ({index: text}), flags, obsolete.

    Handles what ``makemessages`` writes: comments, ``#,`` flags, multi-line
    strings, plural forms and ``#~`` obsolete entries.
    """
    entries: list[dict] = []

    def new_entry() -> dict:
        return {
            "msgid": None,
            "msgid_plural": None,
            "msgstr": {},
            "flags": set(),
            "obsolete": False,
        }

    entry, field = new_entry(), None
    for raw in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        line = raw.strip()
        if not line:
            if entry["msgid"] is not None:
                entries.append(entry)
            entry, field = new_entry(), None
            continue
        if line.startswith("#~"):
            entry["obsolete"] = True
            line = line[2:].strip()
            if not line:
                continue
        elif line.startswith("#,"):
            entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            continue
        elif line.startswith("#"):
            continue
        if line.startswith("msgctxt "):
            entry["msgctxt"], field = _unquote(line[8:]), ("msgctxt", None)
        elif line.startswith("msgid_plural "):
            entry["msgid_plural"], field = _unquote(line[13:]), ("msgid_plural", None)
        elif line.startswith("msgid "):
            entry["msgid"], field = _unquote(line[6:]), ("msgid", None)
        elif line.startswith("msgstr["):
            index = int(line[7 : line.index("]")])
            entry["msgstr"][index] = _unquote(line[line.index("]") + 1 :])
            field = ("msgstr", index)
        elif line.startswith("msgstr "):
            entry["msgstr"][0], field = _unquote(line[7:]), ("msgstr", 0)
        elif line.startswith('"') and field is not None:
            name, index = field
            if name == "msgstr":
                entry["msgstr"][index] += _unquote(line)
            else:
                entry[name] += _unquote(line)
        else:
            raise AssertionError(f"Unexpected line in {path.name}: {raw!r}")
    return entries


def po_header(entries: list[dict]) -> dict[str, str]:
    header = next(e for e in entries if e["msgid"] == "")
    return dict(
        (key.strip(), value.strip())
        for key, value in (
            line.split(":", 1) for line in header["msgstr"][0].splitlines() if ":" in line
        )
    )


@pytest.fixture(scope="module")
def po_entries() -> list[dict]:
    return parse_po(PO_PATH)


@pytest.fixture(scope="module")
def messages(po_entries) -> list[dict]:
    return [e for e in po_entries if e["msgid"] and not e["obsolete"]]


# ---------------------------------------------------------------- the catalogue itself


def test_catalogue_header_is_russian_with_three_plural_forms(po_entries):
    header_entry = next(e for e in po_entries if e["msgid"] == "")
    assert "fuzzy" not in header_entry["flags"], "a fuzzy header makes msgfmt skip it"
    header = po_header(po_entries)
    assert header["Language"] == "ru"
    assert header["Content-Type"] == "text/plain; charset=UTF-8"
    assert header["Plural-Forms"] == RUSSIAN_PLURAL_FORMS


def test_every_message_is_translated(messages):
    assert len(messages) > 400
    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e["flags"]]
    assert fuzzy == [], f"fuzzy entries: {fuzzy}"
    empty = [e["msgid"] for e in messages if not all(e["msgstr"].values()) or not e["msgstr"]]
    assert empty == [], f"untranslated entries: {empty}"
    for entry in messages:
        if entry["msgid_plural"] is not None:
            assert sorted(entry["msgstr"]) == [0, 1, 2], entry["msgid"]


def test_translations_keep_every_placeholder(messages):
    for entry in messages:
        expected = sorted(_PLACEHOLDER.findall(entry["msgid"]))
        for text in entry["msgstr"].values():
            assert sorted(_PLACEHOLDER.findall(text)) == expected, entry["msgid"]
        if "python-format" in entry["flags"]:
            assert expected, f"python-format without a placeholder: {entry['msgid']}"


def test_no_obsolete_entries_are_left(po_entries):
    assert [e["msgid"] for e in po_entries if e["obsolete"]] == []


def test_compiled_catalogue_matches_the_po(messages):
    """django.mo is committed: it must be compiled from the current django.po."""
    assert MO_PATH.exists(), "run: make messages"
    with MO_PATH.open("rb") as handle:
        compiled = stdlib_gettext.GNUTranslations(handle)._catalog
    stale = []
    for entry in messages:
        if entry["msgid_plural"] is None:
            if compiled.get(entry["msgid"]) != entry["msgstr"][0]:
                stale.append(entry["msgid"])
        else:
            for index, text in entry["msgstr"].items():
                if compiled.get((entry["msgid"], index)) != text:
                    stale.append(entry["msgid"])
    assert stale == [], f"django.mo is out of date (run: make messages): {stale}"
    singular = {e["msgid"] for e in messages if e["msgid_plural"] is None}
    compiled_singular = {key for key in compiled if isinstance(key, str) and key}
    assert compiled_singular == singular, "django.mo has entries the .po no longer has"


# ---------------------------------------------------------------- used at run time


def test_statuses_in_russian():
    with translation.override("ru"):
        assert gettext("Won") == "Успешна"
        assert [str(label) for label in DealStatus.labels] == [
            "Открыта",
            "Отложена",
            "Успешна",
            "Проиграна",
        ]
        assert str(DealStatus.LOST.label) == "Проиграна"
    with translation.override("en"):
        assert str(DealStatus.WON.label) == "Won"


def test_russian_plural_forms():
    with translation.override("ru"):
        shown = {
            n: ngettext("%(counter)s deal", "%(counter)s deals", n) % {"counter": n}
            for n in (1, 2, 5, 11, 21, 22, 25, 111)
        }
    assert shown == {
        1: "1 сделка",
        2: "2 сделки",
        5: "5 сделок",
        11: "11 сделок",
        21: "21 сделка",
        22: "22 сделки",
        25: "25 сделок",
        111: "111 сделок",
    }


def test_service_error_in_russian(deal_factory, funnel):
    deal = deal_factory(funnel=funnel)
    with translation.override("ru"), pytest.raises(InvalidInput) as raised:
        deal_lose(actor=None, deal=deal, loss_reason=None)
    assert raised.value.message == (
        "Сделку можно закрыть как проигранную только с причиной отказа: выберите её."
    )
    assert raised.value.fields == {"loss_reason": "Выберите причину отказа."}


def test_composed_service_error_in_russian(deal_factory, funnel):
    """Status and action are translated separately and put into one sentence."""
    deal = deal_win(actor=None, deal=deal_factory(funnel=funnel))
    reason = funnel.loss_reasons.order_by("position").first()
    with translation.override("ru"), pytest.raises(InvalidInput) as raised:
        deal_lose(actor=None, deal=deal, loss_reason=reason)
    assert raised.value.message == (
        "Сделка уже успешна: чтобы закрыть её как проигранную, сначала откройте её заново."
    )


@pytest.mark.django_db
def test_new_funnel_gets_the_seed_loss_reasons_in_russian():
    with translation.override("ru"):
        funnel = funnel_create(actor=None, name="Продажи", stages=["Новая заявка"])
    rows = LossReason.objects.filter(funnel=funnel).order_by("position")
    assert [(r.name, r.requires_comment) for r in rows] == RUSSIAN_LOSS_REASONS
    assert [r.position for r in rows] == list(range(6))


@pytest.mark.django_db
def test_new_funnel_gets_english_loss_reasons_in_english():
    with translation.override("en"):
        funnel = funnel_create(actor=None, name="Sales", stages=["New lead"])
    rows = LossReason.objects.filter(funnel=funnel).order_by("position")
    assert [(r.name, r.requires_comment) for r in rows] == ENGLISH_LOSS_REASONS
