"""The benchmark scripts run end to end on the tiny config and write valid JSON, markdown and PNG.
(Speed targets are checked by running the benchmarks, never here.)"""
import json

import pytest

from mm2face.benchmarks import cli


def check_outputs(out, name):
    res = json.loads((out / f"{name}.json").read_text())
    md = (out / f"{name}.md").read_text()
    png = (out / f"{name}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert md.count("|") > 10
    return res, md


def test_latency_over_websocket_with_comparisons(tmp_path):
    out = tmp_path / "lat"
    assert cli.main(["latency", "--tiny", "--threads", "1", "--seconds", "2.5", "--contexts", "5",
                     "--compare-seconds", "2.5", "--compare-backends", "eager,static", "--out", str(out)]) == 0
    res, md = check_outputs(out, "latency")
    s = res["stream"]
    assert "WebSocket" in s["transport"]
    assert s["frames"] >= 50 and s["audio_to_face_ms"]["n"] == s["frames"]
    # audio-to-face includes waiting for the token's audio: it is never below processing latency
    assert s["audio_to_face_ms"]["p50"] >= s["processing_ms"]["p50"]
    assert {"audio_enc", "g_step", "decode", "send"} <= set(s["stages_ms"])
    assert 0 < s["rtf"] < 10
    kv = res["kv_vs_prefix"][0]
    assert kv["context_s"] == 5 and kv["kv_cache_ms"]["p50"] > 0 and kv["prefix_ms"]["p50"] > 0
    assert res["streaming_vs_offline"]["max_abs_diff"] < 1e-3      # the stream reproduces offline generation
    assert [b["backend"] for b in res["backends"]] == ["eager", "static"]
    assert res["backends"][1]["max_abs_diff_vs_eager"] < 1e-3
    assert "audio-to-face" in md and "KV cache" in md


def test_throughput_levels(tmp_path):
    out = tmp_path / "thr"
    assert cli.main(["throughput", "--tiny", "--threads", "1", "--seconds", "2", "--levels", "1,2",
                     "--target-ms", "10000", "--out", str(out)]) == 0
    res, md = check_outputs(out, "throughput")
    assert [lv["n"] for lv in res["levels"]] == [1, 2]
    assert res["max_sessions"] == 2 and all(lv["holds"] for lv in res["levels"])
    assert res["levels"][1]["frames"] == res["levels"][1]["expected_frames"]


def test_soak_counts_frames_exactly(tmp_path):
    out = tmp_path / "soak"
    assert cli.main(["soak", "--tiny", "--threads", "1", "--minutes", "0.05", "--accelerated-minutes", "1",
                     "--out", str(out)]) == 0
    res, md = check_outputs(out, "soak")
    assert res["frame_count_exact"] and res["frame_count"][0]["audio_frames"] == 75
    assert res["rss_mb"]["end"] > 0 and "RSS drift" in md
    assert res["accelerated"]["audio_minutes"] == 1 and "engine alone" in md


def test_cli_lists_commands(capsys):
    assert cli.main(["backends"]) == 0
    assert json.loads(capsys.readouterr().out)["eager"] == "ok"
    with pytest.raises(SystemExit):
        cli.main(["--help"])


def test_outputs_cost_per_frame(tmp_path):
    out = tmp_path / "outputs"
    assert cli.main(["outputs", "--frames", "120", "--realtime-s", "0.8", "--out", str(out)]) == 0
    res, md = check_outputs(out, "outputs")
    udp = res["udp"]
    assert set(udp) == {"Live Link Face (25 fps)", "VMC (25 fps)", "VMC (60 fps)"}
    for name, r in udp.items():
        assert r["cpu"]["n"] == r["wall"]["n"] == (120 - 50) // 2 and r["cpu"]["mean"] >= r["encode_cpu"]["mean"] > 0
    # the paced run sent every frame (60 fps: 2.4 bundles per frame)
    assert udp["Live Link Face (25 fps)"]["realtime_sent"] == udp["Live Link Face (25 fps)"]["realtime_frames"] == 20
    assert udp["VMC (60 fps)"]["realtime_sent"] >= 2 * udp["VMC (60 fps)"]["realtime_frames"]
    assert all(r["sender_cpu_us_per_frame"] > 0 for r in udp.values())
    assert "json" in res["ws_formats"] and "Live Link Face" in md
