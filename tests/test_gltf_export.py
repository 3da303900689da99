"""The stand-in head as glTF 2.0 (``mm2face-view --export head.glb``): the Khronos glTF validator
(npm gltf-validator, web/validate_gltf.mjs) reports no errors; the file holds the 52 ARKit morph
targets in Apple's order, the node chain root -> neck -> head -> jaw, and a skin that moves the
vertices exactly as the project's own FLAME layer does for the same head and jaw pose."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mm2face.engine.arkit import ARKIT_NAMES, arkit_morph_targets
from mm2face.engine.flame import head_vertices, load_head
from mm2face.viewer import cli
from mm2face.viewer.gltf import GltfError, accessor_array, build_glb, pack_glb, read_glb

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / "web" / "validate_gltf.mjs"
SKIN_TOL_M = 1e-5        # 0.01 mm, float32 rounding: no stand-in vertex has more than glTF's 4 joint weights


def validate(path: Path) -> dict:
    """The Khronos validator's report of one file."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (the glTF validator runs on Node 20+; see scripts/bootstrap.sh)")
    if not (ROOT / "web" / "node_modules" / "gltf-validator").is_dir():
        pytest.fail("gltf-validator is not installed: run scripts/bootstrap.sh (npm ci in web/)")
    r = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("gltf") / "head.glb"
    assert cli.main(["--export", str(path)]) == 0
    return path


def test_the_khronos_validator_reports_no_errors(exported):
    report = validate(exported)
    assert report["errors"] == 0, report["messages"]
    assert report["warnings"] == 0, report["messages"]
    info = report["info"]
    head = load_head("standin")
    assert info["hasMorphTargets"] and info["hasSkins"] and info["maxInfluences"] == 4
    assert info["totalVertexCount"] == head.n_vertices and info["totalTriangleCount"] == len(head.faces)


def test_the_validator_catches_a_broken_file(exported, tmp_path):
    gltf, binary = read_glb(exported.read_bytes())
    gltf["accessors"][gltf["meshes"][0]["primitives"][0]["indices"]]["count"] += 3   # indices past the buffer
    broken = tmp_path / "broken.glb"
    broken.write_bytes(pack_glb(gltf, binary))
    assert validate(broken)["errors"] > 0


def test_morph_targets_and_nodes(exported):
    gltf, binary = read_glb(exported.read_bytes())
    mesh = gltf["meshes"][0]
    prim = mesh["primitives"][0]
    assert mesh["extras"]["targetNames"] == list(ARKIT_NAMES) and len(prim["targets"]) == 52
    assert mesh["weights"] == [0.0] * 52
    nodes = gltf["nodes"]
    by_name = {n["name"]: i for i, n in enumerate(nodes)}

    def children(name):
        return [nodes[c]["name"] for c in nodes[by_name[name]].get("children", [])]
    assert children("mm2face_standin") == ["neck"]
    assert children("neck") == ["head"]
    assert set(children("head")) == {"jaw", "eye_L", "eye_R"}
    skin = gltf["skins"][0]
    assert [nodes[j]["name"] for j in skin["joints"]] == ["neck", "head", "jaw", "eye_L", "eye_R"]
    assert set(gltf["scenes"][0]["nodes"]) == {by_name["mm2face_standin"], by_name["standin_head"]}
    # the targets read back equal the engine's (sparse storage drops only sub-0.1-micrometre offsets)
    T = arkit_morph_targets()
    for k in (ARKIT_NAMES.index("jawOpen"), ARKIT_NAMES.index("eyeBlinkLeft"), ARKIT_NAMES.index("mouthSmileRight")):
        got = accessor_array(gltf, binary, prim["targets"][k]["POSITION"])
        np.testing.assert_allclose(got, T[k], atol=1e-6)
    assert any("sparse" in gltf["accessors"][t["POSITION"]] for t in prim["targets"])   # the file stays small


def _rot(axis_angle) -> np.ndarray:
    r = np.asarray(axis_angle, np.float64)
    a = np.linalg.norm(r)
    if a < 1e-12:
        return np.eye(3)
    k = r / a
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def test_the_skin_moves_vertices_like_the_flame_layer(exported):
    """Evaluate the glTF skin in numpy (node transforms x inverse bind matrices, 4 weights per vertex)
    with the head and jaw nodes turned by a frame's poses; compare with head_vertices of that frame."""
    gltf, binary = read_glb(exported.read_bytes())
    prim = gltf["meshes"][0]["primitives"][0]
    pos = accessor_array(gltf, binary, prim["attributes"]["POSITION"]).astype(np.float64)
    joints = accessor_array(gltf, binary, prim["attributes"]["JOINTS_0"]).astype(np.int64)
    weights = accessor_array(gltf, binary, prim["attributes"]["WEIGHTS_0"]).astype(np.float64)
    skin = gltf["skins"][0]
    inv_bind = accessor_array(gltf, binary, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    nodes = gltf["nodes"]
    frame = np.zeros(56, np.float32)
    frame[50:53] = (0.15, -0.3, 0.1)        # head pose (axis-angle, rad)
    frame[53:56] = (0.25, 0.03, 0.0)        # jaw open, a little to the side
    rotations = {"head": frame[50:53], "jaw": frame[53:56]}
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}

    def world(i):
        m = np.eye(4)
        m[:3, 3] = nodes[i].get("translation", (0, 0, 0))
        m[:3, :3] = _rot(rotations.get(nodes[i]["name"], (0, 0, 0)))
        return world(parent[i]) @ m if i in parent else m
    S = np.stack([world(j) @ ib for j, ib in zip(skin["joints"], inv_bind)])          # (5, 4, 4)
    M = np.einsum("vk,vkrc->vrc", weights, S[joints])                                   # (V, 4, 4)
    got = np.einsum("vrc,vc->vr", M[:, :3, :3], pos) + M[:, :3, 3]
    want = head_vertices(load_head("standin"), frame[None])[0]
    err = np.linalg.norm(got - want, axis=1)
    assert err.max() < SKIN_TOL_M, f"max {err.max() * 1e3:.3f} mm at vertex {err.argmax()}"
    assert np.linalg.norm(want - pos, axis=1).max() > 0.01        # the poses moved the head by centimetres


def test_bad_targets_are_refused():
    head = load_head("standin")
    with pytest.raises(GltfError, match="morph targets must be"):
        build_glb(head, np.zeros((2, 10, 3), np.float32), ["a", "b"])
    with pytest.raises(GltfError, match="names"):
        build_glb(head, np.zeros((1, head.n_vertices, 3), np.float32), ["a", "b"])
    bad = np.zeros((1, head.n_vertices, 3), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(GltfError, match="NaN"):
        build_glb(head, bad, ["a"])


def test_export_cli_errors(tmp_path, capsys):
    assert cli.main(["--export", str(tmp_path / "head.gltf")]) == 2
    assert ".glb" in capsys.readouterr().err
    assert cli.main(["--export", str(tmp_path / "h.glb"), "--demo"]) == 2
    assert "on its own" in capsys.readouterr().err
