"""ARKit-52 retargeting (engine/arkit.py): names and order, range, exactness on the stand-in head, lips that
close, head rotation axes, the FLAME fit and the Live Link Face CSV."""
import csv
import dataclasses
import io

import numpy as np
import pytest

from mm2face.engine import arkit as A
from mm2face.engine.arkit import (ARKIT_INDEX, ARKIT_NAMES, LinearRetarget, RetargetError, arkit_morph_targets,
                                  head_rotation, standin_retarget, to_arkit)
from mm2face.engine.flame import head_vertices, load_head
from mm2face.engine.frame import FRAME_DIM, HEAD, JAW
from mm2face.engine.units import UNITS, unit

# Apple's ARFaceAnchor order, written out independently of the module (docs: ARFaceAnchor.BlendShapeLocation)
APPLE_ORDER = """eyeBlinkLeft eyeLookDownLeft eyeLookInLeft eyeLookOutLeft eyeLookUpLeft eyeSquintLeft eyeWideLeft
eyeBlinkRight eyeLookDownRight eyeLookInRight eyeLookOutRight eyeLookUpRight eyeSquintRight eyeWideRight
jawForward jawLeft jawRight jawOpen mouthClose mouthFunnel mouthPucker mouthLeft mouthRight mouthSmileLeft
mouthSmileRight mouthFrownLeft mouthFrownRight mouthDimpleLeft mouthDimpleRight mouthStretchLeft mouthStretchRight
mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthPressLeft mouthPressRight mouthLowerDownLeft
mouthLowerDownRight mouthUpperUpLeft mouthUpperUpRight browDownLeft browDownRight browInnerUp browOuterUpLeft
browOuterUpRight cheekPuff cheekSquintLeft cheekSquintRight noseSneerLeft noseSneerRight tongueOut""".split()

# Measured bounds (docs/arkit.md): the jaw's chord linearisation, and the same plus expression offsets that
# the jaw would rotate (the additive ARKit model does not rotate them). Metres.
JAW_ONLY_MAX_ERR_M = 0.0026
JAW_AND_UNITS_MAX_ERR_M = 0.0036
EXACT_TOL_M = 2e-6          # float32 rounding on a head of ~0.1 m
LIPS_MET_TOL_M = 2e-4       # 0.2 mm: "met" against an open gap of 5-25 mm


@pytest.fixture(scope="module")
def head():
    return load_head("standin")


def _mapped_units():
    """Stand-in units whose ARKit shapes they own (exact both ways)."""
    rt = standin_retarget()
    T = arkit_morph_targets()
    out = []
    for u, shapes in A.STANDIN_TABLE.items():
        if u in UNITS and all(rt.pos[ARKIT_INDEX[s], unit(u)] > 0 and np.abs(T[ARKIT_INDEX[s]]).max() > 0
                              for s in shapes) and u not in ("lip_suck",) + (("mouth_close",)):
            out.append(u)
    return out


def _render(head, weights):
    return head.v_template[None] + np.einsum("tk,kvc->tvc", weights, arkit_morph_targets())


def test_names_are_apples_52_in_order():
    assert ARKIT_NAMES == tuple(APPLE_ORDER) and len(set(ARKIT_NAMES)) == 52
    assert ARKIT_NAMES.index("mouthSmileLeft") == 23 and ARKIT_NAMES[17] == "jawOpen"
    assert A.ARKIT_MAP_VERSION.startswith("standin-arkit/")


def test_weights_shape_and_range_for_any_frame():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 2.0, (40, FRAME_DIM)).astype(np.float32)       # far outside plausible, both signs
    m[:, HEAD] = rng.uniform(-1.2, 1.2, (40, 3))
    a = to_arkit(m)
    assert a.weights.shape == (40, 52) and a.weights.dtype == np.float32
    assert a.head_rot.shape == (40, 3) and a.head_rot.dtype == np.float32
    assert a.weights.min() >= 0.0 and a.weights.max() <= 1.0
    assert (a.weights > 0.99).any()                                    # it does saturate, not scale down
    one = to_arkit(m[0])
    np.testing.assert_array_equal(one.weights, a.weights[:1])
    with pytest.raises(ValueError, match="expected shape"):
        to_arkit(np.zeros((3, 50), np.float32))


