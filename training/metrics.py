"""Evaluation metrics for generated face motion (MMHead-style vertex errors plus our own checks).

All motions are ``(T, 56) float32`` MMHead frames at 25 fps (see :mod:`mm2face.engine.frame`).

Vertex metrics follow MMHead's metric code: the head (neck) rotation ``frame[50:53]`` is set to zero
before the FLAME layer, so only expression and jaw move vertices; errors are reported in millimetres.

* ``lve_mm``  lip vertex error: per frame the largest L2 distance over the head's lip vertices,
  then the mean over frames.
* ``fve_mm``  face vertex error: the mean L2 distance over the face vertices and frames.
* ``jaw_corr`` / ``lip_open_corr``  Pearson correlation over frames between prediction and ground
  truth of the jaw opening angle (jaw rx) and of the lip gap (vertical spread of the lip vertices).
* ``pause_closed_rate``  share of frames inside speech pauses where the mouth is (nearly) closed.
* style checks: caption keywords -> the stand-in head's named units or the head-pose sign that
  should move (see :data:`STYLE_RULES` and :data:`POSE_RULES`).

The style checks read the stand-in head's named expression units (:mod:`mm2face.engine.units`);
with real FLAME (PCA expression space) only the head-pose checks are meaningful.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from mm2face.engine.frame import FPS, HEAD, JAW, validate_motion
from mm2face.engine.units import unit

M_TO_MM = 1000.0


# ----------------------------------------------------------------------------- vertices

_SUBSET_HEADS: dict[int, tuple] = {}


def metric_head(head):
    """``head`` cut down to the vertices the metrics read (lips, face, and those the joint regressor
    uses), so vertex metrics cost a fraction of the full mesh; exact, since the joint positions still
    see every vertex they depend on. Cached per head object; masks are re-indexed."""
    hit = _SUBSET_HEADS.get(id(head))
    if hit is not None and hit[0] is head:
        return hit[1]
    from mm2face.engine.flame import HeadModel
    lips, face = head_mask(head, "lips"), head_mask(head, "face")
    jcols = np.flatnonzero(np.abs(np.asarray(head.J_regressor)).sum(axis=0) > 0)
    keep = np.union1d(np.union1d(lips, face), jcols)
    remap = -np.ones(head.n_vertices, np.int64)
    remap[keep] = np.arange(len(keep))
    sub = HeadModel(name=f"{head.name}-metrics", v_template=head.v_template[keep],
                    faces=np.zeros((0, 3), np.int32), shapedirs=head.shapedirs[keep], exprdirs=head.exprdirs[keep],
                    posedirs=head.posedirs[keep], J_regressor=head.J_regressor[:, keep], weights=head.weights[keep],
                    parents=head.parents, masks={"lips": remap[lips], "face": remap[face]})
    _SUBSET_HEADS[id(head)] = (head, sub)
    return sub


def vertices(head, motion: np.ndarray) -> np.ndarray:
    """``motion (T, 56)`` -> vertices ``(T, V, 3)`` in metres with the head pose zeroed (MMHead rule)."""
    m = np.array(motion, dtype=np.float32, copy=True)
    m[:, HEAD] = 0.0
    from mm2face.engine.flame import head_vertices
    return np.asarray(head_vertices(head, m), dtype=np.float32)


def head_mask(head, name: str) -> np.ndarray:
    """Vertex indices of the head's mask ``name`` ("lips", "face") as an int array."""
    masks = getattr(head, "masks", None) or {}
    if name not in masks:
        raise KeyError(f"head has no {name!r} vertex mask (masks: {sorted(masks)}); "
                       "load a head with lips/face masks, e.g. load_head('standin')")
    idx = np.asarray(masks[name])
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    return idx.astype(np.int64)


