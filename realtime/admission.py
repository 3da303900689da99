"""Admission control and idle-session policy of the mm2face-live server (sans-I/O, injected clock).

* :class:`Limits`: sessions per server and per client address, the real-time capacity, idle timeout.
* :class:`Admission`: decides whether a new session may open; refuses with a specific error
  (``capacity``, ``session_limit``, ``draining``) that says what is in use and what to do.
* :func:`measure_capacity`: how many sessions can all speak at once in real time on this machine,
  from the measured cost of the scheduler's round (one batched hop) at a few batch sizes.
* :class:`IdleReaper`: which client sessions have been idle with no subscriber for too long.

No sockets or asyncio here: the server (:mod:`mm2face.realtime.server`) feeds the counts and the
clock, and tests drive the policies with a fake clock (no sleeps).
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from mm2face.realtime import protocol as P

DRAIN_TIMEOUT_S = 10.0            # graceful shutdown: how long running sessions get to finish
HOP_S = 0.08                      # one motion token: 2 frames at 25 fps, the server's unit of work
CAPACITY_UTILISATION = 0.5        # a batched hop of every session may take at most this share of a hop
CAPACITY_BATCH_SIZES = (1, 2, 4, 8, 16)   # batch sizes timed by measure_capacity
CAPACITY_REPEATS = 6              # timed hops per batch size (after one warm-up hop)


@dataclass
class Limits:
    """Server limits; defaults in code, ``mm2face-live`` flags override (reported in hello and stats)."""
    max_sessions: int = 64                # sessions on the server, its own included
    max_sessions_per_client: int = 4      # sessions opened from one client address (IP) at once
    capacity: int | None = None           # sessions that can all speak in real time; None = max_sessions
    idle_timeout_s: float = 60.0          # a client session idle this long with no subscriber is closed (0 = never)

    def __post_init__(self):
        if self.max_sessions < 1 or self.max_sessions_per_client < 1:
            raise ValueError("max_sessions and max_sessions_per_client must be at least 1")
        if self.capacity is not None and self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")
        if not self.idle_timeout_s >= 0:
            raise ValueError(f"idle_timeout_s must be >= 0, got {self.idle_timeout_s}")

    @property
    def effective_capacity(self) -> int:
        return min(self.max_sessions, self.capacity or self.max_sessions)


@dataclass
class CapacityEstimate:
    """Cost of one batched hop ``step_ms(n) = fixed_ms + per_session_ms * n`` and the capacity it allows."""
    fixed_ms: float
    per_session_ms: float
    capacity: int
    budget_ms: float
    measured: dict[int, float] = field(default_factory=dict)    # batch size -> median hop ms

    def describe(self) -> str:
        return (f"real-time capacity {self.capacity} sessions (a batched hop costs {self.fixed_ms:.1f} + "
                f"{self.per_session_ms:.2f} ms per session; budget {self.budget_ms:.0f} ms of each "
                f"{HOP_S * 1e3:.0f} ms hop)")


def capacity_from_costs(measured: dict[int, float], budget_ms: float, batched: bool = True,
                        max_sessions: int = 1 << 16) -> CapacityEstimate:
    """Fit ``step_ms(n) = a + b n`` to ``measured`` (batch size -> median ms) by least squares and return
    the largest ``n`` with ``step_ms(n) <= budget_ms`` (at least 1). ``batched=False``: sessions step one
    by one, so ``n`` sessions cost ``n`` single steps."""
    if not batched:
        one = measured[min(measured)] / min(measured)
        return CapacityEstimate(0.0, one, max(1, min(max_sessions, int(budget_ms // max(one, 1e-6)))),
                                budget_ms, dict(measured))
    xs, ys = list(measured), [measured[n] for n in measured]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    b = max(b, 1e-3)
    a = max(0.0, my - b * mx)
    n = int(math.floor((budget_ms - a) / b))
    return CapacityEstimate(a, b, max(1, min(max_sessions, n)), budget_ms, dict(measured))


def measure_capacity(make_session: Callable[[str], object], batched: bool = True,
                     sizes=CAPACITY_BATCH_SIZES, repeats: int = CAPACITY_REPEATS,
                     utilisation: float = CAPACITY_UTILISATION, max_sessions: int = 1 << 16,
                     clock: Callable[[], float] = time.perf_counter) -> CapacityEstimate:
    """Time the scheduler's rounds with ``n`` speaking ``make_session("")`` sessions for each ``n`` in
    ``sizes`` and derive the real-time capacity: the most sessions whose round (one hop each) takes at
    most ``utilisation`` of a hop. The rounds are those of the server's own scheduler
    (:class:`~mm2face.engine.batching.SessionBatcher`: queued input applied, one batched hop, frames
    handed out), stepped here in the calling thread; ``batched=False`` times rounds of single hops
    (``max_batch`` 1)."""
    import numpy as np
    import torch

    from mm2face.engine.batching import SessionBatcher
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(16000 * HOP_S * (repeats + 4)))).astype(np.float32)
    measured = {}
    for n in sizes:
        sessions = [make_session("") for _ in range(n)]
        batcher = SessionBatcher(sessions[0].model, device=sessions[0].device, max_batch=n if batched else 1)
        for s in sessions:
            batcher.push_audio(batcher.add(s), audio)
        times = []
        with torch.no_grad():                        # as in the scheduler's worker thread
            batcher.step()                           # warm-up: audio in, rows joined, first-call costs
            for _ in range(repeats):
                t = clock()
                hops = batcher.step()
                times.append((clock() - t) * 1e3)
                if hops != n:
                    raise RuntimeError(f"measure_capacity: a round ran {hops} hops for {n} sessions; the "
                                       "test audio is too short for the repeats asked for")
        measured[n] = float(np.median(times))
    return capacity_from_costs(measured, utilisation * HOP_S * 1e3, batched, max_sessions)


class Admission:
    """Whether a new session may open. Counts come from the caller; refusals are counted by code."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.refused: collections.Counter[str] = collections.Counter()
        self.draining = False

    def check_open(self, in_use: int, client_in_use: int, client: str) -> None:
        """Raise :class:`protocol.ProtocolError` when one more session (from ``client``, which holds
        ``client_in_use`` of the server's ``in_use`` sessions) must not open."""
        lim = self.limits
        cap = lim.effective_capacity
        if self.draining:
            self._refuse(P.ErrorCode.DRAINING, "the server is shutting down and opens no new sessions; "
                         "connect to another server or retry after it restarts")
        if client_in_use >= lim.max_sessions_per_client:
            self._refuse(P.ErrorCode.SESSION_LIMIT,
                         f"client {client} already holds {client_in_use} sessions, the per-client limit "
                         f"(max_sessions_per_client {lim.max_sessions_per_client}); close one first")
        if in_use >= cap:
            what = ("its real-time capacity" if lim.capacity is not None and lim.capacity < lim.max_sessions
                    else "its session limit")
            self._refuse(P.ErrorCode.CAPACITY,
                         f"the server runs {in_use} of {cap} sessions, {what}: one more would slow every "
                         "session past real time. Retry later or use another server")

    def _refuse(self, code: str, message: str):
        self.refused[code] += 1
        raise P.ProtocolError(code, message, "open")

    def as_dict(self, in_use: int) -> dict:
        lim = self.limits
        return {"max_sessions": lim.max_sessions, "max_sessions_per_client": lim.max_sessions_per_client,
                "capacity": lim.effective_capacity, "sessions_in_use": in_use,
                "idle_timeout_s": lim.idle_timeout_s, "draining": self.draining}


