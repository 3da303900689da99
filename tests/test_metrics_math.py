"""Metric math on hand-made motions and a tiny hand-built head (no trained model needed)."""
import numpy as np
import pytest

from mm2face.engine.flame import HeadModel
from mm2face.engine.units import unit
from mm2face.training import metrics as M


def tiny_head() -> HeadModel:
    """6 vertices: 2 upper-lip (skinned to the neck), 2 lower-lip (jaw), 2 brow (neck).

    Expression slot ``lip_corner_puller_left`` moves the upper lip up 1 cm per unit.
    Joints: global/neck at the origin, jaw 5 cm behind the lips.
    """
    v = np.array([[-0.02, 0.0, 0.1], [0.02, 0.0, 0.1],       # upper lip
                  [-0.02, -0.01, 0.1], [0.02, -0.01, 0.1],   # lower lip
                  [-0.03, 0.06, 0.1], [0.03, 0.06, 0.1]], np.float32)
    V = len(v)
    exprdirs = np.zeros((V, 3, 50), np.float32)
    exprdirs[0:2, 1, unit("lip_corner_puller_left")] = 0.01
    J = np.zeros((5, V), np.float32)
    weights = np.zeros((V, 5), np.float32)
    weights[:, 1] = 1.0
    weights[2:4, 1], weights[2:4, 2] = 0.0, 1.0
    head = HeadModel(
        name="tiny", v_template=v, faces=np.zeros((0, 3), np.int32), shapedirs=np.zeros((V, 3, 0), np.float32),
        exprdirs=exprdirs, posedirs=np.zeros((V, 3, 36), np.float32), J_regressor=J, weights=weights,
        masks={"lips": np.arange(4), "face": np.arange(6)})
    # J_regressor rows all zero puts every joint at the origin: fine, the jaw pivots about it.
    return head.validate()


def motion(T=50, **dims):
    m = np.zeros((T, 56), np.float32)
    for k, val in dims.items():
        m[:, int(k[1:])] = val
    return m


