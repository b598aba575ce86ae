"""Give back their client to the deals that lead intake wrote without one.

From ten leads in a batch, PostgreSQL got the new deals by COPY before their new
clients had ids, so such deals were saved with no client (fixed in the intake).
The clients themselves were saved, and each lead as received is on its receipt:
find the client by the lead's phone, else its email, as the intake matched them.
A lead with neither (a name only) cannot be matched, and its deal is left as is.
"""

import re

from django.db import migrations


# As deals.services normalised them when these leads came in (kept here as they were
# then: a later change of the live functions must not change what this step does).
def normalize_phone(phone: str) -> str:
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) == 11 and digits.startswith("8"):
        return "7" + digits[1:]
    if len(digits) == 10 and digits.startswith("9"):
        return "7" + digits
    return digits


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def relink_clients(apps, schema_editor):
    Contact = apps.get_model("deals", "Contact")
    Deal = apps.get_model("deals", "Deal")
    LeadReceipt = apps.get_model("deals", "LeadReceipt")
    receipts = LeadReceipt.objects.filter(outcome="created", deal__contact__isnull=True)
    for deal_id, payload in receipts.values_list("deal_id", "payload").iterator():
        contact = payload.get("contact") if isinstance(payload, dict) else None
        if not isinstance(contact, dict):
            continue
        keys = [
            ("phone_normalized", normalize_phone(str(contact.get("phone") or ""))),
            ("email_normalized", normalize_email(str(contact.get("email") or ""))),
        ]
        for column, value in keys:
            found = (
                Contact.objects.filter(**{column: value}).order_by("pk").values("pk")[:1]
                if value
                else None
            )
            if found:
                Deal.objects.filter(pk=deal_id, contact__isnull=True).update(
                    contact_id=found[0]["pk"]
                )
                break


class Migration(migrations.Migration):
    dependencies = [("deals", "0008_owner_duration_indexes")]

    operations = [migrations.RunPython(relink_clients, migrations.RunPython.noop)]
