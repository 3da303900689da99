"""The evaluator's caption matcher and style checks (training/metrics.py): words each rule must and must
not match, fear / nod / shake checks on shaped motions, and the labelled style sets' format."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mm2face.engine.units import unit
from mm2face.training import metrics as M
from mm2face.training import style_eval as SE

RULES = {r.name: r for r in M.STYLE_RULES + M.POSE_RULES}

MUST = {
    "happy": ["happy", "happily", "pleased", "joyful", "smiles", "cheerful", "laughs", "grins", "delighted", "glad"],
    "sad": ["sad", "unhappy", "downcast", "sorrowful", "frowns", "grief", "depressed", "upset"],
    "angry": ["angry", "annoyed", "furious", "irritated", "glares", "glaring", "mad"],
    "surprised": ["surprised", "astonished", "amazed", "startled", "shocked", "raises the eyebrows"],
    "disgusted": ["disgusted", "repulsed", "grossed out", "revolted", "sneers"],
    "fearful": ["fearful", "scared", "frightened", "afraid", "terrified", "anxious"],
    "nod": ["nods", "nodded", "nodding", "nod"],
    "shake": ["shakes the head", "shaking his head", "head shaking", "shakes the head from side to side"],
    "turn_left": ["turns the head to the left", "looks to the left"],
    "turn_right": ["turns the head to the right", "looks right"],
    "up": ["looks up", "raises the head", "looking up"],
    "down": ["looks down", "lowers the head to look down", "bows the head"],
}
MUST_NOT = {
    "happy": ["happened", "happening", "unhappy", "whatever happens", "smoothly"],
    "sad": ["crusade", "the mood is fine"],
    "angry": ["angle", "madrid", "glass", "nomad"],
    "surprised": ["prized"],
    "disgusted": ["grocery"],
    "fearful": ["scarf", "scarred"],
    "nod": ["node", "nodule", "anode"],
    "shake": ["milkshake", "shakes hands", "handshake"],
    "up": ["looks upset", "upbeat"],
    "down": ["looks downcast", "downtown"],
}


@pytest.mark.parametrize("rule, word", [(r, w) for r, ws in MUST.items() for w in ws])
def test_rule_matches_its_words(rule, word):
    assert re.search(RULES[rule].pattern, f"the person {word} a little.".lower()), (rule, word)


@pytest.mark.parametrize("rule, word", [(r, w) for r, ws in MUST_NOT.items() for w in ws])
def test_rule_does_not_match_other_words(rule, word):
    assert not re.search(RULES[rule].pattern, f"the person {word} a little.".lower()), (rule, word)


def test_happened_is_no_emotion_and_fear_has_a_check():
    emo, _ = M.matching_rules("I can't believe what happened.")
    assert emo == []
    emo, _ = M.matching_rules("The person looks fearful throughout.")
    assert [r.name for r in emo] == ["fearful"]


def _motion(T=100):
    return np.zeros((T, 56), np.float32)


def test_fear_check_reads_lip_stretch_and_inner_brows_not_surprise():
    fear, surprise = _motion(), _motion()
    fear[:, unit("lip_stretcher")] = 0.55
    fear[:, unit("inner_brow_raiser")] = 0.7
    for u in ("inner_brow_raiser", "outer_brow_raiser_left", "outer_brow_raiser_right", "upper_lid_raiser"):
        surprise[:, unit(u)] = 0.75
    assert M.style_checks(fear, "looks scared")["fearful"]["pass"]
    assert not M.style_checks(surprise, "looks scared")["fearful"]["pass"]


def test_nod_and_shake_checks_need_swings_not_a_held_pose():
    t = np.arange(100) / 25.0
    nod, held, shake, turn = _motion(), _motion(), _motion(), _motion()
    nod[:, 50] = 0.1 * np.sin(np.pi * np.clip((t - 1) / 0.6, 0, 2)) ** 2          # two nods, down and back
    held[:, 50] = 0.2 * np.clip(t - 1, 0, 1)                                         # looks down and stays
    u = np.clip((t - 1) / 1.4, 0, 1)
    shake[:, 51] = 0.15 * np.sin(4 * np.pi * u) * np.sin(np.pi * u)
    turn[:, 51] = 0.3 * np.clip(t - 1, 0, 1)
    assert M.style_checks(nod, "The person nods.")["nod"]["pass"]
    assert not M.style_checks(held, "The person nods.")["nod"]["pass"]
    assert M.style_checks(shake, "The person shakes the head.")["shake"]["pass"]
    assert not M.style_checks(turn, "The person shakes the head.")["shake"]["pass"]
    up_nod = _motion()
    up_nod[:, 50] = -0.1 * np.sin(np.pi * np.clip((t - 1) / 0.6, 0, 1)) ** 2      # up and back: no nod
    assert not M.style_checks(up_nod, "nods")["nod"]["pass"]


def test_a_nod_then_rest_is_timed_by_the_movement_not_the_rest_jitter():
    """One brisk nod (0.8 s, down and back) and then 3 s of resting head with jitter under the hysteresis:
    the rest's deepest dip comes late, but the nod itself fits the rule's 1.6 s; a slow 3 s nod does not."""
    t = np.arange(120) / 25.0
    jitter = 0.004 * np.sin(2 * np.pi * 0.7 * t) * (t > 1.2)          # the head rests, breathing a little
    brisk, slow = _motion(120), _motion(120)
    brisk[:, 50] = 0.12 * np.sin(np.pi * np.clip((t - 0.4) / 0.8, 0, 1)) ** 2 + jitter
    slow[:, 50] = 0.12 * np.sin(np.pi * np.clip((t - 0.4) / 3.0, 0, 1)) ** 2
    assert M.style_checks(brisk, "The person nods.")["nod"]["pass"]
    assert not M.style_checks(slow, "The person nods.")["nod"]["pass"]
    pts = M.zigzag(brisk[:, 50], M.SWING_HYSTERESIS_RAD)
    assert (pts[-1][0] - pts[0][0]) / 25.0 > 1.6                      # turning points alone would fail it
    assert M.swing_time_s(brisk[:, 50].astype(float), pts[0][0], pts[1][0], pts[1][0], pts[2][0]) < 1.0


def test_zigzag_ignores_jitter_below_the_hysteresis():
    x = 0.005 * np.sin(np.arange(50))
    assert len(M.zigzag(x, 0.02)) == 1
    y = np.concatenate([np.linspace(0, 0.1, 10), np.linspace(0.1, 0.0, 10)]) + x[:20]
    assert len(M.zigzag(y, 0.02)) == 3


@pytest.mark.parametrize("name", ["heldout_everyday", "dev_everyday", "templates"])
def test_style_sets_load_with_known_labels(name):
    path = Path(__file__).resolve().parents[1] / "training" / "styles" / f"{name}.json"
    items = SE.load_style_set(path)
    assert len(items) >= 20 and all(it["text"] for it in items)
    assert any(it.get("neutral") for it in items) and any(it.get("head") for it in items)


def test_held_out_and_dev_sets_share_no_style():
    root = Path(__file__).resolve().parents[1] / "training" / "styles"
    held = {it["text"].lower() for it in json.loads((root / "heldout_everyday.json").read_text())["styles"]}
    dev = {it["text"].lower() for it in json.loads((root / "dev_everyday.json").read_text())["styles"]}
    assert not held & dev


def test_summary_counts_fires_and_passes():
    rows = [{"text": "x", "labels": {"emotion": "happy", "head": ["nod"]}, "matcher_agrees": False, "runs": [
        {"mode": "text", "emotion_pass": True, "fired": ["happy"], "emotion_scores": {"happy": 0.6},
         "head": {"nod": {"pass": False, "score": 0.0}}},
        {"mode": "talk", "emotion_pass": False, "fired": [], "emotion_scores": {"happy": 0.1},
         "head": {"nod": {"pass": True, "score": 0.1}}}]},
        {"text": "y", "labels": {"neutral": True}, "matcher_agrees": True, "runs": [
            {"mode": "text", "fired": ["sad"], "emotion_scores": {}, "head": {}},
            {"mode": "talk", "fired": [], "emotion_scores": {}, "head": {}}]}]
    s = SE.summarize(rows, [{"mode": "text", "fired": []}, {"mode": "talk", "fired": ["happy"]}])
    assert s["text"]["emotion_pass_rate"] == 1.0 and s["talk"]["emotion_pass_rate"] == 0.0
    assert s["text"]["pose_pass_rate"] == 0.0 and s["talk"]["pose_pass_rate"] == 1.0
    assert s["text"]["neutral_fire_rate"] == 1.0 and s["talk"]["neutral_fire_rate"] == 0.0
    assert s["text"]["empty_fire_rate"] == 0.0 and s["talk"]["empty_fire_rate"] == 1.0
    assert s["matcher_agrees"] == "1 of 2"


def test_style_strip_figure_draws_every_style(tmp_path):
    from mm2face.training.style_strip import STRIP_TIMES_S, draw
    styles = ["cheerful, nods a lot", "calm"]
    motions = [np.zeros((100, 56), np.float32) for _ in styles]
    frames = [[np.zeros((32, 32, 3), np.uint8) for _ in STRIP_TIMES_S] for _ in styles]
    out = draw(styles, motions, frames, tmp_path / "strip.png", ["a", "b"])
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
