"""Cross-session batching: one model serves many streaming sessions.

    b = SessionBatcher(model, device="cpu", on_frames=send)      # send(key, [TimedFrame]) must not block
    key = b.add(StreamSession(model, style="calm"))
    b.push_audio(key, chunk_16k)          # any thread; returns at once
    b.start()                             # worker thread: batched hops as audio arrives
    ...
    b.stop()

Each scheduling round takes the sessions whose next hop is ready *now* and runs one hop for each of
them as one batched call (:func:`mm2face.engine.session.step_sessions`: one audio-encoder call, one G
step, grouped decoder calls). The batch is whatever is ready, never a fixed full batch, so:

* an idle session (no new audio) is simply not in the round;
* a session that pushed a burst of audio gets one hop per round, like everybody else, so its backlog
  never makes the others' rounds longer (round robin; ``max_batch`` caps a round's batch size and
  the start of the order rotates);
* a slow consumer never blocks the worker: frames go to ``on_frames`` (which must not block, e.g. put
  them in a bounded outbox) or to a per-session list read by :meth:`drain`;
* a session whose hop raises is removed and reported through ``on_error``; the rest of its batch is
  re-run without it.

Only the worker touches the sessions: pushes, style changes, end and flush are queued per session
and applied at the start of the next round, in order. Every pushed chunk is stamped on arrival
(``time.perf_counter()`` seconds), so each output frame carries when its own audio instant arrived
(``audio_arrival_time``) and when the last audio it depends on arrived (``input_ready_time``).
"""
from __future__ import annotations

import bisect
import collections
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from mm2face.engine.frame import SAMPLES_PER_FRAME
from mm2face.engine.session import Frame, StreamSession, step_sessions


@dataclass
class TimedFrame:
    """A session frame with its timing (all ``time.perf_counter()`` seconds)."""
    key: Hashable
    frame: Frame
    audio_arrival_time: float      # when the audio at the frame's own instant (t_audio_s) arrived
    input_ready_time: float        # when the last audio sample the frame depends on arrived
    done_time: float               # when the batch that produced it finished


class _Slot:
    """Per-session state kept by the batcher."""

    def __init__(self, key, session: StreamSession):
        self.key = key
        self.session = session
        self.inbox: collections.deque = collections.deque()   # ("audio", arr, t) / ("style", ...) / ...
        self.arrival_ends: list[int] = []                     # cumulative sample count after each chunk
        self.arrival_times: list[float] = []                  # when that chunk arrived
        self.n_pushed = 0
        self.out: list[TimedFrame] = []
        self.removed = False

    def arrival_of(self, sample: int) -> float:
        """When sample index ``sample`` of the session timeline arrived (nan if it never did)."""
        i = bisect.bisect_right(self.arrival_ends, sample)
        return self.arrival_times[i] if i < len(self.arrival_times) else float("nan")

    def trim_arrivals(self, before_sample: int) -> None:
        """Forget arrival stamps of chunks that end at or before ``before_sample``."""
        i = bisect.bisect_right(self.arrival_ends, before_sample)
        if i > 64:
            del self.arrival_ends[:i], self.arrival_times[:i]


