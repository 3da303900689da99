"""Articulation on the head's mesh: lip closure on p/b/m, lip-teeth contact on f/v, vowel opening, rest in pauses.

Viewers judge lip sync first by two things: the lips meet on p, b and m, and the mouth is still when
nobody speaks. Vertex errors against a ground truth cannot see either when the truth itself mumbles, so
these measures read the mesh and the clip's phone timings only (the synthetic corpus keeps its phones in
``synth_meta``):

* **midline lip gap** ``(T,)`` mm: the vertical distance between the upper and the lower lip at the
  midline (the head's ``lip_midline`` mask: the two seam copies at x = 0), minus nothing; the head's
  *closed-lip gap* is the same at the rest pose (0 on the stand-in head).
* **bilabial closure rate**: share of p/b/m phones whose smallest gap over the frames they overlap is
  within :data:`LIP_BAND_MM` of the closed-lip gap.
* **labiodental contact rate**: share of f/v phones whose lower lip (midline) comes within
  :data:`LABIODENTAL_BAND_MM` of the upper teeth's biting edge (``upper_incisor_edge`` mask) over the
  frames they overlap; only on heads that have teeth (the stand-in; not FLAME).
* **vowel / bilabial opening ratio**: the mean gap over vowel phones' frames divided by the mean gap
  over p/b/m phones' frames (each floored at :data:`OPENING_FLOOR_MM`, so closed lips give a finite ratio).
* **rest in pauses**: share of frames inside pauses of :data:`PAUSE_MIN_S` or more (less
  :data:`PAUSE_EDGE_FRAMES` at each end) where the mouth is at rest (jaw and midline gap within the rest
  band of :func:`metrics.mouth_closed`), and **flicker** there: the mean movement of the two midline lip
  vertices from frame to frame (mm per frame).

:func:`noise_bed_audio` makes the listening condition of the rest checks: the clip scaled to a peak
level (:data:`GAINS_DBFS`), over a low-frequency noise bed (room rumble) at a fixed RMS level.

The synthetic corpus uses :func:`solve_unit` to make its truth articulate (``training/synth_face.py``).
"""
from __future__ import annotations

import numpy as np

from mm2face.engine.frame import FPS
from mm2face.engine.lips import (articulation_head, closed_gap_mm, incisor_edge_y_mm,  # noqa: F401 (re-exported)
                                lip_geometry, solve_unit)

from . import metrics as M

LIP_BAND_MM = M.LIP_GAP_CLOSED_MM   # a midline gap this close to the closed-lip gap counts as closed (2.0 mm)
LABIODENTAL_BAND_MM = 3.0           # lower lip this close to the upper teeth's edge counts as contact
OPENING_FLOOR_MM = 1.0              # openings are floored here before the vowel / bilabial ratio
PAUSE_MIN_S = 0.2                   # pauses (non-speech runs) at least this long are scored for rest
PAUSE_EDGE_FRAMES = 2               # frames left out at each end of a pause (the mouth is closing/opening)
BILABIALS = ("bilabial",)           # viseme classes (training.synth_face.phone_class) scored for closure
LABIODENTALS = ("labiodental",)
VOWELS = ("open", "mid", "mid_round", "close", "close_round")
NOISE_BED_DBFS = -45.0              # RMS of the low-frequency noise bed (dB re full scale)
NOISE_BED_KIND = "lowfreq"          # training.augment's pink noise between 20 and 200 Hz (rumble, traffic, HVAC)
GAINS_DBFS = (-30.0, -20.0, -10.0, 0.0)   # input peak levels the rest checks are run at
SR = 16000

# ----------------------------------------------------------------------------- phones -> frames

def phone_frames(t0_s: float, t1_s: float, n_frames: int) -> np.ndarray:
    """Indices of the frames (25 fps; frame k spans [k/25, (k+1)/25) s) that overlap the phone [t0_s, t1_s)."""
    lo = int(np.floor(t0_s * FPS))
    hi = int(np.ceil(t1_s * FPS))
    return np.arange(max(lo, 0), min(max(hi, lo + 1), n_frames))


def core_frames(t0_s: float, t1_s: float, n_frames: int) -> np.ndarray:
    """The frames a phone owns: those whose centre lies inside it, or (a phone shorter than a frame) the one it
    overlaps most."""
    tc = (np.arange(n_frames) + 0.5) / FPS
    inside = np.flatnonzero((tc >= t0_s) & (tc < t1_s))
    if len(inside):
        return inside
    k = int(np.clip(np.floor(0.5 * (t0_s + t1_s) * FPS), 0, n_frames - 1))
    return np.array([k]) if n_frames else np.zeros(0, np.int64)


def classed_phones(phones) -> list[tuple[str, float, float]]:
    """``[(viseme class, t0_s, t1_s)]`` of a clip's phones (``synth_meta`` rows ``[ipa, t0, t1, stressed]`` or
    :class:`training.synth_speech.Phone`); unknown symbols and boundaries are dropped."""
    from .synth_face import phone_class
    out = []
    for p in phones or []:
        ph, t0, t1 = (p.ph, p.t0_s, p.t1_s) if hasattr(p, "ph") else (p[0], float(p[1]), float(p[2]))
        c = phone_class(ph)
        if c is not None and t1 > t0:
            out.append((c, float(t0), float(t1)))
    return out


def rest_frames(speech, min_s: float = PAUSE_MIN_S, edge: int = PAUSE_EDGE_FRAMES) -> np.ndarray:
    """Boolean ``(T,)``: frames inside pauses of at least ``min_s`` (per-frame ``speech`` activity), less
    ``edge`` frames at each end."""
    return M.pause_frames(speech, min_frames=int(round(min_s * FPS)), edge=edge)


