"""Settings from the environment: one place that reads them and fails loudly.

Every value has a safe default for the embedded demo (SQLite, eager Celery).
With ``DEBUG`` off, the values a production install must set are checked at
start-up and a missing one stops the process with a message naming it.
"""

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}.")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def require_production_values(values: dict[str, str]) -> None:
    """Raise naming every production setting that is missing."""
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ImproperlyConfigured(
            "DEBUG is off, so these settings must be set in the environment: "
            + ", ".join(missing)
            + ". See the configuration table in README.md."
        )
