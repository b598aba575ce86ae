"""Browser tests: headless Chromium driven by Playwright against pytest-django's live server.

Chromium comes from the system (``apt-get install chromium``), never from
``playwright install``. Without it (or without playwright) these tests skip.
"""

import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "browser-test-pw-1"


@pytest.fixture(scope="module")
def chromium():
    """One Chromium per test module.

    Playwright's sync API keeps an event loop running in this thread, so Django
    would refuse its synchronous ORM calls; DJANGO_ALLOW_ASYNC_UNSAFE lifts that
    for the browser tests only, and is removed again with the browser (a
    process-wide setting would leak into other tests' subprocesses).
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(chromium, live_server):
    context = chromium.new_context(
        locale="en-US", viewport={"width": 1400, "height": 900}, base_url=live_server.url
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def log_in(page, user) -> None:
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    page.goto("/accounts/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/board/*/")


def drag(page, source, target, *, y_offset: float | None = None) -> None:
    """Drag with real mouse moves: SortableJS runs in its pointer-event mode."""
    start = source.bounding_box()
    end = target.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(
        start["x"] + start["width"] / 2 + 12, start["y"] + start["height"] / 2 + 12, steps=4
    )
    to_y = end["y"] + (y_offset if y_offset is not None else min(40, end["height"] / 2))
    page.mouse.move(end["x"] + end["width"] / 2, to_y, steps=20)
    page.mouse.move(end["x"] + end["width"] / 2 + 2, to_y + 2, steps=2)
    page.mouse.up()
