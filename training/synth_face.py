"""Procedural face motion for the synthetic corpus, written with the stand-in head's named units.

Layers (all at 25 fps, frames ``(T, 56)``; see :mod:`mm2face.engine.frame`):

* **mouth** from phone timings: each phone class has targets for the jaw (pose x rotation, rad,
  positive opens) and a few mouth units, blended with Cohen-Massaro style dominance functions
  ``D_i(t) = alpha_i * exp(-theta * |t - c_i|)`` (flat inside the phone), i.e.
  ``value(t) = sum_i D_i(t) * target_i / sum_i D_i(t)``. Silence has a closed-mouth target, so pauses
  close the mouth; rounded vowels pucker/funnel; spread vowels stretch; the jaw height follows the
  vowel class (open > mid > close).
* **articulation** (:func:`articulate`), after everything else: the lips *meet* over every p/b/m's
  closure and the lower lip rests on the upper teeth over every f/v, whatever jaw the blend and the
  emotion left there: the stand-in head's ``mouth_close`` (and ``lower_lip_roll``) coefficient is solved
  per frame on the mesh (a constraint, not a target averaged with the neighbours), and released when the
  phone ends.
* **emotion**: unit recipes per emotion, holding or shifting within the clip with smooth transitions.
* **head pose**: behaviours (nod, shake, turn, tilt, look up/down, still) as smooth curves on
  (rx, ry, rz) of the neck, plus a slow sway while talking. Signs follow the MMHead table:
  rx>0 head down, ry>0 turns left, rz>0 tilts right.
* **blinks** every 2-6 s (~0.2 s), **brow raises** on some stressed syllables, small smooth noise.

Subset II motions (no audio) come from :data:`T2M_ACTIONS`, short expression recipes placed on a
timeline by :func:`t2m_motion`.
"""
from __future__ import annotations

import numpy as np

from mm2face.engine.closure import LIP_ON_TEETH_MM  # the f/v contact the engine's stage 4 makes too
from mm2face.engine.frame import FPS, FRAME_DIM
from mm2face.engine.units import unit

from .synth_speech import BOUNDARY, SIL, Phone

HEAD_RX, HEAD_RY, HEAD_RZ, JAW_RX = 50, 51, 52, 53
EMOTIONS = ["neutral", "happy", "sad", "angry", "surprised", "disgusted", "fearful"]

# ----------------------------------------------------------------------------------- visemes
# Mouth channels driven by the phones: jaw opening (rad) and some mouth units (0..1).
MOUTH_UNITS = ["lips_part", "lip_pressor", "lip_pucker", "lip_funneler", "lip_stretcher",
               "lip_suck", "upper_lip_raiser", "lower_lip_depressor"]
CHANNELS = ["jaw"] + MOUTH_UNITS

