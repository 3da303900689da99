"""The mm2face-live WebSocket server (protocol v2, see docs/protocol.md), a thin asyncio layer.

    hub = Hub(make_session)                       # make_session(style) -> StreamSession
    default = await hub.create_session("default", style="calm")
    async with serve_hub(hub, "127.0.0.1", 8765):  # clients subscribe / open their own sessions
        await default.push_audio(audio_16k, arrival_time=time.time())

Parsing and encoding live in :mod:`mm2face.realtime.protocol` (sans-I/O). The server is split by
responsibility:

* this module: :class:`Hub` (the sessions of one server and its scheduler) and :class:`LiveSession` (one
  StreamSession plus its subscribers). A session's input goes to the hub's scheduler
  (:class:`mm2face.engine.batching.SessionBatcher`, one worker thread that steps every session as
  batched hops); the worker hands each session's frames back to the event loop
  (``loop.call_soon_threadsafe``), which pushes them to every subscriber at once. The event loop never
  waits on the model. Each frame carries the timing its session recorded (``audio_arrival_time``,
  ``input_ready_time``). :func:`serve_hub` puts a hub on a port.
* :mod:`mm2face.realtime.connection`: one WebSocket client (:class:`~mm2face.realtime.connection.ClientConn`,
  a bounded outbox; its read loop) and the HTTP side of the port.
* :mod:`mm2face.realtime.dispatch`: what each client message does (a table from message type to handler).
* :mod:`mm2face.realtime.idle`: the idle policy and clock that keep starved client sessions moving.
* :mod:`mm2face.realtime.stats`: per-session frame rate and latency, and the ``stats`` replies.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from mm2face.engine.audio import StreamResampler
from mm2face.engine.batching import SPEAKING_HOLD_S, SessionBatcher
from mm2face.engine.frame import FPS, FRAME_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME
from mm2face.realtime import protocol as P
from mm2face.realtime.admission import INGEST_BURST_S, Admission, IdleReaper, Limits, RateLimiter
from mm2face.realtime.connection import (OUTBOX_MAX_FRAMES, SEND_BUFFER_BYTES, WS_MAX_SIZE, ClientConn,
                                         handle_connection, http_page, stamped_connection_class)
from mm2face.realtime.dispatch import SERVER_SESSION_CONTROL, Dispatcher, SessionClosed
from mm2face.realtime.idle import IdleClock
from mm2face.realtime.idle_loop import IdleLoop
from mm2face.realtime.metrics import HubMetrics, log_event
from mm2face.realtime.stats import SessionMeter, hub_stats, session_stats

log = logging.getLogger("mm2face.realtime")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
MAX_BATCH = 64                # most sessions in one batched engine call (larger rounds are split)
INGEST_BACKLOG_HOPS = 2       # a live stream is read on while its audio not yet stepped is at most this many hops
REAP_EVERY_S = 1.0            # how often idle client sessions without subscribers are checked for the timeout
IDLE_TIMEOUT_REASON = "idle timeout: no audio and no subscriber"


@dataclass
class _PlayedFrame:
    """A frame of recorded idle motion (see :class:`~mm2face.realtime.idle_loop.IdleLoop`), numbered on
    the wire clock."""
    seq: int
    params: np.ndarray                 # (56,) float32
    style: str

    @property
    def t_audio_s(self) -> float:
        return self.seq / FPS


class LiveSession:
    """A StreamSession shared by its subscribers. All methods are called from the event loop."""

    def __init__(self, hub: "Hub", name: str, num: int, session, style: str, owner=None):
        self.hub, self.name, self.num, self.session, self.owner = hub, name, num, session, owner
        self.style, self.guidance = style, None
        self.subscribers: dict["ClientConn", str] = {}     # client -> a protocol FRAME_FORMATS entry
        self.listeners: list[Callable[["LiveSession", list[P.WireFrame]], None]] = []
        self.audio_taps: list[Callable[[np.ndarray], None]] = []   # see every 16 kHz chunk pushed
        self.audio_subscribers: set["ClientConn"] = set()   # subscribers that asked for the audio (MMAU)
        self.loop = asyncio.get_running_loop()     # where the scheduler's worker hands the frames back
        self._collecting: list[list[P.WireFrame]] = []   # callers awaiting this session's next frames
        self.closed = False
        # Audio bookkeeping: the sample counts are the StreamSession's (see samples_in, audio_samples_in).
        self.n_clipped = 0
        self.warned_clipped = False
        self.last_audio_time = 0.0           # time.time() of the last real audio chunk
        # Idle clock (client sessions, see IdleClock): play_end is the wall time at which the input so
        # far would have finished playing at real-time pace (each chunk starts at max(play_end, arrival)).
        self.idle = False                    # driven by the hub's IdleClock when starved
        self.idle_active = False             # now inside an idle stretch
        self.input_over = False              # end/flush since the last audio: go idle without grace
        self.play_end = hub.clock()          # a session opened without audio goes idle after the grace
        # Cheap idle: after a few seconds of idle motion with one style, play a recording of it instead
        # of stepping the model (see idle_loop.py); frames keep counting on: wire seq = engine seq + offset.
        self.idle_loop = IdleLoop() if hub.idle_replay else None
        self.seq_offset = 0                  # frames played back from the idle loop so far
        # audio seconds per wall second a client may feed (None: unpaced); see Hub(ingest_speed=...)
        self.ingest_rate = (RateLimiter(hub.ingest_speed, INGEST_BURST_S) if hub.ingest_speed else None)
        # Client-fed audio format (for sessions opened by a client).
        self.sample_rate, self.sample_format = SAMPLE_RATE, "pcm16"
        self.resampler = StreamResampler(SAMPLE_RATE)
        # Output bookkeeping.
        self.frames_out = 0
        self.dropped_frames = 0              # of this session's frames, dropped for slow subscribers
        self.dropped_audio_chunks = 0        # of its MMAU audio messages, dropped for slow subscribers
        self.last_frame: P.WireFrame | None = None
        self.meter = SessionMeter()          # recent frame rate and latencies (stats)
        self.created = time.time()

    # -- input, through the hub's scheduler (its worker thread steps the session) ---------------

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosed(self.name)

    async def frames_until_caught_up(self) -> list[P.WireFrame]:
        """Wait (without blocking the loop) until the scheduler has applied this session's queued input and
        run every ready hop; the frames published meanwhile. A session whose hop failed is closed:
        :class:`SessionClosed`."""
        fut = self.loop.create_future()

        def done(exc: BaseException | None) -> None:         # worker thread
            self.loop.call_soon_threadsafe(_settle, fut, exc)
        got: list[P.WireFrame] = []
        self._collecting.append(got)
        try:
            self.hub.batcher.when_caught_up(self, done)
            exc = await fut
        except KeyError:                                       # removed meanwhile
            exc = None
        finally:
            self._collecting.remove(got)
        if exc is not None or self.closed:
            raise SessionClosed(self.name)
        return got

    def _deliver(self, frames) -> None:
        """Frames from the scheduler's worker (called on the event loop): publish them."""
        if self.closed:
            return
        out = self._publish(frames)
        for got in self._collecting:
            got.extend(out)

    async def push_audio(self, audio_16k: np.ndarray, arrival_time: float | None = None) -> list[P.WireFrame]:
        """Feed ``audio_16k: (samples,) float32`` that arrived at server time ``arrival_time``; returns once
        its hops have run, with the frames published meanwhile."""
        if not self._queue_audio(audio_16k, arrival_time):
            return []
        return await self.frames_until_caught_up()

    async def stream_audio(self, audio_16k: np.ndarray, arrival_time: float | None = None) -> None:
        """Feed live audio (a client's or a source's stream): returns at once while this session's audio not
        yet stepped is at most ``INGEST_BACKLOG_HOPS`` hops (plus the lookahead); beyond, waits until the
        scheduler has caught up, so the caller reads its next chunk later (backpressure: an upload goes in
        about one hop per round, beside everyone else's). Waiting after every chunk instead would let a
        session take in at most one chunk per scheduler round, too little once a round outlasts a chunk."""
        if self._queue_audio(audio_16k, arrival_time) and self.backlog_samples() > self.max_backlog_samples():
            await self.frames_until_caught_up()

    @property
    def samples_in(self) -> int:
        """The session clock in 16 kHz samples: the StreamSession's own count of its input (audio, no-audio
        time, end/flush padding; audio dropped by flush gone) plus the input still queued for it in the
        scheduler (:meth:`SessionBatcher.input_samples`). One count, kept by the session."""
        try:
            return self.hub.batcher.input_samples(self)
        except KeyError:                     # no longer in the scheduler (closed): its count is final
            return self.session.n_in

    @property
    def audio_samples_in(self) -> int:
        """Real audio fed so far (16 kHz samples; for stats and idle events): the StreamSession's count plus
        the audio still queued for it."""
        try:
            return self.hub.batcher.input_samples(self, audio_only=True)
        except KeyError:
            return self.session.n_real

    def backlog_samples(self) -> int:
        """Samples handed to the scheduler that no computed hop has consumed yet (read from the loop while
        the worker steps: a snapshot, good for a backpressure decision)."""
        s = self.session
        return self.samples_in - s.spt * s.k

    def max_backlog_samples(self) -> int:
        s = self.session
        return INGEST_BACKLOG_HOPS * s.spt + s.look

    def _queue_audio(self, audio_16k: np.ndarray, arrival_time: float | None) -> bool:
        """Hand ``audio_16k`` to the scheduler (returns at once); False when it is empty."""
        audio_16k = np.asarray(audio_16k, np.float32).reshape(-1)
        if len(audio_16k) == 0:
            return False
        self._check_open()
        t = self.hub.clock() if arrival_time is None else arrival_time
        if self.idle_active:                 # audio resumes after idle frames: it starts right after them
            self.idle_active = False
            self._stop_idle_loop()
            self.idle_event("active", self.t_wire_s())
        self._send_audio(audio_16k)
        self.last_audio_time = t
        self._played(len(audio_16k), t)
        self.input_over = False
        for tap in self.audio_taps:
            tap(audio_16k)
        self.hub.batcher.push_audio(self, audio_16k, arrival_time=t)
        return True

    def _send_audio(self, audio_16k: np.ndarray) -> None:
        """Queue ``audio_16k: (samples,) float32``, about to be consumed, for the subscribers that asked for the
        audio: stamped with the session-clock sample and the frames' time of its first sample (call before the
        chunk is queued: the clock then stands at its first sample)."""
        clients = [c for c in self.audio_subscribers if c in self.subscribers]
        if clients:
            n = self.samples_in
            msg = P.encode_audio_out(self.num, n, self.t_wire_s(n), audio_16k)
            for c in clients:
                c.send_audio(msg, len(audio_16k), self)

    async def push_no_audio(self, n_samples: int) -> list[P.WireFrame]:
        """Let ``n_samples`` of 16 kHz time pass with no audio (idle / text-only motion)."""
        if n_samples <= 0:
            return []
        self._check_open()
        self.feed_no_audio(int(n_samples))
        return await self.frames_until_caught_up()

    def feed_no_audio(self, n_samples: int) -> None:
        """Hand ``n_samples`` of no-audio time to the scheduler (returns at once)."""
        now = self.hub.clock()
        self._played(n_samples, now)
        self.hub.batcher.push_no_audio(self, n_samples, arrival_time=now)

    def _played(self, n_samples: int, arrival: float) -> None:
        self.play_end = max(self.play_end, arrival) + n_samples / SAMPLE_RATE

    def idle_event(self, state: str, t_audio_s: float) -> None:
        msg = P.event_json("idle", session=self.name, state=state, t_audio_s=round(t_audio_s, 6),
                           audio_s=round(self.audio_samples_in / SAMPLE_RATE, 6))
        for c in list(self.subscribers):
            c.send_control(msg)

    def t_wire_s(self, samples_in: int | None = None) -> float:
        """The session clock as clients see it: input taken in (``samples_in``, default now), plus idle
        time played back."""
        return (self.samples_in if samples_in is None else samples_in) / SAMPLE_RATE + self.seq_offset / FPS

    def replaying(self) -> bool:
        return self.idle_loop is not None and self.idle_loop.playing and self.idle_active

    def play_idle(self, n_frames: int) -> list[P.WireFrame]:
        """Publish ``n_frames`` of recorded idle motion (no model step)."""
        params = self.idle_loop.play(n_frames)
        base = (self.last_frame.seq + 1) if self.last_frame is not None else self.seq_offset
        frames = [_PlayedFrame(base + i, p, self.style) for i, p in enumerate(params)]
        self.seq_offset += n_frames
        self._played(n_frames * SAMPLES_PER_FRAME, self.hub.clock())
        return self._publish(frames)

    def _stop_idle_loop(self) -> None:
        if self.idle_loop is not None and self.idle_loop.playing:
            self.idle_loop.stop(self.last_frame.params if self.last_frame is not None else None)

    async def set_style(self, text: str, blend_s: float = 0.5, guidance: float | None = None,
                        requester: "ClientConn | None" = None) -> None:
        self._check_open()
        if guidance is not None and not math.isfinite(guidance):
            raise ValueError(f"guidance must be finite, got {guidance}")
        self.hub.batcher.set_style(self, text, blend_s)
        if guidance is not None:
            self.hub.batcher.set_guidance(self, guidance)
        await self.frames_until_caught_up()
        if self.style != text or guidance is not None:
            self._stop_idle_loop()
        self.style = text
        if guidance is not None:
            self.guidance = guidance
        msg = P.event_json("style", session=self.name, text=text, blend_s=blend_s, guidance=self.guidance)
        for c in set(self.subscribers) | ({requester} if requester is not None else set()):
            c.send_control(msg)
        self.hub.notify_status(self)

    async def end(self) -> list[P.WireFrame]:
        """The input is over: emit the remaining frames (mouth closes, face returns to idle); the last one
        is ``final``. Returns the frames published until the session caught up."""
        self._check_open()
        self._stop_idle_loop()
        now, n0 = self.hub.clock(), self.samples_in
        self.hub.batcher.end(self, arrival_time=now)
        frames = await self.frames_until_caught_up()
        self._played(max(0, self.samples_in - n0), now)     # the session's clock now has padding and tail
        self.input_over = True
        return frames

    async def flush(self) -> list[P.WireFrame]:
        """Barge-in: drop queued audio; the face returns to idle within one hop."""
        self._check_open()
        self._stop_idle_loop()
        now, n0 = self.hub.clock(), self.samples_in
        self.hub.batcher.flush(self, arrival_time=now)
        frames = await self.frames_until_caught_up()
        # The session's clock now has the unused audio dropped and the idle hop added. Barge-in: the
        # dropped audio will never play, so play-out restarts now.
        self.play_end = now + max(0, self.samples_in - n0) / SAMPLE_RATE
        self.input_over = True
        self.resampler = StreamResampler(self.sample_rate)
        return frames

    # -- frames out ---------------------------------------------------------------------------

    def _publish(self, frames) -> list[P.WireFrame]:
        out = []
        for i, f in enumerate(frames):
            params = np.asarray(f.params, np.float32).reshape(-1)
            if params.shape != (FRAME_DIM,) or not np.isfinite(params).all():
                log.error("session %s produced a malformed frame %s; skipped", self.name, getattr(f, "seq", "?"))
                continue
            t = float(f.t_audio_s)
            if isinstance(f, _PlayedFrame):          # idle playback: already numbered on the wire clock
                seq, arrival, ready = f.seq, math.nan, time.time()
            else:                                    # the session's own timing of this frame
                arrival, ready = float(f.audio_arrival_time), float(f.input_ready_time)
                seq = int(f.seq) + self.seq_offset
                if self.idle_loop is not None:
                    params = self.idle_loop.blend(params)
                    if self.idle_active and not math.isfinite(arrival):
                        self.idle_loop.record(params)
            t = seq / FPS if self.seq_offset else t
            wf = P.WireFrame(session=self.name, session_num=self.num, seq=seq, t_audio_s=t, params=params,
                             audio_arrival_time=arrival, input_ready_time=ready,
                             style=str(getattr(f, "style", self.style) or ""),
                             final=bool(getattr(f, "final", False)))
            out.append(wf)
        if not out:
            return out
        now = time.time()
        for wf in out:
            wf.server_send_time = now
        self.meter.observe(out, now)
        encoder = P.FrameBatchEncoder(out, self.hub.arkit_retarget)    # each format (and ARKit) once
        for client, fmt in list(self.subscribers.items()):
            for m in encoder.get(fmt):
                client.send_frame(m, self)
        self.frames_out += len(out)
        self.hub.frames_total += len(out)
        self.last_frame = out[-1]
        for fn in list(self.listeners):
            try:
                fn(self, out)
            except Exception:  # a broken listener must not stop the stream
                log.exception("frame listener failed for session %s", self.name)
        return out

    # -- state for the reaper and stats ----------------------------------------------------------

    def is_idle(self, now: float | None = None) -> bool:
        """No real audio has arrived for ``SPEAKING_HOLD_S`` (idle, text-only, or not yet speaking)."""
        now = self.hub.clock() if now is None else now
        return now - self.last_audio_time > SPEAKING_HOLD_S

    def stats(self) -> dict:
        """The ``session`` object of a ``stats`` reply (:func:`mm2face.realtime.stats.session_stats`)."""
        return session_stats(self)