def lve_fve_mm(pred_verts: np.ndarray, gt_verts: np.ndarray, lips: np.ndarray, face: np.ndarray) -> tuple[float, float]:
    """LVE and FVE in mm from vertex arrays ``(T, V, 3)`` in metres and lip/face vertex indices."""
    if pred_verts.shape != gt_verts.shape:
        raise ValueError(f"vertex shapes differ: {pred_verts.shape} vs {gt_verts.shape}")
    dist = np.linalg.norm(pred_verts - gt_verts, axis=-1) * M_TO_MM      # (T, V) mm
    lve = float(dist[:, lips].max(axis=1).mean()) if len(dist) else 0.0
    fve = float(dist[:, face].mean()) if len(dist) else 0.0
    return lve, fve


def lip_gap_mm(verts: np.ndarray, lips: np.ndarray) -> np.ndarray:
    """Lip opening per frame ``(T,)`` mm: vertical (y) spread of the lip vertices.

    It grows when the jaw drops or the lips part; the rest pose gives the lips' own thickness.
    """
    y = verts[:, lips, 1] * M_TO_MM
    return y.max(axis=1) - y.min(axis=1)


def pearson(a, b) -> float:
    """Pearson correlation of two equal-length series; 0.0 when either is constant (no information)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"series lengths differ: {a.shape} vs {b.shape}")
    if len(a) < 2:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


# ----------------------------------------------------------------------------- pauses

JAW_CLOSED_RAD = 0.06        # jaw rx at or below this counts as a closed mouth (about 3.4 degrees)
LIP_GAP_CLOSED_MM = 2.0      # lip gap at most this much above the rest pose counts as closed
PAUSE_MIN_FRAMES = 8         # only pauses of at least 0.32 s count
PAUSE_EDGE_FRAMES = 3        # frames ignored at each end of a pause (the mouth is still closing/opening)


def pause_frames(speech, min_frames: int = PAUSE_MIN_FRAMES, edge: int = PAUSE_EDGE_FRAMES) -> np.ndarray:
    """Boolean ``(T,)`` mask of the frames well inside speech pauses.

    ``speech``: ``(T,)`` per-frame speech activity (bool or 0/1). A pause is a run of non-speech
    frames at least ``min_frames`` long; ``edge`` frames at each end of it are left out.
    """
    s = np.asarray(speech).astype(bool).ravel()
    out = np.zeros(len(s), dtype=bool)
    t = 0
    while t < len(s):
        if s[t]:
            t += 1
            continue
        start = t
        while t < len(s) and not s[t]:
            t += 1
        if t - start >= min_frames:
            lo, hi = start + edge, t - edge
            if hi > lo:
                out[lo:hi] = True
    return out


def mouth_closed(motion: np.ndarray, lip_gap: np.ndarray | None = None, rest_gap: float | None = None) -> np.ndarray:
    """Boolean ``(T,)``: is the mouth closed? Jaw rx small, and (if given) lip gap near the rest gap."""
    closed = motion[:, JAW][:, 0] <= JAW_CLOSED_RAD
    if lip_gap is not None and rest_gap is not None:
        closed &= lip_gap <= rest_gap + LIP_GAP_CLOSED_MM
    return closed


# ----------------------------------------------------------------------------- style rules

@dataclass
class StyleRule:
    """Caption keywords -> which stand-in units should rise (``up``) or stay low (``down``)."""
    name: str
    pattern: str                          # regex matched (case-insensitive) against the caption text
    up: list[str] = field(default_factory=list)
    margin: float = 0.25                  # the score must exceed this (unit activation; rest = 0)
    all_units: bool = False               # True: per frame the least active key unit (all must move), not the mean

    def score(self, motion: np.ndarray) -> float:
        """90th percentile over frames of the key units' mean activation (rest = 0).

        A percentile, not the mean, so that an emotion shown in part of the clip ("later smiles")
        still counts. On the synthetic corpus's ground truth the clips whose captions name the emotion
        score about 0.4-0.8 (10th-90th percentile) and the others mostly below 0.35."""
        if not len(motion):
            return 0.0
        a = motion[:, [unit(u) for u in self.up]]
        return float(np.percentile(a.min(axis=1) if self.all_units else a.mean(axis=1), 90))


STYLE_RULES: list[StyleRule] = [
    # whole word forms, not stems: "\bhapp\w*" matched "happened"; "unhappy" has no word boundary before "happ"
    StyleRule("happy", r"\b(happy|happier|happiest|happily|happiness|joy\w*|smil\w*|cheer\w*|delight\w*|glad|"
                       r"laugh\w*|grin\w*|pleased)\b",
              ["lip_corner_puller_left", "lip_corner_puller_right"]),
    StyleRule("sad", r"\b(sad\w*|sorrow\w*|unhapp\w*|grie\w*|depress\w*|melanchol\w*|frown\w*|upset|downcast)\b",
              ["lip_corner_depressor", "inner_brow_raiser"]),
    StyleRule("angry", r"\b(angr\w*|anger|furious|rage\w*|annoy\w*|irritat\w*|mad|glar\w*)\b",
              ["brow_lowerer"]),
    StyleRule("surprised", r"\b(surpris\w*|amaz\w*|astonish\w*|shock\w*|startl\w*|raises the eyebrows)\b",
              ["inner_brow_raiser", "outer_brow_raiser_left", "outer_brow_raiser_right", "upper_lid_raiser"]),
    StyleRule("disgusted", r"\b(disgust\w*|repuls\w*|gross\w*|revolt\w*|sneer\w*)\b",
              ["nose_wrinkler", "upper_lip_raiser"]),
    # fear: the one unit only fear moves (lip stretcher) together with the inner brows, both at once:
    # surprise raises the brows without it, speech stretches the lips without the brows (synth_face.EMOTION_UNITS)
    StyleRule("fearful", r"\b(fear\w*|scared|scary|afraid|frighten\w*|terrif\w*|anxious\w*)\b",
              ["lip_stretcher", "inner_brow_raiser"], all_units=True),
]
# "frowns" describes sadness/displeasure; rules for happy and sad must not both fire on one caption.
# A caption that matches more than one emotion rule is skipped (ambiguous), see style_checks().


@dataclass
class PoseRule:
    """Caption keywords -> sign of one head rotation axis (MMHead supplement, Table 1)."""
    name: str
    pattern: str
    axis: int                             # 0 = rx, 1 = ry, 2 = rz of frame[50:53]
    sign: int                             # +1 or -1
    margin_rad: float = 0.05              # the peak rotation must exceed this (about 3 degrees)

    def score(self, motion: np.ndarray) -> float:
        """Signed peak rotation (rad) along the rule's direction: the value at max |r| times sign."""
        r = motion[:, HEAD][:, self.axis]
        if not len(r):
            return 0.0
        return float(r[int(np.abs(r).argmax())] * self.sign)


