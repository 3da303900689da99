"""The stand-in head as a glTF 2.0 binary (GLB): mesh, material, skeleton and the 52 ARKit morph targets.

    from mm2face.viewer.gltf import export_head_glb
    export_head_glb("head.glb")            # mm2face-view --export head.glb

Any glTF engine (three.js, Unity glTFast, Godot, Blender, Unreal's glTF importer) then renders the
same avatar the project draws with moderngl. What the file holds:

* one mesh, one primitive: ``POSITION``, ``NORMAL``, ``COLOR_0`` (linear RGB albedo of the parts:
  skin, lips, hair, brows, eyes, teeth; the same colours as :func:`mm2face.viewer.render.head_colors`),
  ``JOINTS_0`` / ``WEIGHTS_0`` (the head's skinning, the 4 largest weights per vertex), triangle indices;
* 52 morph targets in Apple's ARKit order (``mesh.extras.targetNames``, the names of
  :data:`mm2face.engine.arkit.ARKIT_NAMES`), each with ``POSITION`` and ``NORMAL`` deltas, stored as
  sparse accessors when they move few vertices;
* nodes ``mm2face_standin`` (root) -> ``neck`` -> ``head`` -> ``jaw`` and ``head`` -> ``eye_L`` / ``eye_R``,
  the head's five FLAME joints: ``neck`` is FLAME's global joint at the bottom of the neck, ``head`` is
  FLAME's neck joint, about which the frame's head pose turns the head; one skin binds the mesh to them.

Units and axes are glTF's and the stand-in's alike: metres, +y up, the face looks toward +z, the
subject's left is +x. The ARKit targets already contain the jaw's opening (``jawOpen``), so an engine
driving ARKit weights leaves the ``jaw`` node at rest and turns ``head`` by the frame's head rotation.

The GLB is written by hand (numpy + struct, glTF 2.0 spec section "GLB File Format Specification").
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mm2face.engine.flame import HeadModel, JOINT_NAMES

GLB_MAGIC = 0x46546C67            # "glTF"
GLB_VERSION = 2
CHUNK_JSON = 0x4E4F534A           # "JSON"
CHUNK_BIN = 0x004E4942            # "BIN\0"
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
TRIANGLES = 4
ROOT_NAME = "mm2face_standin"
MESH_NODE_NAME = "standin_head"
# glTF node name of each FLAME joint (index = FLAME joint index, see mm2face.engine.flame.JOINT_NAMES)
NODE_OF_JOINT = {"global": "neck", "neck": "head", "jaw": "jaw", "left_eye": "eye_L", "right_eye": "eye_R"}
MAX_INFLUENCES = 4                # joints per vertex in JOINTS_0 / WEIGHTS_0


class GltfError(ValueError):
    """The head or the morph targets cannot be written as glTF (wrong shapes, non-finite values)."""


@dataclass(frozen=True)
class GltfConfig:
    sparse_max_fraction: float = 0.5   # a target moving fewer than this fraction of vertices is stored sparse
    moved_eps_m: float = 1e-7          # a vertex delta below this (m) counts as zero
    normal_eps: float = 1e-3           # a change of a unit normal below this counts as zero (invisible)
    target_normals: bool = True        # store NORMAL deltas per target (lighting follows the morph)
    roughness: float = 0.6             # material: pbrMetallicRoughness, non-metallic
    name: str = "mm2face stand-in head"


# ----------------------------------------------------------------------------- GLB container


def _pad(b: bytes, fill: bytes) -> bytes:
    return b + fill * (-len(b) % 4)


def pack_glb(gltf: dict, binary: bytes) -> bytes:
    """A GLB file: 12-byte header, the JSON chunk (space padded), the BIN chunk (zero padded)."""
    js = _pad(json.dumps(gltf, separators=(",", ":")).encode("utf-8"), b" ")
    bn = _pad(binary, b"\0")
    total = 12 + 8 + len(js) + (8 + len(bn) if bn else 0)
    out = struct.pack("<III", GLB_MAGIC, GLB_VERSION, total) + struct.pack("<II", len(js), CHUNK_JSON) + js
    if bn:
        out += struct.pack("<II", len(bn), CHUNK_BIN) + bn
    return out


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """``(gltf JSON dict, BIN chunk bytes)`` of a GLB file; :class:`GltfError` if it is not one."""
    if len(data) < 20:
        raise GltfError(f"not a GLB file: {len(data)} bytes")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != GLB_VERSION or length != len(data):
        raise GltfError("not a glTF 2.0 GLB file (bad magic, version or length)")
    n, kind = struct.unpack_from("<II", data, 12)
    if kind != CHUNK_JSON:
        raise GltfError("GLB: the first chunk is not JSON")
    gltf = json.loads(data[20:20 + n])
    off = 20 + n
    binary = b""
    if off < len(data):
        m, kind = struct.unpack_from("<II", data, off)
        if kind != CHUNK_BIN:
            raise GltfError("GLB: the second chunk is not BIN")
        binary = data[off + 8:off + 8 + m]
    return gltf, binary


_NUMPY_OF = {FLOAT: np.float32, UNSIGNED_BYTE: np.uint8, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32}
_WIDTH_OF = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def accessor_array(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    """The data of accessor ``index`` as a ``(count, width)`` array (sparse substitution applied;
    an accessor without a buffer view is zeros). Tightly packed views only, as :func:`build_glb` writes."""
    acc = gltf["accessors"][index]
    dtype, width = _NUMPY_OF[acc["componentType"]], _WIDTH_OF[acc["type"]]

    def view(i, dt, n):
        v = gltf["bufferViews"][i]
        return np.frombuffer(binary, dt, n, v["byteOffset"]).copy()

    out = (view(acc["bufferView"], dtype, acc["count"] * width).reshape(-1, width)
           if "bufferView" in acc else np.zeros((acc["count"], width), dtype))
    sp = acc.get("sparse")
    if sp:
        idx = view(sp["indices"]["bufferView"], _NUMPY_OF[sp["indices"]["componentType"]], sp["count"])
        out[idx.astype(np.int64)] = view(sp["values"]["bufferView"], dtype, sp["count"] * width).reshape(-1, width)
    return out


class _Builder:
    """Accumulates buffer views and accessors of one binary buffer."""

    def __init__(self):
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: np.ndarray, target: int | None = None) -> int:
        self.blob += b"\0" * (-len(self.blob) % 4)          # every accessor component is <= 4 bytes
        raw = np.ascontiguousarray(data).tobytes()
        v = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(raw)}
        if target is not None:
            v["target"] = target
        self.blob += raw
        self.views.append(v)
        return len(self.views) - 1

    def accessor(self, data: np.ndarray, kind: str, target: int | None = ARRAY_BUFFER,
                 min_max: bool = False, normalized: bool = False) -> int:
        ctype = {np.float32: FLOAT, np.uint8: UNSIGNED_BYTE, np.uint16: UNSIGNED_SHORT,
                 np.uint32: UNSIGNED_INT}[data.dtype.type]
        acc = {"bufferView": self.view(data, target), "componentType": ctype, "count": int(len(data)), "type": kind}
        if normalized:
            acc["normalized"] = True
        if min_max:
            self._min_max(acc, data)
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def sparse_accessor(self, dense: np.ndarray, kind: str, moved: np.ndarray) -> int:
        """A float accessor of ``dense`` (N, 3) stored as zeros plus the rows ``moved`` (sorted indices)."""
        idx = np.asarray(moved, np.uint32)
        acc = {"componentType": FLOAT, "count": int(len(dense)), "type": kind}
        if len(idx):                  # no rows at all: an accessor without data is all zeros
            acc["sparse"] = {"count": int(len(idx)),
                             "indices": {"bufferView": self.view(idx), "componentType": UNSIGNED_INT},
                             "values": {"bufferView": self.view(np.ascontiguousarray(dense[idx], np.float32))}}
        self._min_max(acc, dense)
        self.accessors.append(acc)
        return len(self.accessors) - 1

    @staticmethod
    def _min_max(acc: dict, data: np.ndarray) -> None:
        d = data.reshape(len(data), -1).astype(np.float64)
        acc["min"] = [float(np.float32(x)) for x in d.min(0)]
        acc["max"] = [float(np.float32(x)) for x in d.max(0)]


# ----------------------------------------------------------------------------- the head


def _top_influences(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weights (V, J)`` -> ``(joints (V, 4) uint8, weights (V, 4) float32)``: the 4 largest per vertex,
    renormalised to sum to 1; unused slots get weight 0 and joint 0 (as glTF asks)."""
    w = np.asarray(weights, np.float64)
    k = min(MAX_INFLUENCES, w.shape[1])
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(w, order, axis=1)
    top = np.where(top > 1e-6, top, 0.0)
    top /= np.maximum(top.sum(1, keepdims=True), 1e-12)
    joints = np.where(top > 0, order, 0)
    pad = MAX_INFLUENCES - k
    top = np.pad(top, ((0, 0), (0, pad))).astype(np.float32)
    joints = np.pad(joints, ((0, 0), (0, pad))).astype(np.uint8)
    # float32 rounding: put the remainder on the largest weight so each row sums to 1 in float32
    top[:, 0] += np.float32(1.0) - top.sum(1, dtype=np.float32)
    return joints, top