def test_unit_map_is_one_to_one_where_arkit_has_the_shape():
    w = to_arkit(np.eye(FRAME_DIM, dtype=np.float32)[:50]).weights     # one unit at 1 per row
    for u, shapes in [("inner_brow_raiser", ["browInnerUp"]), ("brow_lowerer", ["browDownLeft", "browDownRight"]),
                      ("lip_corner_puller_left", ["mouthSmileLeft"]), ("blink_right", ["eyeBlinkRight"]),
                      ("lip_funneler", ["mouthFunnel"]), ("cheek_puff", ["cheekPuff"])]:
        got = {ARKIT_NAMES[k] for k in np.flatnonzero(w[unit(u)] > 1e-6)}
        assert got == set(shapes), u
        assert np.allclose(w[unit(u)][[ARKIT_INDEX[s] for s in shapes]], 1.0)
    assert not w[[i for i, n in enumerate(UNITS) if n.startswith("unused_")]].any()


def test_morph_targets_reproduce_the_standin_mesh_exactly_for_mapped_units(head):
    rng = np.random.default_rng(1)
    m = np.zeros((6, FRAME_DIM), np.float32)
    units = _mapped_units()
    assert len(units) >= 20
    m[:, [unit(u) for u in units]] = rng.uniform(0, 1, (6, len(units)))
    m[:, HEAD] = rng.uniform(-0.3, 0.3, (6, 3))                      # head pose goes to head_rot, not the mesh
    a = to_arkit(m)
    ref = m.copy()
    ref[:, HEAD] = 0
    err = np.abs(_render(head, a.weights) - head_vertices(head, ref)).max()
    assert err < EXACT_TOL_M
    # the side split is a partition: left + right shapes add up to the unit's own offsets
    T = arkit_morph_targets()
    np.testing.assert_allclose(T[ARKIT_INDEX["browDownLeft"]] + T[ARKIT_INDEX["browDownRight"]],
                               head.exprdirs[:, :, unit("brow_lowerer")], atol=1e-7)
    right_side = head.v_template[:, 0] < -0.02                    # 5 blend half-widths right of the midline
    assert np.abs(T[ARKIT_INDEX["browDownLeft"]][right_side]).max() < 1e-4 * np.abs(T[ARKIT_INDEX["browDownRight"]]).max()


def test_jaw_linearisation_error_is_within_the_stated_bound(head):
    rng = np.random.default_rng(2)
    phis = np.linspace(0.0, A.JAW_OPEN_FULL_RAD, 9)
    m = np.zeros((len(phis), FRAME_DIM), np.float32)
    m[:, JAW.start] = phis
    a = to_arkit(m)
    np.testing.assert_allclose(a.weights[:, ARKIT_INDEX["jawOpen"]], phis / A.JAW_OPEN_FULL_RAD, rtol=1e-5)
    err = np.linalg.norm(_render(head, a.weights) - head_vertices(head, m), axis=-1).max(axis=1)
    assert err[0] < EXACT_TOL_M and err[-1] < EXACT_TOL_M                # exact at jawOpen 0 and 1
    assert err.max() < JAW_ONLY_MAX_ERR_M and err.max() > 0.5 * JAW_ONLY_MAX_ERR_M   # the bound is tight
    # jaw to the side: ry > 0 swings the chin to the subject's left (+x) -> jawLeft
    side = np.zeros((2, FRAME_DIM), np.float32)
    side[0, JAW.start + 1], side[1, JAW.start + 1] = 0.05, -0.05
    w = to_arkit(side).weights
    assert w[0, ARKIT_INDEX["jawLeft"]] == pytest.approx(0.5) and w[0, ARKIT_INDEX["jawRight"]] == 0
    assert w[1, ARKIT_INDEX["jawRight"]] == pytest.approx(0.5) and w[1, ARKIT_INDEX["jawLeft"]] == 0
    # jaw plus units: adds the offsets the jaw would have rotated
    units = _mapped_units()
    m2 = np.zeros((8, FRAME_DIM), np.float32)
    m2[:, [unit(u) for u in units]] = rng.uniform(0, 1, (8, len(units)))
    m2[:, JAW.start] = rng.uniform(0, A.JAW_OPEN_FULL_RAD, 8)
    err2 = np.linalg.norm(_render(head, to_arkit(m2).weights) - head_vertices(head, m2), axis=-1).max()
    assert err2 < JAW_AND_UNITS_MAX_ERR_M


