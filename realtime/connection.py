"""Connection handling of the mm2face-live server: one WebSocket client and the HTTP side of the port.

* :class:`ClientConn`: a connected client with a bounded outbox. When a client stops reading, its
  oldest queued frames (and MMAU audio) are dropped for it alone and counted; control replies are never
  dropped (a client that leaves ``OUTBOX_MAX_CONTROL`` unread is disconnected).
* :func:`handle_connection`: the read loop of one client (rate limits as backpressure, one message per
  event-loop turn), handing each message to the hub's :class:`~mm2face.realtime.dispatch.Dispatcher`.
* :func:`stamped_connection_class` / :func:`received_at`: when each message reached the process.
* :func:`http_page`: plain HTTP GETs on the same port (``/metrics``, ``/healthz``, ``/readyz``, the browser
  viewer's files).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
import socket
import time
from typing import TYPE_CHECKING

from mm2face.engine.frame import SAMPLE_RATE
from mm2face.realtime import protocol as P
from mm2face.realtime import web_static
from mm2face.realtime.admission import AUDIO_MSG_BURST, AUDIO_MSG_RATE_PER_S, RateLimiter

if TYPE_CHECKING:
    from mm2face.realtime.server import Hub, LiveSession

log = logging.getLogger("mm2face.realtime")

OUTBOX_MAX_FRAMES = 50        # per client: 2 s of frames; beyond that the oldest are dropped
OUTBOX_MAX_AUDIO_S = 2.0      # per client: seconds of session audio queued (subscribe "audio"); beyond, the oldest drop
OUTBOX_MAX_CONTROL = 500      # per client: unanswered control replies before it is disconnected
SEND_BUFFER_BYTES = 64 * 1024  # kernel send buffer per client: bounds the frames in flight to a slow client
WS_MAX_SIZE = 4 * P.MAX_AUDIO_BYTES   # websockets closes the socket (1009) above this; we answer below it


_CONTROL, _FRAME, _AUDIO = 0, 1, 2    # kinds of ClientConn outbox entries


def _audio_out_samples(msg: bytes) -> int:
    """16 kHz samples in an MMAU message (header, then PCM16)."""
    return (len(msg) - P.AUDIO_OUT_HEADER_BYTES) // 2


class ClientConn:
    """One connected WebSocket client: its subscriptions, its own session and a bounded outbox."""

    _ids = itertools.count(1)

    def __init__(self, hub: "Hub", ws, max_frames: int = OUTBOX_MAX_FRAMES):
        self.hub, self.ws, self.max_frames = hub, ws, max_frames
        self.id = next(self._ids)
        self.authed = hub.token is None
        self.own: LiveSession | None = None
        self.subs: set[str] = set()
        self.outbox: collections.deque = collections.deque()   # (kind: _CONTROL/_FRAME/_AUDIO, message, LiveSession | None)
        self.addr = peer_host(ws)                              # client address: per-client session limit
        self.control_rate = RateLimiter()                       # control messages per second
        self.audio_rate = RateLimiter(AUDIO_MSG_RATE_PER_S, AUDIO_MSG_BURST)   # audio messages per second
        self._rate_warned_at = -math.inf
        self.n_frames_queued = 0
        self.n_control_queued = 0
        self.audio_samples_queued = 0                           # 16 kHz samples in queued MMAU messages
        self.dropped = 0
        self.dropped_audio_chunks = 0
        self.sent_frames = 0
        self._wake = asyncio.Event()
        self.closing = False
        self._warned_drop_at = 0

    # -- outbox -------------------------------------------------------------------------------

    def send_frame(self, msg, live: "LiveSession | None" = None) -> None:
        """Queue a frame of session ``live`` (its drops are counted for that session)."""
        if self.closing:
            return
        if self.n_frames_queued >= self.max_frames:
            # Drop this client's oldest queued frame: it fell behind; everyone else is unaffected.
            for i, (kind, _, of) in enumerate(self.outbox):
                if kind == _FRAME:
                    del self.outbox[i]
                    if of is not None:
                        of.dropped_frames += 1
                    break
            self.n_frames_queued -= 1
            self.dropped += 1
            self.hub.dropped_total += 1
        self.outbox.append((_FRAME, msg, live))
        self.n_frames_queued += 1
        self._wake.set()

    def send_audio(self, msg: bytes, n_samples: int, live: "LiveSession") -> None:
        """Queue an MMAU message of ``n_samples`` of session ``live``'s audio. Bounded like frames: past
        ``OUTBOX_MAX_AUDIO_S`` queued, this client's oldest audio messages are dropped and counted."""
        if self.closing:
            return
        limit = int(OUTBOX_MAX_AUDIO_S * SAMPLE_RATE)
        while self.audio_samples_queued + n_samples > limit and self.audio_samples_queued > 0:
            for i, (kind, old, of) in enumerate(self.outbox):
                if kind == _AUDIO:
                    del self.outbox[i]
                    self.audio_samples_queued -= _audio_out_samples(old)
                    self.dropped_audio_chunks += 1
                    of.dropped_audio_chunks += 1
                    break
            else:
                break
        self.outbox.append((_AUDIO, msg, live))
        self.audio_samples_queued += n_samples
        self._wake.set()

    def send_control(self, msg: str) -> None:
        if self.closing:
            return
        if self.n_control_queued >= OUTBOX_MAX_CONTROL:
            log.warning("client %d is not reading its replies; disconnecting it", self.id)
            self.closing = True
            asyncio.ensure_future(self.ws.close(1008, "not reading replies"))
            return
        self.outbox.append((_CONTROL, msg, None))
        self.n_control_queued += 1
        self._wake.set()

    def error(self, code: str, message: str, ref: str | None = None) -> None:
        self.send_control(P.error_json(code, message, ref))

    async def writer(self) -> None:
        while True:
            while not self.outbox:
                self._wake.clear()
                await self._wake.wait()
            kind, msg, _ = self.outbox.popleft()
            if kind == _FRAME:
                self.n_frames_queued -= 1
            elif kind == _AUDIO:
                self.audio_samples_queued -= _audio_out_samples(msg)
            else:
                self.n_control_queued -= 1
            await self.ws.send(msg)
            if kind == _FRAME:
                self.sent_frames += 1
                if self.dropped > self._warned_drop_at and not self.outbox:
                    # Tell the client once it has caught up that it lost frames.
                    self._warned_drop_at = self.dropped
                    await self.ws.send(P.warning_json(P.WarningCode.FRAMES_DROPPED,
                                                      f"{self.dropped} frames dropped so far because this "
                                                      "client read too slowly"))


