"""Headless Debian Chromium for the browser tests and the rendering benchmark, driven by Playwright
(``executable_path``: Playwright's own browser download is never used)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts" / "web"


def why_not() -> str | None:
    """None when the browser tests can run, else why not."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing and could not be installed (`make setup` installs Debian's chromium as root or with sudo)"
    try:
        import playwright  # noqa: F401 - imported only to learn whether it is installed
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


def launch(playwright: object) -> object:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)


def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
