"""Demo data: people, two funnels and months of deal history.

Two halves, kept apart so that the randomness can be tested without a database:

* **Planning** (``plan_deals``) is a pure function of the seed and the number
  of deals. It draws every choice from one ``random.Random(seed)`` and returns
  each deal's story as offsets in seconds after the deal's creation, so the
  same seed always gives the same stories, whatever the date.
* **Writing** (``generate_demo``) turns the stories into rows through the
  service functions only (``deal_create``, ``deal_move_to_stage``, ``deal_win``
  and the rest) with ``at=`` in the past, inside one transaction.

The numbers in the catalogues below follow the seed articles: the B2B funnel
and loss reasons of seed 003, cold leads converting worse (seed 004), managers
whose conversion differs (seed 002), first and repeat sales (seed 001).
"""

import datetime
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from accounts.models import Role, Team, User
from crm.errors import DomainError
from deals.models import Contact, Deal, DealStatus, Task, Temperature
from deals.services import (
    contact_find_or_create,
    deal_create,
    deal_lose,
    deal_move_to_stage,
    deal_postpone,
    deal_reopen,
    deal_resume_postponed,
    deal_win,
    note_add,
    task_complete,
)
from funnels.models import DEFAULT_LOSS_REASONS, OTHER_LOSS_REASON, Funnel, LossReason
from funnels.services import custom_field_add, funnel_create, loss_reason_add, stage_update

DEMO_PASSWORD = "demo"
HISTORY_DAYS = 182
PROGRESS_EVERY = 1000

# Plain strings, as the database returns them (an enum member hashes differently).
OPEN, POSTPONED, WON, LOST = (str(status) for status in DealStatus)
WARM, COLD = (str(temperature) for temperature in Temperature)

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class DemoError(Exception):
    """The demo cannot be written into this database (or a service refused a step)."""


# ---------------------------------------------------------------- people


@dataclass(frozen=True)
class Person:
    username: str
    first_name: str
    last_name: str
    role: str
    team: int | None  # index into TEAMS
    skill: float = 1.0  # multiplies the chance to move a deal on
    response_minutes: float = 5.0  # median time to the first call


TEAMS = ("Отдел B2B-продаж", "Отдел розничных продаж")

PEOPLE = (
    Person("admin", "Ольга", "Смирнова", Role.ADMIN, None),
    Person("head", "Сергей", "Ковалёв", Role.HEAD, 0, skill=1.25, response_minutes=6),
    Person("head2", "Марина", "Лебедева", Role.HEAD, 1, skill=1.2, response_minutes=6),
    Person("manager", "Иван", "Петров", Role.MANAGER, 0, skill=1.0, response_minutes=3),
    Person("anna", "Анна", "Соколова", Role.MANAGER, 0, skill=1.3, response_minutes=1.5),
    Person("boris", "Борис", "Волков", Role.MANAGER, 0, skill=0.75, response_minutes=15),
    Person("vera", "Вера", "Морозова", Role.MANAGER, 0, skill=1.1, response_minutes=2),
    Person("gleb", "Глеб", "Никитин", Role.MANAGER, 1, skill=1.2, response_minutes=1),
    Person("dina", "Дина", "Кузнецова", Role.MANAGER, 1, skill=0.9, response_minutes=4),
    Person("egor", "Егор", "Орлов", Role.MANAGER, 1, skill=0.72, response_minutes=25),
)
PEOPLE_BY_USERNAME = {person.username: person for person in PEOPLE}


# ---------------------------------------------------------------- funnels

ADVANCE, LOSE, POSTPONE, BACK, STALL = "advance", "lose", "postpone", "back", "stall"

# Loss reasons by key. The default ones are looked up by their stored name, so
# the demo works in whichever language the funnel was created.
SPAM, COMPETITOR, CHANGED_MIND, TERMS, COMPARING, OTHER, NO_ANSWER = (
    "spam",
    "competitor",
    "changed_mind",
    "terms",
    "comparing",
    "other",
    "no_answer",
)
DEFAULT_REASON_KEYS = (SPAM, COMPETITOR, CHANGED_MIND, TERMS, COMPARING)
NO_ANSWER_REASON = "Не дозвонились"


@dataclass(frozen=True)
class StageSpec:
    name: str
    probability: int
    rotting_days: int
    target_conversion: int | None
    required_fields: tuple[str, ...]
    tasks: tuple[tuple[str, int], ...]
    # How deals behave here (before skill and temperature): chances of the next event.
    advance: float
    lose: float
    postpone: float = 0.0
    back: float = 0.0
    dwell_days: float = 1.0  # median time before the next event
    selling: bool = False  # the manager's skill and the lead's temperature count fully
    skip: float = 0.0  # an advance jumps over the next stage
    win_directly: float = 0.0  # an advance closes the deal as won
    discount: float = 0.0  # entering here, the amount drops by a tenth (a negotiated discount)
    loss_weights: tuple[tuple[str, int], ...] = ()

    @property
    def stall(self) -> float:
        return max(0.0, 1.0 - self.advance - self.lose - self.postpone - self.back)


@dataclass(frozen=True)
class CustomFieldSpec:
    key: str
    label: str
    type: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FunnelSpec:
    key: str
    name: str
    target_response_minutes: int
    members: tuple[str, ...]
    owner_weights: tuple[tuple[str, int], ...]
    share: float  # of all deals
    stages: tuple[StageSpec, ...]
    custom_fields: tuple[CustomFieldSpec, ...]
    products: tuple[tuple[str, int, int], ...]  # name, lowest and highest price
    sources: tuple[tuple[str, int], ...]
    extra_loss_reasons: tuple[str, ...] = ()
    repeat_share: float = 0.1
    product_known_share: float = 0.6
    amount_known_share: float = 0.2
    b2b: bool = False

    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def choices_of(self, key: str) -> tuple[str, ...]:
        return next(custom.choices for custom in self.custom_fields if custom.key == key)


