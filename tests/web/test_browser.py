"""The unit view in real headless Chromium, over a sim cluster run through the real pipeline
(sim agent -> Kafka -> Faust worker -> sink -> chDB, and ``hpcinsight serve`` following the topics).
Screenshots go to test-artifacts/web/."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Pipeline, stop
from tests.web.browser import artifacts, launch, why_not
from tests.web.conftest import TOKEN, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.integration, pytest.mark.skipif(why_not() is not None, reason=why_not() or "")]

SCENARIO = Path(__file__).resolve().parent / "unit-view.yaml"
NODES, GPUS, SPEED = 4, 8, 4
SLOW, JOB = "unit-view-node-02", "unit-view.train"  # the scenario names its nodes and jobs


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        time.sleep(interval)


@pytest.fixture
def live(pipeline: Pipeline) -> Iterator[tuple[Pipeline, str]]:
    procs = [
        pipeline.start("worker", "worker", "--windows", "20s/10s", "--since-start-every", "10s", "--job-wait", "2s"),
        pipeline.start("sink", "sink", "--batch-age", "0.3"),
    ]
    port = free_port()
    procs.append(
        pipeline.start(
            "serve", "serve", "--port", str(port), "--frame-interval", "0.5", extra_env={"HPCINSIGHT_API_TOKEN": TOKEN}
        )
    )
    # --catch-up: an overrun tick is not skipped, so the 400 ticks end at the scenario's second 399
    # however loaded the machine is. Skipped ticks carried the sim clock to second 400, where the job
    # finishes: its GPUs' last samples had no job, and a click on one opened nothing.
    procs.append(
        pipeline.start("agent", "agent", "--scenario", str(SCENARIO), "--speed", str(SPEED), "--ticks", "400", "--catch-up")
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 60, "hpcinsight serve answering")
        yield pipeline, url
    finally:
        for proc in reversed(procs):
            stop(proc)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def api(url: str, path: str) -> Any:
    r = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    r.raise_for_status()
    return r.json()


def test_unit_view_live_outlier_drilldown_and_token(live: tuple[Pipeline, str]) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    pipeline, url = live
    out = artifacts()
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            # without the token the page shows no data and asks for it
            page.goto(url + "/")
            page.wait_for_selector("#token-box:not([hidden])", timeout=20_000)
            assert page.evaluate("__hpci.squares") == 0
            page.screenshot(path=str(out / "token-required.png"))
            page.fill("#token", "not-the-token")
            page.click("#token-form button")
            page.wait_for_function("document.getElementById('token-error').textContent.includes('refused')", timeout=10_000)
            page.fill("#token", TOKEN)
            page.click("#token-form button")

            # every GPU of the sim cluster is one square
            page.wait_for_function(f"__hpci.squares === {NODES * GPUS} && __hpci.updates > 2", timeout=90_000)
            page.screenshot(path=str(out / "unit-view.png"))
            # the summary stays one line whatever its figures: a wrapped line moved the grid under the pointer
            moved = page.evaluate(
                "() => { const grid = document.getElementById('grid'), top = grid.getBoundingClientRect().top;"
                " const more = document.createElement('span'); more.textContent = 'a long figure '.repeat(40);"
                " document.getElementById('summary').appendChild(more);"
                " const now = grid.getBoundingClientRect().top; more.remove(); return now - top; }"
            )
            assert moved == 0, f"a longer summary moved the grid by {moved} px"

            # the outlier: highlighted within a few seconds of the service knowing it is open
            flagged = wait_for(
                lambda: [a for a in api(url, "/api/anomalies") if a["node"] == SLOW and a["gpu_uuid"]],
                240,
                "an open anomaly on the slow GPU",
            )
            uuid = flagged[0]["gpu_uuid"]
            page.wait_for_function(f"__hpci.highlighted.includes({json.dumps(uuid)})", timeout=5_000)
            cell = page.evaluate(f"__hpci.cellOf({json.dumps(uuid)})")
            # the square's edge is drawn in the anomaly red, on the canvas itself
            pixel = page.evaluate(
                "([x, y]) => Array.from(document.getElementById('grid').getContext('2d').getImageData(x, y, 1, 1).data)",
                [cell["x"], cell["y"]],
            )
            assert pixel[:3] == [255, 30, 60], pixel
            page.screenshot(path=str(out / "outlier-highlighted.png"))

            # hover names the GPU, its node, job and user
            cell_of = f"__hpci.cellOf({json.dumps(uuid)})"
            # where the square is on the page now: the summary line above the grid can wrap as its
            # figures change, moving the grid, so never from an earlier bounding box
            point_of = (
                f"(() => {{ const c = {cell_of}, r = document.getElementById('grid').getBoundingClientRect(); "
                "return c && {x: r.left + c.x + c.size / 2 - 1, y: r.top + c.y + c.size / 2 - 1, job: c.job}; })()"
            )
            point = page.evaluate(point_of)
            page.mouse.move(point["x"], point["y"])
            tip = page.locator("#tip")
            tip.wait_for(state="visible", timeout=5_000)
            text = tip.inner_text()
            assert SLOW in text and "train" in text and "carol" in text and "OPEN ANOMALY" in text, text

            # the job drill-down: its ranks (from the stored step metrics) and the anomaly
            wait_for(lambda: api(url, f"/api/jobs/{JOB}").get("store", {}).get("ranks"), 120, "step metrics of the job stored")
            # a click opens the job the page's current frame gives the square (none: the click does nothing)
            try:
                page.wait_for_function(f"({cell_of} || {{}}).job === {json.dumps(JOB)}", timeout=30_000)
            except PlaywrightTimeout:
                raise AssertionError(f"the page's frame does not give the GPU its job: {page.evaluate(cell_of)}") from None
            point = page.evaluate(point_of)
            page.mouse.click(point["x"], point["y"])
            try:
                page.wait_for_selector("#job-panel:not([hidden])", timeout=10_000)
            except PlaywrightTimeout:
                page.screenshot(path=str(out / "click-missed.png"))
                raise AssertionError(f"the click at {point} opened no job; the square now: {page.evaluate(point_of)}") from None
            assert page.locator("#job-title").inner_text() == f"job {JOB}"
            page.wait_for_function("document.querySelectorAll('#job-ranks polyline').length > 0", timeout=60_000)
            ranks = page.locator("#job-ranks polyline").count()
            assert ranks == NODES * GPUS
            assert f"{ranks} ranks" in page.locator("#job-ranks").text_content()
            anomalies = page.locator("#job-anom-list").inner_text()
            assert "gpu_outlier" in anomalies, anomalies
            page.wait_for_function("document.querySelectorAll('#job-findings li').length > 0", timeout=30_000)
            page.screenshot(path=str(out / "job-drilldown.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    log = pipeline.log("serve")
    assert "Traceback" not in log and TOKEN not in log, log