def _head_with_mouth_close(head):
    """The stand-in head if it has a mouth_close unit (issue 15), else a copy with one in the first unused slot:
    offsets that raise the midline lower lip back onto the upper one (as the real unit does)."""
    names = list(head.expression_names)
    if "mouth_close" in names:
        return head, names.index("mouth_close")
    slot = names.index(next(n for n in names if n.startswith("unused_")))
    lower = head.weights[:, 2] * (np.abs(head.v_template[:, 0]) < 0.03) * (head.v_template[:, 2] > 0.07)
    d = np.zeros_like(head.v_template)
    d[:, 1] = 0.012 * lower
    exprdirs = head.exprdirs.copy()
    exprdirs[:, :, slot] = d
    names[slot] = "mouth_close"
    return dataclasses.replace(head, exprdirs=exprdirs, expression_names=names), slot


def test_lips_that_meet_in_the_frame_meet_in_arkit(head):
    h, slot = _head_with_mouth_close(head)
    rt = standin_retarget(h)
    targets = arkit_morph_targets(h)
    gap = lambda verts: A._midline_lip_gap_change(h, verts - h.v_template)     # 0 = lips at rest contact
    for phi in (0.06, 0.12, 0.2):
        def frame(c):
            m = np.zeros((1, FRAME_DIM), np.float32)
            m[0, JAW.start], m[0, slot] = phi, c
            return m
        g0, g1 = gap(head_vertices(h, frame(0.0))[0]), gap(head_vertices(h, frame(1.0))[0])
        assert g0 > 0.004                                          # the jaw alone opens the lips
        c = -g0 / (g1 - g0)                                        # skinning is linear in the unit: lips meet
        m = frame(c)
        assert abs(gap(head_vertices(h, m)[0])) < 1e-6
        w = to_arkit(m, rt).weights[0]
        jaw, close = w[ARKIT_INDEX["jawOpen"]], w[ARKIT_INDEX["mouthClose"]]
        assert jaw == pytest.approx(phi / A.JAW_OPEN_FULL_RAD) and close == pytest.approx(jaw, abs=0.01)
        assert close <= jaw
        rendered = h.v_template + np.einsum("k,kvc->vc", w, targets)
        assert abs(gap(rendered)) < LIPS_MET_TOL_M
        # and the open frame stays open in ARKit (mouthClose 0)
        w0 = to_arkit(frame(0.0), rt).weights[0]
        assert w0[ARKIT_INDEX["mouthClose"]] == 0 and gap(h.v_template + np.einsum("k,kvc->vc", w0, targets)) > 0.004
    # more closure than the jaw opened is capped: mouthClose never exceeds jawOpen
    m = np.zeros((1, FRAME_DIM), np.float32)
    m[0, JAW.start], m[0, slot] = 0.05, 3.0
    w = to_arkit(m, rt).weights[0]
    assert w[ARKIT_INDEX["mouthClose"]] == pytest.approx(w[ARKIT_INDEX["jawOpen"]])


def test_without_mouth_close_unit_mouth_close_is_never_driven(head):
    if "mouth_close" in UNITS:
        names = [n if n != "mouth_close" else "unused_99" for n in head.expression_names]
        h = dataclasses.replace(head, expression_names=names)
    else:
        h = head
    rt = standin_retarget(h)
    assert not rt.pos[ARKIT_INDEX["mouthClose"]].any() and not rt.neg[ARKIT_INDEX["mouthClose"]].any()


def _rotation(rotvec):
    import torch

    from mm2face.engine.flame import axis_angle_to_matrix
    return axis_angle_to_matrix(torch.tensor(np.asarray(rotvec, np.float64))).numpy()