# class -> (alpha: dominance, jaw alpha multiplier, targets {channel: value}); unlisted channels are 0
VISEMES: dict[str, tuple[float, float, dict]] = {
    "open":       (1.0, 1.0, {"jaw": 0.25, "lips_part": 0.8, "lower_lip_depressor": 0.25}),
    "mid":        (1.0, 1.0, {"jaw": 0.16, "lips_part": 0.6, "lower_lip_depressor": 0.1}),
    "mid_round":  (1.0, 1.0, {"jaw": 0.17, "lips_part": 0.55, "lip_pucker": 0.35, "lip_funneler": 0.45}),
    "close":      (1.0, 1.0, {"jaw": 0.08, "lips_part": 0.5, "lip_stretcher": 0.45}),
    "close_round": (1.0, 1.0, {"jaw": 0.06, "lips_part": 0.3, "lip_pucker": 0.6, "lip_funneler": 0.5}),
    # p/b/m and f/v only pull the jaw a little here: their lip contact is a constraint applied after the
    # blend (articulate), so open vowels around them keep their height
    "bilabial":   (1.0, 0.6, {"jaw": 0.03, "lip_pressor": 0.6}),
    "labiodental": (1.2, 0.6, {"jaw": 0.03, "upper_lip_raiser": 0.2}),
    "dental":     (0.8, 0.6, {"jaw": 0.05, "lips_part": 0.4}),
    "alveolar":   (0.5, 0.4, {"jaw": 0.04, "lips_part": 0.3}),
    "postalveolar": (1.0, 0.5, {"jaw": 0.04, "lips_part": 0.3, "lip_funneler": 0.45, "lip_pucker": 0.2}),
    "r":          (0.8, 0.5, {"jaw": 0.06, "lips_part": 0.3, "lip_pucker": 0.3}),
    "w":          (1.8, 1.0, {"jaw": 0.03, "lips_part": 0.1, "lip_pucker": 0.7, "lip_funneler": 0.3}),
    "j":          (0.6, 0.5, {"jaw": 0.05, "lips_part": 0.35, "lip_stretcher": 0.3}),
    "velar":      (0.5, 0.4, {"jaw": 0.07, "lips_part": 0.35}),
    "h":          (0.3, 0.3, {"jaw": 0.10, "lips_part": 0.4}),
    "silence":    (1.2, 1.2, {"jaw": 0.0, "lip_pressor": 0.1}),
}
_CONS = {"p": "bilabial", "b": "bilabial", "m": "bilabial", "f": "labiodental", "v": "labiodental",
         "θ": "dental", "ð": "dental", "t": "alveolar", "d": "alveolar", "n": "alveolar", "s": "alveolar",
         "z": "alveolar", "l": "alveolar", "ɾ": "alveolar", "ɫ": "alveolar", "ʃ": "postalveolar",
         "ʒ": "postalveolar", "ɹ": "r", "r": "r", "ɚ": "mid", "w": "w", "ʍ": "w", "j": "j",
         "k": "velar", "ɡ": "velar", "g": "velar", "ŋ": "velar", "x": "velar", "ʔ": "velar", "h": "h"}
_VOW = {"a": "open", "ɑ": "open", "æ": "open", "ɒ": "open", "ɐ": "mid", "ʌ": "open", "ɛ": "mid", "e": "mid",
        "ə": "mid", "ɜ": "mid", "ᵻ": "close", "i": "close", "ɪ": "close", "y": "close_round",
        "u": "close_round", "ʊ": "close_round", "ʉ": "close_round", "o": "mid_round", "ɔ": "mid_round"}


def phone_class(ph: str) -> str | None:
    """Viseme class of an IPA phone ('silence' for SIL, None for a word boundary or unknown symbol)."""
    if ph == SIL:
        return "silence"
    if ph == BOUNDARY or not ph:
        return None
    s = ph.replace("ː", "").replace("ˈ", "").replace("ˌ", "")
    if s.startswith(("tʃ", "dʒ")):
        return "postalveolar"
    c = s[0] if s else ""
    return _VOW.get(c) or _CONS.get(c)


def mouth_curves(phones: list[Phone], n_frames: int, rng: np.random.Generator,
                 articulation: float = 1.0) -> dict[str, np.ndarray]:
    """Per-channel curves ``(n_frames,)`` at 25 fps from phone timings (computed at 100 Hz, averaged to 25).

    ``articulation`` scales the jaw and lip amplitudes (per speaker, ~0.8-1.25).
    """
    segs = [(phone_class(p.ph), p) for p in phones]
    segs = [(c, p) for c, p in segs if c is not None and p.t1_s > p.t0_s]
    sub = 4
    t = (np.arange(n_frames * sub) + 0.5) / (FPS * sub)                  # 100 Hz sample times, s
    if not segs:
        return {ch: np.zeros(n_frames, np.float32) for ch in CHANNELS}
    t0 = np.array([p.t0_s for _, p in segs])[:, None]
    t1 = np.array([p.t1_s for _, p in segs])[:, None]
    dist = np.maximum(np.maximum(t0 - t, t - t1), 0.0)                   # 0 inside the phone
    theta = 14.0                                                          # 1/s: how far influence reaches
    base = np.exp(-theta * dist)
    alpha = np.array([VISEMES[c][0] for c, _ in segs])[:, None]
    jaw_alpha = alpha * np.array([VISEMES[c][1] for c, _ in segs])[:, None]
    stress = np.array([1.15 if p.stressed else 1.0 for _, p in segs])[:, None]
    out = {}
    for ch in CHANNELS:
        tgt = np.array([VISEMES[c][2].get(ch, 0.0) for c, _ in segs])[:, None]
        if ch == "jaw":
            tgt = tgt * stress * rng.uniform(0.85, 1.15, size=tgt.shape)
            d = jaw_alpha * base
        else:
            d = alpha * base
        v = (d * tgt).sum(0) / (d.sum(0) + 1e-9)
        out[ch] = (v.reshape(n_frames, sub).mean(1) * articulation).astype(np.float32)
    return out


