"""A small driver of Debian's headless Chromium over its DevTools protocol (websocket-client):
navigate, evaluate JavaScript, take full-page screenshots. No browser download, no Selenium.

Chromium starts with a fresh profile and without background networking (on a closed network it
would otherwise keep retrying its update, sync and safe-browsing services).
"""

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import websocket

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


class BrowserError(RuntimeError):
    """Chromium did not start or a DevTools command failed."""


class Chromium:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, *, width: int = 1280, height: int = 900, timeout_s: float = 30.0) -> None:
        if not Path(CHROMIUM).is_file():
            raise BrowserError(
                f"{CHROMIUM} is missing: run tests/ensure_services.sh (it installs it)"
            )
        self.timeout_s = timeout_s
        self.profile = Path(tempfile.mkdtemp(prefix="editloop-chromium-"))
        self.log = (self.profile / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        port = self._devtools_port()
        targets = json.loads(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=timeout_s, suppress_origin=True
        )
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.command("Page.enable")
        self.command("Runtime.enable")
        self.resize(width, height)

    def _devtools_port(self) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with code {self.process.returncode}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium wrote no {marker} within {self.timeout_s} s")

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are kept)."""
        self._next_id += 1
        ident = self._next_id
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def _wait_for_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(json.loads(self.socket.recv()))
        raise BrowserError(f"no {method} within {self.timeout_s} s")

    def resize(self, width: int, height: int) -> None:
        self.command(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def goto(self, url: str) -> dict[str, Any]:
        """Open `url` and wait for its load event; returns the navigation result."""
        self.events.clear()
        result = self.command("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        self._wait_for_event("Page.loadEventFired")
        return result

    def wait_for_load(self) -> None:
        """Wait for the load event of a navigation started by the page (a submitted form)."""
        self._wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = self.command(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def images_loaded(self) -> list[dict[str, Any]]:
        """Waits until every <img> finished loading; returns each one's src and naturalWidth."""
        return self.evaluate(
            """Promise.all([...document.images].map(img => img.complete ? null :
                 new Promise(done => { img.onload = img.onerror = done; })))
               .then(() => [...document.images].map(
                 img => ({src: img.getAttribute('src'), width: img.naturalWidth})))"""
        )

    def screenshot(self, path: Path) -> None:
        """A PNG of the page down to the end of its content (at most 6000 px)."""
        metrics = self.command("Page.getLayoutMetrics")
        width = int(metrics["cssLayoutViewport"]["clientWidth"])
        bottom = self.evaluate(
            "Math.max(...[...document.body.children].map(e => e.getBoundingClientRect().bottom))"
            " + window.scrollY"
        )
        height = min(int(bottom) + 16, 6000)
        data = self.command(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.command("Browser.close")
        with contextlib.suppress(Exception):
            self.socket.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