class IdleReaper:
    """Closes client sessions that are idle (no audio) and have no subscriber for ``timeout_s``.

    ``observe(key, busy, now)`` each tick: ``busy`` = the session has audio in flight or a subscriber.
    Returns the keys whose quiet stretch has reached the timeout."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.timeout_s, self.clock = timeout_s, clock
        self._quiet_since: dict = {}

    def observe(self, states: dict, now: float | None = None) -> list:
        """``states``: key -> busy (bool) for every live session to watch; keys not present are forgotten."""
        now = self.clock() if now is None else now
        for k in list(self._quiet_since):
            if k not in states:
                del self._quiet_since[k]
        due = []
        for k, busy in states.items():
            if busy:
                self._quiet_since.pop(k, None)
                continue
            t0 = self._quiet_since.setdefault(k, now)
            if self.timeout_s > 0 and now - t0 >= self.timeout_s:
                due.append(k)
        return due


def add_arguments(ap) -> None:
    """``mm2face-live`` flags for the limits (an argument group of ``ap``)."""
    d = Limits()
    g = ap.add_argument_group("limits (reported in hello and stats; see docs/protocol.md)")
    g.add_argument("--max-sessions", type=int, default=d.max_sessions, metavar="N",
                   help="sessions on the server, its own included (default: %(default)s)")
    g.add_argument("--max-sessions-per-client", type=int, default=d.max_sessions_per_client, metavar="N",
                   help="sessions one client address may hold at once (default: %(default)s)")
    g.add_argument("--capacity", type=int, default=0, metavar="N",
                   help="sessions that can all speak in real time; a session beyond it is refused with "
                        "'capacity' (default 0: measured at start-up from the cost of a batched hop, keeping "
                        f"it under {CAPACITY_UTILISATION * 100:.0f}%% of the {HOP_S * 1e3:.0f} ms hop)")
    g.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="S",
                   help="close a client session idle this long with no subscriber (0 = never; default: %(default)s)")
    g.add_argument("--ingest-speed", type=float, default=INGEST_SPEED, metavar="X",
                   help="feed a client's audio to its session at most X times real time after a first "
                        f"{INGEST_BURST_S:g} s, so an upload costs what a speaking session does "
                        "(0 = as fast as it comes; default: %(default)s)")
    g.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S, metavar="S",
                   help="on SIGTERM/SIGINT: refuse new sessions and give running ones this long to finish "
                        "before closing them (default: %(default)s)")
    g.add_argument("--server-session-control", choices=("none", "style", "all"), default="style",
                   help="what clients may send to the server's own session (mic/wav/text-only): nothing, "
                        "style changes, or also end and flush (default: %(default)s)")


def limits_from_args(args, make_session=None, batched: bool = True, log=None) -> Limits:
    """:class:`Limits` from the flags of :func:`add_arguments`; ``--capacity 0`` measures it with
    ``make_session`` (see :func:`measure_capacity`)."""
    capacity = args.capacity or None
    if capacity is None and make_session is not None:
        est = measure_capacity(make_session, batched=batched, max_sessions=args.max_sessions)
        capacity = est.capacity
        if log is not None:
            log(est.describe())
    return Limits(max_sessions=args.max_sessions, max_sessions_per_client=args.max_sessions_per_client,
                  capacity=capacity, idle_timeout_s=args.idle_timeout)


CONTROL_RATE_PER_S = 50.0         # control messages one connection may send per second, sustained
CONTROL_BURST = 100               # ... and in a burst
AUDIO_MSG_RATE_PER_S = 100.0      # audio messages one connection may send per second (10 ms chunks), sustained
AUDIO_MSG_BURST = 200             # ... and in a burst
INGEST_SPEED = 1.0                # a client session's audio is fed at most this many times real time (one
                                  # speaking session's cost, what the capacity counts) ...
INGEST_BURST_S = 2.0              # ... after a first burst of this many seconds (mm2face-live --ingest-speed)


class RateLimiter:
    """Token bucket: ``allow()`` is True while the caller stays within ``rate_per_s`` (``burst`` at once)."""

    def __init__(self, rate_per_s: float = CONTROL_RATE_PER_S, burst: int = CONTROL_BURST,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self.tokens, self.t = float(burst), clock()
        self.dropped = 0

    def allow(self) -> bool:
        """Take a token if there is one (True), else count the miss (False)."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def delay(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens, going into debt if there are not enough: the seconds the caller should wait
        before going on (0 within the rate). Waiting instead of dropping turns a flood into TCP backpressure."""
        self._refill()
        self.tokens -= cost
        if self.tokens >= 0.0:
            return 0.0
        self.dropped += 1
        return -self.tokens / self.rate

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