# rx < 0 head up, rx > 0 down; ry > 0 turns left, ry < 0 turns right; rz < 0 tilts left, rz > 0 tilts right.
POSE_RULES: list[PoseRule] = [
    PoseRule("turn_left", r"\b(turn\w*|rotat\w*|look\w*)\s+(?:\w+\s+){0,2}(to\s+the\s+|to\s+)?(?:its\s+|his\s+|her\s+|their\s+)?left", 1, +1),
    PoseRule("turn_right", r"\b(turn\w*|rotat\w*|look\w*)\s+(?:\w+\s+){0,2}(to\s+the\s+|to\s+)?(?:its\s+|his\s+|her\s+|their\s+)?right", 1, -1),
    # "up"/"down" end at a word boundary: "looks upset" and "looks downcast" are moods, not poses
    PoseRule("up", r"\b(head\s+up|looks?\s+up|looking\s+up|rais\w+\s+(?:\w+\s+)?head|tilts?\s+(?:\w+\s+)?head\s+up|lifts?\s+(?:\w+\s+)?head)\b", 0, -1),
    PoseRule("down", r"\b(head\s+down|looks?\s+down|looking\s+down|lower\w*\s+(?:\w+\s+)?head|bows?\s+(?:\w+\s+)?head|tilts?\s+(?:\w+\s+)?head\s+down)\b", 0, +1),
    PoseRule("tilt_left", r"\btilt\w*\s+(?:\w+\s+){0,2}(to\s+the\s+)?left", 2, -1),
    PoseRule("tilt_right", r"\btilt\w*\s+(?:\w+\s+){0,2}(to\s+the\s+)?right", 2, +1),
]
def zigzag(x: np.ndarray, hysteresis: float) -> list[tuple[int, float]]:
    """Turning points ``[(frame, value)]`` of the series ``x (T,)``: a running extreme counts as a turning
    point once ``x`` has moved ``hysteresis`` back from it (jitter below that is ignored); the first frame
    and the last extreme close the list, so consecutive points are the series' swings."""
    x = np.asarray(x, np.float64).ravel()
    if not len(x):
        return []
    pts = [(0, float(x[0]))]
    hi = lo = ext_i = 0
    direction = 0                                # 0 = undecided, +1 rising, -1 falling
    for i in range(1, len(x)):
        if direction == 0:                       # before the first swing: the earlier extreme starts it
            hi = i if x[i] >= x[hi] else hi      # ties: the latest frame (a swing starts where rest ends)
            lo = i if x[i] <= x[lo] else lo
            if x[hi] - x[lo] >= hysteresis:
                start, ext_i, direction = (lo, hi, 1) if hi > lo else (hi, lo, -1)
                pts[0] = (start, float(x[start]))
            continue
        if direction * (x[i] - x[ext_i]) > 0:
            ext_i = i
        elif direction * (x[ext_i] - x[i]) >= hysteresis:
            pts.append((ext_i, float(x[ext_i])))
            direction, ext_i = -direction, i
    if direction != 0 and ext_i != pts[-1][0]:
        pts.append((ext_i, float(x[ext_i])))
    return pts