def test_head_rotation_axes_and_signs(head):
    rng = np.random.default_rng(3)
    poses = rng.uniform(-0.8, 0.8, (50, 3))
    ypr = head_rotation(poses).astype(np.float64)
    c, s = np.cos, np.sin
    for (yaw, pitch, roll), pose in zip(ypr, poses):
        Ry = np.array([[c(yaw), 0, s(yaw)], [0, 1, 0], [-s(yaw), 0, c(yaw)]])
        Rx = np.array([[1, 0, 0], [0, c(pitch), -s(pitch)], [0, s(pitch), c(pitch)]])
        Rz = np.array([[c(roll), -s(roll), 0], [s(roll), c(roll), 0], [0, 0, 1]])
        np.testing.assert_allclose(Ry @ Rx @ Rz, _rotation(pose), atol=1e-5)
    # signs, on the mesh: the nose tip and the left ear (+x) of the rendered head
    nose = int(np.argmax(head.v_template[:, 2]))
    ear = int(np.argmax(head.v_template[:, 0]))
    for axis, name in ((1, "yaw"), (0, "pitch"), (2, "roll")):
        m = np.zeros((1, FRAME_DIM), np.float32)
        m[0, HEAD.start + axis] = 0.3
        v = head_vertices(head, m)[0] - head.v_template
        r = to_arkit(m).head_rot[0]
        assert r[("yaw", "pitch", "roll").index(name)] == pytest.approx(0.3, abs=1e-5)
        if name == "yaw":
            assert v[nose, 0] > 0.01                                # turns to the subject's left (+x)
        elif name == "pitch":
            assert v[nose, 1] < -0.01                               # looks down
        else:
            assert v[ear, 1] > 0.01                                 # left ear up: tilts to his right


def test_retarget_file_round_trip_and_errors(tmp_path):
    rt = standin_retarget()
    path = rt.save(tmp_path / "m.npz")
    back = LinearRetarget.load(path)
    assert back.version == A.ARKIT_MAP_VERSION and back.source == rt.source and back.info == rt.info
    for k in ("pos", "neg", "bias"):
        np.testing.assert_array_equal(getattr(back, k), getattr(rt, k))
    m = np.random.default_rng(4).uniform(0, 1, (5, FRAME_DIM)).astype(np.float32)
    np.testing.assert_array_equal(back.weights(m), rt.weights(m))
    with pytest.raises(RetargetError, match="not found"):
        LinearRetarget.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(RetargetError, match="missing"):
        LinearRetarget.load(tmp_path / "other.npz")
    z = dict(np.load(path))
    z["file_version"] = np.int32(99)
    np.savez(tmp_path / "future.npz", **z)
    with pytest.raises(RetargetError, match="version 99"):
        LinearRetarget.load(tmp_path / "future.npz")
    with pytest.raises(RetargetError, match="expected finite"):
        LinearRetarget(pos=np.zeros((52, 50)), neg=rt.neg, bias=rt.bias, version="x")


