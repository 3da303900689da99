"""Where the viewer's frames come from, kept apart from how they are drawn.

A *frame source* is anything with

* ``latest() -> (frame56 (56,) float32, t_audio_s: float, style: str) | None`` — the newest frame to
  show now (``None`` while nothing has arrived yet), called once per displayed frame, and
* ``closed: bool`` — True once the source will never produce another frame.

:class:`ClipSource` plays a motion clip in real time. The live stream's ``WebSocketSource``
(:mod:`mm2face.realtime.ws_source`) implements the same protocol.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

from mm2face.engine.frame import FPS, validate_motion

Latest = Optional[tuple]    # (frame56, t_audio_s, style) or None


@runtime_checkable
class FrameSource(Protocol):
    closed: bool

    def latest(self) -> Latest:
        ...


class ClipSource:
    """Plays ``motion (T, 56)`` at ``fps`` against a wall clock (``clock`` is injectable for tests).

    The clock starts on the first :meth:`latest` call. ``loop=True`` repeats the clip forever.
    """

    def __init__(self, motion, fps: int = FPS, style: str = "", loop: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.motion = validate_motion(motion, check_ranges=False)
        if len(self.motion) == 0:
            raise ValueError("ClipSource needs at least one frame")
        self.fps, self.style, self.loop, self.clock = int(fps), style, loop, clock
        self._t0: float | None = None
        self.closed = False

    @property
    def duration_s(self) -> float:
        return len(self.motion) / self.fps

    def latest(self) -> Latest:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        t = now - self._t0
        i = int(t * self.fps)
        if i >= len(self.motion):
            if not self.loop:
                self.closed = True
                i = len(self.motion) - 1
            else:
                i %= len(self.motion)
                t = i / self.fps
        return self.motion[i], float(t), self.style


class StaticSource:
    """Shows one frame forever (handy for `mm2face-view --frame N` in a window)."""

    def __init__(self, frame56, style: str = ""):
        self.frame = np.asarray(frame56, np.float32).reshape(56)
        self.style = style
        self.closed = False

    def latest(self) -> Latest:
        return self.frame, 0.0, self.style