def speech_mask(phones: list[Phone], n_frames: int) -> np.ndarray:
    """(n_frames,) uint8: 1 where the frame centre lies inside a non-silence phone, else 0."""
    tc = (np.arange(n_frames) + 0.5) / FPS
    m = np.zeros(n_frames, np.uint8)
    for p in phones:
        if p.ph != SIL:
            m[(tc >= p.t0_s) & (tc < p.t1_s)] = 1
    return m


# ----------------------------------------------------------------------------------- emotions
EMOTION_UNITS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"lip_corner_puller_left": 0.8, "lip_corner_puller_right": 0.8, "cheek_raiser": 0.55,
              "lid_tightener": 0.15},
    "sad": {"inner_brow_raiser": 0.7, "lip_corner_depressor": 0.65, "brow_lowerer": 0.2, "chin_raiser": 0.25},
    "angry": {"brow_lowerer": 0.8, "lid_tightener": 0.6, "lip_tightener": 0.55, "nostril_dilator": 0.3},
    "surprised": {"inner_brow_raiser": 0.8, "outer_brow_raiser_left": 0.75, "outer_brow_raiser_right": 0.75,
                  "upper_lid_raiser": 0.7, "jaw": 0.08},
    "disgusted": {"nose_wrinkler": 0.75, "upper_lip_raiser": 0.6, "brow_lowerer": 0.3, "lip_corner_depressor": 0.2},
    "fearful": {"inner_brow_raiser": 0.7, "outer_brow_raiser_left": 0.4, "outer_brow_raiser_right": 0.4,
                "brow_lowerer": 0.35, "lip_stretcher": 0.55, "upper_lid_raiser": 0.45},
}


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def sample_emotion_segments(rng: np.random.Generator, dur_s: float) -> list[dict]:
    """1-3 emotion segments covering the clip: [{"emotion", "t0_s", "t1_s", "intensity"}]."""
    n = 1 if rng.random() < 0.6 or dur_s < 2.5 else (2 if rng.random() < 0.85 or dur_s < 5 else 3)
    cuts = np.sort(rng.uniform(0.25, 0.75, size=n - 1)) * dur_s if n > 1 else np.array([])
    bounds = [0.0, *cuts.tolist(), dur_s]
    segs, prev = [], None
    for i in range(n):
        choices = [e for e in EMOTIONS if e != prev]
        e = choices[int(rng.integers(len(choices)))]
        segs.append({"emotion": e, "t0_s": round(bounds[i], 3), "t1_s": round(bounds[i + 1], 3),
                     "intensity": round(float(rng.uniform(0.45, 1.0)), 3)})
        prev = e
    return segs


def emotion_curves(segs: list[dict], n_frames: int) -> dict[str, np.ndarray]:
    """Unit (and 'jaw') curves from emotion segments, with ~0.5 s smooth crossfades at the cuts."""
    tc = (np.arange(n_frames) + 0.5) / FPS
    out: dict[str, np.ndarray] = {}
    for i, s in enumerate(segs):
        ramp = 0.25
        w_in = smoothstep((tc - (s["t0_s"] - ramp)) / (2 * ramp)) if i > 0 else np.ones(n_frames)
        w_out = 1 - smoothstep((tc - (s["t1_s"] - ramp)) / (2 * ramp)) if i < len(segs) - 1 else np.ones(n_frames)
        w = w_in * w_out * s["intensity"]
        for name, v in EMOTION_UNITS[s["emotion"]].items():
            out[name] = out.get(name, np.zeros(n_frames)) + w * v
    return out


# ----------------------------------------------------------------------------------- head pose
HEAD_BEHAVIOURS = ["still", "nod", "shake", "turn_left", "turn_right", "tilt_left", "tilt_right",
                   "look_up", "look_down"]
