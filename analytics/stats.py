"""Small pure functions behind the dashboard: significance of a manager's
conversion against the rest of his team, bottlenecks against the previous
period, and what-if projections.

No database, no Django: numbers in, numbers out.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

SIGNIFICANCE = 0.05  # two-sided, i.e. a 95 % confidence level


@dataclasses.dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


def two_proportion_z_test(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int
) -> ZTest | None:
    """Pooled two-proportion z-test of ``a`` against ``b``, two-sided.

    ``z`` is positive when ``a`` converts better. None when either side has no
    trials or the pooled proportion is 0 or 1 (no variance: nothing to test).
    """
    if trials_a <= 0 or trials_b <= 0:
        return None
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b)
    if variance <= 0:
        return None
    z = (successes_a / trials_a - successes_b / trials_b) / math.sqrt(variance)
    return ZTest(z=z, p_value=math.erfc(abs(z) / math.sqrt(2)))


@dataclasses.dataclass(frozen=True)
class StepDifference:
    """One manager's conversion at one step against the rest of the team."""

    member: str
    step: int  # index of the step whose conversion from the previous one is tested, >= 1
    own: float  # the member's step conversion
    rest: float  # the rest of the team's pooled step conversion
    test: ZTest


def step_differences(counts: Mapping[str, Sequence[int]]) -> list[StepDifference]:
    """Each member's step conversions tested against the other members pooled.

    ``counts`` maps a member to his step counts ``c_1 … c_n`` (the same steps
    for everyone). Steps where the member or the rest have no deals at the
    previous step are skipped. Returns every tested pair; keep those whose
    ``test.significant`` to highlight.
    """
    out = []
    members = list(counts)
    for member in members:
        own = counts[member]
        for step in range(1, len(own)):
            rest_pass = sum(counts[m][step] for m in members if m != member)
            rest_trials = sum(counts[m][step - 1] for m in members if m != member)
            test = two_proportion_z_test(own[step], own[step - 1], rest_pass, rest_trials)
            if test is None:
                continue
            out.append(
                StepDifference(
                    member=member,
                    step=step,
                    own=own[step] / own[step - 1],
                    rest=rest_pass / rest_trials,
                    test=test,
                )
            )
    return out


@dataclasses.dataclass(frozen=True)
class Projection:
    counts: list[float]  # projected c_1 … c_n (the last is Won)
    won: float
    revenue: float


def what_if(
    *,
    counts: Sequence[int],
    average_check: float | None,
    entered: float | None = None,
    conversions: Mapping[int, float] | None = None,
) -> Projection:
    """Project the funnel from its current step counts.

    ``counts`` are the current ``c_1 … c_n`` (the last is Won). ``entered``
    replaces ``c_1``; ``conversions`` replaces the conversion of step k
    (``c_k / c_(k-1)``, k >= 1, as a fraction). Other steps keep their current
    conversion (0 where the previous step is empty). Revenue is projected won
    deals times the current average check (0 when nothing has been won yet).
    """
    conversions = conversions or {}
    if not counts:
        return Projection(counts=[], won=0.0, revenue=0.0)
    projected = [float(counts[0] if entered is None else entered)]
    for step in range(1, len(counts)):
        if step in conversions:
            rate = conversions[step]
        else:
            rate = counts[step] / counts[step - 1] if counts[step - 1] else 0.0
        projected.append(projected[-1] * rate)
    won = projected[-1]
    return Projection(counts=projected, won=won, revenue=won * (average_check or 0.0))


# A step's conversion must fall by at least this much (a fraction, i.e. 5 percentage
# points) against the previous period to be called out: smaller moves are noise.
NOTABLE_FALL = 0.05


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """Step ``step`` (its conversion from step ``step - 1``) that fell or is below target."""

    step: int  # >= 1
    from_name: str
    to_name: str
    current: float | None
    previous: float | None
    target: float | None
    fell: bool  # by at least ``NOTABLE_FALL`` against the previous period
    below_target: bool

    @property
    def fall(self) -> float:
        """How much the conversion fell (0 when it did not fall notably)."""
        return self.previous - self.current if self.fell else 0.0


def bottlenecks(
    *,
    names: Sequence[str],
    current: Sequence[float | None],
    previous: Sequence[float | None],
    targets: Sequence[float | None],
    notable_fall: float = NOTABLE_FALL,
) -> list[Bottleneck]:
    """The steps whose conversion fell notably against the previous period, or sits
    below its target.

    All four sequences are indexed by step, ``0 … n-1``: ``names`` the step
    names, ``current`` and ``previous`` the step conversions ``c_k / c_(k-1)``
    as fractions (None for the first step and where the previous step is
    empty), ``targets`` the target conversions as fractions (None: no target).
    Returns the biggest fall first, then the steps only below target in funnel
    order. Raises ValueError when the sequences differ in length.
    """
    if not len(names) == len(current) == len(previous) == len(targets):
        raise ValueError("names, current, previous and targets must have one value per step")
    found = []
    for step in range(1, len(names)):
        now, before, target = current[step], previous[step], targets[step]
        fell = now is not None and before is not None and round(before - now, 9) >= notable_fall
        below = now is not None and target is not None and now < target
        if fell or below:
            found.append(
                Bottleneck(
                    step=step,
                    from_name=names[step - 1],
                    to_name=names[step],
                    current=now,
                    previous=before,
                    target=target,
                    fell=fell,
                    below_target=below,
                )
            )
    return sorted(found, key=lambda b: (-b.fall, b.step))