def synthetic_flame_with_arkit(tmp_path, n_vertices=400, seed=0):
    """A FLAME-format pickle whose 50 expression directions are known non-negative mixes ``G (52, 50)`` of
    52 ARKit target shapes, and whose jaw rotation is one of them (jawOpen at JAW_OPEN_FULL_RAD).

    Returns (pkl path, head, neutral (V, 3), targets (52, V, 3), G)."""
    import pickle

    import scipy.sparse as sp

    from mm2face.engine.flame import head_from_flame_dict
    rng = np.random.default_rng(seed)
    V = n_vertices
    v = rng.normal(0, 0.05, (V, 3))
    jaw = v[:, 1] < -0.02
    w = np.zeros((V, 5))
    w[~jaw, 1], w[jaw, 2] = 1.0, 1.0
    J = np.zeros((5, V))
    J[:, 0] = 1.0
    J[2, 0], J[2, 1] = 0.0, 1.0                                    # the jaw joint sits on vertex 1
    deltas = rng.normal(0, 0.002, (52, V, 3)) * (rng.uniform(size=(52, V, 1)) < 0.3)
    G = rng.uniform(0, 1, (52, 50)) * (rng.uniform(size=(52, 50)) < 0.1)
    G[ARKIT_INDEX["jawOpen"]] = 0.0                                # jawOpen is the jaw joint's, set below
    G[ARKIT_INDEX["mouthClose"]] = 0.0                             # capped by jawOpen: only with the jaw
    exp = np.einsum("kvc,ke->vce", deltas, G)
    data = {"v_template": v, "f": np.array([[0, 1, 2]], np.uint32),
            "shapedirs": np.concatenate([np.zeros((V, 3, 300)), exp, np.zeros((V, 3, 50))], axis=2),
            "posedirs": np.zeros((V, 3, 36)), "J_regressor": sp.csc_matrix(J), "weights": w,
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])}
    path = tmp_path / "generic_model.pkl"
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    head = head_from_flame_dict(data)
    m = np.zeros((1, FRAME_DIM), np.float32)
    m[0, JAW.start] = A.JAW_OPEN_FULL_RAD
    deltas[ARKIT_INDEX["jawOpen"]] = head_vertices(head, m)[0] - v
    neutral = v + rng.normal(0, 1e-9, v.shape)                    # the user's own neutral mesh
    return path, head, neutral, neutral[None] + deltas, G


def test_flame_fit_recovers_the_map_and_the_mesh(tmp_path):
    path, head, neutral, targets, G = synthetic_flame_with_arkit(tmp_path)
    rt = A.fit_flame_retarget(head, neutral, targets, source="test")
    assert rt.version == A.FLAME_FIT_VERSION
    np.testing.assert_allclose(rt.pos[:, :50], G, atol=1e-4)
    assert rt.info["rel_residual.+0"] < 1e-4
    rng = np.random.default_rng(5)
    m = np.zeros((4, FRAME_DIM), np.float32)
    m[:, :50] = rng.uniform(0, 1, (4, 50)) * (rng.uniform(size=(4, 50)) < 0.1)
    m[:, JAW.start] = [0.0, A.JAW_OPEN_FULL_RAD, 0.0, A.JAW_OPEN_FULL_RAD]
    w = to_arkit(m, rt).weights
    assert w[1, ARKIT_INDEX["jawOpen"]] == pytest.approx(1.0, abs=1e-3)
    ok = w.max(axis=1) < 1.0                                        # frames the clip at 1 leaves alone
    rendered = neutral[None] + np.einsum("tk,kvc->tvc", w, targets - neutral[None])
    ref = head_vertices(head, m)
    assert ok.any() and np.abs(rendered - ref)[ok].max() < 1e-5
    with pytest.raises(RetargetError, match="vertices"):
        A.fit_flame_retarget(head, neutral[:10], targets)
    with pytest.raises(RetargetError, match="targets have shape"):
        A.fit_flame_retarget(head, neutral, targets[:51])


def test_live_link_face_csv_layout():
    m = np.zeros((30, FRAME_DIM), np.float32)
    m[:, unit("lip_corner_puller_left")] = 0.7
    m[:, JAW.start + 1] = -0.05                                    # jaw to the subject's right
    m[:, HEAD.start + 1] = 0.2                                     # yaw
    text = A.live_link_csv(to_arkit(m), fps=25)
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    assert header[:2] == ["Timecode", "BlendShapeCount"] and len(header) == 2 + 52 + 9
    assert header[-9:] == ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                           "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    # LLF capitalises Apple's names and writes JawRight/JawLeft and MouthRight/MouthLeft in that order
    assert header[2:19] == [n[0].upper() + n[1:] for n in APPLE_ORDER[:15]] + ["JawRight", "JawLeft"]
    assert header[23:25] == ["MouthRight", "MouthLeft"]
    assert sorted(h[0].lower() + h[1:] for h in header[2:54]) == sorted(APPLE_ORDER)
    assert len(rows) == 31 and all(len(r) == len(header) for r in rows)
    assert rows[1][:2] == ["00:00:00:00.000", "61"] and rows[26][0] == "00:00:01:00.000"
    row = dict(zip(header, rows[1]))
    assert float(row["MouthSmileLeft"]) == pytest.approx(0.7) and float(row["MouthSmileRight"]) == 0
    assert float(row["JawRight"]) == pytest.approx(0.5) and float(row["JawLeft"]) == 0
    assert float(row["HeadYaw"]) == pytest.approx(0.2, abs=1e-5) and float(row["LeftEyeYaw"]) == 0


