"""Cheap idle sessions: record a stretch of a session's idle motion once, then play it back.

A client session that receives no audio and keeps its style produces text-only idle motion
(breathing, blinks, the style's expression). Stepping the model for it every hop costs as much as a
speaking session; :class:`IdleLoop` instead records ``loop_frames`` of that motion (after
``settle_frames``, so the mouth has closed) and then plays it back and forth (ping-pong: no jump at
the turns) while the idle stretch lasts, at no model cost. When audio resumes (or the style changes)
the model takes over where it stopped, cross-faded from the last played frame over ``blend_frames``.

Sans-I/O: frames are ``(56,)`` float32 arrays; the server (:class:`mm2face.realtime.server.LiveSession`)
feeds it and numbers the frames.
"""
from __future__ import annotations

import numpy as np

IDLE_SETTLE_FRAMES = 25           # idle frames skipped before recording (1 s: the mouth has closed)
IDLE_LOOP_FRAMES = 100            # frames recorded and then played back and forth (4 s)
RESUME_BLEND_FRAMES = 4           # model frames cross-faded from the last played frame when it takes over


class IdleLoop:
    def __init__(self, settle_frames: int = IDLE_SETTLE_FRAMES, loop_frames: int = IDLE_LOOP_FRAMES,
                 blend_frames: int = RESUME_BLEND_FRAMES):
        if loop_frames < 2:
            raise ValueError("loop_frames must be at least 2")
        self.settle, self.n, self.blend_n = settle_frames, loop_frames, blend_frames
        self.reset()
        self._from: np.ndarray | None = None       # cross-fade origin after playback stopped
        self._blend_k = 0

    def reset(self) -> None:
        """Forget the recording (a new idle stretch, a style change)."""
        self._seen = 0
        self._rec: list[np.ndarray] = []
        self.loop: np.ndarray | None = None        # (loop_frames, 56) once recorded
        self._pos = 0

    @property
    def playing(self) -> bool:
        return self.loop is not None

    def record(self, params: np.ndarray) -> None:
        """One model-made idle frame ``(56,)``; recording completes after settle + loop frames."""
        if self.loop is not None:
            return
        self._seen += 1
        if self._seen <= self.settle:
            return
        self._rec.append(np.asarray(params, np.float32).copy())
        if len(self._rec) >= self.n:
            self.loop, self._rec = np.stack(self._rec), []
            self._pos = 0

    def play(self, n: int) -> np.ndarray:
        """The next ``n`` played frames ``(n, 56)``: forward from the recording's end backwards, then
        forwards again, so consecutive frames are always neighbours in the recording."""
        period = 2 * self.n - 2
        idx = []
        for _ in range(n):
            p = self._pos % period
            # start right after the recording's last frame: walk back from n - 2
            i = self.n - 2 - p if p <= self.n - 2 else p - (self.n - 2)
            idx.append(i)
            self._pos += 1
        return self.loop[np.asarray(idx, int)]

    def stop(self, last_played: np.ndarray | None) -> None:
        """Playback ends (audio resumed / style changed): the next model frames fade in from ``last_played``."""
        self._from = None if last_played is None else np.asarray(last_played, np.float32).copy()
        self._blend_k = 0
        self.reset()

    def blend(self, params: np.ndarray) -> np.ndarray:
        """A model frame after playback stopped, cross-faded from the last played frame."""
        if self._from is None:
            return params
        self._blend_k += 1
        w = self._blend_k / (self.blend_n + 1)
        out = ((1.0 - w) * self._from + w * np.asarray(params, np.float32)).astype(np.float32)
        if self._blend_k >= self.blend_n:
            self._from = None
        return out
