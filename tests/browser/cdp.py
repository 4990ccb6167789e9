"""A minimal Chrome DevTools Protocol client over --remote-debugging-pipe.

Chromium reads NUL-terminated JSON commands on fd 3 and writes responses and
events on fd 4, so no websocket, port or extra package is needed. Only what
the report test uses is here: attach to the page, send a command, wait for a
condition, and collect console messages, exceptions and network requests.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class CDPError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _above_nine(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, executable: str, profile: Path, isolate_network: bool = True):
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        # Move the child's ends above 9 so that they cannot collide with 3 and 4.
        child_in, child_out = (_above_nine(fd) for fd in (child_in, child_out))
        argv = [
            executable,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            # Belt and braces for "no network": nothing resolves, the proxy is a dead port.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            "--window-size=1400,1000",
            "about:blank",
        ]
        # Chromium wants the pipe as fds 3 (commands in) and 4 (answers out).
        shell = f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-'
        argv = [shutil.which("bash") or "bash", "-c", shell, *argv]  # dash: fds 0-9 only
        if isolate_network and os.geteuid() == 0 and shutil.which("unshare"):
            argv = ["unshare", "--net", "--", *argv]  # a network namespace with no interfaces
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(child_in, child_out),
        )
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._lock = threading.Condition()
        self._responses: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.session: str | None = None

    # -- transport ---------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._lock:
                    if "id" in message:
                        self._responses[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._lock.notify_all()
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def send(
        self, method: str, params: dict | None = None, timeout: float = 30.0, session=True
    ) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict = {"id": ident, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while ident not in self._responses:
                if self._closed:
                    raise CDPError(f"chromium exited during {method}: {self.stderr()[-2000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"no answer to {method} within {timeout} s")
                self._lock.wait(left)
            response = self._responses.pop(ident)
        if "error" in response:
            raise CDPError(f"{method}: {response['error']}")
        return response.get("result", {})

    # -- page ------------------------------------------------------------------------

    def open_page(self) -> None:
        """Attach to the initial page and start collecting what the test checks."""
        deadline = time.monotonic() + 30
        page = None
        while page is None:
            targets = self.send("Target.getTargets", session=False)["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            if page is None:
                if time.monotonic() > deadline:
                    raise CDPError("chromium opened no page")
                time.sleep(0.1)
        attached = self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
        )
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )

    def navigate(self, url: str, timeout: float = 60.0) -> None:
        start = len(self.events)
        self.send("Page.navigate", {"url": url})
        self.wait_for(
            lambda: any(e.get("method") == "Page.loadEventFired" for e in self.events[start:]),
            timeout,
            "the page's load event",
        )

    def evaluate(self, expression: str, timeout: float = 30.0):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def screenshot(self, path: Path, width: int = 1400) -> None:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        time.sleep(0.5)  # responsive plots redraw at the new width
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True},
            timeout=60,
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    # -- what happened ---------------------------------------------------------------

    def console_errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log
        errors (CSP violations, failed loads)."""
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append(
                    f"exception: {details.get('exception', {}).get('description') or details}"
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "warning",
                "assert",
            ):
                args = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
                out.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in (
                "error",
                "warning",
            ):
                entry = params["entry"]
                out.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return out

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        with contextlib.suppress(CDPError, OSError):
            self.send("Browser.close", session=False, timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)


def element_screenshot(browser: Browser, selector: str, path: Path) -> None:
    """A PNG of one element (the page must already be laid out at full height)."""
    rect = browser.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        " const r = e.getBoundingClientRect();"
        " return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; })()"
    )
    shot = browser.send(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": {**rect, "scale": 1}},
        timeout=60,
    )
    path.write_bytes(base64.b64decode(shot["data"]))


# -- what both page tests share -------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)


def artifacts() -> Path:
    """Where screenshots are kept (LOCKPROF_ARTIFACTS, else artifacts/)."""
    directory = Path(os.environ.get("LOCKPROF_ARTIFACTS", REPO / "artifacts")) / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@contextlib.contextmanager
def rendered(page: Path, profile: Path, screenshot: str) -> Iterator[Browser]:
    """Chromium (offline) with the page open and every plot drawn; a
    screenshot of the whole page is kept as artifacts()/screenshot."""
    assert CHROMIUM is not None
    chromium = Browser(CHROMIUM, profile)
    try:
        chromium.open_page()
        chromium.navigate(page.as_uri())
        chromium.wait_for(
            lambda: chromium.evaluate(
                "Array.from(document.querySelectorAll('div.plot')).every("
                "d => d.classList.contains('js-plotly-plot') && d.querySelector('svg.main-svg'))"
            ),
            60,
            "every plot to render",
        )
        chromium.screenshot(artifacts() / screenshot)
        yield chromium
    finally:
        chromium.close()