def _joint_positions(head: HeadModel) -> np.ndarray:
    """(5, 3) rest positions of the FLAME joints (m)."""
    return (head.J_regressor.astype(np.float64) @ head.v_template.astype(np.float64)).astype(np.float32)


def build_glb(head: HeadModel, targets: np.ndarray, target_names: list[str],
              config: GltfConfig = GltfConfig()) -> bytes:
    """The GLB bytes of ``head`` with morph targets ``targets: (K, V, 3)`` float32 vertex deltas (m),
    named ``target_names`` (K names, kept in ``mesh.extras.targetNames``)."""
    from .render import head_colors, vertex_normal_matrix, vertex_normals

    V = head.n_vertices
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 3 or targets.shape[1:] != (V, 3):
        raise GltfError(f"morph targets must be (K, {V}, 3) vertex deltas for head {head.name!r}; got {targets.shape}")
    if len(target_names) != len(targets):
        raise GltfError(f"{len(targets)} morph targets but {len(target_names)} names")
    if not np.isfinite(targets).all():
        raise GltfError("morph targets contain NaN or Inf")
    if len(JOINT_NAMES) != len(head.parents):
        raise GltfError(f"head {head.name!r} has {len(head.parents)} joints; the glTF skeleton expects FLAME's 5")

    b = _Builder()
    pos = np.ascontiguousarray(head.v_template, np.float32)
    faces = np.ascontiguousarray(head.faces).astype(np.uint32)
    acc_n = vertex_normal_matrix(faces.astype(np.int64), V)
    normals = vertex_normals(pos, faces, acc_n)
    albedo, _ = head_colors(head)
    joints, weights = _top_influences(head.weights)
    attributes = {
        "POSITION": b.accessor(pos, "VEC3", min_max=True),
        "NORMAL": b.accessor(normals, "VEC3"),
        "COLOR_0": b.accessor(np.ascontiguousarray(albedo, np.float32), "VEC3"),
        "JOINTS_0": b.accessor(joints, "VEC4"),
        "WEIGHTS_0": b.accessor(weights, "VEC4"),
    }
    indices = b.accessor(faces.reshape(-1), "SCALAR", target=ELEMENT_ARRAY_BUFFER)

    morphs = []
    for d in targets:
        deltas = {"POSITION": (d, config.moved_eps_m)}
        if config.target_normals:    # the normals' change: lighting follows the morph
            deltas["NORMAL"] = (vertex_normals(pos + d, faces, acc_n) - normals, config.normal_eps)
        t = {}
        for name, (delta, eps) in deltas.items():
            delta = np.where(np.abs(delta).max(1, keepdims=True) > eps, delta, 0.0).astype(np.float32)
            rows = np.flatnonzero(np.abs(delta).max(1) > 0)
            if len(rows) < config.sparse_max_fraction * V:
                t[name] = b.sparse_accessor(delta, "VEC3", rows)
            else:
                t[name] = b.accessor(delta, "VEC3", min_max=True)
        morphs.append(t)

    J = _joint_positions(head)
    parents = [int(p) for p in head.parents]
    # nodes: 0 the skeleton's root, 1 the mesh (a scene root: glTF ignores a skinned mesh's parents),
    # 2.. the joints in FLAME order
    first_joint = 2
    nodes = [{"name": ROOT_NAME, "children": [first_joint]},
             {"name": MESH_NODE_NAME, "mesh": 0, "skin": 0}]
    for j, jname in enumerate(JOINT_NAMES):
        t = J[j] - (J[parents[j]] if parents[j] >= 0 else 0.0)
        node = {"name": NODE_OF_JOINT[jname], "translation": [float(x) for x in t],
                "extras": {"flame_joint": jname}}
        kids = [first_joint + c for c, p in enumerate(parents) if p == j]
        if kids:
            node["children"] = kids
        nodes.append(node)
    inverse_bind = np.zeros((len(J), 4, 4), np.float32)
    inverse_bind[:] = np.eye(4, dtype=np.float32)
    inverse_bind[:, 3, :3] = -J                     # column-major: translation in the last column
    skin = {"name": "flame_joints", "skeleton": first_joint,
            "joints": [first_joint + j for j in range(len(J))],
            "inverseBindMatrices": b.accessor(inverse_bind.reshape(len(J), 16), "MAT4", target=None)}

    gltf = {
        "asset": {"version": "2.0", "generator": "mm2face-live viewer/gltf.py",
                  "copyright": "mm2face-live stand-in head, generated by code, Apache-2.0",
                  "extras": {"units": "metres; +y up; the face looks toward +z; the subject's left is +x"}},
        "scene": 0,
        "scenes": [{"name": config.name, "nodes": [0, 1]}],   # a skinned mesh's node is a root
        "nodes": nodes,
        "meshes": [{"name": MESH_NODE_NAME,
                    "primitives": [{"attributes": attributes, "indices": indices, "material": 0,
                                    "mode": TRIANGLES, "targets": morphs}],
                    "weights": [0.0] * len(targets),
                    "extras": {"targetNames": list(target_names)}}],
        "materials": [{"name": "standin_skin",
                       "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
                                                "roughnessFactor": config.roughness}}],
        "skins": [skin],
        "accessors": b.accessors,
        "bufferViews": b.views,
        "buffers": [{"byteLength": len(b.blob) + (-len(b.blob) % 4)}],
    }
    return pack_glb(gltf, bytes(b.blob))


def standin_glb(config: GltfConfig = GltfConfig()) -> bytes:
    """The stand-in head with its 52 ARKit morph targets (from :mod:`mm2face.engine.arkit`) as GLB bytes."""
    from mm2face.engine.arkit import ARKIT_NAMES, arkit_morph_targets
    from mm2face.engine.flame import load_head

    head = load_head("standin")
    return build_glb(head, arkit_morph_targets(), list(ARKIT_NAMES), config)   # None: the cached stand-in map


def export_head_glb(path, config: GltfConfig = GltfConfig()) -> Path:
    """Write :func:`standin_glb` to ``path`` (``.glb``). Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise GltfError(f"the glTF export is a binary .glb file; got {path.name!r} (name it e.g. head.glb)")
    data = standin_glb(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