def _settle(fut: asyncio.Future, exc: BaseException | None) -> None:
    """Resolve ``fut`` with ``exc`` (None: caught up) unless it was cancelled meanwhile."""
    if not fut.done():
        fut.set_result(exc)


class Hub:
    """The sessions of one server. ``make_session(style) -> StreamSession`` builds new sessions (all on
    one model). One scheduler (:class:`~mm2face.engine.batching.SessionBatcher`, ``self.batcher``, made
    with the first session) steps them all in its worker thread, ``max_batch`` sessions per batched call;
    :meth:`close` stops it.
    """

    def __init__(self, make_session: Callable[[str], object], token: str | None = None,
                 max_frames_per_client: int = OUTBOX_MAX_FRAMES, max_sessions: int = 64,
                 send_buffer_bytes: int = SEND_BUFFER_BYTES, max_batch: int = MAX_BATCH, limits: Limits | None = None,
                 server_session_control: str = "style", idle_replay: bool = True,
                 ingest_speed: float | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable] = asyncio.sleep):
        self.make_session = make_session
        self.clock = clock                       # what the idle policy reads (seconds); tests inject one
        self.sleep = sleep                       # how paced ingestion waits (seconds); tests inject one
        self.token = token
        self.max_frames_per_client = max_frames_per_client
        # Without explicit limits (library use, tests): only the server-wide session limit applies.
        self.limits = limits or Limits(max_sessions=max_sessions, max_sessions_per_client=max_sessions)
        self.max_sessions = self.limits.max_sessions
        self.admission = Admission(self.limits)
        self.reaper = IdleReaper(self.limits.idle_timeout_s)
        if server_session_control not in SERVER_SESSION_CONTROL:
            raise ValueError(f"server_session_control must be one of {list(SERVER_SESSION_CONTROL)}")
        self.server_session_control = server_session_control
        self.idle_replay = idle_replay           # idle client sessions play back recorded idle motion
        self.ingest_speed = ingest_speed         # client audio fed at most this many x real time (None: unpaced)
        self.send_buffer_bytes = send_buffer_bytes
        self.frames_total = 0                    # frames published by all sessions
        self.metrics = HubMetrics(self)
        self.max_batch = max_batch
        self.batcher: SessionBatcher | None = None     # the scheduler, made for the first session's model
        self.idle_clock = IdleClock(self, clock)
        self.dispatcher = Dispatcher(self)       # what each client message does
        self.sessions: dict[str, LiveSession] = {}
        self.clients: set[ClientConn] = set()
        self.dropped_total = 0
        self.errors: collections.Counter[str] = collections.Counter()   # error replies by code
        self._building: collections.Counter = collections.Counter()      # client addr -> sessions being built
        self._sessions_changed = asyncio.Event()                           # set when a session closes
        self._nums = itertools.count(1)
        # ARKit frame formats: the map (None = the stand-in's); arkit_error refuses them, saying why
        self.arkit_retarget = None
        self.arkit_error: str | None = None
        self.status_listeners: list[Callable[[LiveSession], None]] = []
        self.session_listeners: list[Callable[[LiveSession, bool], None]] = []   # (session, created?)
        self.started = time.time()

    async def create_session(self, name: str, style: str = "", owner: ClientConn | None = None,
                             idle: bool = False) -> LiveSession:
        """A new session. ``idle=True``: the hub's :class:`IdleClock` keeps it moving when its audio
        stops (client sessions; sessions fed by a server source have their own clock)."""
        if name in self.sessions:
            raise P.ProtocolError(P.ErrorCode.SESSION_EXISTS, f"session {name!r} already exists; "
                                  "pick another name or omit it", "open")
        if owner is not None:          # the operator's own sessions are not subject to admission
            try:
                self.admission.check_open(len(self.sessions), self.sessions_of(owner.addr), owner.addr or "?")
            except P.ProtocolError as e:
                log_event("session_refused", code=e.code, client=owner.addr, sessions=len(self.sessions))
                raise
        self.sessions[name] = None  # reserve the name (and a place) while the session is built
        addr = owner.addr if owner is not None else None
        self._building[addr] += 1
        try:
            session = await asyncio.to_thread(self.make_session, style)
        except BaseException:
            del self.sessions[name]
            raise
        finally:
            self._building[addr] -= 1
            if not self._building[addr]:
                del self._building[addr]
        try:
            live = LiveSession(self, name, next(self._nums), session, style, owner)
            self._scheduler(session).add(session, key=live)
        except BaseException:
            del self.sessions[name]
            raise
        live.idle = idle
        self.sessions[name] = live
        if idle:
            self.idle_clock.ensure_running()
        for fn in list(self.session_listeners):
            fn(live, True)
        log_event("session_opened", session=name, client=owner.addr if owner is not None else None,
                  sessions=len(self.sessions))
        return live

    def _scheduler(self, session) -> SessionBatcher:
        """The hub's scheduler (made and started for the first session's model)."""
        if self.batcher is None:
            self.batcher = SessionBatcher(session.model, device=session.device, max_batch=self.max_batch,
                                          on_frames=self._on_frames, on_error=self._on_engine_error,
                                          on_step=self.metrics.observe_hop)
        if not self.batcher.running:
            self.batcher.start()
        return self.batcher

    @staticmethod
    def _on_frames(live: LiveSession, frames) -> None:
        """The scheduler's worker thread: hand ``live``'s new frames to its event loop (never blocks)."""
        live.loop.call_soon_threadsafe(live._deliver, frames)

    def _on_engine_error(self, live: LiveSession, exc: BaseException) -> None:
        """The scheduler's worker thread: ``live``'s hop raised; it was removed from the scheduler. Close
        it (on its event loop) and tell its subscribers why; the other sessions go on."""
        log.error("session %s failed in the engine and is closed: %s: %s", live.name, type(exc).__name__, exc)
        live.loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(self.close_session(live, reason=f"engine error: {type(exc).__name__}")))

    def close(self) -> None:
        """Stop the idle clock and the scheduler's worker (the sessions stay as they are)."""
        self.idle_clock.close()
        if self.batcher is not None:
            self.batcher.stop()

    async def close_session(self, live: LiveSession, reason: str = "closed") -> None:
        if live.closed:
            return
        live.closed = True
        self.sessions.pop(live.name, None)
        if self.batcher is not None:
            self.batcher.remove(live)
        msg = P.event_json("session_closed", session=live.name, reason=reason)
        for c in list(live.subscribers):
            c.subs.discard(live.name)
            c.send_control(msg)
        live.subscribers.clear()
        live.audio_subscribers.clear()
        self._sessions_changed.set()
        log_event("session_closed", session=live.name, reason=reason, frames=live.frames_out,
                  dropped=live.dropped_frames, client=live.owner.addr if live.owner is not None else None)
        for fn in list(self.session_listeners):
            fn(live, False)

    def notify_status(self, live: LiveSession) -> None:
        for fn in list(self.status_listeners):
            try:
                fn(live)
            except Exception:
                log.exception("status listener failed")

    def live_sessions(self) -> list[str]:
        return [n for n, s in self.sessions.items() if s is not None]

    def sessions_of(self, addr: str | None) -> int:
        """Client sessions (open or being built) whose owner connected from ``addr``."""
        return sum(1 for s in self.sessions.values() if s is not None and s.owner is not None
                   and s.owner.addr == addr) + self._building.get(addr, 0)

    def ready(self) -> tuple[bool, str]:
        """Whether a new client session would be admitted now, and why (``/readyz``)."""
        cap, n = self.limits.effective_capacity, len(self.sessions)
        if self.admission.draining:
            return False, "draining (shutting down, no new sessions)"
        if n >= cap:
            return False, f"full: {n} of {cap} sessions"
        return True, f"{n} of {cap} sessions"

    async def drain(self, grace_s: float, reason: str = "server shutting down") -> int:
        """Graceful shutdown: refuse new sessions (``draining``), give the running client sessions up to
        ``grace_s`` to finish (their owners close them), then close the rest with ``session_closed``
        and ``reason``. Returns how many were closed by the drain."""
        self.admission.draining = True
        log_event("drain_started", grace_s=grace_s, sessions=self.live_sessions())
        loop = asyncio.get_running_loop()
        t_end = loop.time() + grace_s
        while self._client_sessions() and loop.time() < t_end:
            self._sessions_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sessions_changed.wait(), max(0.0, t_end - loop.time()))
        left = self._client_sessions()
        for live in left:
            await self.close_session(live, reason=f"{reason} (drain after {grace_s:g} s)")
        log_event("drain_done", closed=len(left))
        return len(left)

    async def reap_idle(self, now: float | None = None) -> list[str]:
        """Close client sessions idle (no audio) with no subscriber for the idle timeout; their names."""
        live = self._client_sessions()
        due = self.reaper.observe({s: bool(s.subscribers) or not s.is_idle() for s in live}, now)
        for s in due:
            if s.owner is not None and s.owner.own is s:
                s.owner.own = None
                s.owner.send_control(P.event_json("session_closed", session=s.name, reason=IDLE_TIMEOUT_REASON))
            await self.close_session(s, reason=IDLE_TIMEOUT_REASON)
        return [s.name for s in due]

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            try:
                await self.reap_idle()
            except Exception:  # noqa: BLE001 - the reaper must not die with one bad session
                log.exception("idle reaper failed")

    def _client_sessions(self) -> list[LiveSession]:
        return [s for s in self.sessions.values() if s is not None and s.owner is not None and not s.closed]

    def limits_info(self) -> dict:
        return self.admission.as_dict(len(self.sessions))

    def check_format(self, fmt: str, ref: str) -> None:
        """ARKit formats need a map for the model's head (the stand-in's, or one from mm2face-retarget)."""
        if fmt in P.ARKIT_FORMATS and self.arkit_error is not None:
            raise P.ProtocolError(P.ErrorCode.BAD_MESSAGE, f"{ref}: format {fmt!r} is not available: "
                                  f"{self.arkit_error}", ref)

    def stats(self) -> dict:
        """The server's counters for the ``stats`` reply (:func:`mm2face.realtime.stats.hub_stats`)."""
        return hub_stats(self)

@contextlib.asynccontextmanager
async def serve_hub(hub: Hub, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """Serve ``hub`` on ``ws://host:port`` while the context is open. ``port=0`` picks a free port
    (read it from ``server.port``)."""
    from websockets.asyncio.server import serve

    async with serve(functools.partial(handle_connection, hub), host, port, max_size=WS_MAX_SIZE,
                     compression=None, max_queue=64, process_request=lambda conn, req: http_page(conn, req, hub),
                     create_connection=stamped_connection_class()) as server:
        server.port = next(iter(server.sockets)).getsockname()[1]
        reaper = asyncio.ensure_future(hub._reap_loop()) if hub.limits.idle_timeout_s > 0 else None
        try:
            yield server
        finally:
            if reaper is not None:
                reaper.cancel()
            hub.close()
