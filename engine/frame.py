"""The MMHead motion frame: 56 numbers per frame at 25 fps.

Layout (MMHead order, all pose values axis-angle in radians):

    [0:50]  FLAME expression coefficients (unitless blendshape weights)
    [50:53] head (FLAME neck joint) rotation, axis-angle rad
    [53:56] jaw rotation, axis-angle rad

A clip is an array ``motion: (T, 56) float32``; frame ``t`` shows time ``t / FPS`` seconds.
MMHead's per-clip pickles store ``expcodes (T, 50)`` and ``posecodes (T, 6)`` (head 0:3, jaw 3:6);
:func:`from_mmhead` / :func:`to_mmhead` convert.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25                       # motion frames per second
SAMPLE_RATE = 16_000           # audio samples per second (Hz)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS   # 640 audio samples per motion frame
N_EXP = 50
FRAME_DIM = 56
EXP = slice(0, 50)
HEAD = slice(50, 53)
JAW = slice(53, 56)

# Plausibility limits. Values beyond these are not human motion but a bug or a bad fit.
MAX_EXP_ABS = 10.0             # |expression coefficient|, unitless (FLAME fits stay within about ±4)
MAX_HEAD_RAD = np.pi / 2       # |head rotation| per axis, rad (90 degrees)
MAX_JAW_RAD = 0.8              # |jaw rotation| per axis, rad (about 46 degrees)


class MotionError(ValueError):
    """A motion array is malformed: wrong shape, non-finite, or implausible values."""


def validate_motion(motion, *, name: str = "motion", check_ranges: bool = True) -> np.ndarray:
    """Return ``motion`` as a ``(T, 56) float32`` array or raise :class:`MotionError`.

    Accepts a single frame ``(56,)`` too (returned as ``(1, 56)``).
    """
    arr = np.asarray(motion, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != FRAME_DIM:
        raise MotionError(
            f"{name}: expected shape (T, {FRAME_DIM}) = 50 expression + 3 head pose + 3 jaw pose, "
            f"got {tuple(np.shape(motion))}")
    bad = ~np.isfinite(arr)
    if bad.any():
        t, d = np.argwhere(bad)[0]
        raise MotionError(f"{name}: non-finite value {arr[t, d]} at frame {t}, dim {d} ({dim_name(d)})")
    if check_ranges and len(arr):
        for sl, lim, what in ((EXP, MAX_EXP_ABS, "expression"), (HEAD, MAX_HEAD_RAD, "head pose (rad)"),
                              (JAW, MAX_JAW_RAD, "jaw pose (rad)")):
            part = np.abs(arr[:, sl])
            if part.max() > lim:
                t, d = np.unravel_index(int(part.argmax()), part.shape)
                raise MotionError(
                    f"{name}: implausible {what} {arr[t, sl.start + d]:.3f} at frame {t}, dim {sl.start + d} "
                    f"({dim_name(sl.start + d)}); the limit is ±{lim:.3f}. Is the layout 50 exp + 3 head + 3 jaw?")
    return arr


def dim_name(d: int) -> str:
    """Human-readable name of frame dimension ``d`` (0..55)."""
    if d < 50:
        return f"exp{d}"
    return ("head_rx", "head_ry", "head_rz", "jaw_rx", "jaw_ry", "jaw_rz")[d - 50]


def from_mmhead(expcodes, posecodes) -> np.ndarray:
    """MMHead pickle arrays ``expcodes (T, 50)``, ``posecodes (T, 6)`` -> ``(T, 56)`` frames."""
    exp = np.asarray(expcodes, dtype=np.float32)
    pose = np.asarray(posecodes, dtype=np.float32)
    if exp.ndim != 2 or exp.shape[1] < N_EXP:
        raise MotionError(f"expcodes: expected (T, 50), got {exp.shape}")
    if pose.ndim != 2 or pose.shape[1] != 6:
        raise MotionError(f"posecodes: expected (T, 6) = head 0:3 + jaw 3:6, got {pose.shape}")
    if len(exp) != len(pose):
        raise MotionError(f"expcodes has {len(exp)} frames but posecodes has {len(pose)}")
    return np.concatenate([exp[:, :N_EXP], pose], axis=1)


def to_mmhead(motion) -> dict:
    """``(T, 56)`` frames -> ``{"expcodes": (T, 50), "posecodes": (T, 6)}`` as MMHead stores them."""
    m = validate_motion(motion, check_ranges=False)
    return {"expcodes": m[:, EXP].copy(), "posecodes": m[:, 50:56].copy()}


@dataclass
class MotionClip:
    """A motion clip with its metadata, as written to ``.npz`` by the tools.

    motion: (T, 56) float32 at ``fps``; head: which parameter space ("standin" or "flame");
    style: the caption that drove it (may be empty).
    """
    motion: np.ndarray
    fps: int = FPS
    head: str = "standin"
    style: str = ""

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, motion=validate_motion(self.motion, check_ranges=False),
                            fps=np.int32(self.fps), head=np.str_(self.head), style=np.str_(self.style))
        return path

    @classmethod
    def load(cls, path) -> "MotionClip":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"motion file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            if "motion" not in z:
                raise MotionError(f"{path}: no 'motion' array (keys: {list(z.keys())})")
            motion = validate_motion(z["motion"], name=str(path), check_ranges=False)
            fps = int(z["fps"]) if "fps" in z else FPS
            head = str(z["head"]) if "head" in z else "standin"
            style = str(z["style"]) if "style" in z else ""
        return cls(motion=motion, fps=fps, head=head, style=style)