def test_generate_cli_writes_arkit_csv(tmp_path, capsys):
    from mm2face.viewer.generate_cli import main
    out = tmp_path / "take.csv"
    assert main(["--text", "smiles", "--seconds", "1", "--format", "arkit-csv", "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == list(A.LLF_CSV_HEADER) and len(rows) == 1 + 25
    vals = np.array([[float(x) for x in r[2:54]] for r in rows[1:]])
    assert vals.min() >= 0 and vals.max() <= 1 and vals.any()
    with pytest.raises(SystemExit, match="not found"):
        main(["--seconds", "1", "--format", "arkit-csv", "--retarget", str(tmp_path / "no.npz"), "--out",
              str(tmp_path / "x.csv")])


def _write_obj(path, verts):
    path.write_text("# test mesh\n" + "".join(f"v {x:.9f} {y:.9f} {z:.9f}\n" for x, y, z in verts) + "f 1 2 3\n")


def test_retarget_cli_fits_from_obj_files_and_npz(tmp_path, capsys):
    from mm2face.training.retarget_cli import main
    pkl, head, neutral, targets, G = synthetic_flame_with_arkit(tmp_path)
    folder = tmp_path / "shapes"
    folder.mkdir()
    _write_obj(folder / "neutral.obj", neutral)
    for name, t in zip(ARKIT_NAMES, targets):
        _write_obj(folder / f"{name[0].upper() + name[1:]}.obj", t)          # LLF's capitalised names work
    out = tmp_path / "map.npz"
    assert main(["fit", "--flame", str(pkl), "--targets", str(folder), "--out", str(out)]) == 0
    assert "relative residual" in capsys.readouterr().out
    rt = LinearRetarget.load(out)
    assert rt.version == A.FLAME_FIT_VERSION
    np.testing.assert_allclose(rt.pos[:, :50], G, atol=1e-4)
    # the same fit from one .npz, in centimetres with --scale
    npz = tmp_path / "shapes.npz"
    np.savez(npz, targets=targets * 100, neutral=neutral * 100)
    with pytest.raises(SystemExit, match="--scale 0.01"):
        main(["fit", "--flame", str(pkl), "--targets", str(npz), "--out", str(tmp_path / "cm.npz")])
    assert main(["fit", "--flame", str(pkl), "--targets", str(npz), "--scale", "0.01", "--out",
                 str(tmp_path / "cm.npz")]) == 0
    np.testing.assert_allclose(LinearRetarget.load(tmp_path / "cm.npz").pos, rt.pos, atol=1e-4)
    # the fitted map drives mm2face-retarget info and to_arkit
    assert main(["info", str(out)]) == 0 and "jawOpen" in capsys.readouterr().out
    # clear errors: a missing target, another topology, no neutral
    (folder / "TongueOut.obj").unlink()
    with pytest.raises(SystemExit, match="missing: tongueOut.*--allow-missing"):
        main(["fit", "--flame", str(pkl), "--targets", str(folder), "--out", str(tmp_path / "x.npz")])
    assert main(["fit", "--flame", str(pkl), "--targets", str(folder), "--allow-missing", "--out",
                 str(tmp_path / "x.npz")]) == 0
    np.savez(tmp_path / "small.npz", targets=targets[:, :100], neutral=neutral[:100])
    with pytest.raises(SystemExit, match="FLAME model has 400"):
        main(["fit", "--flame", str(pkl), "--targets", str(tmp_path / "small.npz"), "--out", str(tmp_path / "y.npz")])
    (folder / "neutral.obj").unlink()
    with pytest.raises(SystemExit, match="no neutral mesh"):
        main(["fit", "--flame", str(pkl), "--targets", str(folder), "--allow-missing", "--out", str(tmp_path / "z.npz")])
    with pytest.raises(SystemExit, match="FLAME model file not found"):
        main(["fit", "--flame", str(tmp_path / "nope.pkl"), "--targets", str(npz), "--out", str(tmp_path / "z.npz")])


def test_retarget_cli_prints_the_standin_map(capsys):
    from mm2face.training.retarget_cli import main
    assert main(["standin", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert A.ARKIT_MAP_VERSION in out and "| 23 | `mouthSmileLeft` | `lip_corner_puller_left` |" in out
    assert "jaw_only_max_mm" in out and "projection_rel_residual.lips_part" in out


# What drives each ARKit shape in map version standin-arkit/1 (frame value, + = its positive part).
MAP_V1 = {
    "eyeBlinkLeft": "blink_left+", "eyeSquintLeft": "lid_tightener+", "eyeWideLeft": "upper_lid_raiser+",
    "eyeBlinkRight": "blink_right+", "eyeSquintRight": "lid_tightener+", "eyeWideRight": "upper_lid_raiser+",
    "jawLeft": "jaw_ry+", "jawRight": "jaw_ry-", "jawOpen": "jaw_rx+", "mouthClose": "mouth_close+",
    "mouthFunnel": "lip_funneler+", "mouthPucker": "lip_pucker+", "mouthLeft": "mouth_left+",
    "mouthRight": "mouth_right+", "mouthSmileLeft": "lip_corner_puller_left+",
    "mouthSmileRight": "lip_corner_puller_right+", "mouthFrownLeft": "lip_corner_depressor+",
    "mouthFrownRight": "lip_corner_depressor+", "mouthDimpleLeft": "dimpler+", "mouthDimpleRight": "dimpler+",
    "mouthStretchLeft": "lip_stretcher+", "mouthStretchRight": "lip_stretcher+",
    "mouthRollLower": "lip_suck+ lower_lip_roll+", "mouthRollUpper": "lip_suck+", "mouthShrugLower": "chin_raiser+",
    "mouthPressLeft": "lip_tightener+ lip_pressor+", "mouthPressRight": "lip_tightener+ lip_pressor+",
    "mouthLowerDownLeft": "lower_lip_depressor+ lips_part+", "mouthLowerDownRight": "lower_lip_depressor+ lips_part+",
    "mouthUpperUpLeft": "upper_lip_raiser+ lips_part+", "mouthUpperUpRight": "upper_lip_raiser+ lips_part+",
    "browDownLeft": "brow_lowerer+", "browDownRight": "brow_lowerer+", "browInnerUp": "inner_brow_raiser+",
    "browOuterUpLeft": "outer_brow_raiser_left+", "browOuterUpRight": "outer_brow_raiser_right+",
    "cheekPuff": "cheek_puff+", "cheekSquintLeft": "cheek_raiser+", "cheekSquintRight": "cheek_raiser+",
    "noseSneerLeft": "nose_wrinkler+", "noseSneerRight": "nose_wrinkler+",
}


def test_map_changes_bump_the_version():
    """The map's structure is frozen per version: a change must bump ARKIT_MAP_VERSION (and docs/arkit.md)."""
    from mm2face.engine.frame import dim_name
    rt = standin_retarget()
    name = lambda i: UNITS[i] if i < 50 else dim_name(i)
    got = {}
    for k, n in enumerate(ARKIT_NAMES):
        src = [name(i) + "+" for i in np.flatnonzero(rt.pos[k] > 0)] + [name(i) + "-" for i in np.flatnonzero(rt.neg[k] > 0)]
        if src:
            got[n] = " ".join(src)
    frozen = {"standin-arkit/1": MAP_V1}
    assert A.ARKIT_MAP_VERSION in frozen, "a new map version: add its table here (and to docs/arkit.md)"
    assert got == frozen[A.ARKIT_MAP_VERSION], \
        "the stand-in ARKit map changed: bump ARKIT_MAP_VERSION, add its table here and update docs/arkit.md"
