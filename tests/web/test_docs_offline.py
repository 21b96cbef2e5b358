"""The API's docs pages work on an air-gapped cluster: every script and style they load comes from
the service itself, and Swagger UI renders the spec in real Chromium with the outside world cut off."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest

from tests.web.browser import launch, why_not
from tests.web.conftest import Served


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_from_the_service(served: Served, page: str) -> None:
    html = httpx.get(served.url + page, timeout=20).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets, html[:2000]
    for asset in assets:
        parts = urlsplit(asset)
        assert not parts.netloc, f"{page} loads {asset} from elsewhere"
        answer = httpx.get(served.url + parts.path, timeout=20)
        assert answer.status_code == 200 and len(answer.content) > 100, (asset, answer.status_code)


@pytest.mark.skipif(why_not() is not None, reason=why_not() or "")
def test_swagger_ui_renders_the_spec_with_no_network(served: Served) -> None:
    from playwright.sync_api import sync_playwright

    service = urlsplit(served.url).netloc
    refused: list[str] = []

    def only_the_service(route, request) -> None:
        if urlsplit(request.url).netloc == service:
            route.continue_()
        else:
            refused.append(request.url)
            route.abort()

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.route("**/*", only_the_service)
            page.goto(served.url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert any("/api/cluster" in p for p in paths), paths
    assert not refused, refused
