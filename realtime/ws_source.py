"""``WebSocketSource(url)``: the viewer's frame source for a live mm2face-live stream.

    src = WebSocketSource("ws://127.0.0.1:8765")          # session "default", binary frames
    src.latest()   # -> (frame56 (56,) float32, t_audio_s, style) | None; src.closed

A background thread runs an asyncio WebSocket client (protocol v1) and keeps the received frames.
:meth:`latest` plays them out on a steady 25 fps clock anchored at the first frame plus
``playout_delay_s``, so bursts (a client-paced session, network jitter) look smooth. When frames
arrive later than their slot the clock moves with them (every frame is still shown), and when more
than ``max_backlog`` frames are late it skips ahead to stay live.
"""
from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from urllib.parse import parse_qs, urlparse

import numpy as np

from mm2face.realtime import protocol as P


class WebSocketSource:
    """Frames of one session of a mm2face-live server, for :mod:`mm2face.viewer`.

    ``url`` may name the session as ``ws://host:port/?session=NAME``; ``session`` overrides it.
    """

    def __init__(self, url: str, session: str | None = None, playout_delay_s: float = 0.04,
                 max_buffer: int = 100, connect_timeout_s: float = 10.0):
        q = parse_qs(urlparse(url).query)
        self.url = url
        self.session = session or (q.get("session") or ["default"])[0]
        self.playout_delay_s = playout_delay_s
        self.max_backlog = 5                 # frames; beyond this many late frames, skip ahead
        self.style = ""
        self.closed = False
        self.error: str | None = None
        self.frames_received = 0
        self._buf: collections.deque[P.WireFrame] = collections.deque(maxlen=max_buffer)
        self._lock = threading.Lock()
        self._current: P.WireFrame | None = None
        self._anchor: tuple[float, float] | None = None     # (local monotonic time, t_audio_s) pair
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ws-source", daemon=True)
        self._thread.start()
        self._connected.wait(connect_timeout_s)

    # -- viewer side --------------------------------------------------------------------------

    def latest(self):
        now = time.monotonic()
        with self._lock:
            while self._buf:
                f = self._buf[0]
                if self._anchor is None or f.t_audio_s < self._anchor[1] - 1e-6:
                    self._anchor = (now + self.playout_delay_s, f.t_audio_s)   # first frame or a restart
                due = self._anchor[0] + (f.t_audio_s - self._anchor[1])
                if due > now:
                    break
                self._current = self._buf.popleft()
                if now - due > 0.04 and len(self._buf) <= self.max_backlog:
                    # Late (the stream is slower than real time or jittery): show it now and move the
                    # clock so the next frame follows one frame later, instead of skipping frames.
                    self._anchor = (now, f.t_audio_s)
                    break
            cur = self._current
        if cur is None:
            return None
        return cur.params, float(cur.t_audio_s), cur.style or self.style

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- network side (background thread) -----------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as e:  # connection refused, server gone, protocol error
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.closed = True
            self._connected.set()

    async def _main(self) -> None:
        from websockets.asyncio.client import connect

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with connect(self.url, max_size=2 ** 22) as ws:
            await ws.send(json.dumps({"type": "hello", "version": P.PROTOCOL_VERSION, "client": "mm2face-view"}))
            await ws.send(json.dumps({"type": "subscribe", "session": self.session, "format": "binary"}))
            reader = asyncio.ensure_future(self._read(ws))
            stopper = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, stopper):
                t.cancel()
            for t in done:
                if t is reader and t.exception() is not None:
                    raise t.exception()

    async def _read(self, ws) -> None:
        async for raw in ws:
            if isinstance(raw, bytes):
                f = P.decode_frame_binary(raw, self.session)
                f.style = self.style
                with self._lock:
                    self._buf.append(f)
                self.frames_received += 1
                continue
            msg = json.loads(raw)
            t = msg.get("type")
            if t == "subscribed":
                self.style = msg.get("style", "")
                self._connected.set()
            elif t == "style" and msg.get("session") == self.session:
                self.style = msg.get("text", "")
            elif t == "session_closed" and msg.get("session") == self.session:
                return
            elif t == "error" and msg.get("ref") == "subscribe":
                raise RuntimeError(f"server refused the subscription: {msg.get('message')}")


def frames_to_motion(frames: list[P.WireFrame]) -> np.ndarray:
    """Received frames -> ``(T, 56) float32`` in seq order (duplicates removed)."""
    by_seq = {f.seq: f.params for f in frames}
    return np.stack([by_seq[k] for k in sorted(by_seq)]).astype(np.float32) if by_seq else np.zeros((0, 56), np.float32)
