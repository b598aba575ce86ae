"""manage.py create_api_key: a key for an integration or a personal token.

The key is printed alone on the last line, once: only its hash is stored.
"""

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiScope, User
from accounts.services import api_key_create
from crm.errors import DomainError
from funnels.models import Funnel


class Command(BaseCommand):
    help = "Create an API key and print it (alone on the last line). It is shown only once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="What the key is for.")
        parser.add_argument("--funnel", help="The funnel's name: leads go there by default.")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            choices=ApiScope.values,
            help="Repeatable. Default: leads:write (a personal token: every scope).",
        )
        parser.add_argument("--user", help="Username: a personal token acting as this person.")
        parser.add_argument(
            "--no-attach-duplicates",
            action="store_true",
            help="Open a new deal even when an open deal has the lead's phone or email.",
        )

    def handle(self, *args, **options) -> None:
        funnel = user = None
        if options["funnel"]:
            funnel = Funnel.objects.filter(name=options["funnel"]).first()
            if funnel is None:
                names = ", ".join(Funnel.objects.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"No funnel named “{options['funnel']}”. Funnels: {names}.")
        if options["user"]:
            user = User.objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user named “{options['user']}”.")
        scopes = options["scopes"] or (ApiScope.values if user else [ApiScope.LEADS_WRITE])
        try:
            api_key, raw_key = api_key_create(
                name=options["name"],
                scopes=scopes,
                funnel=funnel,
                user=user,
                attach_duplicates=not options["no_attach_duplicates"],
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"Created key “{api_key.name}” ({api_key.prefix}…), scopes: "
            f"{', '.join(api_key.scopes)}. Store it now: it is not shown again."
        )
        self.stdout.write(raw_key)