def test_identical_motions_give_zero_error_and_full_correlation():
    head = tiny_head()
    rng = np.random.default_rng(0)
    m = motion(40)
    m[:, 53] = np.abs(np.sin(np.arange(40) / 3.0)) * 0.3      # jaw opens and closes
    m[:, unit("lip_corner_puller_left")] = rng.uniform(0, 1, 40)
    out = M.clip_metrics(m, m.copy(), head=head)
    assert out["lve_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["fve_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["jaw_corr"] == pytest.approx(1.0, abs=1e-6)
    assert out["lip_open_corr"] == pytest.approx(1.0, abs=1e-4)


def test_jaw_offset_gives_expected_lve_and_head_pose_is_ignored():
    head = tiny_head()
    gt = motion(30)
    pred = motion(30, d53=0.2)                 # jaw opened 0.2 rad about the origin
    pred[:, 50:53] = [0.3, -0.4, 0.2]          # a head pose difference must not count (MMHead rule)
    out = M.clip_metrics(pred, gt, head=head)
    # jaw rx turns about the x axis: the lower lip sits r = |(y, z)| from it and moves 2 r sin(0.1) ≈ 20 mm
    r = np.linalg.norm([-0.01, 0.1])
    expected = 2 * r * np.sin(0.1) * 1000
    assert out["lve_mm"] == pytest.approx(expected, rel=1e-3)
    # FVE: 2 of 6 vertices moved by that distance
    assert out["fve_mm"] == pytest.approx(expected * 2 / 6, rel=1e-3)
    # a smaller jaw error gives a smaller LVE (ordering)
    out_small = M.clip_metrics(motion(30, d53=0.05), gt, head=head)
    assert out_small["lve_mm"] < out["lve_mm"] / 3


def test_lve_takes_the_max_over_lip_vertices_per_frame():
    gt = np.zeros((2, 4, 3), np.float32)
    pred = gt.copy()
    pred[0, 0, 0] = 0.003      # frame 0: one vertex 3 mm off
    pred[1, 1, 1] = 0.001      # frame 1: one vertex 1 mm off
    pred[1, 2, 1] = 0.002      # ... and another 2 mm off: max is 2
    lve, fve = M.lve_fve_mm(pred, gt, lips=np.arange(4), face=np.arange(4))
    assert lve == pytest.approx((3 + 2) / 2, rel=1e-5)
    assert fve == pytest.approx((3 + 1 + 2) / 8, rel=1e-5)


def test_pearson():
    x = np.arange(20, dtype=float)
    assert M.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert M.pearson(x, -x) == pytest.approx(-1.0)
    assert M.pearson(x, np.ones(20)) == 0.0
    rng = np.random.default_rng(1)
    assert abs(M.pearson(rng.normal(size=5000), rng.normal(size=5000))) < 0.05


def test_pause_frames_and_closed_rate():
    speech = np.array([1] * 10 + [0] * 12 + [1] * 10 + [0] * 4 + [1] * 4, bool)
    p = M.pause_frames(speech, min_frames=8, edge=3)
    assert p.sum() == 12 - 6                       # the short pause (4 frames) does not count
    assert p[13:19].all() and not p[10:13].any() and not p[32:36].any()
    gt = motion(len(speech))
    gt[speech, 53] = 0.25
    pred_good = gt.copy()
    pred_bad = gt.copy()
    pred_bad[:, 53] = 0.25                         # mouth open all the time
    good = M.clip_metrics(pred_good, gt, speech=speech)
    bad = M.clip_metrics(pred_bad, gt, speech=speech)
    assert good["pause_closed_rate"] == 1.0 and good["pause_frames"] == 6
    assert bad["pause_closed_rate"] == 0.0
    assert bad["pause_closed_rate_gt"] == 1.0


def test_emotion_rules_read_named_units():
    happy = motion(25)
    happy[:, unit("lip_corner_puller_left")] = 0.6
    happy[:, unit("lip_corner_puller_right")] = 0.5
    sad = motion(25)
    sad[:, unit("lip_corner_depressor")] = 0.5
    sad[:, unit("inner_brow_raiser")] = 0.4
    res = M.style_checks(happy, {"emotion": "The person looks happy and smiles."})
    assert set(res) == {"happy"} and res["happy"]["pass"]
    res = M.style_checks(sad, {"emotion": "The person looks happy."})
    assert not res["happy"]["pass"]
    assert M.style_checks(sad, "She is sad.")["sad"]["pass"]
    angry = motion(25)
    angry[:, unit("brow_lowerer")] = 0.7
    assert M.style_checks(angry, "an angry man")["angry"]["pass"]
    assert not M.style_checks(angry, "a disgusted man")["disgusted"]["pass"]
    # contrast of two text-only motions: "smiles" vs "frowns"
    assert M.contrast_score(happy, sad) > 0.5
    assert M.contrast_score(sad, happy) < -0.5
    # an ambiguous caption (two emotions) is skipped
    assert M.style_checks(happy, "happy then sad") == {}


@pytest.mark.parametrize("caption,axis,sign", [
    ("The head turns left.", 51, +1), ("He turns his head to the right", 51, -1),
    ("She looks up at the sky", 50, -1), ("The man lowers his head", 50, +1),
    ("head tilts to the right", 52, +1), ("the head tilts left", 52, -1),
])
def test_pose_rules_follow_table1_signs(caption, axis, sign):
    m = motion(50)
    m[:, axis] = sign * np.linspace(0, 0.3, 50)
    res = M.style_checks(m, caption)
    assert len(res) == 1 and next(iter(res.values()))["pass"], res
    m[:, axis] *= -1
    assert not next(iter(M.style_checks(m, caption).values()))["pass"]


def test_contradicting_pose_captions_are_skipped():
    assert M.style_checks(motion(10), "turns left and then turns right") == {}


def test_moods_are_not_head_poses():
    # "downcast" and "upset" must not read as "looks down" / "looks up"
    assert M.style_checks(motion(10), "A person first looks downcast, then looks upset.").keys() <= {"sad"}
    assert set(M.style_checks(motion(10), "She looks down, then looks up.")) == set()      # opposite: skipped
    assert set(M.style_checks(motion(10), "She looks down at the floor.")) == {"down"}


def test_aggregate_scores_lip_sync_on_clips_with_audio_only():
    per = [{"audio": True, "lve_mm": 2.0, "jaw_corr": 0.8}, {"audio": True, "lve_mm": 4.0, "jaw_corr": 0.6},
           {"audio": False, "lve_mm": 9.0, "jaw_corr": 0.0}]
    agg = M.aggregate(per)
    assert agg["talking_clips"] == 2 and agg["clips"] == 3
    assert agg["lve_mm"] == 3.0 and agg["jaw_corr"] == pytest.approx(0.7)
    assert agg["lve_mm_all"] == 5.0 and agg["jaw_corr_all"] == pytest.approx(1.4 / 3)


def test_aggregate_and_mean_frame_baseline():
    a = motion(10, d0=1.0)
    b = motion(30, d0=3.0)
    f = M.mean_frame([a, b])
    assert f.shape == (56,) and f[0] == pytest.approx(2.5)
    base = M.mean_frame_motion(f, 7)
    assert base.shape == (7, 56)
    per = [{"lve_mm": 1.0, "jaw_corr": 0.5, "style": {"happy": {"pass": True, "kind": "emotion", "score": 1}}},
           {"lve_mm": 3.0, "jaw_corr": 0.7, "style": {"happy": {"pass": False, "kind": "emotion", "score": 0},
                                                      "turn_left": {"pass": True, "kind": "pose", "score": 1}}}]
    agg = M.aggregate(per)
    assert agg["lve_mm"] == 2.0 and agg["jaw_corr"] == pytest.approx(0.6)
    assert agg["emotion_pass_rate"] == 0.5 and agg["emotion_checks"] == 2
    assert agg["pose_pass_rate"] == 1.0
    assert agg["style_by_rule"]["happy"]["clips"] == 2


def test_aggregate_reports_held_poses_and_nods_or_shakes_apart():
    pose = lambda ok: {"pass": ok, "kind": "pose", "score": 0.1 if ok else 0.0}
    per = [{"style": {"turn_left": pose(True), "nod": pose(False)}},
           {"style": {"down": pose(True), "shake": pose(False)}, "style_gt": {"shake": pose(True)}},
           {"style": {"nod": pose(True)}}]
    agg = M.aggregate(per)
    assert agg["pose_pass_rate"] == 0.6 and agg["pose_checks"] == 5
    assert agg["held_pose_pass_rate"] == 1.0 and agg["held_pose_checks"] == 2
    assert agg["gesture_pass_rate"] == pytest.approx(1 / 3) and agg["gesture_checks"] == 3
    assert agg["gt_gesture_pass_rate"] == 1.0 and "gt_held_pose_pass_rate" not in agg


def test_metric_head_subset_matches_full_standin_head():
    from mm2face.engine.flame import load_head
    head = load_head("standin")
    rng = np.random.default_rng(0)
    gt = motion(12)
    gt[:, :28] = rng.uniform(0, 1, (12, 28))
    gt[:, 53] = rng.uniform(0, 0.3, 12)
    pred = gt.copy()
    pred[:, 53] += 0.05
    pred[:, unit("lip_corner_puller_left")] += 0.3
    full = M.lve_fve_mm(M.vertices(head, pred), M.vertices(head, gt), M.head_mask(head, "lips"), M.head_mask(head, "face"))
    out = M.clip_metrics(pred, gt, head=head)
    assert out["lve_mm"] == pytest.approx(full[0], rel=1e-5) and out["fve_mm"] == pytest.approx(full[1], rel=1e-5)
    assert out["lve_mm"] > 1.0