# behaviour -> (axis index into frame, sign). rx>0 head down, ry>0 turns left, rz>0 tilts right.
_HEAD_AXIS = {"nod": (HEAD_RX, 1), "shake": (HEAD_RY, 1), "turn_left": (HEAD_RY, 1), "turn_right": (HEAD_RY, -1),
              "tilt_left": (HEAD_RZ, -1), "tilt_right": (HEAD_RZ, 1), "look_up": (HEAD_RX, -1),
              "look_down": (HEAD_RX, 1)}


def sample_head_events(rng: np.random.Generator, dur_s: float, allowed=None) -> list[dict]:
    """0-2 head behaviours in time order: [{"behaviour", "t0_s", "t1_s", "amplitude_rad", ...}]."""
    allowed = allowed or HEAD_BEHAVIOURS
    n = 1 if dur_s < 3.5 or rng.random() < 0.6 else 2
    events, t = [], float(rng.uniform(0.0, 0.3 * dur_s / n))
    slot = dur_s / n
    for i in range(n):
        b = allowed[int(rng.integers(len(allowed)))]
        if events and b == events[-1]["behaviour"]:
            continue
        length = float(min(rng.uniform(1.0, 3.0), (i + 1) * slot - t))
        if length < 0.6:
            break
        ev = {"behaviour": b, "t0_s": round(t, 3), "t1_s": round(t + length, 3)}
        if b in ("nod", "shake"):
            ev["amplitude_rad"] = round(float(rng.uniform(0.08, 0.18) if b == "nod" else rng.uniform(0.12, 0.28)), 3)
            ev["cycles"] = int(rng.integers(1, 4))
        elif b != "still":
            ev["amplitude_rad"] = round(float(rng.uniform(0.12, 0.35)), 3)
            ev["returns"] = bool(rng.random() < 0.4)
        if b != "still":
            ev["axis"] = ("rx", "ry", "rz")[_HEAD_AXIS[b][0] - HEAD_RX]
            ev["sign"] = _HEAD_AXIS[b][1]
        events.append(ev)
        t = t + length + float(rng.uniform(0.1, 0.6))
        if t > dur_s - 0.6:
            break
    return events or [{"behaviour": "still", "t0_s": 0.0, "t1_s": round(dur_s, 3)}]


# The longest a nod's down-and-back cycle / a shake's left-right cycle may take (s) so that it passes the
# evaluator's nod and shake rules (training/metrics.py: two swings in 1.6 s, three in 2.4 s): slower ones
# were drawn before 6 Dec 2026 (session 10), and captioned as nods and shakes the rules did not see.
GESTURE_CYCLE_MAX_S = {"nod": 0.8, "shake": 1.2}
GESTURE_STYLES = ("rule", "legacy")     # SynthConfig.gestures: brisk nods and shakes, or as before


def brisk_gestures(events: list[dict]) -> list[dict]:
    """``events`` with each nod and shake drawn in at most its cycles times :data:`GESTURE_CYCLE_MAX_S`
    from its start (the event ends earlier; nothing else moves, and no random draw changes)."""
    out = []
    for ev in events:
        if ev["behaviour"] in GESTURE_CYCLE_MAX_S and "cycles" in ev:
            cap = ev["t0_s"] + GESTURE_CYCLE_MAX_S[ev["behaviour"]] * ev["cycles"]
            ev = dict(ev, t1_s=round(min(ev["t1_s"], cap), 3))
        out.append(ev)
    return out


def head_curves(events: list[dict], n_frames: int) -> np.ndarray:
    """(n_frames, 3) head rotation (rx, ry, rz) rad from behaviour events; turns/tilts hold unless they return."""
    tc = (np.arange(n_frames) + 0.5) / FPS
    out = np.zeros((n_frames, 3))
    for ev in events:
        b = ev["behaviour"]
        if b == "still":
            continue
        ax, sign = _HEAD_AXIS[b]
        a, t0, t1 = ev["amplitude_rad"], ev["t0_s"], ev["t1_s"]
        u = (tc - t0) / max(t1 - t0, 1e-3)
        inside = (u >= 0) & (u <= 1)
        if b == "nod":          # down-and-back cycles
            curve = np.where(inside, np.sin(np.pi * ev["cycles"] * np.clip(u, 0, 1)) ** 2, 0.0) * a
        elif b == "shake":      # left-right oscillation that fades in and out
            env = np.sin(np.pi * np.clip(u, 0, 1))
            curve = np.where(inside, np.sin(2 * np.pi * ev["cycles"] * np.clip(u, 0, 1)) * env, 0.0) * a
        else:                   # move to a held offset (and back if it returns)
            rise = smoothstep(u / 0.35)
            fall = 1 - smoothstep((u - 0.7) / 0.3) if ev.get("returns") else 1.0
            curve = a * rise * fall
        out[:, ax - HEAD_RX] += sign * curve
    return out


