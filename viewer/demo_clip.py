"""A short built-in motion clip of the stand-in head: neutral -> smile -> open mouth -> blink -> nod -> brows.

Used by ``mm2face-view --demo`` so the viewer (and the README's main command) has something to show
before the live engine exists. Pure numpy, deterministic.
"""
from __future__ import annotations

import numpy as np

from mm2face.engine.frame import FPS, HEAD, JAW
from mm2face.engine.units import unit


def _bump(t: np.ndarray, start: float, end: float, ramp: float = 0.2) -> np.ndarray:
    """0 outside [start, end], 1 inside, with smooth (cosine) ramps of ``ramp`` seconds at both ends."""
    up = np.clip((t - start) / ramp, 0, 1)
    down = np.clip((end - t) / ramp, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(up, down))


def demo_motion(seconds: float = 4.0, fps: int = FPS) -> np.ndarray:
    """The demo clip: ``(round(seconds * fps), 56)`` float32, stand-in unit space.

    The six phases share the clip's length equally: neutral, smile, open mouth (jaw + lips part while
    still smiling a little), blink (both eyes, twice), nod (head pitch), brows raised then lowered.
    """
    T = max(1, int(round(seconds * fps)))
    t = np.arange(T) / fps
    seg = seconds / 6.0
    m = np.zeros((T, 56), np.float32)
    s = lambda k: (k * seg, (k + 1) * seg)       # phase k's time span
    r = min(0.25, seg / 3)

    smile = _bump(t, s(1)[0], s(2)[1] - 0.3 * seg, r)
    for name in ("lip_corner_puller_left", "lip_corner_puller_right"):
        m[:, unit(name)] = 1.0 * smile
    m[:, unit("cheek_raiser")] = 0.6 * smile
    talk = _bump(t, *s(2), r)
    m[:, JAW.start] = 0.24 * talk * (0.75 + 0.25 * np.sin(2 * np.pi * 2.5 * t))   # jaw pitch (rad), opening
    m[:, unit("lips_part")] = 0.8 * talk
    m[:, unit("upper_lip_raiser")] = 0.3 * talk
    a, b = s(3)
    blink = _bump(t, a + 0.1 * seg, a + 0.4 * seg, 0.08) + _bump(t, a + 0.6 * seg, a + 0.9 * seg, 0.08)
    m[:, unit("blink_left")] = blink
    m[:, unit("blink_right")] = blink
    a, b = s(4)
    nod = _bump(t, a, b, r) * np.sin(2 * np.pi * (t - a) / seg * 1.5)
    m[:, HEAD.start] = 0.18 * nod                                                   # head pitch (rad)
    m[:, HEAD.start + 1] = 0.06 * _bump(t, a, b, r) * np.sin(np.pi * (t - a) / seg)  # a little turn
    a, b = s(5)
    up = _bump(t, a, a + 0.5 * seg, r * 0.7)
    down = _bump(t, a + 0.5 * seg, b, r * 0.7)
    m[:, unit("inner_brow_raiser")] = up
    m[:, unit("outer_brow_raiser_left")] = up
    m[:, unit("outer_brow_raiser_right")] = up
    m[:, unit("upper_lid_raiser")] = 0.5 * up
    m[:, unit("brow_lowerer")] = down
    m[:, unit("lid_tightener")] = 0.4 * down
    return m
