"""The hub's message dispatch: what the server does with each message a client sends.

:class:`Dispatcher` maps each parsed control message type (:mod:`mm2face.realtime.protocol`) to its
handler in one table (:attr:`Dispatcher.handlers`), checks the token and session ownership, and feeds a
client's binary audio messages to the session it opened. Every error the input can cause is answered
with its own code; ``internal`` is left for server bugs. It holds no state of its own: sessions,
clients, limits and error counts are the hub's.
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from mm2face.engine.audio import StreamResampler
from mm2face.engine.frame import SAMPLE_RATE
from mm2face.realtime import protocol as P

if TYPE_CHECKING:
    from mm2face.realtime.connection import ClientConn
    from mm2face.realtime.server import Hub, LiveSession

log = logging.getLogger("mm2face.realtime")

# --server-session-control: what clients may send to the server's own sessions (mic / wav / text-only)
SERVER_SESSION_CONTROL = {"none": (), "style": ("style",), "all": ("style", "end", "flush")}
INGEST_SLICE_SAMPLES = 1280   # a client audio message is fed in slices of this many 16 kHz samples (80 ms, one hop)
RATE_WARNING_EVERY_S = 1.0    # a client over its message rate is told so at most this often


class SessionClosed(Exception):
    """The session was closed (by its owner, the reaper, a drain or an engine error) while in use."""


def token_ok(given: str, expected: str) -> bool:
    """Constant-time token check; compares UTF-8 bytes (compare_digest refuses non-ASCII str)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


