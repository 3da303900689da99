"""The open stand-in head: determinism, FLAME layout, rig sanity and what its units do."""
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from mm2face.engine import standin
from mm2face.engine.flame import FlameLayer, head_vertices
from mm2face.engine.frame import JAW
from mm2face.engine.units import UNITS, USED_UNITS, unit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def head():
    return standin.build_standin_head()


def _frame(**units):
    f = np.zeros(56, np.float32)
    for name, value in units.items():
        f[unit(name)] = value
    return f


def _seam_pairs(head):
    """(upper, lower) vertex index pairs that coincide at rest: the two copies of the mouth seam."""
    lips = np.asarray(head.masks["lips"])
    tree = cKDTree(head.v_template[lips])
    pairs = np.array(sorted(tree.query_pairs(1e-7)))
    a, b = lips[pairs[:, 0]], lips[pairs[:, 1]]
    jaw_w = head.weights[:, 2]
    upper = np.where(jaw_w[a] < jaw_w[b], a, b)
    lower = np.where(jaw_w[a] < jaw_w[b], b, a)
    return upper, lower


def test_build_is_deterministic(head):
    again = standin.build_standin_head()
    np.testing.assert_array_equal(head.v_template, again.v_template)
    np.testing.assert_array_equal(head.faces, again.faces)
    np.testing.assert_array_equal(head.exprdirs, again.exprdirs)
    np.testing.assert_array_equal(head.weights, again.weights)
    assert head.masks.keys() == again.masks.keys()


def test_flame_layout_and_size(head):
    V = head.n_vertices
    assert V >= 3000
    assert head.v_template.shape == (V, 3) and head.v_template.dtype == np.float32
    assert head.exprdirs.shape == (V, 3, 50)
    assert head.posedirs.shape == (V, 3, 36)
    assert head.J_regressor.shape == (5, V)
    assert head.faces.dtype == np.int32 and head.faces.min() >= 0 and head.faces.max() < V
    assert head.expression_names == UNITS
    height = np.ptp(head.v_template[head.masks["face"], 1])
    assert 0.15 < height < 0.25                    # forehead to chin, metres, FLAME-like scale
    np.testing.assert_array_equal(head.parents, [-1, 0, 1, 1, 1])


def test_every_vertex_is_used_and_faces_are_not_degenerate(head):
    used = np.zeros(head.n_vertices, bool)
    used[head.faces.ravel()] = True
    assert used.all()
    f = head.faces
    assert (f[:, 0] != f[:, 1]).all() and (f[:, 1] != f[:, 2]).all() and (f[:, 0] != f[:, 2]).all()


def test_faces_point_outward(head):
    """Counter-clockwise seen from outside: face normals of the front of the face point toward +z."""
    v, f = head.v_template, head.faces
    face = np.zeros(head.n_vertices, bool)
    face[head.masks["forehead"]] = True
    sel = face[f].all(1)
    n = np.cross(v[f[sel, 1]] - v[f[sel, 0]], v[f[sel, 2]] - v[f[sel, 0]])
    assert (n[:, 2] > 0).mean() > 0.95


def test_weights_rows_sum_to_one_and_parts_are_skinned(head):
    w = head.weights
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    assert (w >= 0).all()
    np.testing.assert_allclose(w[head.masks["left_eyeball"], 3], 1.0)
    np.testing.assert_allclose(w[head.masks["right_eyeball"], 4], 1.0)
    np.testing.assert_allclose(w[head.masks["forehead"], 1], 1.0)   # forehead moves with the head only
    assert w[:, 2].max() == pytest.approx(1.0)                       # some vertices are fully on the jaw
    assert w[:, 0].max() == pytest.approx(1.0)                       # the neck base stays put


def test_joints_are_where_they_belong(head):
    J = head.J_regressor @ head.v_template.astype(np.float64)
    np.testing.assert_allclose(head.J_regressor.sum(1), 1.0, atol=1e-6)
    assert abs(J[2, 0]) < 1e-6 and abs(J[1, 0]) < 1e-6                # jaw and neck on the midline
    assert J[2, 1] > J[0, 1] and J[1, 1] > J[0, 1]                  # jaw and neck above the neck base
    eyeball = head.v_template[head.masks["left_eyeball"]]
    np.testing.assert_allclose(J[3], 0.5 * (eyeball.min(0) + eyeball.max(0)), atol=1e-5)
    assert J[3, 0] > 0 > J[4, 0]                                    # the subject's left eye is at +x


def test_head_is_left_right_symmetric(head):
    v = head.v_template
    d, _ = cKDTree(v).query(v * np.array([-1, 1, 1], np.float32))
    assert d.max() < 1e-5


def test_masks_nonempty_and_in_range(head):
    for name in ("lips", "face", "forehead", "eyes", "left_eyeball", "right_eyeball", "teeth"):
        idx = np.asarray(head.masks[name])
        assert idx.size > 0, name
        assert idx.min() >= 0 and idx.max() < head.n_vertices, name
    lips = head.v_template[head.masks["lips"]]
    fh = head.v_template[head.masks["forehead"]]
    assert fh[:, 1].min() > lips[:, 1].max()                         # forehead above the lips
    assert set(head.masks["lips"]) <= set(head.masks["face"])


