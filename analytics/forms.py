"""The dashboard's controls: a GET form whose state lives in the URL.

``DashboardForm`` validates the funnel, period, mode, window and filters a
user may choose and turns them into a ``FunnelQuery``; ``WhatIfForm`` reads
the what-if scenario. Choices are limited to what the user may see, so a
foreign manager or funnel in a shared URL is a validation error.
"""

import datetime

from django import forms
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import User
from analytics.periods import LAST_12_WEEKS, dashboard_periods
from analytics.selectors import FILTER_VALUE_FIELDS, deal_field_values
from analytics.types import FunnelQuery, Mode
from deals.models import Temperature
from funnels.models import Funnel

CUSTOM = "custom"
PERIOD_CHOICES = [
    ("this_week", _("This week")),
    ("last_week", _("Last week")),
    ("this_month", _("This month")),
    ("last_month", _("Last month")),
    ("this_quarter", _("This quarter")),
    ("last_quarter", _("Last quarter")),
    (LAST_12_WEEKS, _("Last 12 weeks")),
    (CUSTOM, _("Custom")),
]
DEFAULT_PERIOD = "this_month"
MAX_PERIOD_DAYS = 3660
MAX_WINDOW_DAYS = 3650
ALL = ("", _("All"))


def period_dates(name: str, today: datetime.date) -> tuple[datetime.date, datetime.date]:
    """First and last day (inclusive) of a preset period."""
    period = next(p for p in dashboard_periods(today) if p.name == name)
    return period.date_from, period.date_to


class DashboardForm(forms.Form):
    funnel = forms.ModelChoiceField(
        label=_("Funnel"), queryset=Funnel.objects.none(), required=False, empty_label=None
    )
    period = forms.ChoiceField(label=_("Period"), choices=PERIOD_CHOICES, required=False)
    date_from = forms.DateField(
        label=_("From"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        label=_("To"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    mode = forms.ChoiceField(
        label=_("Mode"),
        choices=[(Mode.COHORT.value, _("Cohort")), (Mode.CALENDAR.value, _("Calendar"))],
        required=False,
    )
    window = forms.IntegerField(
        label=_("Conversion window, days"),
        required=False,
        min_value=1,
        max_value=MAX_WINDOW_DAYS,
        widget=forms.NumberInput(attrs={"placeholder": _("no limit")}),
    )
    owner = forms.ChoiceField(label=_("Manager"), required=False)
    source = forms.ChoiceField(label=_("Source"), required=False)
    product = forms.ChoiceField(label=_("Product"), required=False)
    region = forms.ChoiceField(label=_("Region"), required=False)
    client_type = forms.ChoiceField(
        label=_("Client type"),
        required=False,
        choices=[ALL, ("first", _("First sale")), ("repeat", _("Repeat sale"))],
    )
    temperature = forms.ChoiceField(
        label=_("Temperature"), required=False, choices=[ALL, *Temperature.choices]
    )

    FILTERS = ("owner", "source", "product", "region", "client_type", "temperature")

    def __init__(
        self,
        data,
        *,
        funnels: QuerySet[Funnel],
        owners: list[User],
        owners_only: bool,
        today: datetime.date | None = None,
    ):
        """``owners``: the managers the user may pick; with ``owners_only`` the
        figures never include anyone else's deals."""
        super().__init__(data)
        self.today = today or timezone.localdate()
        self.owners_scope = [u.username for u in owners] if owners_only else None
        self.fields["funnel"].queryset = funnels
        self.funnel_for_choices = self._funnel_from_data(funnels)
        self.fields["owner"].choices = [ALL] + [(u.username, str(u)) for u in owners]
        values = (
            deal_field_values(funnel=self.funnel_for_choices) if self.funnel_for_choices else {}
        )
        for field in FILTER_VALUE_FIELDS:
            self.fields[field].choices = [ALL, *((v, v) for v in values.get(field, []))]

    def _funnel_from_data(self, funnels: QuerySet[Funnel]) -> Funnel | None:
        raw = (self.data.get("funnel") or "").strip()
        chosen = funnels.filter(pk=int(raw)).first() if raw.isdigit() and len(raw) < 10 else None
        return chosen or funnels.first()

    def clean_funnel(self) -> Funnel:
        funnel = self.cleaned_data.get("funnel") or self.funnel_for_choices
        if funnel is None:
            raise forms.ValidationError(_("There is no funnel you can see."))
        return funnel

    def clean_period(self) -> str:
        return self.cleaned_data.get("period") or DEFAULT_PERIOD

    def clean_mode(self) -> str:
        return self.cleaned_data.get("mode") or Mode.COHORT.value

    def clean(self) -> dict:
        data = super().clean()
        period = data.get("period")
        if period == CUSTOM:
            date_from, date_to = data.get("date_from"), data.get("date_to")
            if date_from is None and "date_from" not in self.errors:
                self.add_error("date_from", _("Enter the first day of the custom period."))
            if date_to is None and "date_to" not in self.errors:
                self.add_error("date_to", _("Enter the last day of the custom period."))
            if date_from and date_to:
                if date_from > date_to:
                    self.add_error("date_to", _("The period starts after it ends."))
                elif (date_to - date_from).days > MAX_PERIOD_DAYS:
                    self.add_error("date_to", _("Choose a period of at most ten years."))
        elif period:
            data["date_from"], data["date_to"] = period_dates(period, self.today)
        return data

    def filters(self) -> dict[str, list[str]]:
        """The chosen filters, with the owner narrowed to the people the user may see."""
        chosen = {
            field: [self.cleaned_data[field]]
            for field in self.FILTERS
            if self.cleaned_data.get(field)
        }
        if "owner" not in chosen and self.owners_scope is not None:
            chosen["owner"] = self.owners_scope
        return chosen

    def query(self, *, group_by: str | None = None, **changes) -> FunnelQuery:
        values = {
            "funnel_id": self.cleaned_data["funnel"].pk,
            "date_from": self.cleaned_data["date_from"],
            "date_to": self.cleaned_data["date_to"],
            "mode": Mode(self.cleaned_data["mode"]),
            "window_days": self.cleaned_data.get("window"),
            "group_by": group_by,
            "filters": self.filters(),
        }
        return FunnelQuery.build(**{**values, **changes})


class WhatIfForm(forms.Form):
    """``wi_entered`` and ``wi_step_<k>`` (percent) for each step k >= 1."""

    wi_entered = forms.IntegerField(
        label=_("Entering the funnel"), required=False, min_value=0, max_value=10**9
    )

    def __init__(self, data, *, step_names: list[str]):
        super().__init__(data)
        self.step_names = step_names
        for index, name in enumerate(step_names[1:], start=1):
            self.fields[f"wi_step_{index}"] = forms.DecimalField(
                label=name,
                required=False,
                min_value=0,
                max_value=1000,
                decimal_places=2,
                widget=forms.NumberInput(attrs={"step": "0.1"}),
            )

    def conversions(self) -> dict[int, float]:
        return {
            index: float(self.cleaned_data[f"wi_step_{index}"]) / 100
            for index in range(1, len(self.step_names))
            if self.cleaned_data.get(f"wi_step_{index}") is not None
        }

    def step_fields(self) -> list:
        return [self[f"wi_step_{index}"] for index in range(1, len(self.step_names))]
