"""Every page of the admin in real headless Chromium (Debian's `chromium`, installed by
tests/ensure_services.sh), against `editloop serve`'s app on a real port over the filled SQLite
database: charts render with data points, images load, a sample page shows its reflection chain,
the filter form narrows the grid. A screenshot of each page is saved under the test's folder (and
under $EDITLOOP_SCREENSHOTS when set)."""

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from loop.admin.api import create_app
from store.db import make_engine
from tests.fixtures.services import free_port
from tests.loop.admin.chromium import Chromium
from tests.loop.admin.conftest import Filled, admin_settings


@pytest.fixture
def server(filled: Filled) -> Iterator[str]:
    """The admin on a free loopback port; its base URL."""
    app = create_app(admin_settings(filled), engine=make_engine(filled.url), store=filled.store)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "the admin did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Chromium]:
    chromium = Chromium(width=1280, height=2000)  # tall: lazy images below the fold load too
    yield chromium
    chromium.close()


def count(browser: Chromium, selector: str) -> int:
    return browser.evaluate(f"document.querySelectorAll({selector!r}).length")


def assert_images_load(browser: Chromium, at_least: int) -> None:
    images = browser.images_loaded()
    assert len(images) >= at_least
    broken = [image["src"] for image in images if not image["width"]]
    assert not broken, broken


@pytest.mark.parametrize("filled", ["sqlite"], indirect=True)
def test_every_page_in_chromium(
    server: str, browser: Chromium, filled: Filled, tmp_path: Path
) -> None:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("EDITLOOP_SCREENSHOTS"):
        folders.append(Path(os.environ["EDITLOOP_SCREENSHOTS"]))

    def shoot(name: str) -> None:
        for folder in folders:
            browser.screenshot(folder / f"{name}.png")

    browser.goto(f"{server}/runs")
    assert count(browser, "#runs tbody tr") == 3
    shoot("runs")

    browser.goto(f"{server}/runs/{filled.main_run}")
    charts = browser.evaluate(
        "[...document.querySelectorAll('svg.chart')].map(svg => "
        "[svg.getAttribute('aria-label'), svg.querySelectorAll('circle.point').length])"
    )
    assert len(charts) >= 6
    assert all(points > 0 for _, points in charts), charts
    titles = " ".join(title for title, _ in charts)
    for expected in ("Verdict rates", "Chains", "scores", "edit type", "Throughput", "GPU-seconds"):
        assert expected in titles
    # a rendered chart has a size on the page
    assert browser.evaluate("document.querySelector('svg.chart').getBoundingClientRect().width") > 0
    shoot("run")

    browser.goto(f"{server}/runs/{filled.main_run}/rounds/0")
    assert count(browser, "#by-type tbody tr") >= 3 and count(browser, "#judge-health tr") == 7
    shoot("round")

    browser.goto(f"{server}/samples")
    cards = count(browser, "#grid .card")
    assert cards > 10
    assert_images_load(browser, at_least=2 * cards - 5)
    shoot("samples")
    # the filter form narrows the grid: only Failed samples are left
    browser.evaluate(
        "document.querySelector('#filters select[name=verdict]').value = 'Failed';"
        "document.querySelector('#filters button[type=submit]').click()"
    )
    browser.wait_for_load()
    assert "verdict=Failed" in browser.evaluate("location.search")
    narrowed = browser.evaluate(
        "[...document.querySelectorAll('#grid .card')].map(card => card.dataset.verdict)"
    )
    assert 0 < len(narrowed) < cards and set(narrowed) == {"Failed"}
    total = browser.evaluate("document.querySelector('#total').textContent")
    assert total.startswith(f"{len(narrowed)} ")
    shoot("samples-failed")

    # a sample whose first attempt asked for a reflection: the chain and the reflector's answer
    browser.goto(f"{server}/samples?verdict=Reflection&depth=0")
    first = browser.evaluate("document.querySelector('#grid .card').dataset.attempt")
    browser.goto(f"{server}/samples/{first}")
    assert count(browser, "#chain li.step") >= 2
    reflection = browser.evaluate("document.querySelector('#chain li.step .reflection').innerText")
    assert "Reflection" in reflection and "Revised instruction" in reflection
    assert_images_load(browser, at_least=5)
    shoot("sample")

    browser.goto(f"{server}/checkpoints")
    assert count(browser, "#checkpoints tbody tr") == 2
    assert count(browser, "#checkpoints .badge.live") == 1
    shoot("checkpoints")
    browser.goto(f"{server}/checkpoints/{filled.checkpoint_a}")
    assert count(browser, "svg.chart circle.point") == 3  # the loss curve
    shoot("checkpoint")

    browser.goto(f"{server}/train-jobs")
    assert count(browser, "#train-jobs tbody tr") == 2
    shoot("train-jobs")
    browser.goto(f"{server}/train-jobs/{filled.failed_job}")
    assert "out of memory" in browser.evaluate("document.querySelector('#log-tail').innerText")
    shoot("train-job")

    saved = sorted(path.name for path in (tmp_path / "screenshots").iterdir())
    assert len(saved) == 10 and all(
        (tmp_path / "screenshots" / n).stat().st_size > 5000 for n in saved
    )