SWING_HYSTERESIS_RAD = 0.02   # head jitter below this does not end a swing (about 1 degree)
SWING_SETTLE_FRACTION = 0.1   # a swing has left its start / reached its end within this share of its size


def swing_time_s(x: np.ndarray, a0: int, a1: int, b0: int, b1: int) -> float:
    """Seconds from when the swing ``x[a0] -> x[a1]`` leaves its start to when the swing ``x[b0] -> x[b1]``
    reaches its end (turning points of :func:`zigzag`), each within :data:`SWING_SETTLE_FRACTION` of its size.

    A turning point is where the running extreme was last set, so a head that comes back and then rests
    puts it wherever the rest's jitter was deepest, seconds after the movement ended; these times are
    where the movement itself starts and arrives."""
    tol_a = SWING_SETTLE_FRACTION * abs(x[a1] - x[a0])
    tol_b = SWING_SETTLE_FRACTION * abs(x[b1] - x[b0])
    seg_a = np.abs(x[a0:a1 + 1] - x[a0]) <= tol_a
    depart = a0 + int(np.flatnonzero(seg_a)[-1])       # the last frame still at the start
    seg_b = np.abs(x[b0:b1 + 1] - x[b1]) <= tol_b
    arrive = b0 + int(np.flatnonzero(seg_b)[0])         # the first frame at the end
    return (arrive - depart) / FPS