B2B = FunnelSpec(
    key="b2b",
    name="B2B-продажи",
    target_response_minutes=2,
    members=("head", "manager", "anna", "boris", "vera"),
    owner_weights=(("manager", 30), ("anna", 25), ("boris", 25), ("vera", 15), ("head", 5)),
    share=0.45,
    stages=(
        StageSpec(
            "Новая заявка",
            5,
            1,
            None,
            (),
            (("Связаться с клиентом", 2),),
            advance=0.70,
            lose=0.24,
            postpone=0.02,
            dwell_days=0.15,
            selling=True,
            skip=0.12,
            loss_weights=(
                (SPAM, 45),
                (COMPETITOR, 5),
                (CHANGED_MIND, 15),
                (TERMS, 5),
                (COMPARING, 20),
                (OTHER, 10),
            ),
        ),
        StageSpec(
            "Квалификация пройдена",
            15,
            5,
            70,
            ("contact_phone", "company", "source"),
            (("Назначить презентацию", DAY // MINUTE),),
            advance=0.55,
            lose=0.28,
            postpone=0.10,
            dwell_days=3,
            selling=True,
            loss_weights=(
                (SPAM, 3),
                (COMPETITOR, 20),
                (CHANGED_MIND, 30),
                (TERMS, 12),
                (COMPARING, 25),
                (OTHER, 10),
            ),
        ),
        StageSpec(
            "Презентация проведена / Предложение отправлено",
            30,
            10,
            50,
            ("amount", "product"),
            (("Отправить КП", 60), ("Перезвонить после КП", 2 * DAY // MINUTE)),
            advance=0.45,
            lose=0.38,
            postpone=0.08,
            back=0.02,
            dwell_days=6,
            selling=True,
            loss_weights=(
                (COMPETITOR, 35),
                (CHANGED_MIND, 18),
                (TERMS, 17),
                (COMPARING, 25),
                (OTHER, 5),
            ),
        ),
        StageSpec(
            "Условия согласованы / договор подписан",
            55,
            14,
            55,
            ("expected_close_date", "contract_number"),
            (("Выставить счёт", 4 * 60),),
            advance=0.82,
            discount=0.3,
            lose=0.08,
            postpone=0.03,
            back=0.05,
            dwell_days=12,
            skip=0.10,
            loss_weights=((COMPETITOR, 25), (CHANGED_MIND, 25), (TERMS, 40), (OTHER, 10)),
        ),
        StageSpec(
            "Товар отгружен / услуга оказана",
            75,
            14,
            90,
            (),
            (("Проконтролировать подписание актов", 3 * DAY // MINUTE),),
            advance=0.93,
            lose=0.03,
            dwell_days=8,
            loss_weights=((TERMS, 50), (CHANGED_MIND, 20), (OTHER, 30)),
        ),
        StageSpec(
            "Оплата получена",
            90,
            7,
            90,
            (),
            (("Позвонить клиенту: всё ли в порядке", 7 * DAY // MINUTE),),
            advance=0.96,
            lose=0.01,
            dwell_days=10,
            win_directly=0.45,
            loss_weights=((TERMS, 50), (OTHER, 50)),
        ),
        StageSpec(
            "Отзыв / рекомендация получены",
            97,
            14,
            60,
            (),
            (("Запланировать повторную продажу", 14 * DAY // MINUTE),),
            advance=0.97,
            lose=0.0,
            dwell_days=7,
        ),
    ),
    custom_fields=(
        CustomFieldSpec("inn", "ИНН", "text"),
        CustomFieldSpec(
            "company_size",
            "Размер компании",
            "choice",
            ("до 50 сотрудников", "50–250 сотрудников", "более 250 сотрудников"),
        ),
        CustomFieldSpec("contract_number", "Номер договора", "text"),
    ),
    products=(
        ("Видеонаблюдение", 150_000, 1_200_000),
        ("Кассовое оборудование", 60_000, 400_000),
        ("Серверное оборудование", 400_000, 3_500_000),
        ("Лицензии ПО", 100_000, 1_500_000),
        ("Монтаж СКС", 200_000, 2_000_000),
        ("Техническое обслуживание", 50_000, 300_000),
    ),
    sources=(
        ("сайт", 25),
        ("Яндекс Директ", 25),
        ("VK реклама", 8),
        ("рекомендация", 15),
        ("холодный звонок", 17),
        ("выставка", 10),
    ),
    repeat_share=0.18,
    product_known_share=0.6,
    amount_known_share=0.15,
    b2b=True,
)

B2C = FunnelSpec(
    key="b2c",
    name="Интернет-магазин",
    target_response_minutes=5,
    members=("head2", "gleb", "dina", "egor", "vera"),
    owner_weights=(("gleb", 30), ("dina", 30), ("egor", 25), ("vera", 10), ("head2", 5)),
    share=0.55,
    stages=(
        StageSpec(
            "Заявка с сайта",
            10,
            1,
            None,
            (),
            (("Перезвонить клиенту", 5),),
            advance=0.72,
            lose=0.22,
            postpone=0.02,
            dwell_days=0.05,
            selling=True,
            skip=0.30,
            loss_weights=(
                (SPAM, 30),
                (NO_ANSWER, 40),
                (CHANGED_MIND, 15),
                (COMPARING, 10),
                (OTHER, 5),
            ),
        ),
        StageSpec(
            "Консультация",
            30,
            2,
            70,
            ("contact_phone",),
            (("Подобрать товар и отправить ссылку", 60),),
            advance=0.55,
            lose=0.30,
            postpone=0.08,
            dwell_days=0.4,
            selling=True,
            loss_weights=(
                (COMPETITOR, 30),
                (CHANGED_MIND, 25),
                (TERMS, 10),
                (COMPARING, 30),
                (OTHER, 5),
            ),
        ),
        StageSpec(
            "Заказ оформлен",
            60,
            3,
            55,
            ("amount", "product", "delivery_method"),
            (("Подтвердить заказ и наличие", 30),),
            advance=0.85,
            lose=0.10,
            back=0.02,
            dwell_days=0.5,
            selling=True,
            skip=0.25,  # cash on delivery: straight to delivery
            loss_weights=((COMPETITOR, 20), (CHANGED_MIND, 40), (TERMS, 30), (OTHER, 10)),
        ),
        StageSpec(
            "Оплата",
            85,
            2,
            85,
            (),
            (("Проверить оплату", 120),),
            advance=0.92,
            lose=0.05,
            dwell_days=1.5,
            loss_weights=((CHANGED_MIND, 50), (TERMS, 30), (OTHER, 20)),
        ),
        StageSpec(
            "Доставка",
            95,
            7,
            95,
            ("region",),
            (("Передать заказ в службу доставки", 240),),
            advance=0.94,
            lose=0.04,
            dwell_days=3,
            loss_weights=((TERMS, 30), (CHANGED_MIND, 30), (OTHER, 40)),
        ),
    ),
    custom_fields=(
        CustomFieldSpec(
            "delivery_method", "Способ доставки", "choice", ("Курьер", "Пункт выдачи", "Самовывоз")
        ),
        CustomFieldSpec("tracking_number", "Трек-номер", "text"),
    ),
    products=(
        ("Смартфон", 15_000, 120_000),
        ("Ноутбук", 45_000, 180_000),
        ("Наушники", 3_000, 30_000),
        ("Умные часы", 8_000, 45_000),
        ("Планшет", 20_000, 90_000),
        ("Робот-пылесос", 15_000, 70_000),
        ("Телевизор", 25_000, 150_000),
    ),
    sources=(
        ("сайт", 40),
        ("Яндекс Директ", 30),
        ("VK реклама", 22),
        ("рекомендация", 8),
    ),
    extra_loss_reasons=(NO_ANSWER_REASON,),
    repeat_share=0.12,
    product_known_share=0.8,
    amount_known_share=0.3,
)

FUNNELS = (B2B, B2C)
FUNNELS_BY_KEY = {spec.key: spec for spec in FUNNELS}

# Leads that fill in a form arrive unassigned to the system; the rest a manager enters.
INBOUND_SOURCES = {"сайт", "Яндекс Директ", "VK реклама"}
WARM_SHARE = {
    "сайт": 0.75,
    "Яндекс Директ": 0.6,
    "VK реклама": 0.45,
    "рекомендация": 0.9,
    "холодный звонок": 0.1,
    "выставка": 0.5,
}
COLD_ADVANCE = 0.7  # seed 004: cold leads are dragged through the funnel
COLD_LOSE = 1.25
COLD_SLOWER = 1.4
WARM_FASTER = 0.8
REPEAT_ADVANCE = 1.15
SETBACK_ADVANCE = 0.85  # after each postponement or reopening
REOPEN_AFTER_LOSS = 0.04
# Shares of optional actions. Each one is a service call, so they set the run time too.
FIRST_CALL_NOTE_SHARE = 0.25
STAGE_NOTE_SHARE = 0.05
TASKS_DONE = 0.25  # the stage's tasks are ticked off before a move
TASKS_DONE_BEFORE_LOSS = 0.1
STALE_CLOSED_SHARE = 0.65  # of deals that stop moving: closed as lost a month or more later
UNASSIGNED_SHARE = 0.3  # of form leads younger than two days

REGIONS = (
    ("Москва", 35),
    ("Санкт-Петербург", 18),
    ("Екатеринбург", 9),
    ("Казань", 8),
    ("Новосибирск", 8),
    ("Краснодар", 7),
    ("Нижний Новгород", 6),
    ("Самара", 5),
    ("Ростов-на-Дону", 4),
)


# ---------------------------------------------------------------- words


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


MALE_NAMES = _words(
    "Александр Алексей Андрей Дмитрий Сергей Михаил Николай Павел Роман Евгений Илья "
    "Максим Константин Артём Владимир Юрий Олег Виктор Денис Кирилл Тимур Руслан Степан Фёдор"
)
FEMALE_NAMES = _words(
    "Анна Мария Елена Ольга Наталья Татьяна Ирина Екатерина Светлана Юлия Дарья Ксения "
    "Алина Полина Виктория Людмила Галина Вероника Софья Алёна"
)
SURNAMES = _words(
    "Иванов Смирнов Кузнецов Попов Васильев Петров Соколов Михайлов Новиков Фёдоров Морозов "
    "Волков Алексеев Лебедев Семёнов Егоров Павлов Козлов Степанов Николаев Орлов Андреев "
    "Макаров Никитин Захаров Зайцев Соловьёв Борисов Яковлев Григорьев Романов Воробьёв "
    "Сергеев Кузьмин Фролов Александров Дмитриев Королёв Гусев Киселёв Ильин Максимов "
    "Поляков Сорокин Виноградов Белов Медведев Антонов Тарасов Жуков Баранов Филиппов "
    "Комаров Давыдов Беляев Герасимов Богданов Осипов Сидоров Матвеев Титов Марков Миронов "
    "Крылов Куликов Карпов Власов Мельников Денисов Гаврилов Тихонов Казаков Афанасьев "
    "Данилов Тимофеев Фомин Чернов Абрамов Мартынов Ефимов Щербаков Назаров Калинин Исаев "
    "Быков Маслов Родионов Коновалов Лазарев Воронин Климов Филатов Голубев Кудрявцев "
    "Прохоров Наумов Потапов Журавлёв Трофимов Леонов Соболев Ермаков Колесников Гончаров "
    "Савин Краснов Демидов Жданов Руденко Шевченко Бондаренко Ковальчук Вишневский "
    "Островский Покровский Горький"
)
PATRONYMIC_INITIALS = "АБВГДЕИКЛМНОПРСФЮ"

COMPANY_WORDS = _words(
    "Вектор Альфа Гранит Север Техно Ресурс Профи Меридиан Восток Интеграл Атлант Орион "
    "Спектр Феникс Горизонт Сибирь Урал Волга Балтика Стандарт Квант Магистраль Прогресс "
    "Союз Эталон Регион Ладога Кедр Авангард Импульс Монолит Олимп Полюс Континент Титан "
    "Дельта Омега Вега Сириус Арсенал Форвард Партнёр Навигатор Энергия Капитал Элемент "
    "Гарант Оптима Лидер Пульс"
)
COMPANY_SUFFIXES = _words(
    "Трейд Сервис Групп Плюс Строй Логистик Систем Маркет Пром Агро Инвест Снаб Торг Тех "
    "Медиа Авто Холдинг Проект Инжиниринг Энерго Фарм Девелопмент Комплект Ойл Софт Лайн "
    "Центр Мастер Эксперт Консалт"
)
COMPANY_PREFIXES = ("ТД", "ПК", "ГК", "НПО")
PERSONAL_DOMAINS = (
    ("mail.ru", 35),
    ("yandex.ru", 30),
    ("gmail.com", 20),
    ("bk.ru", 8),
    ("inbox.ru", 7),
)

TRANSLIT = {
    **dict(zip("абвгдеёзийклмнопрстуфыэ", "abvgdeeziiklmnoprstufye", strict=True)),
    **{"ж": "zh", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch"},
    **{"ъ": "", "ь": "", "ю": "yu", "я": "ya"},
}

FIRST_CALL_NOTES = {
    "b2b": (
        "Дозвонился, обсудили задачу. Клиент ждёт предложение.",
        "Не взял трубку, отправил письмо и сообщение в мессенджер.",
        "Клиент уточнил бюджет и сроки, нужен расчёт.",
        "Решение принимает генеральный директор, договорились о встрече.",
        "Клиент сравнивает три поставщика, просит прислать условия.",
        "Обсудили объём: нужна смета и сроки монтажа.",
    ),
    "b2c": (
        "Перезвонили, клиент выбирает между двумя моделями.",
        "Клиент спросил про доставку в регион и рассрочку.",
        "Не дозвонились с первого раза, отправили SMS.",
        "Клиенту нужна консультация по характеристикам.",
        "Клиент уточнил наличие и цвет.",
    ),
}
BACK_NOTES = {
    "b2b": (
        "Клиент попросил пересчитать КП с другой комплектацией.",
        "Юристы клиента вернули договор с правками.",
        "Сменилось контактное лицо, заново выясняем потребность.",
    ),
    "b2c": (
        "Клиент передумал насчёт модели, подбираем замену.",
        "Нужной модели нет в наличии, предложили аналог.",
    ),
}
STAGE_NOTES = (
    "Отправил материалы на почту.",
    "Созвонились, клиент подтвердил интерес.",
    "Клиент просит скидку, согласовываю с руководителем.",
    "Всё идёт по плану.",
)
POSTPONE_COMMENTS = {
    "b2b": (
        "Бюджет появится в следующем квартале.",
        "Клиент в отпуске, просил перезвонить.",
        "Ждут решения руководства.",
        "Тендер перенесли, вернуться позже.",
    ),
    "b2c": (
        "Клиент ждёт зарплату.",
        "Ждёт поступления нужной модели.",
        "Просил напомнить о распродаже.",
    ),
}
REOPEN_COMMENTS = (
    "Клиент вернулся к вопросу.",
    "Конкурент сорвал сроки, клиент снова с нами.",
    "Появился бюджет, продолжаем.",
)
STALE_COMMENT = "Клиент давно не выходит на связь, сделка закрыта."
OTHER_LOSS_COMMENTS = {
    "b2b": (
        "Компания закрылась.",
        "Проект заморожен после смены руководства.",
        "Дубль заявки.",
        "Клиент перестал выходить на связь.",
    ),
    "b2c": (
        "Отказ при получении заказа.",
        "Дубль заявки.",
        "Клиент перестал выходить на связь.",
        "Нашёл товар дешевле на маркетплейсе.",
    ),
}


# ---------------------------------------------------------------- plans

COMPLETE_TASKS, NOTE, MOVE, WIN, LOSE_STEP, POSTPONE_STEP, REOPEN, RESUME = (
    "complete_tasks",
    "note",
    "move",
    "win",
    "lose",
    "postpone",
    "reopen",
    "resume",
)


@dataclass(frozen=True)
class ContactSpec:
    """A client as he first appears: phone or company may come only later."""

    key: int
    name: str
    phone: str
    email: str
    company: str


@dataclass
class Step:
    """One action on a deal, ``at`` seconds after the deal entered the funnel.

    ``values`` may hold ``datetime.timedelta`` for a date field: that long after the step.
    """

    kind: str
    at: int
    stage: int | None = None
    values: dict = field(default_factory=dict)
    reason: str = ""
    text: str = ""
    next_contact: int | None = None  # seconds after the deal entered


@dataclass
class DealPlan:
    number: int
    funnel: str
    age: int  # the deal entered this many seconds before now
    title: str
    owner: str | None
    created_by_owner: bool  # else it came from a form (actor None)
    contact: ContactSpec
    repeat: bool
    values: dict
    steps: list[Step]
    stage: int  # where the story ends
    status: str


@dataclass
class _Client:
    """The planner's view of a client, to plan repeat deals consistently."""

    spec: ContactSpec
    phone: str
    company: str
    phone_known: bool
    company_known: bool
    owner: str | None
    won_ago: int | None = None  # seconds before now of his latest win


def plan_deals(*, seed: int, count: int) -> list[DealPlan]:
    """The story of every demo deal, oldest first: a pure function of ``seed`` and ``count``."""
    return _Planner(random.Random(seed)).plan(count)


def plan_summary(plans: list[DealPlan]) -> Counter:
    """How many planned deals end on each (funnel name, stage name, status)."""
    return Counter(
        (
            FUNNELS_BY_KEY[plan.funnel].name,
            FUNNELS_BY_KEY[plan.funnel].stages[plan.stage].name,
            plan.status,
        )
        for plan in plans
    )


class _Story:
    """The steps of one deal, never later than ``limit`` seconds after it entered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.t = 0
        self.steps: list[Step] = []

    def fits(self, gap: int) -> bool:
        return self.t + max(gap, MINUTE) <= self.limit

    def add(self, kind: str, gap: int, *, floor: int = MINUTE, **fields) -> bool:
        """Append a step ``gap`` seconds (at least ``floor``) after the last one, if it fits."""
        gap = max(int(gap), floor)
        if self.t + gap > self.limit:
            return False
        self.t += gap
        self.steps.append(Step(kind=kind, at=self.t, **fields))
        return True


class _Planner:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.phones: set[str] = set()
        self.emails: set[str] = set()
        self.clients: dict[str, list[_Client]] = {spec.key: [] for spec in FUNNELS}
        self.companies = [
            f"{word}-{suffix}" for word in COMPANY_WORDS for suffix in COMPANY_SUFFIXES
        ]
        self.companies += [
            f"{prefix} {word}" for prefix in COMPANY_PREFIXES for word in COMPANY_WORDS
        ]
        rng.shuffle(self.companies)
        self.used_companies: list[str] = []
        self.contact_keys = 0

    def plan(self, count: int) -> list[DealPlan]:
        ages = sorted((self._age() for _ in range(count)), reverse=True)
        return [self._deal(number, age) for number, age in enumerate(ages, 1)]

    # -- small draws

    def _pick(self, weighted):
        names = [name for name, _ in weighted]
        weights = [weight for _, weight in weighted]
        return self.rng.choices(names, weights=weights)[0]

    def _chance(self, p: float) -> bool:
        return self.rng.random() < p

    def _age(self) -> int:
        """Seconds since the deal entered; more deals lately, as a growing business has."""
        while True:
            days = self.rng.uniform(0, HISTORY_DAYS)
            if self.rng.random() < (1 + 0.6 * (1 - days / HISTORY_DAYS)) / 1.6:
                return max(5 * MINUTE, int(days * DAY))

    def _lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(self.rng.gauss(0, sigma))

    # -- clients

    def _person_name(self) -> tuple[str, str, bool]:
        female = self._chance(0.5)
        first = self.rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        surname = self.rng.choice(SURNAMES)
        if female:
            if surname.endswith(("ов", "ев", "ёв", "ин", "ын")):
                surname += "а"
            elif surname.endswith("ий"):
                surname = surname[:-2] + "ая"
        return first, surname, female

    def _phone(self) -> str:
        while True:
            digits = f"9{self.rng.randrange(100):02d}{self.rng.randrange(10_000_000):07d}"
            if digits not in self.phones:
                self.phones.add(digits)
                return f"+7 {digits[:3]} {digits[3:6]}-{digits[6:8]}-{digits[8:]}"

    def _email(self, local: str, domain: str) -> str:
        email = f"{local}@{domain}"
        while email in self.emails:
            email = f"{local}{self.rng.randrange(10, 1000)}@{domain}"
        self.emails.add(email)
        return email

    def _company(self) -> tuple[str, str]:
        """An organisation's name and its mail domain; a few share a company."""
        if self.used_companies and (not self.companies or self._chance(0.08)):
            base = self.rng.choice(self.used_companies)
        else:
            base = self.companies.pop()
            self.used_companies.append(base)
        form = "АО" if self._chance(0.1) else "ООО"
        return f"{form} «{base}»", _latin(base).replace(" ", "-") + ".ru"

    def _new_client(self, spec: FunnelSpec, inbound: bool) -> _Client:
        first, surname, _ = self._person_name()
        name = f"{first} {surname}"
        personal = _latin(first)[0] + _latin(surname) if self._chance(0.5) else None
        personal = personal or f"{_latin(first)}.{_latin(surname)}"
        company = ""
        if spec.b2b:
            if self._chance(0.15):
                initials = f"{first[0]}. {self.rng.choice(PATRONYMIC_INITIALS)}."
                company = f"ИП {surname} {initials}"
                email = self._email(personal, self._pick(PERSONAL_DOMAINS))
            else:
                company, domain = self._company()
                email = self._email(f"{_latin(first)[0]}.{_latin(surname)}", domain)
        else:
            email = self._email(personal, self._pick(PERSONAL_DOMAINS)) if self._chance(0.6) else ""
        phone = self._phone()
        # Form leads sometimes leave only an email; B2B forms often skip the company.
        phone_known = not (inbound and email and self._chance(0.25))
        company_known = bool(company) and not (inbound and self._chance(0.2))
        self.contact_keys += 1
        contact = ContactSpec(
            key=self.contact_keys,
            name=name,
            phone=phone if phone_known else "",
            email=email,
            company=company if company_known else "",
        )
        return _Client(contact, phone, company, phone_known, company_known, owner=None)

    def _repeat_client(self, spec: FunnelSpec, age: int) -> _Client | None:
        clients = self.clients[spec.key]
        if not clients or not self._chance(spec.repeat_share):
            return None
        bought = [c for c in clients if c.won_ago is not None and c.won_ago > age]
        if bought and self._chance(0.75):
            return self.rng.choice(bought)
        return self.rng.choice(clients)

    # -- one deal

    def _deal(self, number: int, age: int) -> DealPlan:
        rng = self.rng
        spec = B2B if self._chance(B2B.share) else B2C
        source = self._pick(spec.sources)
        inbound = source in INBOUND_SOURCES
        temperature = WARM if self._chance(WARM_SHARE[source]) else COLD
        region = self._pick(REGIONS)
        product, low, high = rng.choice(spec.products)
        amount = _price(rng.uniform(math.log(low), math.log(high)), b2b=spec.b2b)
        client = self._repeat_client(spec, age)
        repeat = client is not None
        if client is None:
            client = self._new_client(spec, inbound)
            self.clients[spec.key].append(client)
        else:
            temperature = WARM
        owner = client.owner if repeat and client.owner else self._pick(spec.owner_weights)
        if not repeat and inbound and age < 2 * DAY and self._chance(UNASSIGNED_SHARE):
            owner = None
        client.owner = client.owner or owner

        values = {"source": source, "region": region, "temperature": temperature}
        filled = {"contact", "source", "region", "temperature"}
        if self._chance(spec.product_known_share):
            values["product"] = product
            filled.add("product")
        if self._chance(spec.amount_known_share):
            values["amount"] = amount
            filled.add("amount")
        if client.phone_known:
            filled.add("contact_phone")
        if client.company_known:
            filled.add("company")
        if client.spec.email:
            filled.add("contact_email")
        if spec.b2b and client.company.startswith(("ООО", "АО")) and self._chance(0.35):
            size = rng.choice(spec.choices_of("company_size"))
            values["custom_fields"] = {"company_size": size}
            filled.add("company_size")

        who = client.company if client.company_known and client.company else client.spec.name
        what = product if "product" in filled else ("Новый запрос" if spec.b2b else "Подбор товара")
        deal = DealPlan(
            number=number,
            funnel=spec.key,
            age=age,
            title=f"{what}: {who}",
            owner=owner,
            created_by_owner=owner is not None and not inbound,
            contact=client.spec,
            repeat=repeat,
            values=values,
            steps=[],
            stage=0,
            status=OPEN,
        )
        context = _DealContext(spec, client, filled, product, amount, number, temperature, repeat)
        self._story(deal, context)
        return deal

    def _story(self, deal: DealPlan, ctx: "_DealContext") -> None:
        """Play the deal forward stage by stage until it closes, stalls or reaches now."""
        rng, spec = self.rng, ctx.spec
        story = _Story(limit=deal.age - MINUTE)
        deal.steps = story.steps
        if deal.owner is None:
            return
        person = PEOPLE_BY_USERNAME[deal.owner]
        median = 1.0 if deal.created_by_owner else person.response_minutes
        response = int(self._lognormal(median * MINUTE, 1.0))
        if not story.add(COMPLETE_TASKS, response, floor=15):
            return
        if self._chance(FIRST_CALL_NOTE_SHARE):
            story.add(
                NOTE, rng.randint(MINUTE, 10 * MINUTE), text=rng.choice(FIRST_CALL_NOTES[spec.key])
            )
        tasks_open = False
        setbacks = 0
        last = len(spec.stages) - 1
        for _ in range(30):
            stage_spec = spec.stages[deal.stage]
            outcome = self._outcome(stage_spec, person, ctx, setbacks)
            if outcome == STALL:
                # Seed 004: a deal that hangs too long is taken out of the funnel.
                if self._chance(STALE_CLOSED_SHARE):
                    gap = int(rng.uniform(30, 90) * DAY)
                    reason = self._pick(((OTHER, 1), (CHANGED_MIND, 1)))
                    comment = STALE_COMMENT if reason == OTHER else ""
                    if story.add(LOSE_STEP, gap, reason=reason, text=comment):
                        deal.status = LOST
                return
            dwell = self._dwell(stage_spec, ctx.temperature)
            if outcome == POSTPONE:
                if not self._postpone(deal, ctx, story, dwell):
                    return
                if deal.status == POSTPONED:
                    return
                tasks_open = tasks_open or story.steps[-1].kind == RESUME
                setbacks += 1
                continue
            if tasks_open and self._chance(
                TASKS_DONE_BEFORE_LOSS if outcome == LOSE else TASKS_DONE
            ):
                if not story.add(COMPLETE_TASKS, dwell):
                    return
                tasks_open = False
                dwell = rng.randint(MINUTE, 30 * MINUTE)
            if outcome == LOSE:
                reason = self._loss_reason(stage_spec, deal)
                comment = rng.choice(OTHER_LOSS_COMMENTS[spec.key]) if reason == OTHER else ""
                if not story.add(LOSE_STEP, dwell, reason=reason, text=comment):
                    return
                deal.status = LOST
                if not self._chance(REOPEN_AFTER_LOSS):
                    return
                gap = int(rng.uniform(10, 60) * DAY)
                if not story.add(REOPEN, gap, text=rng.choice(REOPEN_COMMENTS)):
                    return
                deal.status = OPEN
                setbacks += 1
                continue
            if outcome == BACK:
                target = deal.stage - 1
            else:
                target = deal.stage + 1
                if self._chance(stage_spec.skip):
                    target += 1
                if deal.stage < last and self._chance(stage_spec.win_directly):
                    target = last + 1
            if target > last:
                values = ctx.reveal(range(len(spec.stages)), rng)
                if not story.add(WIN, dwell, values=values):
                    return
                ctx.commit(values)
                deal.status = WON
                ctx.client.won_ago = deal.age - story.t
                return
            values = ctx.reveal(range(target + 1), rng)
            discount = spec.stages[target].discount
            if discount and "amount" in ctx.filled and self._chance(discount):
                values["amount"] = _price(math.log(float(ctx.amount) * 0.9), b2b=True)
            if not story.add(MOVE, dwell, stage=target, values=values):
                return
            ctx.commit(values)
            deal.stage = target
            tasks_open = True
            if outcome == BACK:
                story.add(
                    NOTE, rng.randint(MINUTE, 20 * MINUTE), text=rng.choice(BACK_NOTES[spec.key])
                )
            elif self._chance(STAGE_NOTE_SHARE):
                story.add(NOTE, rng.randint(10 * MINUTE, 3 * HOUR), text=rng.choice(STAGE_NOTES))

    def _outcome(self, stage: StageSpec, person: Person, ctx: "_DealContext", setbacks: int) -> str:
        advance = stage.advance * person.skill ** (0.8 if stage.selling else 0.3)
        lose = stage.lose
        if ctx.temperature == COLD and stage.selling:
            advance *= COLD_ADVANCE
            lose *= COLD_LOSE
        if ctx.repeat:
            advance *= REPEAT_ADVANCE
        advance = min(advance * SETBACK_ADVANCE**setbacks, 0.96)
        rest = {LOSE: lose, POSTPONE: stage.postpone, BACK: stage.back, STALL: stage.stall}
        scale = (1 - advance) / (sum(rest.values()) or 1)
        weighted = [(ADVANCE, advance), *((name, p * scale) for name, p in rest.items())]
        return self._pick(weighted)

    def _dwell(self, stage: StageSpec, temperature: str) -> int:
        factor = COLD_SLOWER if temperature == COLD else WARM_FASTER
        return max(2 * MINUTE, int(self._lognormal(stage.dwell_days * DAY * factor, 0.8)))

    def _loss_reason(self, stage: StageSpec, deal: DealPlan) -> str:
        weights = stage.loss_weights or ((OTHER, 1),)
        if deal.created_by_owner:  # a lead a manager found himself is not spam
            weights = tuple((name, w) for name, w in weights if name != SPAM) or ((OTHER, 1),)
        return self._pick(weights)

    def _postpone(self, deal: DealPlan, ctx: "_DealContext", story: _Story, dwell: int) -> bool:
        """Put the deal on hold; it comes back when the date comes, or is still on hold now."""
        rng = self.rng
        comment = rng.choice(POSTPONE_COMMENTS[ctx.spec.key])
        if not story.fits(dwell):
            return False
        at = story.t + max(dwell, MINUTE)
        next_contact = at + int(rng.uniform(5, 60) * DAY)
        if next_contact + 10 * MINUTE > story.limit:
            # Still on hold: the next contact is ahead of now (at least a day ahead).
            next_contact = max(next_contact, deal.age + DAY)
            story.add(POSTPONE_STEP, dwell, text=comment, next_contact=next_contact)
            deal.status = POSTPONED
            return True
        story.add(POSTPONE_STEP, dwell, text=comment, next_contact=next_contact)
        back_in = next_contact - story.t
        if self._chance(0.5) and story.fits(back_in + HOUR):
            story.add(
                REOPEN, back_in + rng.randint(10 * MINUTE, DAY), text=rng.choice(REOPEN_COMMENTS)
            )
            if story.steps[-1].kind == REOPEN:
                return True
        story.add(RESUME, back_in + rng.randint(MINUTE, 5 * MINUTE))
        return True


@dataclass
class _DealContext:
    spec: FunnelSpec
    client: _Client
    filled: set[str]
    product: str
    amount: str
    number: int
    temperature: str
    repeat: bool

    def reveal(self, stage_indexes, rng: random.Random) -> dict:
        """Values for the fields that the stages require and the deal still lacks."""
        values: dict = {}
        for index in stage_indexes:
            for name in self.spec.stages[index].required_fields:
                if name in self.filled or name in values or name in values.get("custom_fields", {}):
                    continue
                if name == "contact_phone":
                    values[name] = self.client.phone
                elif name == "company":
                    values[name] = self.client.company
                elif name == "amount":
                    values[name] = self.amount
                elif name == "product":
                    values[name] = self.product
                elif name == "expected_close_date":
                    values[name] = datetime.timedelta(days=rng.randint(7, 45))
                elif name == "contract_number":
                    values.setdefault("custom_fields", {})[name] = f"Д-{self.number:05d}"
                elif name == "delivery_method":
                    method = rng.choice(self.spec.choices_of(name))
                    values.setdefault("custom_fields", {})[name] = method
                else:
                    raise DemoError(f"The demo does not know how to fill “{name}”.")
        revealing_phone = self.spec.b2b and "contact_phone" in values
        if revealing_phone and "inn" not in self.filled and rng.random() < 0.6:
            inn = "".join(str(rng.randrange(10)) for _ in range(10))
            values.setdefault("custom_fields", {})["inn"] = inn
        return values

    def commit(self, values: dict) -> None:
        """The step with these values is written: the deal (and client) now has them."""
        self.filled.update(values)
        self.filled.update(values.get("custom_fields", {}))
        if "contact_phone" in values:
            self.client.phone_known = True
        if "company" in values:
            self.client.company_known = True
            self.client.company = values["company"]


def _latin(text: str) -> str:
    return "".join(TRANSLIT.get(char, char) for char in text.lower())


def _price(log_value: float, *, b2b: bool) -> str:
    """A round price: thousands for B2B, shop prices like 24 990 for B2C."""
    value = math.exp(log_value)
    if b2b:
        return str(max(1000, round(value / 1000) * 1000))
    return str(max(990, round(value / 1000) * 1000 - 10))


# ---------------------------------------------------------------- writing


@dataclass
class DemoResult:
    deals: int
    seconds: float
    by_funnel_and_status: dict[tuple[str, str], int]


@dataclass
class _FunnelRows:
    funnel: Funnel
    stages: list
    reasons: dict[str, LossReason]


def demo_data_exists() -> bool:
    return Deal.objects.exists()


def generate_demo(
    *,
    deals: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Write the demo users, funnels and ``deals`` planned deals in one transaction.

    Raises ``DemoError`` if a demo funnel name is taken or a service refuses a
    step; then nothing is written.
    """
    started = time.monotonic()
    plans = plan_deals(seed=seed, count=deals)
    now = timezone.now().replace(microsecond=0)
    with transaction.atomic():
        users = _create_people(now)
        funnels = {spec.key: _create_funnel(spec, users) for spec in FUNNELS}
        contacts: dict[int, Contact] = {}
        for done, plan in enumerate(plans, 1):
            _write_deal(plan, now=now, users=users, funnels=funnels, contacts=contacts)
            if progress and (done % PROGRESS_EVERY == 0 or done == len(plans)):
                progress(done, len(plans))
    counts = Deal.objects.values_list("funnel__name", "status").annotate(n=Count("id"))
    return DemoResult(
        deals=len(plans),
        seconds=time.monotonic() - started,
        by_funnel_and_status={(name, status): n for name, status, n in counts},
    )


def _create_people(now: datetime.datetime) -> dict[str, User]:
    """The demo users, all with the password ``demo``. Existing users are left as they are."""
    teams = [Team.objects.get_or_create(name=name)[0] for name in TEAMS]
    existing = {
        user.username: user for user in User.objects.filter(username__in=PEOPLE_BY_USERNAME)
    }
    password = make_password(DEMO_PASSWORD)  # once: hashing is deliberately slow
    users = {}
    for person in PEOPLE:
        user = existing.get(person.username)
        if user is None:
            user = User.objects.create(
                username=person.username,
                first_name=person.first_name,
                last_name=person.last_name,
                email=f"{person.username}@voronka.example",
                role=person.role,
                team=teams[person.team] if person.team is not None else None,
                is_staff=person.role == Role.ADMIN,
                is_superuser=person.role == Role.ADMIN,
                password=password,
                date_joined=now - datetime.timedelta(days=HISTORY_DAYS + 30),
            )
        users[person.username] = user
    for team, head in zip(teams, ("head", "head2"), strict=True):
        if team.head_id is None:
            team.head = users[head]
            team.save(update_fields=["head"])
    return users


def _create_funnel(spec: FunnelSpec, users: dict[str, User]) -> _FunnelRows:
    if Funnel.objects.filter(name=spec.name).exists():
        raise DemoError(
            f"A funnel named “{spec.name}” already exists. Run the demo on an empty database "
            "(or with --if-empty, which skips a database that has deals)."
        )
    custom_keys = {custom.key for custom in spec.custom_fields}
    try:
        funnel = funnel_create(
            actor=None,
            name=spec.name,
            target_response_minutes=spec.target_response_minutes,
            members=[users[username] for username in spec.members],
            stages=[
                {
                    "name": stage.name,
                    "probability": stage.probability,
                    "rotting_days": stage.rotting_days,
                    "target_conversion": (
                        Decimal(stage.target_conversion) if stage.target_conversion else None
                    ),
                    # Custom fields do not exist yet: they are required below.
                    "required_fields": [f for f in stage.required_fields if f not in custom_keys],
                    "tasks": list(stage.tasks),
                }
                for stage in spec.stages
            ],
        )
        for custom in spec.custom_fields:
            custom_field_add(
                actor=None,
                funnel=funnel,
                key=custom.key,
                label=custom.label,
                type=custom.type,
                choices=list(custom.choices),
            )
        stages = list(funnel.stages.order_by("position"))
        for stage, stage_spec in zip(stages, spec.stages, strict=True):
            if set(stage_spec.required_fields) & custom_keys:
                stage_update(
                    actor=None, stage=stage, required_fields=list(stage_spec.required_fields)
                )
        for reason in spec.extra_loss_reasons:
            loss_reason_add(actor=None, funnel=funnel, name=reason)
    except DomainError as exc:
        raise DemoError(f"Cannot create the funnel “{spec.name}”: {exc.message}") from exc

    # Prefetched, so that the services find the task templates and custom fields in memory.
    funnel = Funnel.objects.prefetch_related("custom_fields").get(pk=funnel.pk)
    stages = list(funnel.stages.order_by("position").prefetch_related("task_templates"))
    by_name = {reason.name: reason for reason in funnel.loss_reasons.all()}
    reasons = {
        key: by_name[str(DEFAULT_LOSS_REASONS[i])] for i, key in enumerate(DEFAULT_REASON_KEYS)
    }
    reasons[OTHER] = by_name[str(OTHER_LOSS_REASON)]
    if NO_ANSWER_REASON in by_name:
        reasons[NO_ANSWER] = by_name[NO_ANSWER_REASON]
    return _FunnelRows(funnel=funnel, stages=stages, reasons=reasons)


def _resolve(values: dict, at: datetime.datetime) -> dict:
    """Planned values as the services take them: offsets become dates."""
    return {
        name: timezone.localtime(at + value).date()
        if isinstance(value, datetime.timedelta)
        else value
        for name, value in values.items()
    }


def _write_deal(
    plan: DealPlan,
    *,
    now: datetime.datetime,
    users: dict[str, User],
    funnels: dict[str, _FunnelRows],
    contacts: dict[int, Contact],
) -> None:
    rows = funnels[plan.funnel]
    owner = users[plan.owner] if plan.owner else None
    created = now - datetime.timedelta(seconds=plan.age)
    step = None
    try:
        contact = contacts.get(plan.contact.key)
        if contact is None:
            spec = plan.contact
            contact = contact_find_or_create(
                name=spec.name, phone=spec.phone, email=spec.email, company=spec.company, at=created
            )
            contacts[spec.key] = contact
        deal = deal_create(
            actor=owner if plan.created_by_owner else None,
            funnel=rows.funnel,
            stage=rows.stages[0],
            title=plan.title,
            owner=owner,
            contact=contact,
            values=_resolve(plan.values, created),
            at=created,
        )
        for step in plan.steps:
            _write_step(step, deal.pk, owner, rows, created)
    except DomainError as exc:
        doing = f"step “{step.kind}”" if step else "creation"
        raise DemoError(
            f"Demo deal #{plan.number} ({plan.title}): {doing} failed: {exc.message}"
        ) from exc


def _write_step(
    step: Step, deal_id: int, owner: User, rows: _FunnelRows, created: datetime.datetime
) -> None:
    at = created + datetime.timedelta(seconds=step.at)
    if step.kind == COMPLETE_TASKS:
        open_tasks = Task.objects.filter(deal_id=deal_id, done_at__isnull=True).order_by("id")
        for task_id in open_tasks.values_list("id", flat=True):
            task_complete(actor=owner, task=task_id, at=at)
    elif step.kind == NOTE:
        note_add(actor=owner, deal=deal_id, text=step.text, at=at)
    elif step.kind == MOVE:
        deal_move_to_stage(
            actor=owner,
            deal=deal_id,
            stage=rows.stages[step.stage],
            values=_resolve(step.values, at),
            at=at,
        )
    elif step.kind == WIN:
        deal_win(actor=owner, deal=deal_id, values=_resolve(step.values, at), at=at)
    elif step.kind == LOSE_STEP:
        deal_lose(
            actor=owner,
            deal=deal_id,
            loss_reason=rows.reasons[step.reason],
            comment=step.text,
            at=at,
        )
    elif step.kind == POSTPONE_STEP:
        next_contact = created + datetime.timedelta(seconds=step.next_contact)
        deal_postpone(
            actor=owner, deal=deal_id, next_contact_at=next_contact, comment=step.text, at=at
        )
    elif step.kind == REOPEN:
        deal_reopen(actor=owner, deal=deal_id, comment=step.text, at=at)
    elif step.kind == RESUME:
        if not deal_resume_postponed(deal=deal_id, at=at):
            raise DemoError(f"Deal {deal_id} was not due to resume at {at}.")
    else:
        raise DemoError(f"Unknown demo step “{step.kind}”.")
