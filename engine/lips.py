"""Lip geometry on a head's mesh: the midline lip gap, the lower lip against the upper teeth, and the unit
coefficient that brings either to a target.

Both the synthetic corpus (its truth closes the lips on p/b/m, ``training/synth_face.py``), the articulation
metrics (``training/articulation.py``) and the engine's lip-contact stage (``engine/closure.py``) read the lips
here, so "closed" means one thing everywhere.

Everything runs on a cut-down copy of the head (:func:`articulation_head`): the two midline lip vertices, the
upper incisor edge where the head has teeth, and the vertices the joint regressor reads, so a frame costs a
few dozen vertices instead of the whole mesh. All lengths are millimetres; the head pose is zeroed (the
lips are measured in the head's own frame).
"""
from __future__ import annotations

import numpy as np

from mm2face.engine.frame import FRAME_DIM, HEAD
from mm2face.engine.units import unit

M_TO_MM = 1000.0

_SUBSET: dict[int, tuple] = {}
_CLOSED: dict[int, float] = {}          # closed-lip gap per articulation head (id of the cut-down head)


def articulation_head(head):
    """``head`` cut down to the midline lip vertices, the upper incisor edge (when the head has teeth) and the
    vertices the joint regressor reads; masks re-indexed. Exact (joints see all they depend on), cached."""
    hit = _SUBSET.get(id(head))
    if hit is not None and hit[0] is head:
        return hit[1]
    from mm2face.engine.flame import HeadModel
    masks = getattr(head, "masks", None) or {}
    if "lip_midline" not in masks:
        raise KeyError(f"head {head.name!r} has no 'lip_midline' mask (upper and lower midline lip vertex); the "
                       "lip measures need it: use the stand-in head (load_head('standin'))")
    named = {k: np.asarray(masks[k], np.int64) for k in ("lip_midline", "upper_incisor_edge") if k in masks}
    jcols = np.flatnonzero(np.abs(np.asarray(head.J_regressor)).sum(axis=0) > 0)
    keep = np.unique(np.concatenate([jcols, *named.values()]))
    remap = -np.ones(head.n_vertices, np.int64)
    remap[keep] = np.arange(len(keep))
    sub = HeadModel(name=f"{head.name}-articulation", v_template=head.v_template[keep],
                    faces=np.zeros((0, 3), np.int32), shapedirs=head.shapedirs[keep], exprdirs=head.exprdirs[keep],
                    posedirs=head.posedirs[keep], J_regressor=head.J_regressor[:, keep], weights=head.weights[keep],
                    parents=head.parents, masks={k: remap[v] for k, v in named.items()})
    _SUBSET[id(head)] = (head, sub)
    return sub


def _verts_mm(sub, motion: np.ndarray) -> np.ndarray:
    """``motion (T, 56)`` -> the cut-down head's vertices ``(T, V_sub, 3)`` mm, head pose zeroed."""
    from mm2face.engine.flame import head_vertices
    m = np.array(motion, dtype=np.float32, copy=True).reshape(-1, FRAME_DIM)
    m[:, HEAD] = 0.0
    return np.asarray(head_vertices(sub, m), np.float32) * M_TO_MM


def lip_geometry(head, motion: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame of ``motion (T, 56)``: ``gap_mm (T,)`` midline lip gap, ``upper_mm``/``lower_mm (T, 3)`` the two
    midline lip vertices, and (heads with teeth) ``teeth_mm (T,)`` the lower lip's distance to the upper
    teeth's biting edge."""
    sub = articulation_head(head)
    v = _verts_mm(sub, motion)
    up, lo = v[:, sub.masks["lip_midline"][0]], v[:, sub.masks["lip_midline"][1]]
    out = {"gap_mm": up[:, 1] - lo[:, 1], "upper_mm": up, "lower_mm": lo}
    if "upper_incisor_edge" in sub.masks:
        edge = v[:, sub.masks["upper_incisor_edge"]]                              # (T, E, 3)
        out["teeth_mm"] = np.linalg.norm(edge - lo[:, None], axis=-1).min(axis=1)
    return out


def closed_gap_mm(head) -> float:
    """The head's closed-lip midline gap (mm): the gap at the rest pose."""
    sub = articulation_head(head)
    if id(sub) not in _CLOSED:
        _CLOSED[id(sub)] = float(lip_geometry(head, np.zeros((1, FRAME_DIM), np.float32))["gap_mm"][0])
    return _CLOSED[id(sub)]


def solve_unit(head, motion: np.ndarray, name: str, target_mm: np.ndarray, what: str = "gap") -> np.ndarray:
    """Per frame, the coefficient of unit ``name`` that brings ``what`` ("gap": the midline lip gap; "lower_y":
    the lower lip's height) to ``target_mm (T,)`` with every other value of ``motion (T, 56)`` kept.

    Skinning is linear in the rest-pose offsets, so two evaluations (unit at 0 and at 1) give the exact
    answer. Returns ``(T,)``, unclipped (the caller bounds it)."""
    if what not in ("gap", "lower_y"):
        raise ValueError(f"solve_unit: what must be 'gap' or 'lower_y', got {what!r}")
    motion = np.asarray(motion, np.float32)
    T = len(motion)
    m01 = np.concatenate([motion, motion]).astype(np.float32)
    m01[:T, unit(name)], m01[T:, unit(name)] = 0.0, 1.0
    g = lip_geometry(head, m01)                                   # one mesh pass for both
    v = g["gap_mm"] if what == "gap" else g["lower_mm"][:, 1]
    a, b = v[:T], v[T:]
    slope = b - a
    return np.where(np.abs(slope) > 1e-6, (np.asarray(target_mm) - a) / np.where(slope == 0, 1, slope), 0.0)


def incisor_edge_y_mm(head) -> float:
    """Height (mm) of the upper teeth's biting edge at the midline (rest pose; the teeth move with the head)."""
    sub = articulation_head(head)
    if "upper_incisor_edge" not in sub.masks:
        raise KeyError(f"head {head.name!r} has no 'upper_incisor_edge' mask (no teeth)")
    return float(sub.v_template[sub.masks["upper_incisor_edge"], 1].min() * M_TO_MM)
