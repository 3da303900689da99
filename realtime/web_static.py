"""The browser viewer's files over plain HTTP, on the WebSocket port of ``mm2face-live --serve``.

``static_response(connection, path)`` maps a request path to a websockets ``Response`` (or ``None``
when the path is not ours, so the server's router can try its other routes):

* ``/``, ``/index.html``: the 3D viewer (``realtime/web/index.html`` with ``viewer.js``);
* ``/monitor.html``: the small 2D protocol monitor;
* ``/vendor/three/...``: three.js, copied from ``web/node_modules`` into ``realtime/web/vendor/`` by
  ``scripts/bootstrap.sh`` (served from here: the page needs no CDN and works offline);
* ``/head.glb``: the stand-in head as glTF 2.0 (:func:`mm2face.viewer.gltf.standin_glb`), and
  ``/arkit_retarget.json``: the stand-in's ARKit map (:class:`mm2face.engine.arkit.LinearRetarget`) for
  a page fed plain 56-number frames. Both are built once in a worker thread on the first request for
  a page and kept for the life of the process; until they are ready the answer is ``503`` with
  ``Retry-After`` (the page retries).

Only files under ``realtime/web/`` with a known type are served; paths with ``..``, backslashes,
hidden parts or NUL bytes get 404, so no request can read outside that folder.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Response

log = logging.getLogger("mm2face.realtime")

WEB_ROOT = Path(__file__).resolve().parent / "web"
VENDOR_HELP = ("three.js is not installed for the browser viewer: run scripts/bootstrap.sh (needs Node 20+ and "
               "npm; it runs `npm ci` in web/ and copies three.js into realtime/web/vendor/)")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".glb": "model/gltf-binary",
    ".png": "image/png",
    ".wav": "audio/wav",
    "": "text/plain; charset=utf-8",         # LICENSE
}
ALIASES = {"/": "index.html"}
GLB_PATH = "/head.glb"
RETARGET_PATH = "/arkit_retarget.json"
RETRY_AFTER_S = 1


def _response(status: int, reason: str, body: bytes, content_type: str, extra: dict | None = None) -> Response:
    headers = Headers()
    headers["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    headers["Connection"] = "close"
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    headers["X-Content-Type-Options"] = "nosniff"
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(status, reason, headers, body)


def _text(status: int, reason: str, text: str, extra: dict | None = None) -> Response:
    return _response(status, reason, text.encode("utf-8"), CONTENT_TYPES[""], extra)


def resolve(path: str, root: Path = WEB_ROOT) -> Path | None:
    """The file under ``root`` that the URL ``path`` names, or None (unknown, hidden, or outside ``root``)."""
    path = unquote(path.split("?", 1)[0].split("#", 1)[0])
    rel = ALIASES.get(path, path.lstrip("/"))
    parts = rel.split("/")
    if (not rel or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
        return None
    f = (root / rel).resolve()
    try:
        f.relative_to(root.resolve())
    except ValueError:
        return None
    if f.suffix.lower() not in CONTENT_TYPES or not f.is_file():
        return None
    return f


def _build_generated() -> dict[str, bytes]:
    """The generated files: the head's GLB and the stand-in's ARKit map for pages fed plain frames."""
    from mm2face.engine.arkit import ARKIT_NAMES, standin_retarget
    from mm2face.viewer.gltf import standin_glb

    rt = standin_retarget()
    retarget = {"version": rt.version, "names": list(ARKIT_NAMES), "frame_dim": int(rt.pos.shape[1]),
                "doc": "weights = clip(relu(frame) @ pos.T + relu(-frame) @ neg.T + bias, 0, 1); "
                       "then mouthClose = min(mouthClose, jawOpen) (mm2face.engine.arkit.LinearRetarget)",
                "pos": rt.pos.round(6).tolist(), "neg": rt.neg.round(6).tolist(), "bias": rt.bias.round(6).tolist()}
    return {GLB_PATH: standin_glb(), RETARGET_PATH: json.dumps(retarget, separators=(",", ":")).encode()}


class _Generated:
    """Files built once in a worker thread (a few seconds of numpy) and then kept for the process."""

    def __init__(self, build):
        self._build_fn = build
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.files: dict[str, bytes] | None = None
        self.error: str | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._build, name="mm2face-web-assets", daemon=True)
                self._thread.start()

    def _build(self) -> None:
        try:
            t = time.perf_counter()
            self.files = self._build_fn()
            log.info("browser viewer files built in %.1f s (head.glb %.1f MB)", time.perf_counter() - t,
                     len(self.files.get(GLB_PATH, b"")) / 1e6)
        except Exception as exc:   # reported to the page instead of killing the server
            log.exception("building the browser viewer's head.glb failed")
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: float | None = None) -> dict[str, bytes] | None:
        """Block until built (tools and tests); the files, or None on failure or timeout."""
        self.start()
        self._thread.join(timeout)
        return self.files

    def response(self, path: str) -> Response:
        self.start()
        if self.files is not None:
            return _response(200, "OK", self.files[path], CONTENT_TYPES[Path(path).suffix])
        if self.error is not None:
            return _text(500, "Internal Server Error", f"mm2face-live could not build {path}: {self.error}\n")
        return _text(503, "Service Unavailable", f"{path} is being built; retry in a second\n",
                     {"Retry-After": str(RETRY_AFTER_S)})


GENERATED = _Generated(_build_generated)


def static_response(connection, path: str) -> Response | None:
    """The browser viewer's answer to ``GET path``, or None if ``path`` is not one of its files.

    ``connection`` is websockets' ServerConnection (unused today; kept so the router calls every
    route the same way)."""
    clean = path.split("?", 1)[0]
    if clean in (GLB_PATH, RETARGET_PATH):
        return GENERATED.response(clean)
    f = resolve(clean)
    if f is None:
        if clean.startswith("/vendor/three/") and not (WEB_ROOT / "vendor").is_dir():
            return _text(404, "Not Found", VENDOR_HELP + "\n")
        return None
    if f.suffix == ".html":
        GENERATED.start()                      # the page will ask for the head next: build it now
    return _response(200, "OK", f.read_bytes(), CONTENT_TYPES[f.suffix.lower()])
