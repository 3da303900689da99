"""ARKit-52 retargeting: motion frames -> Apple's 52 blendshape weights in [0, 1] plus head rotation.

Most avatars people already have (VRM/VSeeFace models, MetaHumans through Live Link Face, Ready Player Me,
three.js/glTF heads) are driven by ARKit's 52 blendshapes. This module maps the project's 56-number frames
(:mod:`mm2face.engine.frame`) onto them. The map is a :class:`LinearRetarget`: a matrix acting on the
positive and negative parts of each frame value, then clipped to [0, 1], so a frame costs one small matrix
product. Two maps exist:

* **the stand-in map** (``to_arkit(motion)``, :func:`standin_retarget`), exact for the open stand-in head:
  each named unit of :mod:`mm2face.engine.units` goes to its ARKit counterpart (bilateral units onto both
  ``...Left``/``...Right`` shapes, which :func:`arkit_morph_targets` splits by side so that the map is
  exact both ways), the jaw pose to ``jawOpen``/``jawLeft``/``jawRight``. Units without a counterpart
  (``lip_tightener``, ``lips_part``, ``nostril_dilator``) are projected onto the counterpart shapes by
  non-negative least squares on the stand-in's vertex offsets. The table, error bounds and versioning are in
  docs/arkit.md.
* **a fitted map for real FLAME** (:func:`fit_flame_retarget`, CLI ``mm2face-retarget fit``): least squares
  from FLAME's expression and jaw offsets onto ARKit target meshes the user supplies on FLAME's topology.

Head rotation (``ArkitFrames.head_rot``) is yaw, pitch, roll in radians about ARKit's face axes, which are
the head's own axes here: +x the subject's left, +y up, +z out of the face. ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``
equals the frame's axis-angle head pose ``frame[50:53]``; all three are right-handed:

* yaw + : the subject turns his head to his left (the nose moves toward +x);
* pitch + : the head tilts down, chin toward the chest (the nose moves toward -y);
* roll + : the head tilts toward the subject's right shoulder (his left ear goes up).

Usage::

    from mm2face.engine.arkit import ARKIT_NAMES, to_arkit
    a = to_arkit(motion)                  # motion: (T, 56) or (56,)
    a.weights                              # (T, 52) float32 in [0, 1], ARKIT_NAMES order
    a.head_rot                             # (T, 3) float32 rad: yaw, pitch, roll
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .frame import FRAME_DIM, HEAD, JAW, N_EXP, validate_motion
from .units import UNITS

# ----------------------------------------------------------------------------- names

#: The 52 ARKit blendshape names in Apple's ARFaceAnchor order (the order Live Link Face sends).
ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight",
    "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
N_ARKIT = len(ARKIT_NAMES)
ARKIT_INDEX: dict[str, int] = {n: i for i, n in enumerate(ARKIT_NAMES)}
HEAD_ROT_NAMES: tuple[str, str, str] = ("yaw", "pitch", "roll")

#: Version of the stand-in map; bump when the table, the constants below or the projection change.
ARKIT_MAP_VERSION = "standin-arkit/1"
#: Version of the LinearRetarget file layout (.npz).
RETARGET_FILE_VERSION = 1

# ----------------------------------------------------------------------------- the stand-in table

JAW_OPEN_FULL_RAD = 0.4     # jaw rx (rad, + opens) at which jawOpen = 1 (about 23 degrees: a wide-open mouth)
JAW_SIDE_FULL_RAD = 0.1     # |jaw ry| (rad) at which jawLeft / jawRight = 1 (the chin moves about 10 mm)
SIDE_BLEND_M = 0.004        # half-width (m) of the smooth left/right split at the midline (as the head's own)
MIDLINE_HALF_WIDTH_M = 0.005  # lip vertices within this |x| (m) measure the lip gap at the midline

# unit name -> the ARKit shapes it drives with weight = coefficient. Two shapes split the unit's vertex offsets:
# (...Left, ...Right) by side of the face, (upper, lower) by the lip each vertex belongs to.
SIDE, LIP = "side", "lip"
STANDIN_TABLE: dict[str, tuple[str, ...]] = {
    "inner_brow_raiser": ("browInnerUp",),
    "outer_brow_raiser_left": ("browOuterUpLeft",),
    "outer_brow_raiser_right": ("browOuterUpRight",),
    "brow_lowerer": ("browDownLeft", "browDownRight"),
    "upper_lid_raiser": ("eyeWideLeft", "eyeWideRight"),
    "cheek_raiser": ("cheekSquintLeft", "cheekSquintRight"),
    "lid_tightener": ("eyeSquintLeft", "eyeSquintRight"),
    "nose_wrinkler": ("noseSneerLeft", "noseSneerRight"),
    "upper_lip_raiser": ("mouthUpperUpLeft", "mouthUpperUpRight"),
    "lip_corner_puller_left": ("mouthSmileLeft",),
    "lip_corner_puller_right": ("mouthSmileRight",),
    "dimpler": ("mouthDimpleLeft", "mouthDimpleRight"),
    "lip_corner_depressor": ("mouthFrownLeft", "mouthFrownRight"),
    "lower_lip_depressor": ("mouthLowerDownLeft", "mouthLowerDownRight"),
    "chin_raiser": ("mouthShrugLower",),
    "lip_pucker": ("mouthPucker",),
    "lip_stretcher": ("mouthStretchLeft", "mouthStretchRight"),
    "lip_funneler": ("mouthFunnel",),
    "lip_pressor": ("mouthPressLeft", "mouthPressRight"),
    "blink_left": ("eyeBlinkLeft",),
    "blink_right": ("eyeBlinkRight",),
    "cheek_puff": ("cheekPuff",),
    "mouth_left": ("mouthLeft",),
    "mouth_right": ("mouthRight",),
    "mouth_close": ("mouthClose",),       # only if engine/units.py has it (issue 15); scaled, see below
    "lower_lip_roll": ("mouthRollLower",),  # issue 15's f/v unit, if present: it owns mouthRollLower
    "lip_suck": ("mouthRollUpper", "mouthRollLower"),   # its lower-lip part is projected if owned already
}
#: Units of the stand-in without an ARKit counterpart -> the ARKit shapes that express them on other avatars.
#: Their weights are the non-negative least-squares projection of the unit's vertex offsets onto those shapes
#: (on the stand-in mesh); an empty tuple drops the unit (nostril widening has no ARKit shape: noseSneer lifts).
PROJECTED_UNITS: dict[str, tuple[str, ...]] = {
    "lips_part": ("mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft", "mouthLowerDownRight"),
    "lip_tightener": ("mouthPressLeft", "mouthPressRight", "mouthRollUpper", "mouthRollLower"),
    "nostril_dilator": (),
}
#: ARKit shapes the stand-in never drives: gaze (frames carry no eye pose), jawForward (no jaw protrusion),
#: mouthShrugUpper, tongueOut; and mouthClose while the head has no mouth_close unit. Jaw roll (frame[55])
#: has no ARKit shape either. Negative stand-in unit values (undefined on the head) give weight 0.
UNDRIVEN = tuple(n for n in ARKIT_NAMES if n.startswith("eyeLook")) + ("jawForward", "mouthShrugUpper", "tongueOut")


def _split_kind(names: tuple[str, ...]) -> str | None:
    if len(names) == 1:
        return None
    return SIDE if names[0].endswith("Left") else LIP


# ----------------------------------------------------------------------------- the linear map


class RetargetError(ValueError):
    """A retarget file or fit input is missing, malformed or of another version."""


@dataclass(frozen=True, eq=False)
class LinearRetarget:
    """ARKit weights as a linear map of each frame value's positive and negative parts.

    ``weights = clip(relu(motion) @ pos.T + relu(-motion) @ neg.T + bias, 0, 1)``, then
    ``mouthClose = min(mouthClose, jawOpen)`` (ARKit's mouthClose closes the lips *against* jawOpen; more
    than jawOpen would push them through each other).

    pos, neg: (52, 56) float32, ARKIT_NAMES x frame dims; bias: (52,) float32; version: the map's version
    (``ARKIT_MAP_VERSION`` for the stand-in, ``flame-fit/N`` for a fit); source: where it came from;
    info: free-form numbers about a fit (residuals), saved with it.
    """
    pos: np.ndarray
    neg: np.ndarray
    bias: np.ndarray
    version: str
    source: str = ""
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for name, shape in (("pos", (N_ARKIT, FRAME_DIM)), ("neg", (N_ARKIT, FRAME_DIM)), ("bias", (N_ARKIT,))):
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if arr.shape != shape or not np.isfinite(arr).all():
                raise RetargetError(f"LinearRetarget.{name}: expected finite {shape}, got {arr.shape}")
            object.__setattr__(self, name, arr)
        # one (112, 52) matrix: [relu(x), relu(-x)] @ stacked = the linear part (precomputed once)
        object.__setattr__(self, "_stacked", np.ascontiguousarray(np.concatenate([self.pos, self.neg], axis=1).T))

    def weights(self, motion) -> np.ndarray:
        """``motion: (T, 56)`` or ``(56,)`` -> ``(T, 52)`` float32 ARKit weights in [0, 1]."""
        m = validate_motion(motion, name="motion", check_ranges=False)
        feats = np.concatenate([np.maximum(m, 0.0), np.maximum(-m, 0.0)], axis=1)
        w = np.clip(feats @ self._stacked + self.bias, 0.0, 1.0)
        close, jaw = ARKIT_INDEX["mouthClose"], ARKIT_INDEX["jawOpen"]
        w[:, close] = np.minimum(w[:, close], w[:, jaw])
        return w.astype(np.float32, copy=False)

    def save(self, path) -> Path:
        """Write the map as ``.npz`` (arrays, names, version, source, file version)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info_keys = sorted(self.info)
        np.savez(path, pos=self.pos, neg=self.neg, bias=self.bias, names=np.array(ARKIT_NAMES),
                 version=np.str_(self.version), source=np.str_(self.source),
                 file_version=np.int32(RETARGET_FILE_VERSION), info_keys=np.array(info_keys, dtype=str),
                 info_values=np.array([float(self.info[k]) for k in info_keys], dtype=np.float64))
        return path

    @classmethod
    def load(cls, path) -> "LinearRetarget":
        path = Path(path)
        if not path.exists():
            raise RetargetError(f"retarget file not found: {path} (make one with `mm2face-retarget fit`)")
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any read failure means the same to the user
            raise RetargetError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from exc
        with z:
            missing = [k for k in ("pos", "neg", "bias", "names", "version", "file_version") if k not in z]
            if missing:
                raise RetargetError(f"{path}: not a retarget file, missing {missing} (make one with "
                                    f"`mm2face-retarget fit`)")
            if int(z["file_version"]) != RETARGET_FILE_VERSION:
                raise RetargetError(f"{path}: retarget file version {int(z['file_version'])}, this build reads "
                                    f"{RETARGET_FILE_VERSION}; refit with `mm2face-retarget fit`")
            if tuple(str(n) for n in z["names"]) != ARKIT_NAMES:
                raise RetargetError(f"{path}: its blendshape names are not the 52 ARKit names in Apple's order")
            info = dict(zip((str(k) for k in z["info_keys"]), (float(v) for v in z["info_values"]))) \
                if "info_keys" in z else {}
            return cls(pos=z["pos"], neg=z["neg"], bias=z["bias"], version=str(z["version"]),
                       source=str(z["source"]) if "source" in z else "", info=info)