# ----------------------------------------------------------------------------- per clip and aggregate

def clip_articulation(head, motion: np.ndarray, phones=None, speech=None, geometry: dict | None = None) -> dict:
    """Articulation counts for one clip (``motion (T, 56)``): sums that :func:`aggregate_articulation` pools.

    ``phones``: the clip's phone timings (see :func:`classed_phones`); ``speech``: ``(T,)`` per-frame speech
    activity for the rest checks. Either may be None (those rows are skipped)."""
    motion = np.asarray(motion, np.float32)
    T = len(motion)
    g = geometry or lip_geometry(head, motion)
    gap = g["gap_mm"] - closed_gap_mm(head)
    out: dict = {"frames": T}
    if phones is not None:
        n_bil = n_closed = n_lab = n_contact = 0
        vow, bil, min_gaps = [], [], []
        for c, t0, t1 in classed_phones(phones):
            fr = phone_frames(t0, t1, T)
            if not len(fr):
                continue
            if c in BILABIALS:
                n_bil += 1
                mg = float(gap[fr].min())
                min_gaps.append(mg)
                n_closed += mg <= LIP_BAND_MM
                bil.append(float(gap[fr].mean()))
            elif c in VOWELS:
                vow.append(float(gap[fr].mean()))
            elif c in LABIODENTALS and "teeth_mm" in g:
                n_lab += 1
                n_contact += float(g["teeth_mm"][fr].min()) <= LABIODENTAL_BAND_MM
        out.update({"bilabials": n_bil, "bilabials_closed": int(n_closed), "bilabial_min_gap_mm": min_gaps,
                    "bilabial_open_sum_mm": float(sum(bil)), "vowels": len(vow), "vowel_open_sum_mm": float(sum(vow))})
        if "teeth_mm" in g:
            out.update({"labiodentals": n_lab, "labiodentals_contact": int(n_contact)})
    if speech is not None:
        sp = np.asarray(speech).astype(bool).ravel()[:T]
        sp = np.concatenate([sp, np.ones(T - len(sp), bool)])
        rest = rest_frames(sp)
        closed = M.mouth_closed(motion, g["gap_mm"], closed_gap_mm(head))
        both = rest[1:] & rest[:-1]
        step = 0.5 * (np.linalg.norm(np.diff(g["upper_mm"], axis=0), axis=1)
                      + np.linalg.norm(np.diff(g["lower_mm"], axis=0), axis=1))       # (T-1,) mm per frame
        out.update({"rest_frames": int(rest.sum()), "rest_closed": int(closed[rest].sum()),
                    "rest_steps": int(both.sum()), "rest_flicker_sum_mm": float(step[both].sum())})
    return out


def aggregate_articulation(rows: list[dict]) -> dict:
    """Pooled rates over clips (each phone and pause frame counts once): ``bilabial_closure_rate``,
    ``labiodental_contact_rate``, ``vowel_bilabial_ratio`` (with ``vowel_open_mm`` and ``bilabial_open_mm``),
    ``bilabial_min_gap_mm_median``, ``rest_rate`` and ``flicker_mm_per_frame``; counts alongside."""
    s = lambda k: sum(r.get(k, 0) for r in rows)
    out: dict = {}
    if s("bilabials"):
        out["bilabials"] = s("bilabials")
        out["bilabial_closure_rate"] = s("bilabials_closed") / s("bilabials")
        out["bilabial_min_gap_mm_median"] = float(np.median([x for r in rows for x in r.get("bilabial_min_gap_mm", [])]))
        out["bilabial_open_mm"] = s("bilabial_open_sum_mm") / s("bilabials")
    if s("vowels"):
        out["vowels"] = s("vowels")
        out["vowel_open_mm"] = s("vowel_open_sum_mm") / s("vowels")
    if "vowel_open_mm" in out and "bilabial_open_mm" in out:
        out["vowel_bilabial_ratio"] = (max(out["vowel_open_mm"], OPENING_FLOOR_MM)
                                       / max(out["bilabial_open_mm"], OPENING_FLOOR_MM))
    if s("labiodentals"):
        out["labiodentals"] = s("labiodentals")
        out["labiodental_contact_rate"] = s("labiodentals_contact") / s("labiodentals")
    if s("rest_frames"):
        out["rest_frames"] = s("rest_frames")
        out["rest_rate"] = s("rest_closed") / s("rest_frames")
    if s("rest_steps"):
        out["flicker_mm_per_frame"] = s("rest_flicker_sum_mm") / s("rest_steps")
    return out


# ----------------------------------------------------------------------------- listening condition

def noise_bed_audio(audio_16k: np.ndarray, gain_dbfs: float, rng: np.random.Generator,
                    bed_dbfs: float = NOISE_BED_DBFS) -> np.ndarray:
    """``audio_16k (samples,)`` scaled to a peak of ``gain_dbfs`` over the low-frequency noise bed of
    :func:`training.augment.noise_bed` at ``bed_dbfs`` RMS (the bed's level is fixed: a quiet talker is
    closer to the room's noise). Clipped to [-1, 1]."""
    from .augment import noise_bed, set_peak
    a = np.asarray(audio_16k, np.float32)
    y = set_peak(a, gain_dbfs) + noise_bed(NOISE_BED_KIND, len(a), bed_dbfs, rng)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


__all__ = ["LIP_BAND_MM", "LABIODENTAL_BAND_MM", "lip_geometry", "closed_gap_mm", "solve_unit", "phone_frames",
           "core_frames", "classed_phones", "rest_frames", "clip_articulation", "aggregate_articulation",
           "noise_bed_audio", "incisor_edge_y_mm", "articulation_head"]