@dataclass
class OscillationRule:
    """Caption keywords -> a back-and-forth movement of one head axis (a nod, a head shake).

    A nod is a swing down and one back up (rx grows, then falls; MMHead's "Head down" is rx > 0); a shake
    is three alternating yaw swings (left-right-left or right-left-right). The score is the smallest swing
    of the best such group (rad) whose swings all fit in ``max_s`` seconds (from when the first leaves its
    start to when the last arrives: :func:`swing_time_s`), so one held turn or a slow drift scores low; it
    passes above ``margin_rad``. The synthetic corpus draws nods of 0.08-0.18 rad and shakes of
    0.12-0.28 rad (training/synth_face.py)."""
    name: str
    pattern: str
    axis: int                             # 0 = rx (pitch), 1 = ry (yaw)
    swings: int                           # consecutive alternating swings that make one gesture
    first_sign: int = 0                   # +1: the first swing must go up in value (a nod goes down: rx > 0)
    max_s: float = 1.6
    margin_rad: float = 0.05

    def score(self, motion: np.ndarray) -> float:
        x = np.asarray(motion[:, HEAD][:, self.axis], np.float64)
        pts = zigzag(x, SWING_HYSTERESIS_RAD)
        best = 0.0
        for i in range(len(pts) - self.swings):
            grp = pts[i:i + self.swings + 1]
            if swing_time_s(x, grp[0][0], grp[1][0], grp[-2][0], grp[-1][0]) > self.max_s:
                continue
            first = grp[1][1] - grp[0][1]
            if self.first_sign and first * self.first_sign <= 0:
                continue
            best = max(best, min(abs(b[1] - a[1]) for a, b in zip(grp, grp[1:])))
        return float(best)


OSCILLATION_RULES: list[OscillationRule] = [
    OscillationRule("nod", r"\bnod(s|ded|ding)?\b", 0, swings=2, first_sign=+1, max_s=1.6),
    OscillationRule("shake", r"\bshak\w*\s+(?:\w+\s+){0,2}head\b|\bhead\s+shak\w*", 1, swings=3, max_s=2.4),
]
POSE_RULES += OSCILLATION_RULES          # the caption matcher and style_checks treat them as pose rules
OSCILLATION_NAMES = frozenset(r.name for r in OSCILLATION_RULES)

# Pairs that contradict each other: a caption matching both is skipped.
_POSE_OPPOSITES = {("turn_left", "turn_right"), ("up", "down"), ("tilt_left", "tilt_right")}


def caption_text(captions) -> str:
    """All caption text of a clip as one lower-case string (``captions`` is a str or a dict of str)."""
    if captions is None:
        return ""
    if isinstance(captions, str):
        return captions.lower()
    if isinstance(captions, dict):   # the scenario kind describes causes, not the face: left out
        return " ".join(str(v) for k, v in captions.items() if v and k != "emotion_scenario").lower()
    return " ".join(str(c) for c in captions).lower()


def matching_rules(text: str):
    """(emotion rules, pose rules) that apply to ``text``; ambiguous emotion/pose matches are dropped."""
    text = text.lower()
    emo = [r for r in STYLE_RULES if re.search(r.pattern, text)]
    if len(emo) > 1:
        emo = []
    pose = [r for r in POSE_RULES if re.search(r.pattern, text)]
    names = {r.name for r in pose}
    clash = {n for pair in _POSE_OPPOSITES if set(pair) <= names for n in pair}
    pose = [r for r in pose if r.name not in clash]
    return emo, pose


def style_checks(motion, captions, reference=None) -> dict[str, dict]:
    """Which caption-implied movements the motion shows.

    Returns ``{rule_name: {"score": float, "pass": bool, "kind": "emotion"|"pose"}}`` for every rule
    the caption triggers. Emotion rules pass when the key units' mean activation exceeds the rule's
    margin; with ``reference`` (e.g. the same audio generated with a neutral caption) the score is the
    difference to the reference. Pose rules pass when the peak rotation has the caption's sign and
    exceeds ``margin_rad``.
    """
    m = validate_motion(motion, check_ranges=False)
    ref = None if reference is None else validate_motion(reference, check_ranges=False)
    emo, pose = matching_rules(caption_text(captions))
    out: dict[str, dict] = {}
    for r in emo:
        s = r.score(m) - (r.score(ref) if ref is not None else 0.0)
        out[r.name] = {"score": s, "pass": bool(s > r.margin), "kind": "emotion"}
    for r in pose:
        s = r.score(m)
        out[r.name] = {"score": s, "pass": bool(s > r.margin_rad), "kind": "pose"}
    return out