class Dispatcher:
    """Handles the messages of the hub's clients: ``await dispatch(client, data, rx_time)``."""

    def __init__(self, hub: "Hub"):
        self.hub = hub
        # message type -> handler(client, msg); one entry per control message of protocol v2
        self.handlers: dict[type, Callable[["ClientConn", object], Awaitable[None]]] = {
            P.Hello: self.on_hello,
            P.Subscribe: self.on_subscribe,
            P.Unsubscribe: self.on_unsubscribe,
            P.Open: self.on_open,
            P.AudioFormat: self.on_audio_format,
            P.Style: self.on_style,
            P.End: self.on_end,
            P.Flush: self.on_flush,
            P.Close: self.on_close,
            P.Stats: self.on_stats,
        }

    async def dispatch(self, client: "ClientConn", data, rx_time: float | None = None) -> str | None:
        """Handle one received WebSocket message (``str``: control JSON, bytes: audio) that reached the
        server at ``rx_time`` (``time.time()``; None = now). Returns the error code sent, if any."""
        rx_time = time.time() if rx_time is None else rx_time
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                await self.on_audio(client, bytes(data), rx_time)
            else:
                msg = P.parse_text(data)
                self.check_auth(client, msg)
                await self.handlers[type(msg)](client, msg)
            return None
        except P.ProtocolError as e:
            client.error(e.code, e.message, e.ref)
            code = e.code
        except SessionClosed as e:
            client.error(P.ErrorCode.UNKNOWN_SESSION, f"session {e} was closed", None)
            code = P.ErrorCode.UNKNOWN_SESSION
        except Exception as e:  # the model or a bug: report it, keep serving
            log.exception("error handling a message from client %d", client.id)
            client.error(P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
            code = P.ErrorCode.INTERNAL
        self.hub.errors[code] += 1
        return code

    def rate_warning(self, client: "ClientConn", audio: bool, rx_time: float | None) -> None:
        """Tell a client over its message rate, at most once a second, that it is being slowed down."""
        now = time.time() if rx_time is None else rx_time
        self.hub.errors[P.ErrorCode.RATE_LIMITED] += 1
        if now - client._rate_warned_at < RATE_WARNING_EVERY_S:
            return
        client._rate_warned_at = now
        rate = client.audio_rate.rate if audio else client.control_rate.rate
        client.error(P.ErrorCode.RATE_LIMITED, f"more than {rate:.0f} {'audio' if audio else 'control'} messages "
                     "per second from this connection: the server reads it more slowly until it keeps to that "
                     "rate (nothing is dropped; this reply comes at most once a second)")

    # -- checks ------------------------------------------------------------------------------

    def session(self, name: str | None, client: "ClientConn", ref: str) -> "LiveSession":
        """The session a message names (default: the client's own, else ``default``)."""
        if name is None:
            name = client.own.name if client.own is not None else "default"
        live = self.hub.sessions.get(name)
        if live is None:
            raise P.ProtocolError(P.ErrorCode.UNKNOWN_SESSION, f"no session named {name!r}; sessions: "
                                  f"{self.hub.live_sessions()}", ref)
        return live

    def check_auth(self, client: "ClientConn", msg) -> None:
        if client.authed or not P.needs_token(msg):
            return
        if msg.token is not None and token_ok(msg.token, self.hub.token):
            return
        raise P.ProtocolError(P.ErrorCode.UNAUTHORIZED, "this server requires a token for control messages: "
                              'send {"type": "hello", "token": "..."} first or add "token" to the message',
                              type(msg).__name__.lower())

    def check_owner(self, client: "ClientConn", live: "LiveSession", ref: str) -> None:
        if live.owner is None:
            allowed = SERVER_SESSION_CONTROL[self.hub.server_session_control]
            if ref not in allowed:
                raise P.ProtocolError(P.ErrorCode.NOT_OWNER, f"session {live.name!r} is the server's own; its "
                                      f"operator lets clients send {' and '.join(allowed) or 'no control'} to it "
                                      "(mm2face-live --server-session-control). Open your own session to "
                                      f"{ref} it", ref)
            return
        if live.owner is not client:
            raise P.ProtocolError(P.ErrorCode.NOT_OWNER, f"session {live.name!r} belongs to another client; "
                                  "only its owner may end, flush or close it", ref)

    def subscribe(self, client: "ClientConn", live: "LiveSession", fmt: str, audio: bool = False) -> None:
        self.hub.check_format(fmt, "subscribe")
        extra = {}
        if fmt in P.ARKIT_FORMATS:
            from mm2face.engine.arkit import standin_retarget
            extra = P.arkit_subscribed_fields(self.hub.arkit_retarget or standin_retarget())
        if audio:                      # the session's audio as MMAU messages; reply says so (v1 replies unchanged)
            live.audio_subscribers.add(client)
            extra["audio"] = True
            extra["sample_rate"] = SAMPLE_RATE
        else:
            live.audio_subscribers.discard(client)
        live.subscribers[client] = fmt
        client.subs.add(live.name)
        client.send_control(P.event_json("subscribed", session=live.name, session_num=live.num, format=fmt,
                                         style=live.style, **extra))

    # -- one handler per message type ---------------------------------------------------------

    async def on_hello(self, client: "ClientConn", msg: P.Hello) -> None:
        hub = self.hub
        if hub.token is not None and msg.token is not None:
            if not token_ok(msg.token, hub.token):
                raise P.ProtocolError(P.ErrorCode.UNAUTHORIZED, "wrong token", "hello")
            client.authed = True
        client.send_control(P.hello_json(hub.live_sessions(), auth_required=not client.authed,
                                         limits=hub.limits_info(), version=msg.version))

    async def on_subscribe(self, client: "ClientConn", msg: P.Subscribe) -> None:
        self.subscribe(client, self.session(msg.session, client, "subscribe"), msg.format, msg.audio)

    async def on_unsubscribe(self, client: "ClientConn", msg: P.Unsubscribe) -> None:
        live = self.session(msg.session, client, "unsubscribe")
        live.subscribers.pop(client, None)
        live.audio_subscribers.discard(client)
        client.subs.discard(live.name)
        client.send_control(P.event_json("unsubscribed", session=live.name))

    async def on_open(self, client: "ClientConn", msg: P.Open) -> None:
        if client.own is not None:
            raise P.ProtocolError(P.ErrorCode.SESSION_EXISTS, f"this client already has session "
                                  f"{client.own.name!r}; send close first", "open")
        self.hub.check_format(msg.format, "open")
        name = msg.session or f"s-{secrets.token_hex(4)}"
        live = await self.hub.create_session(name, style=msg.style, owner=client, idle=msg.idle)
        if msg.guidance is not None:
            await live.set_style(msg.style, 0.0, msg.guidance)
        live.sample_rate, live.sample_format = msg.sample_rate, msg.sample_format
        live.resampler = StreamResampler(msg.sample_rate)
        client.own = live
        client.send_control(P.event_json("opened", session=live.name, session_num=live.num,
                                         sample_rate=msg.sample_rate, sample_format=msg.sample_format,
                                         idle=live.idle))
        self.subscribe(client, live, msg.format)

    async def on_audio_format(self, client: "ClientConn", msg: P.AudioFormat) -> None:
        live = client.own
        if live is None:
            raise P.ProtocolError(P.ErrorCode.NO_SESSION, 'send {"type": "open", ...} before audio_format',
                                  "audio_format")
        # Samples still inside the old resampler's window belong to the old rate: finish them.
        tail = live.resampler.flush()
        if len(tail):
            await live.push_audio(tail)
        live.sample_rate, live.sample_format = msg.sample_rate, msg.sample_format
        live.resampler = StreamResampler(msg.sample_rate)
        client.send_control(P.event_json("audio_format", session=live.name, sample_rate=msg.sample_rate,
                                         sample_format=msg.sample_format))

    async def on_style(self, client: "ClientConn", msg: P.Style) -> None:
        live = self.session(msg.session, client, "style")
        if live.owner is None:
            self.check_owner(client, live, "style")
        await live.set_style(msg.text, msg.blend_s, msg.guidance, requester=client)

    async def on_end(self, client: "ClientConn", msg: P.End) -> None:
        live = self.session(msg.session, client, "end")
        self.check_owner(client, live, "end")
        if live is client.own:
            tail = live.resampler.flush()
            if len(tail):
                await live.push_audio(tail)
        frames = await live.end()
        last = frames[-1].seq if frames else None
        reply = P.event_json("ended", session=live.name, last_seq=last, n_frames=len(frames))
        for c in list(live.subscribers):
            c.send_control(reply)
        if client not in live.subscribers:
            client.send_control(reply)

    async def on_flush(self, client: "ClientConn", msg: P.Flush) -> None:
        live = self.session(msg.session, client, "flush")
        self.check_owner(client, live, "flush")
        frames = await live.flush()
        for c in set(live.subscribers) | {client}:
            c.send_control(P.event_json("flushed", session=live.name, n_frames=len(frames)))

    async def on_close(self, client: "ClientConn", msg: P.Close) -> None:
        live = self.session(msg.session, client, "close")
        if live.owner is not client:
            raise P.ProtocolError(P.ErrorCode.NOT_OWNER, f"only the client that opened {live.name!r} "
                                  "can close it", "close")
        client.own = None
        await self.hub.close_session(live, reason="closed by owner")
        if live.name not in client.subs:
            client.send_control(P.event_json("session_closed", session=live.name, reason="closed by owner"))

    async def on_stats(self, client: "ClientConn", msg: P.Stats) -> None:
        hub = self.hub
        named = msg.session or client.own or "default" in hub.sessions
        live = self.session(msg.session, client, "stats") if named else None
        client.send_control(P.event_json("stats", server=hub.stats(), session=live.stats() if live else None,
                                         client={"dropped_frames": client.dropped,
                                                 "sent_frames": client.sent_frames,
                                                 "dropped_audio_chunks": client.dropped_audio_chunks}))

    async def on_audio(self, client: "ClientConn", data: bytes, arrival: float) -> None:
        """A binary message: audio for the client's own session, resampled and fed one hop at a time."""
        live = client.own
        if live is None:
            raise P.ProtocolError(P.ErrorCode.NO_SESSION, "binary messages are audio for this client's own "
                                  'session: send {"type": "open", "sample_rate": 16000, "sample_format": '
                                  '"pcm16"} first', "audio")
        chk = P.check_audio(data, live.sample_format)
        if chk.n_clipped:
            live.n_clipped += chk.n_clipped
            if not live.warned_clipped:
                live.warned_clipped = True
                client.send_control(P.warning_json(
                    P.WarningCode.AUDIO_CLIPPED, f"{chk.n_clipped} samples beyond [-1, 1] were clipped; "
                    "float32 audio must be scaled to [-1, 1] (reported once per session)", live.name))
        audio = live.resampler.process(chk.audio)
        # Fair ingestion: a long message goes in one hop at a time, and beyond a two-hop backlog each slice
        # waits for the scheduler (LiveSession.stream_audio), so no session waits behind another's upload.
        # Paced: beyond a first burst, at most ``ingest_speed`` times real time (the handler then stops
        # reading this client: backpressure), so an upload costs about what a speaking session does.
        for i in range(0, len(audio), INGEST_SLICE_SAMPLES):
            part = audio[i:i + INGEST_SLICE_SAMPLES]
            if live.ingest_rate is not None:
                wait = live.ingest_rate.delay(len(part) / SAMPLE_RATE)
                if wait > 0:
                    await self.hub.sleep(wait)
            await live.stream_audio(part, arrival_time=arrival)
