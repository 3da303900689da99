"""Frame validation and MMHead conversion."""
import numpy as np
import pytest

from mm2face.engine.frame import (FRAME_DIM, MotionClip, MotionError, from_mmhead, to_mmhead,
                                  validate_motion)


def test_valid_motion_passes_and_single_frame_is_batched():
    m = np.zeros((10, FRAME_DIM)); m[:, 53] = 0.2
    out = validate_motion(m)
    assert out.dtype == np.float32 and out.shape == (10, 56)
    assert validate_motion(np.zeros(56)).shape == (1, 56)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((10, 55)), r"expected shape \(T, 56\)"),
    (np.zeros((2, 3, 56)), "expected shape"),
])
def test_wrong_shape_is_a_clear_error(bad, msg):
    with pytest.raises(MotionError, match=msg):
        validate_motion(bad)


def test_non_finite_names_frame_and_dimension():
    m = np.zeros((5, 56)); m[3, 54] = np.nan
    with pytest.raises(MotionError, match=r"frame 3, dim 54 \(jaw_ry\)"):
        validate_motion(m)


def test_implausible_values_are_rejected_with_the_limit():
    m = np.zeros((4, 56)); m[2, 51] = 3.0        # 172 degrees of head turn
    with pytest.raises(MotionError, match=r"implausible head pose.*frame 2.*head_ry"):
        validate_motion(m)
    validate_motion(m, check_ranges=False)        # the check can be turned off for raw fits


def test_mmhead_round_trip_keeps_order():
    exp = np.random.default_rng(0).normal(size=(7, 50)).astype(np.float32)
    pose = np.random.default_rng(1).normal(0, .1, size=(7, 6)).astype(np.float32)
    m = from_mmhead(exp, pose)
    np.testing.assert_array_equal(m[:, :50], exp)
    np.testing.assert_array_equal(m[:, 50:53], pose[:, :3])   # head
    np.testing.assert_array_equal(m[:, 53:56], pose[:, 3:])   # jaw
    back = to_mmhead(m)
    np.testing.assert_array_equal(back["posecodes"], pose)
    with pytest.raises(MotionError, match="posecodes"):
        from_mmhead(exp, pose[:, :3])
    with pytest.raises(MotionError, match="7 frames but posecodes has 6"):
        from_mmhead(exp, pose[:6])


def test_motion_clip_npz_round_trip(tmp_path):
    m = np.zeros((3, 56), np.float32); m[:, 0] = 0.5
    p = MotionClip(m, style="smiles").save(tmp_path / "c.npz")
    c = MotionClip.load(p)
    assert c.style == "smiles" and c.head == "standin" and c.fps == 25
    np.testing.assert_array_equal(c.motion, m)
    with pytest.raises(FileNotFoundError):
        MotionClip.load(tmp_path / "missing.npz")
