"""``manage.py demo``: fill an empty database with demo users, funnels and deals."""

from django.core.management.base import BaseCommand, CommandError
from django.test.utils import override_settings

from deals.demo import DemoError, demo_data_exists, generate_demo
from deals.models import Deal


class Command(BaseCommand):
    help = (
        "Create demo users (password “demo”), a B2B and an online-shop funnel, and N deals "
        "with six months of history, all through the service functions."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--deals", type=int, default=5000, help="How many deals (5000).")
        parser.add_argument("--seed", type=int, default=42, help="Random seed (42).")
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="Do nothing if the database already has deals (what `make run` uses).",
        )

    def handle(self, *args, deals: int, seed: int, if_empty: bool, **options) -> None:
        if deals < 0:
            raise CommandError("--deals must be zero or more.")
        if if_empty and demo_data_exists():
            self.stdout.write(
                f"Demo data is already there ({Deal.objects.count()} deals): nothing to do."
            )
            return
        self.stdout.write(f"Writing {deals} demo deals (seed {seed})…")
        try:
            # With DEBUG on, Django logs every query (and on SQLite asks the database to
            # quote each one's parameters): a tenth of the run time for a log nobody reads.
            with override_settings(DEBUG=False):
                result = generate_demo(
                    deals=deals,
                    seed=seed,
                    progress=lambda done, total: self.stdout.write(f"  {done} / {total} deals"),
                )
        except DemoError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Done: {result.deals} deals in {result.seconds:.1f} s.")
        )
        funnels = sorted({funnel for funnel, _ in result.by_funnel_and_status})
        statuses = ("open", "postponed", "won", "lost")
        width = max((len(name) for name in funnels), default=6)
        self.stdout.write(f"  {'funnel':<{width}}" + "".join(f"{s:>11}" for s in statuses))
        for funnel in funnels:
            counts = [result.by_funnel_and_status.get((funnel, s), 0) for s in statuses]
            self.stdout.write(f"  {funnel:<{width}}" + "".join(f"{n:>11}" for n in counts))
        self.stdout.write("Logins: `manage.py demo_logins` (every password is “demo”).")