async def handle_connection(hub: "Hub", ws) -> None:
    """One WebSocket client, from connect to disconnect: read its messages (paced by its rate limits,
    one per event-loop turn), hand each to the hub's dispatcher, write its outbox; on disconnect drop its
    subscriptions and close the session it owns."""
    client = ClientConn(hub, ws, hub.max_frames_per_client)
    sock = ws.transport.get_extra_info("socket")
    if sock is not None and hub.send_buffer_bytes:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.send_buffer_bytes)
    hub.clients.add(client)
    writer = asyncio.create_task(client.writer())
    try:
        async for data in ws:
            rx = received_at(ws)
            audio = isinstance(data, (bytes, bytearray, memoryview))
            wait = (client.audio_rate if audio else client.control_rate).delay()
            if wait > 0:                  # over its rate: stop reading this client for a while (backpressure)
                hub.dispatcher.rate_warning(client, audio, rx)
            await hub.dispatcher.dispatch(client, data, rx)
            await asyncio.sleep(wait)     # also: one message per turn, so no client can hog the loop
    except Exception as e:  # abrupt disconnects end up here (ConnectionClosedError)
        log.debug("client %d disconnected: %s", client.id, e)
    finally:
        client.closing = True
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer
        hub.clients.discard(client)
        for name in list(client.subs):
            live = hub.sessions.get(name)
            if live is not None:
                live.subscribers.pop(client, None)
                live.audio_subscribers.discard(client)
        if client.own is not None:
            await hub.close_session(client.own, reason="owner disconnected")


def peer_host(ws) -> str | None:
    """The client's IP address (the key of the per-client session limit), or None when unknown."""
    try:
        addr = ws.remote_address
    except Exception:  # noqa: BLE001 - a closed transport or a stand-in without one
        return None
    return str(addr[0]) if isinstance(addr, (tuple, list)) and addr else None


def received_at(ws) -> float | None:
    """When the next message of ``ws`` reached the server (stamped by :class:`StampedConnection` as its
    last frame arrived, before it waited in any queue); None for other connection types."""
    q = getattr(ws, "rx_times", None)
    return q.popleft() if q else None


@functools.cache
def stamped_connection_class():
    """A websockets ServerConnection that stamps each data message with ``time.time()`` when its last
    frame reaches the process (``rx_times``, read with :func:`received_at`), so latency includes the
    time a message then waits unread, queued behind the client's earlier messages."""
    from websockets.asyncio.server import ServerConnection
    from websockets.frames import Frame, Opcode

    data_ops = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)

    class StampedConnection(ServerConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rx_times: collections.deque[float] = collections.deque()

        def process_event(self, event) -> None:
            if self.request is not None and isinstance(event, Frame) and event.fin and event.opcode in data_ops:
                self.rx_times.append(time.time())
            super().process_event(event)

    return StampedConnection


def http_page(connection, request, hub: "Hub | None" = None):
    """Plain HTTP GET (not a WebSocket upgrade): the operations endpoints, then the browser viewer's files (see web_static)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    ops = ops_response(connection, request.path.split("?")[0], hub) if hub is not None else None
    if ops is not None:
        return ops
    static = web_static.static_response(connection, request.path)
    if static is not None:
        return static
    return connection.respond(404, "mm2face-live speaks WebSocket protocol v2 here; see docs/protocol.md\n")


def ops_response(connection, path: str, hub: "Hub"):
    """``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``; None for any other path."""
    if path == "/metrics":
        body, ctype = hub.metrics.exposition()
        response = connection.respond(200, body.decode("utf-8"))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = ctype
        return response
    if path == "/healthz":
        return connection.respond(200, f"ok: up {time.time() - hub.started:.0f} s, {len(hub.live_sessions())} "
                                       "sessions\n")
    if path == "/readyz":
        ready, why = hub.ready()
        return connection.respond(200 if ready else 503, ("ready: " if ready else "not ready: ") + why + "\n")
    return None
