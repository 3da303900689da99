"""Annotation: per-frame lists (format, every 3rd frame, Table 1 signs), prompts, template captions, LLM hook."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from mm2face.engine.units import unit
from mm2face.training.annotate import (CAPTION_KINDS, TemplateCaptioner, build_prompts, call_llm,
                                       frame_descriptions, head_terms, infer_labels)

LINE = re.compile(r"^<frame \d+(, [A-Z][a-z]+(?: [a-z]+)*: \d\.\d\d)*>$")


def still(T=75):
    return np.zeros((T, 56), np.float32)


def test_format_and_every_third_frame():
    m = still(40)
    m[:, unit("lip_corner_puller_left")] = 0.79
    m[:, unit("cheek_raiser")] = 0.41
    m[:, unit("brow_lowerer")] = 0.1                      # below threshold: not listed
    m[:, 50] = -0.25                                      # rx < 0: head up
    lines = frame_descriptions(m)
    assert len(lines) == 14                               # frames 0, 3, ..., 39
    assert [int(re.match(r"<frame (\d+)", s).group(1)) for s in lines] == list(range(0, 40, 3))
    assert lines[4] == "<frame 12, Cheek raiser: 0.41, Lip corner puller left: 0.79, Head up: 0.25>"
    assert all(LINE.match(s) for s in lines), lines[:2]
    m[:, unit("lip_corner_puller_left")] = 1.7            # intensities are clipped to 0..1
    assert "Lip corner puller left: 1.00" in frame_descriptions(m)[0]


@pytest.mark.parametrize("axis,sign,term", [(0, -1, "Head up"), (0, 1, "Head down"),
                                            (1, -1, "Head turns right"), (1, 1, "Head turns left"),
                                            (2, -1, "Head tilts left"), (2, 1, "Head tilts right")])
def test_table1_signs(axis, sign, term):
    r = np.zeros(3)
    r[axis] = 0.3 * sign
    assert head_terms(r) == [(term, pytest.approx(0.3))]
    r[axis] = 0.01 * sign
    assert head_terms(r) == []                             # below threshold


def _turn(T, axis, value):
    m = still(T)
    ramp = np.clip(np.arange(T) / 20, 0, 1)
    m[:, 50 + axis] = value * ramp
    return m


@pytest.mark.parametrize("axis,value,word", [(1, 0.35, "turns the head (far )?to the left"),
                                             (1, -0.3, "turns the head (far )?to the right"),
                                             (2, 0.2, "tilts the head (far )?to the right"),
                                             (2, -0.2, "tilts the head (far )?to the left"),
                                             (0, -0.25, "look up"), (0, 0.25, "look down")])
def test_template_head_pose_direction(axis, value, word):
    caps = TemplateCaptioner()(_turn(100, axis, value), ["talk"], ["neutral"])
    assert re.search(word, caps["detail_head_pose"]), caps["detail_head_pose"]
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[word.split()[-1]]
    assert opposite not in caps["detail_head_pose"]


def test_nod_detected():
    m = still(100)
    t = np.arange(100) / 25
    m[:, 50] = 0.15 * np.sin(np.pi * 2.5 * t) ** 2 * (t < 2.4)
    caps = TemplateCaptioner()(m)
    assert "nods" in caps["detail_head_pose"]
    assert "nod" in infer_labels(m)[0]


def test_template_captions_emotion_and_order():
    rng = np.random.default_rng(0)
    m = still(100)
    m[:50, unit("lip_corner_puller_left")] = m[:50, unit("lip_corner_puller_right")] = 0.8
    m[:50, unit("cheek_raiser")] = 0.5
    m[50:, unit("inner_brow_raiser")] = 0.7
    m[50:, unit("lip_corner_depressor")] = 0.65
    caps = TemplateCaptioner()(m, ["talk", "smile", "nod", "look sad"], ["happy", "sad"], rng)
    assert set(caps) == set(CAPTION_KINDS)
    a = caps["action"]
    assert a.index("talks") < a.index("smiles") < a.index("nods") < a.index("looks sad")
    e = caps["emotion"].lower()
    assert any(w in e for w in ("happy", "cheerful", "pleased", "joyful"))
    assert any(w in e for w in ("sad", "unhappy", "downcast", "sorrowful"))
    assert len(caps["emotion"].split()) <= 15 and len(caps["action"].split()) <= 30
    assert caps["emotion_scenario"].count("\n") == 2 and caps["emotion_scenario"].startswith("1. ")
    d = caps["detail_expression"]
    assert d.index("mouth corner pulls up") < d.index("mouth corners turn down"), d
    assert not re.search(r"\d", d)                          # no numbers in the detail caption
    # labels inferred from the motion when none are given
    acts, emos = infer_labels(m)
    assert emos == ["happy", "sad"] and "smile" in acts


def test_prompts_carry_inputs_and_limits():
    m = _turn(30, 1, 0.3)
    m[:, unit("cheek_raiser")] = 0.5
    p = build_prompts(m, ["talk", "turn left"], ["happy"])
    assert set(p) == set(CAPTION_KINDS)
    assert "30 words" in p["action"] and "{talk, turn left}" in p["action"] and "<frame 27, Cheek raiser: 0.50" in p["action"]
    assert "15 words" in p["emotion"] and "{happy}" in p["emotion"]
    assert "3 " in p["emotion_scenario"] and "15 words" in p["emotion_scenario"]
    assert "100 words" in p["detail_expression"] and "Head" not in p["detail_expression"].split("observations:")[1]
    assert "100 words" in p["detail_head_pose"] and "Cheek" not in p["detail_head_pose"]
    assert "Head turns left" in p["detail_head_pose"]


def test_call_llm_openai_compatible():
    seen = {}

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = json.dumps({"choices": [{"message": {"content": " The person smiles. "}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.handle_request, daemon=True)
    th.start()
    try:
        reply = call_llm(f"http://127.0.0.1:{srv.server_port}/v1", "tiny", "hello", timeout_s=10)
    finally:
        th.join(5)
        srv.server_close()
    assert reply == "The person smiles."
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == "tiny"
    assert seen["body"]["messages"][0]["content"] == "hello"
    with pytest.raises(RuntimeError, match="--llm-url"):
        call_llm("http://127.0.0.1:9", "x", "y", timeout_s=2)


def test_annotate_cli_on_folder(tmp_path):
    import pickle

    from mm2face.training.data_cli import main
    root = tmp_path / "c"
    (root / "facial_motion").mkdir(parents=True)
    m = _turn(60, 1, -0.3)                                      # turns right
    m[:, unit("brow_lowerer")] = 0.8
    m[:, unit("lid_tightener")] = 0.6
    m[:, unit("lip_tightener")] = 0.55
    pickle.dump({"expcodes": m[:, :50], "posecodes": m[:, 50:]}, open(root / "facial_motion" / "Y.pkl", "wb"))
    (root / "t2m_subset.json").write_text(json.dumps({"train": ["Y"]}))
    assert main(["annotate", "--data", str(root), "--out", str(tmp_path / "ann"), "--write-captions"]) == 0
    rec = json.loads((tmp_path / "ann" / "Y.json").read_text())
    assert len(rec["frames"]) == 20 and rec["captioner"] == "template"
    assert rec["emotion_labels"] == ["angry"] and "turn right" in rec["action_labels"]   # inferred labels
    assert "right" in rec["captions"]["detail_head_pose"]
    assert (root / "text_annotations" / "emotion" / "Y.txt").read_text().strip() == rec["captions"]["emotion"]