# ----------------------------------------------------------------------------- frames -> ARKit


@dataclass(frozen=True, eq=False)
class ArkitFrames:
    """ARKit output for T frames.

    weights: (T, 52) float32 in [0, 1], ARKIT_NAMES order;
    head_rot: (T, 3) float32 rad: yaw, pitch, roll (axes and signs in the module docstring).
    """
    weights: np.ndarray
    head_rot: np.ndarray

    def __len__(self) -> int:
        return int(self.weights.shape[0])


def head_rotation(head_pose) -> np.ndarray:
    """Axis-angle head pose ``(T, 3)`` rad (``frame[50:53]``) -> ``(T, 3)`` float32 yaw, pitch, roll (rad).

    ``Ry(yaw) @ Rx(pitch) @ Rz(roll)`` is the pose's rotation matrix; signs as in the module docstring.
    """
    r = np.asarray(head_pose, dtype=np.float64).reshape(-1, 3)
    angle = np.linalg.norm(r, axis=1, keepdims=True)
    k = r / np.maximum(angle, 1e-12)
    s, c = np.sin(angle)[:, :, None], np.cos(angle)[:, :, None]
    K = np.zeros((len(r), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    R = np.eye(3) + s * K + (1.0 - c) * (K @ K)
    yaw = np.arctan2(R[:, 0, 2], R[:, 2, 2])
    pitch = np.arcsin(np.clip(-R[:, 1, 2], -1.0, 1.0))
    roll = np.arctan2(R[:, 1, 0], R[:, 1, 1])
    return np.stack([yaw, pitch, roll], axis=1).astype(np.float32)


def to_arkit(motion, retarget: LinearRetarget | None = None) -> ArkitFrames:
    """Frames ``(T, 56)`` or ``(56,)`` -> :class:`ArkitFrames`. ``retarget=None`` uses the stand-in map."""
    m = validate_motion(motion, name="motion", check_ranges=False)
    rt = retarget if retarget is not None else standin_retarget()
    return ArkitFrames(weights=rt.weights(m), head_rot=head_rotation(m[:, HEAD]))


# ----------------------------------------------------------------------------- the stand-in map and targets


def _partition(head, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(V,) weights of the first and second shape of a split; they sum to 1 at every vertex."""
    if kind == SIDE:
        first = 0.5 * (1.0 + np.tanh(head.v_template[:, 0].astype(np.float64) / SIDE_BLEND_M))   # subject's left
    else:
        first = 1.0 - head.weights[:, 2].astype(np.float64)          # upper lip: not on the jaw joint
    return first, 1.0 - first


def _jaw_targets(head) -> dict[str, np.ndarray]:
    """Jaw shapes as the vertex offsets of the jaw rotation at full weight (exact at weight 0 and 1)."""
    from .flame import head_vertices

    poses = {"jawOpen": (JAW_OPEN_FULL_RAD, 0.0), "jawLeft": (0.0, JAW_SIDE_FULL_RAD),
             "jawRight": (0.0, -JAW_SIDE_FULL_RAD)}
    m = np.zeros((len(poses), FRAME_DIM), np.float32)
    for i, (rx, ry) in enumerate(poses.values()):
        m[i, JAW.start], m[i, JAW.start + 1] = rx, ry
    v = head_vertices(head, m).astype(np.float64) - head_vertices(head, np.zeros((1, FRAME_DIM), np.float32))
    return dict(zip(poses, v))


def _midline_lip_gap_change(head, offsets: np.ndarray) -> float:
    """How much ``offsets (V, 3)`` open the lips at the midline (m): lower lip down minus upper lip down.

    Measured on the head's ``lip_midline`` mask (upper, lower seam vertex) if it has one, else on the
    lip vertices within MIDLINE_HALF_WIDTH_M of the midline, split by the jaw's skinning weight."""
    if "lip_midline" in head.masks:
        upper, lower = np.asarray(head.masks["lip_midline"])[:2]
        return float(offsets[upper, 1] - offsets[lower, 1])
    lips = np.asarray(head.masks.get("lips", np.arange(head.n_vertices)))
    lips = lips[np.abs(head.v_template[lips, 0]) < MIDLINE_HALF_WIDTH_M]
    on_jaw = head.weights[lips, 2] > 0.5
    if not on_jaw.any() or on_jaw.all():
        raise RetargetError(f"head {head.name!r}: no upper and lower lip vertices at the midline to measure")
    return float(offsets[lips[~on_jaw], 1].mean() - offsets[lips[on_jaw], 1].mean())


@dataclass(frozen=True)
class _StandinMap:
    retarget: LinearRetarget
    targets: np.ndarray          # (52, V, 3) float32
    projection_rel_residual: dict  # projected unit -> relative residual of its NNLS projection


def _build_standin_map(head) -> _StandinMap:
    from scipy.optimize import nnls

    names = list(head.expression_names or UNITS)
    V = head.n_vertices
    E = head.exprdirs.astype(np.float64)                              # (V, 3, 50)
    T = np.zeros((N_ARKIT, V, 3))
    pos = np.zeros((N_ARKIT, FRAME_DIM))
    neg = np.zeros((N_ARKIT, FRAME_DIM))
    jaw = _jaw_targets(head)
    for n, d in jaw.items():
        T[ARKIT_INDEX[n]] = d
    pos[ARKIT_INDEX["jawOpen"], JAW.start] = 1.0 / JAW_OPEN_FULL_RAD
    pos[ARKIT_INDEX["jawLeft"], JAW.start + 1] = 1.0 / JAW_SIDE_FULL_RAD
    neg[ARKIT_INDEX["jawRight"], JAW.start + 1] = 1.0 / JAW_SIDE_FULL_RAD
    # each table unit's vertex offsets (split by side or lip) become its shapes; a shape already owned by an
    # earlier unit of the table is not overwritten: that part is projected onto it below, like PROJECTED_UNITS
    shared: dict[str, list[tuple[str, np.ndarray]]] = {}
    for u, shapes in STANDIN_TABLE.items():
        if u not in names:
            continue
        s = names.index(u)
        scale = 1.0
        if u == "mouth_close":
            # mouthClose = 1 undoes jawOpen = 1's lip separation, so lips that meet in the frame give
            # mouthClose == jawOpen (ARKit's convention); the unit's weight is scaled to match.
            scale = -_midline_lip_gap_change(head, E[:, :, s]) / _midline_lip_gap_change(head, jaw["jawOpen"])
            if not scale > 0:
                raise RetargetError(f"head {head.name!r}: mouth_close does not close the lips (scale {scale:.3g})")
        kind = _split_kind(shapes)
        parts = [np.ones(V)] if kind is None else list(_partition(head, kind))
        for shape, w in zip(shapes, parts):
            k = ARKIT_INDEX[shape]
            if np.abs(T[k]).max() > 0:
                shared.setdefault(u, []).append((shape, E[:, :, s] * w[:, None]))
                continue
            T[k] = E[:, :, s] * w[:, None] / scale
            pos[k, s] = scale
    # units without a counterpart: non-negative least squares onto their chosen shapes (moving vertices only)
    todo = [(u, shapes, E[:, :, names.index(u)]) for u, shapes in PROJECTED_UNITS.items() if u in names]
    todo += [(u, (shape,), part) for u, parts in shared.items() for shape, part in parts]
    rel = {}
    for u, shapes, offsets in todo:
        b = offsets.reshape(-1)
        if not np.abs(b).max() > 0:
            continue
        key = u if len(shapes) != 1 or u in PROJECTED_UNITS else f"{u}->{shapes[0]}"
        if not shapes:
            rel[key] = 1.0                                            # dropped
            continue
        idx = [ARKIT_INDEX[n] for n in shapes]
        A = T[idx].reshape(len(idx), -1).T                            # (V*3, n_shapes)
        rows = np.flatnonzero((np.abs(A).max(1) > 0) | (b != 0))
        coef = nnls(A[rows], b[rows])[0]
        pos[idx, names.index(u)] += coef
        rel[key] = float(np.linalg.norm(A @ coef - b) / np.linalg.norm(b))
    rt = LinearRetarget(pos=pos, neg=neg, bias=np.zeros(N_ARKIT), version=ARKIT_MAP_VERSION,
                        source=f"stand-in head ({V} vertices)", info={f"projection_rel_residual.{k}": v
                                                                      for k, v in rel.items()})
    return _StandinMap(retarget=rt, targets=T.astype(np.float32), projection_rel_residual=rel)


@functools.lru_cache(maxsize=1)
def _standin_map() -> _StandinMap:
    from .flame import load_head
    return _build_standin_map(load_head("standin"))


def standin_retarget(head=None) -> LinearRetarget:
    """The stand-in map (cached for the default head; built once, about a second, from the head's mesh)."""
    return (_standin_map() if head is None else _build_standin_map(head)).retarget


def arkit_morph_targets(head=None) -> np.ndarray:
    """``(52, n_vertices, 3)`` float32 vertex offsets (m) on the stand-in head, ARKIT_NAMES order.

    ``head.v_template + weights @ targets`` reproduces the head's mesh of a frame (head pose zeroed) for
    ``weights = to_arkit(frame).weights``: exactly (float32 rounding) for the units with an ARKit counterpart
    in [0, 1]; the jaw rotation is linearised (its shapes are the offsets at full weight, exact at 0 and 1;
    docs/arkit.md states the measured error). Shapes the stand-in never drives are zero.
    """
    return (_standin_map() if head is None else _build_standin_map(head)).targets


def standin_projection_residuals(head=None) -> dict[str, float]:
    """Relative residual (|offset - projection| / |offset|) of each unit without an ARKit counterpart."""
    return dict((_standin_map() if head is None else _build_standin_map(head)).projection_rel_residual)


def standin_table_markdown(head=None) -> str:
    """The stand-in map as a markdown table (docs/arkit.md): each ARKit shape and what drives it."""
    from .units import UNITS as _U
    rt = standin_retarget(head)
    names = list((head.expression_names if head is not None else None) or _U)
    jaw_src = {"jawOpen": f"jaw rx (opens) / {JAW_OPEN_FULL_RAD} rad", "jawLeft": f"jaw ry > 0 / {JAW_SIDE_FULL_RAD} rad",
               "jawRight": f"jaw ry < 0 (magnitude) / {JAW_SIDE_FULL_RAD} rad"}
    rows = ["| # | ARKit shape | driven by (weight per unit of the frame value) |", "|---:|---|---|"]
    for k, n in enumerate(ARKIT_NAMES):
        if n in jaw_src:
            src = jaw_src[n]
        else:
            parts = [f"`{names[d]}`" + ("" if abs(rt.pos[k, d] - 1) < 5e-4 else f" x {rt.pos[k, d]:.3f}")
                     for d in np.flatnonzero(rt.pos[k, :N_EXP] > 0)]
            src = ", ".join(parts) if parts else "-- (not driven)"
        rows.append(f"| {k} | `{n}` | {src} |")
    return "\n".join(rows)


def standin_errors(head=None, n_frames: int = 16, seed: int = 0) -> dict[str, float]:
    """Measured reconstruction errors (mm) of ``neutral + weights @ arkit_morph_targets`` against the head's
    own mesh, head pose zeroed: mapped units only (exact), jaw rx over [0, JAW_OPEN_FULL_RAD] only, and both
    (random unit values in [0, 1]); plus the projection residuals of the units without a counterpart."""
    from .flame import head_vertices, load_head
    h = head if head is not None else load_head("standin")
    m_ = _standin_map() if head is None else _build_standin_map(head)
    rt, T = m_.retarget, m_.targets.astype(np.float64)
    names = list(h.expression_names or UNITS)
    owned = [names.index(u) for u, shapes in STANDIN_TABLE.items()
             if u in names and all(rt.pos[ARKIT_INDEX[s], names.index(u)] > 0 for s in shapes)
             and u not in ("mouth_close", "lip_suck") and not any(u == k.split("->")[0] for k in m_.projection_rel_residual)]
    rng = np.random.default_rng(seed)
    err = lambda m: float(np.linalg.norm(h.v_template + np.einsum("tk,kvc->tvc", rt.weights(m), T)
                                         - head_vertices(h, m), axis=-1).max() * 1e3)
    units = np.zeros((n_frames, FRAME_DIM), np.float32)
    units[:, owned] = rng.uniform(0, 1, (n_frames, len(owned)))
    jaw = np.zeros((n_frames, FRAME_DIM), np.float32)
    jaw[:, JAW.start] = np.linspace(0, JAW_OPEN_FULL_RAD, n_frames)
    both = units.copy()
    both[:, JAW.start] = rng.uniform(0, JAW_OPEN_FULL_RAD, n_frames)
    out = {"units_max_mm": err(units), "jaw_only_max_mm": err(jaw), "jaw_and_units_max_mm": err(both)}
    out.update({f"projection_rel_residual.{k}": v for k, v in m_.projection_rel_residual.items()})
    return out


# ----------------------------------------------------------------------------- Live Link Face CSV


#: Live Link Face's CSV export: the 52 shapes in Apple's order, capitalised, except that LLF writes
#: JawRight before JawLeft and MouthRight before MouthLeft (columns are matched by name; values here are
#: written under the right name), then head and eye rotations.
LLF_SHAPE_COLUMNS: tuple[str, ...] = tuple(
    n[0].upper() + n[1:] for n in
    ARKIT_NAMES[:15] + ("jawRight", "jawLeft") + ARKIT_NAMES[17:21] + ("mouthRight", "mouthLeft") + ARKIT_NAMES[23:])
LLF_ROTATION_COLUMNS: tuple[str, ...] = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                                         "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
LLF_CSV_HEADER: tuple[str, ...] = ("Timecode", "BlendShapeCount") + LLF_SHAPE_COLUMNS + LLF_ROTATION_COLUMNS
LLF_VALUE_DECIMALS = 6


def llf_timecode(frame: int, fps: int) -> str:
    """Frame index -> Live Link Face's ``HH:MM:SS:FF.mmm`` (FF counts frames within the second at ``fps``,
    .mmm is the sub-frame, always 000 here)."""
    sec, ff = divmod(int(frame), int(fps))
    return f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}:{ff:02d}.000"


def live_link_csv(frames: ArkitFrames, fps: int) -> str:
    """:class:`ArkitFrames` -> the text of a Live Link Face CSV take (header + one row per frame).

    Head rotation is written in radians (yaw, pitch, roll as in :func:`head_rotation`); the frame has no eye
    pose, so the six eye columns are 0. BlendShapeCount is 61 (52 shapes + 9 rotations), as LLF writes.
    """
    col = [ARKIT_INDEX[n[0].lower() + n[1:]] for n in LLF_SHAPE_COLUMNS]
    values = np.concatenate([frames.weights[:, col], frames.head_rot,
                             np.zeros((len(frames), len(LLF_ROTATION_COLUMNS) - 3), np.float32)], axis=1)
    count = len(LLF_SHAPE_COLUMNS) + len(LLF_ROTATION_COLUMNS)
    lines = [",".join(LLF_CSV_HEADER)]
    fmt = f"{{:.{LLF_VALUE_DECIMALS}f}}"
    for t, row in enumerate(values):
        lines.append(",".join([llf_timecode(t, fps), str(count)] + [fmt.format(v) for v in row]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- fitting FLAME


FLAME_FIT_VERSION = "flame-fit/1"


def fit_flame_retarget(head, neutral, targets, *, ridge: float = 1e-6, jaw_probe_rad: float = JAW_OPEN_FULL_RAD,
                       source: str = "") -> LinearRetarget:
    """Fit a :class:`LinearRetarget` for a FLAME-topology head from ARKit target meshes.

    head: the FLAME :class:`~mm2face.engine.flame.HeadModel` (its 50 expression components and jaw joint);
    neutral: (V, 3) the user's neutral mesh; targets: (52, V, 3) the user's ARKit shapes (ARKIT_NAMES order)
    on the same topology. For each of FLAME's 50 expression directions and 3 jaw axes, in each sign, the
    ARKit weights w >= 0 minimise ``|(targets - neutral)^T w - d|^2 + lam |w|^2`` (``lam = ridge`` times the
    targets' mean squared offset norm, so ``ridge`` is unitless and tiny ones barely bias) where d is FLAME's vertex
    offset per unit of that value (jaw: the offset of a ``jaw_probe_rad`` rotation, divided by it). Head
    pose is not a blendshape: it goes to ``head_rot``. ``info`` holds the relative residual per value.
    """
    from scipy.optimize import nnls

    from .flame import head_vertices

    V = head.n_vertices
    neutral = np.asarray(neutral, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if neutral.shape != (V, 3):
        raise RetargetError(f"neutral mesh has shape {neutral.shape}; the FLAME model has {V} vertices: (V, 3)")
    if targets.shape != (N_ARKIT, V, 3):
        raise RetargetError(f"targets have shape {targets.shape}; expected ({N_ARKIT}, {V}, 3) in ARKIT_NAMES order")
    if not (np.isfinite(neutral).all() and np.isfinite(targets).all()):
        raise RetargetError("neutral or target meshes contain non-finite vertex coordinates")
    D = (targets - neutral[None]).reshape(N_ARKIT, -1).T                        # (V*3, 52)
    norms = (D ** 2).sum(axis=0)
    if not (norms > 0).any():
        raise RetargetError("all 52 targets equal the neutral mesh: nothing to fit")
    if ridge > 0:
        D = np.concatenate([D, np.sqrt(ridge * norms.mean()) * np.eye(N_ARKIT)])
    dirs = {d: head.exprdirs[:, :, d].astype(np.float64) for d in range(N_EXP)}
    zero = head_vertices(head, np.zeros((1, FRAME_DIM), np.float32))[0].astype(np.float64)
    for a in range(3):
        for sign in (1.0, -1.0):
            m = np.zeros((1, FRAME_DIM), np.float32)
            m[0, JAW.start + a] = sign * jaw_probe_rad
            dirs[(JAW.start + a, sign)] = (head_vertices(head, m)[0] - zero) / jaw_probe_rad
    pos = np.zeros((N_ARKIT, FRAME_DIM))
    neg = np.zeros((N_ARKIT, FRAME_DIM))
    info = {}
    pad = np.zeros(N_ARKIT if ridge > 0 else 0)
    for key, d in dirs.items():
        dim, signs = (key, (1.0, -1.0)) if isinstance(key, int) else (key[0], (key[1],))
        for sign in signs:
            b = (sign if isinstance(key, int) else 1.0) * d.reshape(-1)
            nb = np.linalg.norm(b)
            if nb == 0:
                continue
            coef, _ = nnls(D, np.concatenate([b, pad]))
            (pos if sign > 0 else neg)[:, dim] = coef
            res = np.linalg.norm(D[: V * 3] @ coef - b) / nb
            info[f"rel_residual.{'+' if sign > 0 else '-'}{dim}"] = float(res)
    return LinearRetarget(pos=pos, neg=neg, bias=np.zeros(N_ARKIT), version=FLAME_FIT_VERSION, source=source,
                          info=info)


__all__ = ["ARKIT_NAMES", "ARKIT_INDEX", "ARKIT_MAP_VERSION", "N_ARKIT", "HEAD_ROT_NAMES", "ArkitFrames",
           "LinearRetarget", "RetargetError", "to_arkit", "head_rotation", "standin_retarget",
           "arkit_morph_targets", "standin_projection_residuals", "fit_flame_retarget", "STANDIN_TABLE",
           "PROJECTED_UNITS", "UNDRIVEN", "standin_table_markdown", "standin_errors", "LLF_CSV_HEADER", "live_link_csv", "llf_timecode", "JAW_OPEN_FULL_RAD", "JAW_SIDE_FULL_RAD", "FLAME_FIT_VERSION"]
