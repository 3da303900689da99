"""mm2face-bench stress, end to end on the small random model: a real mm2face-live process, hostile
malformed input and capacity probing from another loopback address (issue 20)."""
import json

import pytest

from mm2face.benchmarks import stress


def test_malformed_inputs_cover_17_kinds_deterministically():
    a, b = stress.malformed_inputs(170), stress.malformed_inputs(170)
    assert a == b and len(a) == 170
    assert any(isinstance(x, bytes) for x in a) and any(isinstance(x, str) and len(x) > 65536 for x in a)


@pytest.mark.slow
def test_stress_run_malformed_and_capacity(tmp_path):
    rc = stress.main(["--random-model", "--good", "1", "--seconds", "2", "--malformed", "340",
                      "--phases", "quiet,malformed,capacity", "--server-args", "--capacity 4",
                      "--out", str(tmp_path)])
    res = json.loads((tmp_path / "stress.json").read_text())
    assert rc == 0 and res.get("server_crashed") is None
    mal = res["phases"]["malformed"]["hostile"]
    assert mal["answered"] == 340 and "internal" not in mal["codes"], mal
    cap = res["phases"]["capacity"]["hostile"]
    assert cap["codes"].get("capacity") == 1 and cap["opened_before_refusal"] == 3, cap   # 1 + 3 of 4
    assert res["phases"]["quiet"]["good"]["a2f_ms"]["n"] > 0
    assert (tmp_path / "stress.md").read_text().count("|") > 10