class SessionBatcher:
    """Runs the hops of many :class:`StreamSession` s that share one model as batched steps.

    ``max_batch``: most sessions in one batched call (larger rounds are split).
    ``on_frames(key, frames)``: called by the worker with each session's new :class:`TimedFrame` s;
    when None, frames collect per session and :meth:`drain` returns them.
    ``on_error(key, exc)``: a session failed and was removed.
    """

    def __init__(self, model, device="cpu", max_batch: int = 256,
                 on_frames: Callable[[Hashable, list[TimedFrame]], None] | None = None,
                 on_error: Callable[[Hashable, BaseException], None] | None = None):
        self.model = model
        self.step_fn = step_sessions
        self.device = device
        self.max_batch = max(1, int(max_batch))
        self.on_frames = on_frames
        self.on_error = on_error
        self._slots: dict[Hashable, _Slot] = {}
        self._lock = threading.Lock()                 # guards _slots and every inbox
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._rr = 0                                  # round-robin start
        self.stats = {"rounds": 0, "batches": 0, "hops": 0, "batch_sizes": collections.Counter(),
                      "round_ms": collections.deque(maxlen=10000), "busy_s": 0.0, "errors": 0}

    # ---- sessions ------------------------------------------------------------------------------
    def add(self, session: StreamSession, key: Hashable | None = None) -> Hashable:
        if session.model is not self.model:
            raise ValueError("SessionBatcher.add: the session must use the batcher's model")
        key = next(self._ids) if key is None else key
        with self._lock:
            if key in self._slots:
                raise KeyError(f"session key {key!r} already in use")
            self._slots[key] = _Slot(key, session)
        return key

    def remove(self, key: Hashable) -> StreamSession | None:
        with self._lock:
            slot = self._slots.pop(key, None)
        if slot is None:
            return None
        slot.removed = True
        return slot.session

    def __len__(self) -> int:
        return len(self._slots)

    def keys(self) -> list:
        with self._lock:
            return list(self._slots)

    def session(self, key) -> StreamSession:
        return self._slots[key].session

    # ---- input (any thread) --------------------------------------------------------------------
    def push_audio(self, key, audio_16k: np.ndarray, arrival_time: float | None = None) -> None:
        """Queue ``(samples,)`` float32 16 kHz audio for session ``key``; stamped now unless given."""
        t = time.perf_counter() if arrival_time is None else arrival_time
        a = np.asarray(audio_16k, np.float32).reshape(-1)
        self._queue(key, ("audio", a, t))

    def push_no_audio(self, key, n_samples: int, arrival_time: float | None = None) -> None:
        t = time.perf_counter() if arrival_time is None else arrival_time
        self._queue(key, ("noaudio", int(n_samples), t))

    def set_style(self, key, text: str, blend_s: float | None = None) -> None:
        self._queue(key, ("style", text, blend_s))

    def end(self, key) -> None:
        """Input over for ``key``: its last frames and the closing tail follow in the next rounds."""
        self._queue(key, ("end", None, time.perf_counter()))

    def flush(self, key) -> None:
        self._queue(key, ("flush", None, time.perf_counter()))

    def _queue(self, key, item) -> None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                raise KeyError(f"unknown session {key!r}")
            slot.inbox.append(item)
        self._wake.set()

    # ---- output --------------------------------------------------------------------------------
    def drain(self, key) -> list[TimedFrame]:
        """Frames collected for ``key`` since the last call (only when ``on_frames`` is None)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return []
            out, slot.out = slot.out, []
        return out

    # ---- the scheduling round (worker thread, or call it yourself) -------------------------------
    def _apply_inbox(self, slot: _Slot) -> None:
        with self._lock:
            items = list(slot.inbox)
            slot.inbox.clear()
        s = slot.session
        for kind, val, extra in items:
            if kind == "audio":
                s.push_audio(val)
                slot.n_pushed = s.n_in
                slot.arrival_ends.append(s.n_in)
                slot.arrival_times.append(extra)
            elif kind == "noaudio":
                s.push_no_audio(val)
                slot.arrival_ends.append(s.n_in)
                slot.arrival_times.append(extra)
            elif kind == "style":
                s.set_style(val, extra)
            elif kind in ("end", "flush"):
                # end()/flush() pad with silence and compute their (few) hops at once, unbatched;
                # the padding "arrives" now
                n0 = s.n_in
                if kind == "end":
                    frames = s.end()
                else:
                    frames = s.flush()
                    slot.arrival_ends = [min(e, s.n_in) for e in slot.arrival_ends]
                if s.n_in > n0 or kind == "flush":
                    slot.arrival_ends.append(s.n_in)
                    slot.arrival_times.append(extra)
                self._emit(slot, frames, time.perf_counter())

    def step(self) -> int:
        """One round: apply queued input, then one hop for every ready session, batched.
        Returns the number of hops run."""
        t_round = time.perf_counter()
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            if slot.inbox:
                try:
                    self._apply_inbox(slot)
                except Exception as exc:  # noqa: BLE001 - one bad session must not stop the others
                    self._fail(slot, exc)
        ready = [sl for sl in slots if not sl.removed and sl.session.hop_ready()]
        if not ready:
            return 0
        n = len(ready)
        start = self._rr % n
        ready = ready[start:] + ready[:start]
        self._rr += 1
        hops = 0
        for i in range(0, n, self.max_batch):
            hops += self._run_batch(ready[i:i + self.max_batch])
        self.stats["rounds"] += 1
        dt = time.perf_counter() - t_round
        self.stats["round_ms"].append(dt * 1e3)
        self.stats["busy_s"] += dt
        return hops

    def _run_batch(self, batch: list[_Slot]) -> int:
        try:
            self.step_fn([sl.session for sl in batch])
        except Exception:  # noqa: BLE001 - find the culprit: run each alone
            if len(batch) == 1:
                self._fail(batch[0], _last_exc())
                return 0
            return sum(self._run_batch([sl]) for sl in batch)
        done = time.perf_counter()
        self.stats["batches"] += 1
        self.stats["hops"] += len(batch)
        self.stats["batch_sizes"][len(batch)] += 1
        for sl in batch:
            s = sl.session
            frames, s.pending = s.pending, []
            self._emit(sl, frames, done)
        return len(batch)

    def _emit(self, slot: _Slot, frames: list[Frame], done: float) -> None:
        if not frames:
            return
        s = slot.session
        tf = []
        for f in frames:
            k = f.seq // s.down
            need = s.spt * (k + 1) + s.look                # samples this frame's token read
            tf.append(TimedFrame(slot.key, f, slot.arrival_of(f.seq * SAMPLES_PER_FRAME),
                                 slot.arrival_of(need - 1), done))
        slot.trim_arrivals(frames[0].seq * SAMPLES_PER_FRAME - s.spt)
        if self.on_frames is not None:
            try:
                self.on_frames(slot.key, tf)
            except Exception as exc:  # noqa: BLE001 - a failing consumer affects only its session
                self._fail(slot, exc)
        else:
            with self._lock:
                slot.out.extend(tf)

    def _fail(self, slot: _Slot, exc: BaseException) -> None:
        self.stats["errors"] += 1
        self.remove(slot.key)
        if self.on_error is not None:
            self.on_error(slot.key, exc)

    def run_until_idle(self) -> int:
        """Run rounds until no session has queued input or a ready hop. Returns hops run."""
        total = 0
        while True:
            n = self.step()
            total += n
            with self._lock:
                pending = any(sl.inbox for sl in self._slots.values())
            if n == 0 and not pending:
                return total

    # ---- worker thread -------------------------------------------------------------------------
    def start(self) -> "SessionBatcher":
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mm2face-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        import torch
        with torch.no_grad():          # as in warm-up and tests: compiled graphs are guarded on it
            while not self._stop.is_set():
                self._wake.wait(0.05)
                self._wake.clear()
                while not self._stop.is_set() and self.step():
                    pass                      # keep going while hops are ready

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------- the vectorised hop


def _last_exc() -> BaseException:
    import sys
    return sys.exc_info()[1]
