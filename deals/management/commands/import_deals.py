"""``manage.py import_deals --funnel NAME DEALS.csv [EVENTS.csv]``: see docs/import.md."""

import argparse

from django.core.management.base import BaseCommand, CommandError

from crm.errors import DomainError
from deals.importing import ImportRejected, deals_import


class Command(BaseCommand):
    help = (
        "Import deals (DEALS.csv) and their stage history (EVENTS.csv) into a funnel. "
        "Every row is checked first; any error and nothing is written. "
        "Deals already imported (same external_id) are skipped. See docs/import.md."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("deals_file", metavar="DEALS.csv")
        parser.add_argument("events_file", metavar="EVENTS.csv", nargs="?")
        parser.add_argument("--funnel", required=True, help="The funnel's name.")
        parser.add_argument(
            "--stages",
            help='Create the funnel with these stages if it does not exist: "A;B;C".',
        )
        parser.add_argument(
            "--create-owners",
            action="store_true",
            help="Create unknown owners as managers who cannot log in yet.",
        )
        parser.add_argument(
            "--strict",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Refuse lost deals without a reason (default). --no-strict imports them "
            "with the reason “Other”.",
        )
        parser.add_argument("--delimiter", default=",", help="The CSV delimiter: , ; or tab.")

    def handle(self, *args, **options) -> None:
        try:
            result = deals_import(
                funnel_name=options["funnel"],
                deals_path=options["deals_file"],
                events_path=options["events_file"],
                stages=options["stages"],
                create_owners=options["create_owners"],
                strict=options["strict"],
                delimiter=options["delimiter"],
            )
        except ImportRejected as exc:
            raise CommandError(exc.report()) from None
        except DomainError as exc:
            raise CommandError(exc.message) from None
        if result.funnel_created:
            self.stdout.write(f"Created the funnel “{result.funnel.name}”.")
        if result.owners_created:
            self.stdout.write(
                "New owners, who cannot log in yet: " + ", ".join(result.owners_created)
            )
        if result.loss_reasons_added:
            self.stdout.write("Added loss reasons: " + ", ".join(result.loss_reasons_added))
        self.stdout.write(
            self.style.SUCCESS(
                f"{result.funnel.name}: {result.created} created, "
                f"{result.already_imported} already imported "
                f"({result.contacts_created} new clients)."
            )
        )