def contrast_score(motion_a, motion_b, rule_a: str = "happy", rule_b: str = "sad") -> float:
    """How well two text-only motions are told apart: (a on rule_a - b on rule_a) + (b on rule_b - a on rule_b).

    Positive when motion_a shows rule_a's units more than motion_b does and vice versa
    (e.g. a "smiles" and a "frowns" caption). Units: mean activation.
    """
    ra = next(r for r in STYLE_RULES if r.name == rule_a)
    rb = next(r for r in STYLE_RULES if r.name == rule_b)
    a = validate_motion(motion_a, check_ranges=False)
    b = validate_motion(motion_b, check_ranges=False)
    return (ra.score(a) - ra.score(b)) + (rb.score(b) - rb.score(a))


# ----------------------------------------------------------------------------- per-clip and aggregate

def clip_metrics(pred, gt, head=None, speech=None, captions=None, reference=None, gt_verts=None) -> dict:
    """All metrics for one clip. ``pred``/``gt``: ``(T, 56)``; lengths are cut to the shorter.

    ``head``: a HeadModel with ``masks["lips"]`` and ``masks["face"]`` (vertex metrics are skipped
    when None). ``speech``: ``(T,)`` per-frame speech activity for the pause metric (optional).
    ``gt_verts``: ``vertices(metric_head(head), gt)`` if already computed (saves time when scoring
    several predictions against one ground truth).
    ``captions``: str or dict of captions for the style checks (optional; a dict's
    ``emotion_scenario`` is ignored).
    """
    pred = validate_motion(pred, name="pred", check_ranges=False)
    gt = validate_motion(gt, name="gt", check_ranges=False)
    T = min(len(pred), len(gt))
    if T == 0:
        raise ValueError("empty motion: nothing to evaluate")
    pred, gt = pred[:T], gt[:T]
    out: dict = {"frames": T, "jaw_corr": pearson(pred[:, JAW][:, 0], gt[:, JAW][:, 0])}
    gap_p = gap_g = rest_gap = None
    if head is not None:
        head = metric_head(head)
        lips, face = head_mask(head, "lips"), head_mask(head, "face")
        vp = vertices(head, pred)
        vg = gt_verts[:T] if gt_verts is not None else vertices(head, gt)
        out["lve_mm"], out["fve_mm"] = lve_fve_mm(vp, vg, lips, face)
        gap_p, gap_g = lip_gap_mm(vp, lips), lip_gap_mm(vg, lips)
        rest_gap = float(lip_gap_mm(vertices(head, np.zeros((1, 56), np.float32)), lips)[0])
        out["lip_open_corr"] = pearson(gap_p, gap_g)
    if speech is not None:
        sp = np.asarray(speech).astype(bool).ravel()
        if len(sp) != T:    # tolerate a frame or two of rounding, pad with "speech" (not counted)
            sp = np.concatenate([sp[:T], np.ones(max(0, T - len(sp)), bool)])
        pauses = pause_frames(sp)
        if pauses.any():
            out["pause_frames"] = int(pauses.sum())
            out["pause_closed_rate"] = float(mouth_closed(pred, gap_p, rest_gap)[pauses].mean())
            out["pause_closed_rate_gt"] = float(mouth_closed(gt, gap_g, rest_gap)[pauses].mean())
    if captions is not None:
        out["style"] = style_checks(pred, captions, reference)
        out["style_gt"] = style_checks(gt, captions)
    return out


