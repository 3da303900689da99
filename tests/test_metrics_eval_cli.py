"""mm2face-eval end to end on a tiny hand-written corpus in MMHead layout with an untrained model."""
import json
import pickle

import numpy as np
import soundfile as sf

from mm2face.engine.frame import to_mmhead
from mm2face.engine.model import MM2Face
from mm2face.training import eval_cli

KINDS = ("action", "emotion", "detail_expression", "detail_head_pose", "emotion_scenario")


def write_corpus(root):
    rng = np.random.default_rng(0)
    for d in ["audio", "facial_motion", "synth_meta"] + [f"text_annotations/{k}" for k in KINDS]:
        (root / d).mkdir(parents=True, exist_ok=True)
    talk = {"train": ["T0", "T1"], "val": [], "test": ["T2"]}
    t2m = {"train": ["M0"], "val": [], "test": ["M1"]}
    caps = {"T2": "The person smiles and turns the head to the left.", "M1": "A sad person looks down."}
    for ids, audio in ((talk, True), (t2m, False)):
        for cid in ids["train"] + ids["test"]:
            T = 30
            m = np.zeros((T, 56), np.float32)
            m[:, 53] = np.abs(np.sin(np.arange(T) / 3)) * 0.2
            m[:, :8] = rng.uniform(0, 0.5, (T, 8))     # no smile or frown units in the data
            with open(root / "facial_motion" / f"{cid}.pkl", "wb") as f:
                pickle.dump(to_mmhead(m), f)
            if audio:
                sf.write(root / "audio" / f"{cid}.wav", (rng.normal(size=T * 640) * 0.1).astype(np.float32), 16000)
            for k in KINDS:
                (root / "text_annotations" / k / f"{cid}.txt").write_text(caps.get(cid, "A person talks.") if k == "action" else "")
            speech = [1] * 10 + [0] * 12 + [1] * 8
            phones = [["m", 0.0, 0.12, False], ["a", 0.12, 0.3, True], ["p", 0.3, 0.38, False], ["a", 0.38, 0.4, True]]
            (root / "synth_meta" / f"{cid}.json").write_text(json.dumps({"speech_mask": speech, "phones": phones}))
    (root / "talking_subset.json").write_text(json.dumps(talk))
    (root / "t2m_subset.json").write_text(json.dumps(t2m))


