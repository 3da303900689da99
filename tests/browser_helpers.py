"""Headless Chromium driven over the Chrome DevTools Protocol (CDP) with the ``websockets`` package.

    async with HeadlessChromium(extra_flags) as browser:
        page = await browser.open("http://127.0.0.1:8765/")
        value = await page.eval("window.mm2face.frames")
        png = await page.screenshot(clip={"x": 0, "y": 0, "width": 100, "height": 100})

WebGL runs on SwiftShader (software), so no GPU or display is needed. Skips the test where Chromium
is not installed (scripts/bootstrap.sh installs it).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MM2FACE_CHROMIUM", "/usr/bin/chromium")
BASE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-default-apps", "--mute-audio",
              "--use-angle=swiftshader", "--enable-unsafe-swiftshader",   # WebGL in software
              "--remote-debugging-port=0", "--window-size=1000,720", "--force-device-scale-factor=1")
START_TIMEOUT_S = 60             # Chromium's DevTools endpoint (slow on a loaded CI machine)
STOP_GRACE_S = 10                # SIGTERM, then SIGKILL


def artefacts_dir(name: str) -> Path:
    """Where a test keeps its screenshots: ``$MM2FACE_ARTEFACTS/<name>`` or ``out/test-artefacts/<name>``."""
    root = Path(os.environ.get("MM2FACE_ARTEFACTS", Path(__file__).resolve().parents[1] / "out" / "test-artefacts"))
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    return d


class Page:
    def __init__(self, browser: "HeadlessChromium", session_id: str):
        self.browser, self.sid = browser, session_id

    async def call(self, method: str, **params):
        return await self.browser.call(method, self.sid, **params)

    async def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page exception in {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, poll_s: float = 0.1):
        """Poll until the expression is truthy; its value. Fails with the page's state on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    v = await self.eval(expression)
                    if v:
                        return v
                    await asyncio.sleep(poll_s)
        except TimeoutError:
            state = await self.eval("JSON.stringify(window.mm2face ?? null)")
            raise AssertionError(f"timed out after {timeout} s waiting for {expression!r}; page state {state}; "
                                 f"console {self.browser.console[-10:]}") from None

    async def screenshot(self, clip: dict | None = None) -> bytes:
        params = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode((await self.call("Page.captureScreenshot", **params))["data"])

    async def set_files(self, selector: str, paths: list[str]) -> None:
        """Choose files in an ``<input type=file>`` (fires its change event, as a user's choice does)."""
        root = (await self.call("DOM.getDocument"))["root"]["nodeId"]
        node = (await self.call("DOM.querySelector", nodeId=root, selector=selector))["nodeId"]
        await self.call("DOM.setFileInputFiles", files=[str(p) for p in paths], nodeId=node)

    async def click(self, selector: str) -> None:
        """A real mouse click (a user gesture, as getUserMedia and audio playback expect) on an element."""
        box = await self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                              ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


class HeadlessChromium:
    def __init__(self, extra_flags=()):
        if not Path(CHROMIUM).exists():
            pytest.skip(f"Chromium is not installed at {CHROMIUM} (scripts/bootstrap.sh installs the Debian "
                        "package chromium)")
        self.extra_flags = list(extra_flags)
        self.console: list[str] = []
        self.requests: list[str] = []        # every URL the pages asked for (Network.requestWillBeSent)

    async def __aenter__(self) -> "HeadlessChromium":
        self.profile = tempfile.mkdtemp(prefix="mm2face-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, *BASE_FLAGS, f"--user-data-dir={self.profile}", *self.extra_flags,
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        try:
            url = await asyncio.wait_for(asyncio.to_thread(self._devtools_url), START_TIMEOUT_S)
            import websockets
            self.ws = await websockets.connect(url, max_size=256 * 2 ** 20)
        except BaseException:
            # __aexit__ will not run: end Chromium here, which also ends the thread reading its stderr
            # (a thread left blocked there would hold up the event loop's shutdown)
            self._stop_process(grace_s=0)
            raise
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())
        return self

    def _stop_process(self, grace_s: float) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(grace_s if sig == signal.SIGTERM else None)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.profile, ignore_errors=True)

    def _devtools_url(self) -> str:
        lines = []
        for line in self.proc.stderr:
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                # keep draining stderr so that Chromium never blocks on a full pipe
                threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
                return m.group(1)
            lines.append(line.rstrip())
        raise RuntimeError("Chromium exited before opening DevTools: " + " | ".join(lines[-10:]))

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            fut = self._pending.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"]))
            elif msg.get("method") == "Network.requestWillBeSent":
                self.requests.append(msg["params"]["request"]["url"])
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])

    async def call(self, method: str, session_id: str | None = None, **params):
        i = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        msg = {"id": i, "method": method, "params": params}
        if session_id:
            msg["sessionId"] = session_id
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"CDP {method}: {reply['error']}")
        return reply["result"]

    async def open(self, url: str) -> Page:
        target = await self.call("Target.createTarget", url="about:blank")
        sid = (await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True))["sessionId"]
        page = Page(self, sid)
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        await page.call("Network.enable")
        await page.call("Page.navigate", url=url)
        return page

    async def __aexit__(self, *exc) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self.ws.close()
        await asyncio.to_thread(self._stop_process, STOP_GRACE_S)

