"""Idle policy of the mm2face-live server: client sessions that receive no audio keep moving.

A client session opened with ``idle: true`` that is starved of audio (none has arrived for
``IDLE_AFTER_S`` past the play-out of its input so far; no grace after end/flush) gets no-audio time
from the hub's :class:`IdleClock`, so it emits idle frames (breathing, blinks, the current style) at
25 fps until its audio resumes. :func:`idle_frames_due` is the policy: how many frames of idle time a
session should get at time ``now``. Every time comes from the hub's injected ``clock`` (default
``time.time``), so the policy and the clock's ticks can be tested with made-up times and no sleeps.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from mm2face.engine.frame import FPS, SAMPLES_PER_FRAME
from mm2face.realtime.dispatch import SessionClosed

if TYPE_CHECKING:
    from mm2face.realtime.server import Hub, LiveSession

log = logging.getLogger("mm2face.realtime")

IDLE_AFTER_S = 0.5            # a client session whose audio has played out this long ago (s) goes idle
IDLE_MAX_BURST_FRAMES = 25    # after a stall longer than this (frames) the idle time re-anchors, no burst
CLOCK_STALL_S = 1.0           # the idle clock fell this far behind its tick grid (s): re-anchor the grid


def idle_frames_due(live: "LiveSession", now: float) -> int:
    """Frames of idle time ``live`` should get at ``now`` (0: none), entering an idle stretch if due.

    Starved = no audio has arrived for ``IDLE_AFTER_S`` past the play-out of the input so far
    (``live.play_end``; no grace after end/flush). An idle stretch then keeps the session clock one frame
    ahead of real time, i.e. 25 idle frames per second."""
    if not live.idle or live.closed:
        return 0
    if not live.idle_active:
        if now < live.play_end + (0.0 if live.input_over else IDLE_AFTER_S):
            return 0
        live.idle_active = True
        live.play_end = now                        # idle time starts now (the grace is not made up)
        if live.idle_loop is not None:
            live.idle_loop.reset()
        live.idle_event("idle", live.t_wire_s())
    n = math.ceil((now + 1.0 / FPS - live.play_end) * FPS - 1e-6)
    if n > IDLE_MAX_BURST_FRAMES:                  # the loop stalled: re-anchor rather than burst
        live.play_end, n = now, 1
    return max(0, n)


class IdleClock:
    """Keeps starved client sessions moving: a clock that ticks once per frame (40 ms) and pushes
    no-audio time into every session :func:`idle_frames_due` names.

    The idle sessions of one tick are fed to the hub's scheduler together, so their hops run in the same
    batched step as any session with real audio: N idle sessions cost about one batched hop per tick
    (speakers are served first when a round is full). A session replaying recorded idle motion costs no
    engine step at all. A tick returns once the sessions it fed have caught up (it waits, never blocks).
    ``clock`` (the time the policy reads, seconds) and ``sleep`` are injected; the tick grid runs on the
    event loop's monotonic time. Tests call :meth:`tick` with made-up times instead."""

    def __init__(self, hub: "Hub", clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable] = asyncio.sleep):
        self.hub, self.clock, self.sleep = hub, clock, sleep
        self._task: asyncio.Task | None = None
        self.ticks = 0

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def sessions(self) -> list["LiveSession"]:
        """The hub's open sessions driven by this clock."""
        return [s for s in self.hub.sessions.values() if s is not None and s.idle and not s.closed]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()          # the tick grid runs on the loop's monotonic time
        t0, i = loop.time(), 0
        while True:
            i += 1
            delay = t0 + i / FPS - loop.time()
            if delay > 0:
                await self.sleep(delay)
            elif delay < -CLOCK_STALL_S:           # the loop stalled: re-anchor the tick grid
                t0, i = loop.time(), 0
            sessions = self.sessions()
            if not sessions:
                return                             # restarted by the next session that wants idle
            try:
                await self.tick(sessions, self.clock())
            except Exception:                      # a failing session must not stop the others' idle
                log.exception("idle clock tick failed")

    async def tick(self, sessions: list["LiveSession"], now: float) -> None:
        """One tick at time ``now``: idle time for each session that is due some, in one batched round."""
        fed = []
        for s in sessions:
            n = idle_frames_due(s, now)
            if n > 0 and s.replaying():
                s.play_idle(n)                     # recorded idle motion: no engine step
            elif n > 0:
                s.feed_no_audio(n * SAMPLES_PER_FRAME)
                fed.append(s)
        for r in await asyncio.gather(*(s.frames_until_caught_up() for s in fed), return_exceptions=True):
            if isinstance(r, Exception) and not isinstance(r, SessionClosed):
                log.error("idle step failed: %s", r)
        self.ticks += 1