def test_eval_cli_writes_table_and_json(tmp_path, capsys):
    write_corpus(tmp_path / "corpus")
    ckpt = MM2Face.random(seed=0, small=True).save(tmp_path / "tiny.pt")
    out = tmp_path / "res.json"
    png = tmp_path / "eval.png"
    rc = eval_cli.main(["--ckpt", str(ckpt), "--data", str(tmp_path / "corpus"), "--out", str(out), "--threads", "1",
                        "--plot", str(png)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "LVE" in printed and "mean-frame baseline" in printed and "smiles" in printed
    res = json.loads(out.read_text())
    assert res["clips"] == 2
    for part in ("model", "baseline_mean_frame"):
        assert res[part]["lve_mm"] >= 0 and res[part]["fve_mm"] >= 0
        assert "pause_closed_rate" in res[part]          # from the talking clip's speech mask
    assert res["model"]["style_by_rule"].keys() >= {"happy", "turn_left", "sad", "down"}
    assert res["baseline_mean_frame"]["emotion_pass_rate"] == 0.0   # the mean frame carries no style
    assert len(res["per_clip"]) == 2 and res["contrast"][0]["rules"] == ["happy", "sad"]
    assert set(res["head_rest"]["per_caption_rad"]) == set(eval_cli.HEAD_REST_CAPTIONS)
    assert set(res["emotion_rest"]["per_caption"]) == set(eval_cli.EMOTION_REST_CAPTIONS)
    assert "head at rest for captions naming no head movement" in printed
    # lip-sync metrics come from the one talking clip (MMHead's benchmark I); *_all also has the text-only one
    talk = next(r for r in res["per_clip"] if r["id"] == "T2")
    assert res["model"]["talking_clips"] == 1
    seed0 = res["model_per_seed"][0]
    assert seed0["lve_mm"] == talk["model"]["lve_mm"]
    assert seed0["lve_mm_all"] == np.mean([r["model"]["lve_mm"] for r in res["per_clip"]])
    # three sampling seeds by default: the table is their mean, each seed is in the JSON
    assert res["seeds"] == [0, 1, 2] and len(res["model_per_seed"]) == 3
    assert res["model"]["lve_mm"] == np.mean([a["lve_mm"] for a in res["model_per_seed"]])
    lo, hi = res["model"]["emotion_pass_rate_seed_range"]
    assert lo <= res["model"]["emotion_pass_rate"] <= hi
    assert "mean of 3 sampling seeds" in printed
    assert len(talk["trace"]["jaw_gt"]) == talk["frames"] == len(talk["trace"]["jaw_model"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # articulation on the talking clip's phones (issue 15): all seeds pooled, and the noise-bed gains
    art = res["articulation"]
    assert art["model"]["bilabials"] == 3 * 2 and art["gt"]["bilabials"] == 2 and art["gt"]["vowels"] == 2
    assert set(art["noise"]) == {"-30", "-20", "-10", "0"} and 0.0 <= art["noise_worst"]["rest_rate"] <= 1.0
    assert "bilabial closure" in printed and "low-frequency noise bed" in printed


def test_combine_seeds_averages_numbers_and_rule_rates():
    a = {"clips": 4, "lve_mm": 2.0, "emotion_pass_rate": 0.5, "emotion_checks": 2,
         "style_by_rule": {"happy": {"pass_rate": 0.5, "clips": 2}}}
    b = {"clips": 4, "lve_mm": 4.0, "emotion_pass_rate": 1.0, "emotion_checks": 2,
         "style_by_rule": {"happy": {"pass_rate": 1.0, "clips": 2}}}
    c = eval_cli.combine_seeds([a, b])
    assert c["seeds"] == 2 and c["clips"] == 4 and c["emotion_checks"] == 2
    assert c["lve_mm"] == 3.0 and c["lve_mm_seed_range"] == [2.0, 4.0]
    assert c["emotion_pass_rate"] == 0.75 and c["style_by_rule"]["happy"]["pass_rate"] == 0.75


def test_eval_cli_explains_a_missing_corpus(tmp_path, capsys):
    assert eval_cli.main(["--data", str(tmp_path / "nope"), "--baseline-only"]) == 2
    assert "mm2face-data synth" in capsys.readouterr().err


def test_head_rest_probe_flags_a_lean(monkeypatch):
    """A caption that names no head movement but comes out as a held forward lean fails the probe."""
    def fake(model, text, audio, n, device, seed, guidance, **kw):
        m = np.zeros((n, 56), np.float32)
        if "smiles" in text:
            m[n // 2:, 50] = 0.2 + 0.01 * seed                    # head down, held in the second half
        return m
    monkeypatch.setattr(eval_cli, "generate_motion", fake)
    r = eval_cli.head_rest_probe(None, "cpu", 0, None)
    assert r["worst_caption"] == "A person smiles." and abs(r["worst_rad"] - 0.21) < 1e-6 and not r["at_rest"]
    monkeypatch.setattr(eval_cli, "generate_motion", lambda model, text, audio, n, *a, **k: np.zeros((n, 56), np.float32))
    assert eval_cli.head_rest_probe(None, "cpu", 0, None)["at_rest"]


def test_emotion_rest_probe_flags_a_favourite_smile(monkeypatch):
    """A caption that names no emotion but comes out smiling fails the probe; a resting face passes."""
    from mm2face.engine.units import unit
    def fake(model, text, audio, n, device, seed, guidance, **kw):
        m = np.zeros((n, 56), np.float32)
        if "calmly" in text:
            m[:, [unit("lip_corner_puller_left"), unit("lip_corner_puller_right")]] = 0.6
        return m
    monkeypatch.setattr(eval_cli, "generate_motion", fake)
    r = eval_cli.emotion_rest_probe(None, "cpu", 0, None)
    assert (r["worst_caption"], r["worst_rule"]) == ("A person talks calmly.", "happy")
    assert abs(r["worst_score"] - 0.6) < 1e-6 and not r["at_rest"]
    assert "NOT at rest (largest happy 0.600" in eval_cli.format_table(
        {"split": "test", "clips": 0, "model": {}, "emotion_rest": r})
    monkeypatch.setattr(eval_cli, "generate_motion", lambda model, text, audio, n, *a, **k: np.zeros((n, 56), np.float32))
    assert eval_cli.emotion_rest_probe(None, "cpu", 0, None)["at_rest"]



def test_eval_cli_parse_styles_scores_the_path_mm2face_live_runs(tmp_path):
    """--parse-styles reads each caption as a style: the gesture layer then draws the turn and the look
    down the captions name, which an untrained model does not do by itself."""
    write_corpus(tmp_path / "corpus")
    ckpt = MM2Face.random(seed=0, small=True).save(tmp_path / "tiny.pt")
    rates = {}
    for flag in ([], ["--parse-styles"]):
        out = tmp_path / f"res{len(flag)}.json"
        rc = eval_cli.main(["--ckpt", str(ckpt), "--data", str(tmp_path / "corpus"), "--out", str(out), "--threads", "1",
                            "--seeds", "1", "--noise-gains", *flag])
        assert rc == 0
        res = json.loads(out.read_text())
        assert res["sampling"]["parse_styles"] is bool(flag)
        rates[bool(flag)] = res["model"]["held_pose_pass_rate"]
    assert rates[True] == 1.0 and rates[False] < 1.0


def test_eval_cli_baseline_from_another_corpus(tmp_path, capsys):
    """A held-out set has no train split: --baseline-data takes the mean frame from the training corpus."""
    write_corpus(tmp_path / "a")
    write_corpus(tmp_path / "b")
    for cid in ("T0", "T1", "M0"):                      # b's training motions open the jaw wider
        f = tmp_path / "b" / "facial_motion" / f"{cid}.pkl"
        d = pickle.loads(f.read_bytes())
        d["posecodes"][:, 3] += 0.3
        f.write_bytes(pickle.dumps(d))
    lve = {}
    for extra in ([], ["--baseline-data", str(tmp_path / "b")]):
        out = tmp_path / f"res{len(extra)}.json"
        assert eval_cli.main(["--data", str(tmp_path / "a"), "--baseline-only", "--noise-gains", "--out", str(out),
                              *extra]) == 0
        res = json.loads(out.read_text())
        lve[bool(extra)] = res["baseline_mean_frame"]["lve_mm"]
        assert res["baseline_data"] == str(tmp_path / ("b" if extra else "a"))
    assert lve[True] > lve[False] + 1.0
    assert eval_cli.main(["--data", str(tmp_path / "a"), "--baseline-data", str(tmp_path / "nope")]) == 2
    assert "baseline corpus not found" in capsys.readouterr().err
