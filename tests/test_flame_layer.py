"""FLAME layer math and real-format pickle loading, on a small head written in FLAME's key layout."""
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mm2face.engine.flame import (FlameLayer, HeadModelError, axis_angle_to_matrix, head_vertices,
                                  load_head, read_flame_pickle, save_head)
from mm2face.engine.frame import JAW, HEAD


def _tiny_flame_dict(n_shape=300, n_exp=100, seed=0, chumpy_cls=None):
    """A 6-vertex FLAME-format dict: 2 vertices on the head, 2 on the jaw, 2 split half/half."""
    rng = np.random.default_rng(seed)
    V = 6
    v = np.array([[0, .1, 0], [.02, .1, .01], [0, -.05, .05], [.01, -.06, .05], [0, 0, .05], [0, .02, .04]])
    w = np.zeros((V, 5)); w[0:2, 1] = 1; w[2:4, 2] = 1; w[4:6, 1] = .5; w[4:6, 2] = .5
    J = np.zeros((5, V)); J[0, 0] = 1; J[1, 0] = 1; J[2, 4] = 1; J[3, 1] = 1; J[4, 1] = 1   # jaw joint at vertex 4
    shapedirs = rng.normal(0, 1e-3, (V, 3, n_shape + n_exp))
    if chumpy_cls is not None:
        obj = chumpy_cls(); obj.x = shapedirs; shapedirs = obj
    return {
        "v_template": v, "f": np.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]], dtype=np.uint32),
        "shapedirs": shapedirs, "posedirs": np.zeros((V, 3, 36)), "J_regressor": sp.csc_matrix(J),
        "weights": w, "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
    }


@pytest.fixture
def flame_pkl(tmp_path):
    """A FLAME-2020-like pickle whose shapedirs is a chumpy object, written while a fake chumpy exists."""
    mod = types.ModuleType("chumpy.ch")

    class Ch:  # mimics chumpy's leaf object: state is a dict holding the array in 'x'
        pass
    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    mod.Ch = Ch
    pkg = types.ModuleType("chumpy"); pkg.ch = mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
    try:
        data = _tiny_flame_dict(chumpy_cls=Ch)
        path = tmp_path / "generic_model.pkl"
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    return path, data


def test_real_format_pickle_loads_without_chumpy(flame_pkl):
    path, data = flame_pkl
    assert "chumpy" not in sys.modules
    head = load_head(str(path))
    assert head.n_vertices == 6 and head.n_shape == 300
    np.testing.assert_allclose(head.exprdirs, data["shapedirs"].x[:, :, 300:350], rtol=1e-6)
    assert list(head.parents) == [-1, 0, 1, 1, 1]


def test_missing_and_malformed_files_say_what_to_do(tmp_path):
    with pytest.raises(HeadModelError, match="flame.is.tue.mpg.de"):
        load_head(str(tmp_path / "nope.pkl"))
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as fh:
        pickle.dump({"v_template": np.zeros((3, 3))}, fh)
    with pytest.raises(HeadModelError, match="missing FLAME keys"):
        read_flame_pickle(bad)


def test_jaw_rotation_moves_only_jaw_vertices_about_the_jaw_joint(flame_pkl):
    head = load_head(str(flame_pkl[0]))
    layer = FlameLayer(head)
    m = torch.zeros(2, 56)
    angle = 0.3
    m[1, JAW.start] = angle                         # rotate about x
    v0, v1 = layer(m)
    moved = (v1 - v0).norm(dim=-1)
    assert torch.all(moved[0:2] < 1e-7)            # head-weighted vertices stay
    assert torch.all(moved[2:4] > 1e-3)            # jaw-weighted vertices move
    # distance to the jaw joint is preserved and the angle about it is the requested one
    jaw_joint = torch.tensor(head.J_regressor[2] @ head.v_template)
    for i in (2, 3):
        a, b = v0[i] - jaw_joint, v1[i] - jaw_joint
        assert torch.isclose(a.norm(), b.norm(), atol=1e-6)
        # rotation about the x axis: compare in the y-z plane
        ang = torch.atan2(a[1] * b[2] - a[2] * b[1], a[1] * b[1] + a[2] * b[2])
        assert abs(abs(float(ang)) - angle) < 1e-4
    # half-weighted vertices move by about half as much as a full jaw vertex at the same place would
    assert torch.all(moved[4:6] < moved[2:4].max())


def test_expression_adds_its_basis(flame_pkl):
    head = load_head(str(flame_pkl[0]))
    psi = torch.zeros(1, 56); psi[0, 7] = 2.0; psi[0, 30] = -1.5
    v = FlameLayer(head)(psi)[0].numpy()
    expected = head.v_template + 2.0 * head.exprdirs[:, :, 7] + -1.5 * head.exprdirs[:, :, 30]
    # no pose, so skinning is the identity except that joints moved with the blendshape:
    np.testing.assert_allclose(v, expected, atol=1e-6)


def test_head_pose_is_rigid_about_the_neck(flame_pkl):
    head = load_head(str(flame_pkl[0]))
    m = np.zeros((2, 56), np.float32); m[1, HEAD.start + 1] = 0.4
    v0, v1 = head_vertices(head, m)
    d0 = np.linalg.norm(v0[0] - v0[1]); d1 = np.linalg.norm(v1[0] - v1[1])
    assert abs(d0 - d1) < 1e-6 and np.abs(v1 - v0).max() > 1e-3


def test_rodrigues_matches_known_rotation():
    R = axis_angle_to_matrix(torch.tensor([[0.0, 0.0, np.pi / 2]]))[0]
    np.testing.assert_allclose(R.numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)
    assert torch.allclose(axis_angle_to_matrix(torch.zeros(1, 3))[0], torch.eye(3))


def test_save_head_round_trips(flame_pkl, tmp_path):
    head = load_head(str(flame_pkl[0]))
    head.masks = {"lips": np.array([2, 3]), "face": np.arange(6)}
    out = save_head(head, tmp_path / "copy.pkl")
    back = load_head(str(out))
    np.testing.assert_allclose(back.exprdirs, head.exprdirs, rtol=1e-6)
    assert back.n_shape == 300 and list(back.masks["lips"]) == [2, 3]