def test_used_units_move_and_unused_are_zero(head):
    amount = np.abs(head.exprdirs).max(axis=(0, 1))                 # (50,) largest offset per slot (m)
    for i, name in enumerate(UNITS):
        if name in USED_UNITS:
            assert amount[i] > 0.001, f"unit {name} moves less than 1 mm"
            assert amount[i] < 0.02, f"unit {name} moves more than 2 cm"
        else:
            assert amount[i] == 0.0, f"unused slot {name} is not zero"


def test_left_units_act_on_the_left_side(head):
    x = head.v_template[:, 0]
    for left, right in (("lip_corner_puller_left", "lip_corner_puller_right"), ("blink_left", "blink_right"),
                        ("outer_brow_raiser_left", "outer_brow_raiser_right")):
        dl = np.linalg.norm(head.exprdirs[:, :, unit(left)], axis=1)
        dr = np.linalg.norm(head.exprdirs[:, :, unit(right)], axis=1)
        assert dl[x > 0].sum() > 10 * dl[x < 0].sum(), left
        assert dr[x < 0].sum() > 10 * dr[x > 0].sum(), right


def test_smile_lifts_mouth_corners(head):
    v0 = head_vertices(head, _frame()[None])[0]
    v1 = head_vertices(head, _frame(lip_corner_puller_left=1, lip_corner_puller_right=1)[None])[0]
    lips = head.masks["lips"]
    corners = lips[np.argsort(np.abs(head.v_template[lips, 0]))[-6:]]   # the outermost lip vertices
    assert (v1[corners, 1] - v0[corners, 1]).mean() > 0.003
    frown = head_vertices(head, _frame(lip_corner_depressor=1)[None])[0]
    assert (frown[corners, 1] - v0[corners, 1]).mean() < -0.003


def test_blink_closes_the_left_lid(head):
    ec = head.J_regressor[3] @ head.v_template                               # left eye joint = eyeball centre
    r_eye = np.linalg.norm(head.v_template[head.masks["left_eyeball"]] - ec, axis=1).max()
    eyes = np.asarray(head.masks["eyes"])
    skin_eye = eyes[head.weights[eyes, 3] == 0]
    v = head.v_template
    # upper lid vertices: skin inside the opening's footprint, above the eyeball centre
    sel = skin_eye[(np.abs(v[skin_eye, 0] - ec[0]) < 0.004) & (v[skin_eye, 1] > ec[1] + 0.0005)
                   & (v[skin_eye, 1] < ec[1] + 0.0035)]
    assert len(sel) >= 3
    closed = head_vertices(head, _frame(blink_left=1)[None])[0]
    assert (closed[sel, 1] - v[sel, 1]).mean() < -0.0015                      # lid moves down
    assert (np.linalg.norm(closed[sel] - ec, axis=1) >= r_eye).all()         # ...over the eyeball
    # in front of the eyeball centre, the closed lid covers the whole opening: every ray from the camera
    # side through the eye's middle meets skin before the eyeball
    front = skin_eye[(np.abs(v[skin_eye, 0] - ec[0]) < 0.003)]
    ys = closed[front, 1]
    assert ys.min() < ec[1] - 0.004 and (closed[front, 2] > ec[2] + 0.008).all()
    other = head_vertices(head, _frame(blink_left=1)[None])[0][head.masks["right_eyeball"]]
    np.testing.assert_allclose(other, v[head.masks["right_eyeball"]], atol=1e-7)


def test_jaw_rotation_opens_the_mouth(head):
    upper, lower = _seam_pairs(head)
    assert len(upper) >= 10
    mid = np.argmin(np.abs(head.v_template[upper, 0]))
    f = _frame()
    rest = head_vertices(head, f[None])[0]
    assert np.linalg.norm(rest[upper] - rest[lower], axis=1).max() < 1e-6     # closed at rest
    f[JAW.start] = 0.2
    opened = head_vertices(head, f[None])[0]
    gap = opened[upper[mid], 1] - opened[lower[mid], 1]
    assert gap > 0.01                                                         # > 1 cm lip gap at 0.2 rad
    np.testing.assert_allclose(opened[head.masks["forehead"]], rest[head.masks["forehead"]], atol=1e-7)
    parted = head_vertices(head, _frame(lips_part=1)[None])[0]
    assert parted[upper[mid], 1] - parted[lower[mid], 1] > 0.004             # lips part without the jaw


def test_head_pose_rotates_the_head_about_the_neck(head):
    f = _frame()
    f[51] = 0.5                                                               # turn (yaw) 0.5 rad
    v = head_vertices(head, f[None])[0]
    nose = np.argmax(head.v_template[:, 2])
    assert v[nose, 0] > 0.03                                                  # nose tip swings to +x
    base = head.weights[:, 0] > 0.999
    np.testing.assert_allclose(v[base], head.v_template[base], atol=5e-5)     # neck base stays


def test_flame_layer_runs_batched(head):
    layer = FlameLayer(head)
    m = torch.zeros(2, 3, 56)
    m[..., unit("lips_part")] = 1.0
    out = layer(m)
    assert out.shape == (2, 3, head.n_vertices, 3)
