"""Production settings come from the environment and fail loudly when one is missing."""

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        # DJANGO_ALLOW_ASYNC_UNSAFE (set by the browser tests) fails the deploy check.
        if key not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def random_secret_key() -> str:
    alphabet = string.ascii_letters + string.digits + "!@#%^&*(-_=+)"
    return "".join(secrets.choice(alphabet) for _ in range(50))


def test_the_deploy_check_passes_with_production_values():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY=random_secret_key(),
        ALLOWED_HOSTS="example.com",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_without_a_secret_key_refuses_to_start_and_names_it():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", DEBUG="false", ALLOWED_HOSTS="example.com"
    )

    assert result.returncode != 0
    assert (
        "DEBUG is off, so these settings must be set in the environment: SECRET_KEY."
        in result.stderr
    )


def test_production_without_anything_names_every_missing_value():
    result = manage("check", DEBUG="false")

    assert result.returncode != 0
    assert (
        "DEBUG is off, so these settings must be set in the environment: "
        "SECRET_KEY, ALLOWED_HOSTS." in result.stderr
    )


def test_a_misspelt_debug_value_is_refused():
    result = manage("check", DEBUG="maybe")

    assert result.returncode != 0
    assert "DEBUG must be true or false, got 'maybe'." in result.stderr