LIP_SYNC_KEYS = ("lve_mm", "fve_mm", "jaw_corr", "lip_open_corr")


def aggregate(per_clip: list[dict]) -> dict:
    """Mean of scalar metrics over clips, and pass rates of the style checks.

    Lip-sync metrics (:data:`LIP_SYNC_KEYS`) are averaged over the clips whose row says ``"audio":
    True`` when the rows say so (MMHead's talking-head benchmark scores subset I, the clips with
    speech; a text-only clip has no audio for the lips to follow), else over all clips; the mean over
    all clips is kept as ``<key>_all``. ``pause_closed_rate`` is weighted by pause frames; style pass
    rates are reported per rule and per kind (``emotion_pass_rate``, ``pose_pass_rate``; the pose checks
    also split into ``held_pose_pass_rate``, turns, looks and tilts, and ``gesture_pass_rate``, nods and
    shakes), with the number of clips each one covers.
    """
    out: dict = {"clips": len(per_clip)}
    talking = [c for c in per_clip if c.get("audio")]
    lip_rows = talking if any("audio" in c for c in per_clip) else per_clip
    if talking:
        out["talking_clips"] = len(talking)
    for key in LIP_SYNC_KEYS:
        vals = [c[key] for c in lip_rows if key in c]
        if vals:
            out[key] = float(np.mean(vals))
        every = [c[key] for c in per_clip if key in c]
        if every and lip_rows is not per_clip:
            out[f"{key}_all"] = float(np.mean(every))
    for key in ("pause_closed_rate", "pause_closed_rate_gt"):
        w = [(c[key], c["pause_frames"]) for c in per_clip if key in c]
        if w:
            out[key] = float(sum(v * n for v, n in w) / sum(n for _, n in w))
    for src, prefix in (("style", ""), ("style_gt", "gt_")):
        by_kind: dict[str, list[bool]] = {}
        by_rule: dict[str, list[bool]] = {}
        for c in per_clip:
            for name, res in c.get(src, {}).items():
                by_kind.setdefault(res["kind"], []).append(res["pass"])
                by_rule.setdefault(name, []).append(res["pass"])
                if res["kind"] == "pose":     # held poses and back-and-forth gestures, also apart
                    sub = "gesture" if name in OSCILLATION_NAMES else "held_pose"
                    by_kind.setdefault(sub, []).append(res["pass"])
        for kind, v in by_kind.items():
            out[f"{prefix}{kind}_pass_rate"] = float(np.mean(v))
            out[f"{prefix}{kind}_checks"] = len(v)
        if by_rule:
            out[f"{prefix}style_by_rule"] = {k: {"pass_rate": float(np.mean(v)), "clips": len(v)}
                                             for k, v in sorted(by_rule.items())}
    return out


def mean_frame(motions) -> np.ndarray:
    """The mean frame ``(56,)`` over all frames of ``motions`` (list of ``(T, 56)``): the baseline."""
    motions = [validate_motion(m, check_ranges=False) for m in motions]
    if not motions:
        raise ValueError("no motions to average; the mean-frame baseline needs the training split")
    total = sum(m.sum(axis=0, dtype=np.float64) for m in motions)
    n = sum(len(m) for m in motions)
    return (total / max(n, 1)).astype(np.float32)


def mean_frame_motion(frame: np.ndarray, T: int) -> np.ndarray:
    """The baseline prediction: ``frame (56,)`` repeated ``T`` times -> ``(T, 56)``."""
    return np.repeat(np.asarray(frame, np.float32)[None], T, axis=0)


__all__ = ["lve_fve_mm", "lip_gap_mm", "pearson", "pause_frames", "mouth_closed", "style_checks",
           "contrast_score", "clip_metrics", "vertices", "metric_head", "aggregate", "mean_frame", "mean_frame_motion",
           "STYLE_RULES", "POSE_RULES", "matching_rules", "caption_text", "head_mask", "FPS"]