def smooth_noise(rng: np.random.Generator, n: int, dims: int, scale: float, corr_frames: float = 8.0) -> np.ndarray:
    """(n, dims) low-pass noise with standard deviation about ``scale``."""
    k = np.exp(-0.5 * (np.arange(-3 * corr_frames, 3 * corr_frames + 1) / corr_frames) ** 2)
    k /= np.sqrt((k ** 2).sum())
    w = rng.standard_normal((n + len(k), dims))
    out = np.stack([np.convolve(w[:, d], k, mode="same")[len(k) // 2: len(k) // 2 + n] for d in range(dims)], 1)
    return out * scale


def blink_curve(rng: np.random.Generator, n_frames: int) -> tuple[np.ndarray, list[float]]:
    """(n_frames,) blink amount 0..1 with blinks every 2-6 s lasting ~0.2 s; and the blink times (s)."""
    tc = (np.arange(n_frames) + 0.5) / FPS
    out, times, t = np.zeros(n_frames), [], float(rng.uniform(0.3, 3.0))
    while t < n_frames / FPS - 0.1:
        d = float(rng.uniform(0.15, 0.25))
        out = np.maximum(out, np.clip(1 - np.abs(tc - t) / (d / 2), 0, 1) ** 0.7)
        times.append(round(t, 3))
        t += float(rng.uniform(2.0, 6.0))
    return out, times


def set_units(motion: np.ndarray, curves: dict[str, np.ndarray]) -> None:
    """Add named unit curves (and 'jaw') into ``motion`` (T, 56) in place."""
    for name, v in curves.items():
        if name == "jaw":
            motion[:, JAW_RX] += v
        else:
            motion[:, unit(name)] += v


def talking_motion(phones: list[Phone], n_frames: int, rng: np.random.Generator,
                   gestures: str = "rule") -> tuple[np.ndarray, dict]:
    """Full talking-head motion ``(n_frames, 56)`` and its ground-truth description (for synth_meta).
    ``gestures``: "rule" draws nods and shakes briskly (:func:`brisk_gestures`), "legacy" as before."""
    dur = n_frames / FPS
    m = np.zeros((n_frames, FRAME_DIM), np.float64)
    articulation = float(rng.uniform(0.8, 1.25))
    set_units(m, mouth_curves(phones, n_frames, rng, articulation))
    emo = sample_emotion_segments(rng, dur)
    set_units(m, emotion_curves(emo, n_frames))
    speech = speech_mask(phones, n_frames)
    # surprised keeps the jaw a bit open, but silence still closes it
    closed = _pause_weight(speech)
    m[:, JAW_RX] *= (1 - closed)
    head = sample_head_events(rng, dur)
    if gestures == "rule":
        head = brisk_gestures(head)
    sway = smooth_noise(rng, n_frames, 3, float(rng.uniform(0.005, 0.02)), corr_frames=12)
    sway *= (0.4 + 0.6 * speech[:, None])
    m[:, HEAD_RX:HEAD_RZ + 1] += head_curves(head, n_frames) + sway
    blink, blinks = blink_curve(rng, n_frames)
    m[:, unit("blink_left")] += blink
    m[:, unit("blink_right")] += blink
    # brow raise on some stressed syllables
    tc = (np.arange(n_frames) + 0.5) / FPS
    brow_times = []
    for p in phones:
        if p.stressed and rng.random() < 0.3:
            c = 0.5 * (p.t0_s + p.t1_s)
            bump = float(rng.uniform(0.15, 0.35)) * np.exp(-0.5 * ((tc - c) / 0.09) ** 2)
            for u in ("inner_brow_raiser", "outer_brow_raiser_left", "outer_brow_raiser_right"):
                m[:, unit(u)] += bump
            brow_times.append(round(c, 3))
    used = [unit(u) for u in ("inner_brow_raiser", "brow_lowerer", "cheek_raiser", "lip_corner_puller_left",
                              "lip_corner_puller_right", "lid_tightener", "upper_lid_raiser")]
    m[:, used] += smooth_noise(rng, n_frames, len(used), 0.02)
    m[:, :50] = np.clip(m[:, :50], 0.0, 1.5)
    m[:, JAW_RX] = np.clip(m[:, JAW_RX], 0.0, 0.45)
    articulate(m, phones, rest=closed)
    meta = {"emotion_segments": emo, "head_events": head, "blinks_s": blinks, "brow_raises_s": brow_times,
            "articulation": round(articulation, 3), "speech_mask": speech.tolist()}
    return m.astype(np.float32), meta


UNIT_MAX = 1.5                  # largest unit coefficient the corpus uses (see the clip above)
EDGE_WEIGHT = 0.5               # frames that a p/b/m or f/v only partly overlaps get this share of its contact


def contact_weights(phones, n_frames: int) -> dict[str, np.ndarray]:
    """Per-frame lip-contact weights ``{"bilabial": (T,), "labiodental": (T,)}`` in 0..1 of a clip's phones:
    1 on the frames a p/b/m (f/v) owns (:func:`articulation.core_frames`), :data:`EDGE_WEIGHT` on frames it
    only partly overlaps, 0 elsewhere; a frame shared by both counts as bilabial. The truth's constraint
    (:func:`articulate`) and the lip-contact stage's training targets (``training/train_closure.py``)."""
    from .articulation import classed_phones, core_frames, phone_frames
    w = {"bilabial": np.zeros(n_frames), "labiodental": np.zeros(n_frames)}
    for c, t0, t1 in classed_phones(phones):
        if c in w:
            fr = phone_frames(t0, t1, n_frames)
            w[c][fr] = np.maximum(w[c][fr], EDGE_WEIGHT)
            w[c][core_frames(t0, t1, n_frames)] = 1.0
    w["labiodental"][w["bilabial"] > 0] = 0.0
    return w


def articulate(m: np.ndarray, phones: list[Phone], rest: np.ndarray | None = None, head=None) -> dict[str, np.ndarray]:
    """Lip contact as a constraint on a finished talking motion ``m (T, 56)`` (changed in place).

    Over each p/b/m's own frames (:func:`articulation.core_frames`) ``mouth_close`` takes the value that
    closes the midline exactly on the stand-in mesh for that frame's jaw and other units; over each f/v's
    frames ``lower_lip_roll`` is 1 and ``mouth_close`` lifts the lower lip to just under the upper teeth.
    Frames the phone only partly overlaps get :data:`EDGE_WEIGHT` of it, all others none, so the
    closure is held through the phone and released when it ends. ``rest (T,)`` (0..1, e.g. the pause
    weight that closes the jaw) closes the lips the same way in pauses, whatever an emotion does to them
    (a sneer's raised upper lip meets a raised lower lip). Returns the per-frame weights
    ``{"bilabial": (T,), "labiodental": (T,)}``."""
    from mm2face.engine.flame import load_head

    from .articulation import closed_gap_mm, incisor_edge_y_mm, solve_unit
    head = head or load_head("standin")
    T = len(m)
    w = contact_weights(phones, T)
    close = unit("mouth_close")
    lab = w["labiodental"]
    if lab.any():
        m[:, unit("lower_lip_roll")] = np.maximum(m[:, unit("lower_lip_roll")], lab)
        lift = solve_unit(head, m, "mouth_close", np.full(T, incisor_edge_y_mm(head) - LIP_ON_TEETH_MM), "lower_y")
        m[:, close] = np.where(lab > 0, lab * np.clip(lift, 0.0, UNIT_MAX), m[:, close])
    bil = w["bilabial"] if rest is None else np.maximum(w["bilabial"], np.asarray(rest) * (lab == 0))
    if bil.any():
        shut = solve_unit(head, m, "mouth_close", np.full(T, closed_gap_mm(head)), "gap")
        m[:, close] = np.where(bil > 0, bil * np.clip(shut, 0.0, UNIT_MAX), m[:, close])
    return w


def _pause_weight(speech: np.ndarray) -> np.ndarray:
    """0 during speech, rising to 1 a few frames into a pause (used to close the jaw in pauses)."""
    k = np.ones(5) / 5
    near = np.convolve(speech.astype(float), k, mode="same")
    return 1 - np.clip(near * 2, 0, 1)


# ------------------------------------------------------------------------------- subset II (t2m)
def _bump(tc, t0, t1, rise=0.25):
    """Plateau 0->1->0 over [t0, t1] with smooth ramps of ``rise`` seconds."""
    return smoothstep((tc - t0) / rise) * (1 - smoothstep((tc - (t1 - rise)) / rise))


def _osc(tc, t0, t1, hz):
    return np.where((tc >= t0) & (tc <= t1), 0.5 - 0.5 * np.cos(2 * np.pi * hz * (tc - t0)), 0.0)


# action -> (emotion label or None, recipe(tc, t0, t1, rng) -> curves dict)
def _a(units: dict):
    return lambda tc, t0, t1, rng: {k: v * _bump(tc, t0, t1) * rng.uniform(0.7, 1.1) for k, v in units.items()}


def _laugh(tc, t0, t1, rng):
    b = _bump(tc, t0, t1)
    return {"lip_corner_puller_left": b, "lip_corner_puller_right": b, "cheek_raiser": 0.8 * b,
            "lid_tightener": 0.4 * b, "lips_part": 0.8 * b, "jaw": b * (0.12 + 0.08 * _osc(tc, t0, t1, 4.0))}


def _yawn(tc, t0, t1, rng):
    b = _bump(tc, t0, t1, rise=0.6)
    return {"jaw": 0.42 * b, "lips_part": b, "blink_left": 0.8 * b, "blink_right": 0.8 * b,
            "inner_brow_raiser": 0.5 * b, "lip_stretcher": 0.3 * b}


def _chew(tc, t0, t1, rng):
    o = _osc(tc, t0, t1, float(rng.uniform(1.3, 2.0))) * _bump(tc, t0, t1, 0.15)
    return {"jaw": 0.09 * o, "lip_pressor": 0.3 * _bump(tc, t0, t1), "mouth_left": 0.2 * o, "cheek_puff": 0.2 * o}


def _wink(tc, t0, t1, rng):
    side = "left" if rng.random() < 0.5 else "right"
    c = 0.5 * (t0 + t1)
    b = _bump(tc, c - 0.3, c + 0.3, rise=0.12)
    return {f"blink_{side}": b, f"lip_corner_puller_{side}": 0.5 * b, "cheek_raiser": 0.3 * b}


def _head(beh):
    return lambda tc, t0, t1, rng: {"_head": beh}


T2M_ACTIONS: dict[str, tuple[str | None, object]] = {
    "smile": ("happy", _a({"lip_corner_puller_left": 0.9, "lip_corner_puller_right": 0.9, "cheek_raiser": 0.5})),
    "frown": ("sad", _a({"brow_lowerer": 0.6, "lip_corner_depressor": 0.7, "inner_brow_raiser": 0.3})),
    "laugh": ("happy", _laugh),
    "yawn": (None, _yawn),
    "chew": (None, _chew),
    "pout": (None, _a({"lip_pucker": 0.8, "chin_raiser": 0.6, "lip_corner_depressor": 0.3})),
    "raise eyebrows": ("surprised", _a({"inner_brow_raiser": 0.9, "outer_brow_raiser_left": 0.9,
                                        "outer_brow_raiser_right": 0.9})),
    "nod": (None, _head("nod")),
    "shake head": (None, _head("shake")),
    "look around": (None, _head("look_around")),
    "wink": ("happy", _wink),
    "squint": (None, _a({"lid_tightener": 0.9, "cheek_raiser": 0.4, "brow_lowerer": 0.3})),
    "sneer": ("disgusted", _a({"upper_lip_raiser": 0.8, "nose_wrinkler": 0.6, "mouth_left": 0.3})),
    "look surprised": ("surprised", _a({"inner_brow_raiser": 0.9, "outer_brow_raiser_left": 0.8,
                                        "outer_brow_raiser_right": 0.8, "upper_lid_raiser": 0.8, "jaw": 0.2,
                                        "lips_part": 0.7})),
    "grimace": ("fearful", _a({"lip_stretcher": 0.9, "lid_tightener": 0.5, "brow_lowerer": 0.4,
                               "inner_brow_raiser": 0.4})),
    "puff cheeks": (None, _a({"cheek_puff": 0.9, "lip_pressor": 0.5})),
    "press lips": ("angry", _a({"lip_pressor": 0.9, "lip_tightener": 0.6, "brow_lowerer": 0.5})),
    "glare": ("angry", _a({"brow_lowerer": 0.9, "lid_tightener": 0.7, "upper_lid_raiser": 0.3})),
    "open mouth": (None, _a({"jaw": 0.3, "lips_part": 0.9})),
    "bite lip": (None, _a({"lip_suck": 0.8, "chin_raiser": 0.3})),
    "tilt head": (None, _head("tilt")),
    "look down": ("sad", _head("look_down")),
}


def t2m_motion(n_frames: int, rng: np.random.Generator, gestures: str = "rule") -> tuple[np.ndarray, dict]:
    """Expression-only motion ``(n_frames, 56)`` from 1-3 actions in sequence, with its description
    (``gestures``: see :func:`talking_motion`)."""
    dur = n_frames / FPS
    tc = (np.arange(n_frames) + 0.5) / FPS
    m = np.zeros((n_frames, FRAME_DIM))
    n = 1 if dur < 3 else int(rng.integers(1, 4))
    names = list(T2M_ACTIONS)
    slot = dur / n
    actions, head_events = [], []
    for i in range(n):
        a = names[int(rng.integers(len(names)))]
        t0 = i * slot + float(rng.uniform(0.05, 0.2)) * slot
        t1 = (i + 1) * slot - float(rng.uniform(0.0, 0.15)) * slot
        emo, recipe = T2M_ACTIONS[a]
        curves = recipe(tc, t0, t1, rng)
        if "_head" in curves:
            beh = curves.pop("_head")
            if beh == "look_around":
                half = 0.5 * (t0 + t1)
                evs = [{"behaviour": "turn_left", "t0_s": t0, "t1_s": half, "returns": True},
                       {"behaviour": "turn_right", "t0_s": half, "t1_s": t1, "returns": True}]
            elif beh == "tilt":
                evs = [{"behaviour": "tilt_left" if rng.random() < 0.5 else "tilt_right", "t0_s": t0, "t1_s": t1,
                        "returns": True}]
            else:
                evs = [{"behaviour": beh, "t0_s": t0, "t1_s": t1, "cycles": int(rng.integers(2, 4)),
                        "returns": True}]
            for ev in evs:
                ev["amplitude_rad"] = round(float(rng.uniform(0.12, 0.3)), 3)
                ev["axis"] = ("rx", "ry", "rz")[_HEAD_AXIS[ev["behaviour"]][0] - HEAD_RX]
                ev["sign"] = _HEAD_AXIS[ev["behaviour"]][1]
                ev["t0_s"], ev["t1_s"] = round(ev["t0_s"], 3), round(ev["t1_s"], 3)
            head_events += evs
        set_units(m, curves)
        actions.append({"action": a, "t0_s": round(t0, 3), "t1_s": round(t1, 3), "emotion": emo})
    if gestures == "rule":
        head_events = brisk_gestures(head_events)
    m[:, HEAD_RX:HEAD_RZ + 1] += head_curves(head_events, n_frames) + smooth_noise(rng, n_frames, 3, 0.006, 12)
    blink, blinks = blink_curve(rng, n_frames)
    bi = [unit("blink_left"), unit("blink_right")]
    m[:, bi] = np.maximum(m[:, bi], blink[:, None])
    m[:, :50] += np.abs(smooth_noise(rng, n_frames, 50, 0.01)) * (np.arange(50) < 28)
    m[:, :50] = np.clip(m[:, :50], 0.0, 1.5)
    m[:, JAW_RX] = np.clip(m[:, JAW_RX], 0.0, 0.45)
    emo_segs, prev = [], None
    for a in actions:
        e = a["emotion"] or "neutral"
        if e != prev:
            emo_segs.append({"emotion": e, "t0_s": a["t0_s"], "t1_s": a["t1_s"]})
        else:
            emo_segs[-1]["t1_s"] = a["t1_s"]
        prev = e
    meta = {"actions": actions, "emotion_segments": emo_segs,
            "head_events": head_events or [{"behaviour": "still", "t0_s": 0.0, "t1_s": round(dur, 3)}],
            "blinks_s": blinks}
    return m.astype(np.float32), meta
