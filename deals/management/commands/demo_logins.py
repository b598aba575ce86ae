"""``manage.py demo_logins``: who to log in as after ``manage.py demo``."""

from django.core.management.base import BaseCommand

from accounts.models import User
from deals.demo import DEMO_PASSWORD, PEOPLE

URL = "http://127.0.0.1:8000/"


class Command(BaseCommand):
    help = "Print the demo logins (username, name, role, team) and the address to open."

    def handle(self, *args, **options) -> None:
        users = User.objects.filter(username__in=[p.username for p in PEOPLE]).select_related(
            "team"
        )
        by_username = {user.username: user for user in users}
        rows = [
            (
                user.username,
                user.get_full_name(),
                user.get_role_display(),
                user.team.name if user.team else "—",
            )
            for user in (by_username.get(p.username) for p in PEOPLE)
            if user is not None
        ]
        if not rows:
            self.stdout.write("No demo users yet: run `manage.py demo` first.")
            return
        headers = ("username", "name", "role", "team", "password")
        table = [headers, *((*row, DEMO_PASSWORD) for row in rows)]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
        self.stdout.write("")
        self.stdout.write(f"Voronka demo: open {URL} and log in as")
        for row in table:
            cells = (f"{value:<{width}}" for value, width in zip(row, widths, strict=True))
            self.stdout.write(("  " + "  ".join(cells)).rstrip())
        self.stdout.write("")
