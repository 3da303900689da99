"""``mm2face-bench throughput --server`` end to end on the tiny config: the real server in its own process
(port from the OS) and WebSocket clients from the test process, beside the in-process levels of the same
scheduler. (The capacity itself is measured by running the benchmark, never checked here.)"""
import json
import re

from mm2face.benchmarks import cli


def test_throughput_server_mode_drives_the_real_server(tmp_path):
    out = tmp_path / "thr"
    assert cli.main(["throughput", "--tiny", "--threads", "1", "--seconds", "1.5", "--levels", "1,2",
                     "--target-ms", "10000", "--server", "--out", str(out)]) == 0
    res = json.loads((out / "throughput.json").read_text())
    md = (out / "throughput.md").read_text()
    srv = res["server"]
    assert [lv["n"] for lv in res["levels"]] == [1, 2] and [lv["n"] for lv in srv["levels"]] == [1, 2]
    for lv in srv["levels"]:
        assert lv["holds"], lv["why_not"]
        assert lv["frames"] == lv["expected_frames"] == lv["n"] * (24000 // 640)   # every streamed frame, once
        assert "clients' own" in lv["clock"] and 0 < lv["client_cpu_frac"] < 1
        a2f = lv["audio_to_face_ms"]
        assert 0 < a2f["p50"] <= a2f["p95"] < 10000
    assert srv["max_sessions"] == 2 and srv["ratio"] == 1.0 and srv["client_cpu_frac_max"] > 0
    assert "mm2face.realtime.cli --serve" in srv["cmd"] and "--port 0" in srv["cmd"]
    log = (out / "server-stderr.log").read_text()
    port = int(re.search(r"serving ws://127\.0\.0\.1:(\d+)", log).group(1))
    assert port not in (0, 8765)                                # the OS picked it
    assert "The real server" in md and "of in-process" in md and "client CPU" in md
