"""Throughput benchmark: the most concurrent real-time sessions one process holds.

    mm2face-bench throughput                              # CPU, doubling then bisecting N
    mm2face-bench throughput --device cuda --backend compile --start 64 --max 1024

All sessions share one model through :class:`mm2face.engine.batching.SessionBatcher` (sessions whose
hop is ready are batched into one step). Each is fed speech at real-time pace, the sessions' start
times spread over one hop as independent clients would be. A level N *holds* when every session's
audio-to-face p95 stays under ``--target-ms``, every expected frame arrived, and the feeder kept pace.
The search doubles N until a level fails, then bisects. Writes ``throughput.json``/``.md``/``.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mm2face.benchmarks import harness
from mm2face.benchmarks.common import machine_info, md_table, write_json, write_report
from mm2face.benchmarks.latency import add_common_args, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm2face-bench throughput", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--target-ms", type=float, default=150.0, help="audio-to-face p95 every session must keep (150)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio per session per level, seconds (10)")
    p.add_argument("--chunk-ms", type=float, default=40.0, help="audio chunk per push (40)")
    p.add_argument("--start", type=int, default=1, help="first level N (1)")
    p.add_argument("--max", type=int, default=64, help="largest N tried (64)")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch in one step (256)")
    p.add_argument("--levels", default=None, help="explicit comma list of N instead of the search")
    p.add_argument("--time-budget-s", type=float, default=None, help="stop searching after this much wall time")
    return p


def level(model, audio, n, args) -> dict:
    runr = harness.run_inproc(model, audio, n, args.chunk_ms / 1e3, args.device, max_batch=args.max_batch)
    s = harness.summarize(runr, model.samples_per_token / 16000)
    worst = s.get("worst_session_a2f_p95_ms", float("inf"))
    complete = s["frames"] >= (s.get("expected_frames") or 0)
    lag_ok = runr["feeder_lag"].get("p95", 0.0) < 20.0
    s["holds"] = bool(worst <= args.target_ms and complete and lag_ok and not runr["errors"])
    s["why_not"] = None if s["holds"] else ", ".join(
        w for w, bad in (("p95 over target", worst > args.target_ms), ("frames missing", not complete),
                         ("feeder fell behind", not lag_ok), ("session errors", bool(runr["errors"]))) if bad)
    return s


def run(args) -> dict:
    model, desc, out = setup(args, "throughput")
    audio, src = harness.load_speech(args.seconds)
    res = {"benchmark": "throughput", "machine": machine_info(args.device), "model": desc, "args": vars(args),
           "audio": src, "target_ms": args.target_ms, "levels": []}
    t_start = time.perf_counter()
    tried: dict[int, dict] = {}

    def test(n):
        if n not in tried:
            t = time.perf_counter()
            s = level(model, audio, n, args)
            s["wall_s"] = time.perf_counter() - t
            tried[n] = s
            partial = dict(res, levels=[{"n": k, **v} for k, v in sorted(tried.items())],
                           max_sessions=max([k for k, v in tried.items() if v["holds"]] or [0]))
            write_json(Path(out) / "throughput.json", partial)      # kept if a later level runs out of time
            a = s.get("audio_to_face_ms", {})
            print(f"N={n:4d}: a2f p50 {a.get('p50', float('nan')):7.1f} p95 {a.get('p95', float('nan')):7.1f} ms, "
                  f"worst session p95 {s.get('worst_session_a2f_p95_ms', float('nan')):7.1f} ms, "
                  f"worker busy {s.get('worker_busy_frac', float('nan')):.0%} -> "
                  f"{'holds' if s['holds'] else 'fails (' + s['why_not'] + ')'}", flush=True)
        return tried[n]["holds"]

    def out_of_time():
        return args.time_budget_s is not None and time.perf_counter() - t_start > args.time_budget_s

    if args.levels:
        for n in [int(x) for x in args.levels.split(",") if x]:
            if out_of_time():
                break
            test(n)
    else:
        lo, hi, n = 0, None, max(1, args.start)
        while n <= args.max and not out_of_time():          # doubling
            if test(n):
                lo, n = n, n * 2
            else:
                hi = n
                break
        if hi is not None:                                   # bisect between lo (holds) and hi (fails)
            while hi - lo > max(1, lo // 8) and not out_of_time():
                mid = (lo + hi) // 2
                if mid <= lo:
                    break
                if test(mid):
                    lo = mid
                else:
                    hi = mid
    holding = [n for n, s in tried.items() if s["holds"]]
    res["max_sessions"] = max(holding) if holding else 0
    res["levels"] = [{"n": n, **{k: v for k, v in s.items() if k not in ("stages_ms",)}} for n, s in sorted(tried.items())]
    res["wall_s"] = time.perf_counter() - t_start
    write_outputs(res, Path(out))
    return res


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"### Throughput: concurrent real-time sessions in one process (target audio-to-face p95 "
             f"<= {res['target_ms']:.0f} ms)", "",
             f"Machine: {m.get('gpu') or m.get('cpu')} ({m.get('cpu_count')} CPUs, load {m.get('loadavg_1m', 0):.1f}), "
             f"torch {m.get('torch')}. Model: {res['model']}.", "",
             f"**Most sessions that hold: {res['max_sessions']}**", ""]
    rows = []
    for lv in res["levels"]:
        a = lv.get("audio_to_face_ms", {})
        rows.append([lv["n"], a.get("p50", float("nan")), a.get("p95", float("nan")),
                     lv.get("worst_session_a2f_p95_ms", float("nan")), f"{lv.get('worker_busy_frac', float('nan')):.0%}",
                     "yes" if lv["holds"] else f"no: {lv['why_not']}"])
    lines.append(md_table(["sessions", "a2f p50 (ms)", "a2f p95 (ms)", "worst session p95 (ms)", "worker busy",
                           "holds"], rows))
    return "\n".join(lines) + "\n"


def write_outputs(res: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lv = res["levels"]
    if lv:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        n = [x["n"] for x in lv]
        ax.plot(n, [x.get("audio_to_face_ms", {}).get("p95", np.nan) for x in lv], "o-", label="a2f p95")
        ax.plot(n, [x.get("worst_session_a2f_p95_ms", np.nan) for x in lv], "s--", label="worst session p95")
        ax.axhline(res["target_ms"], color="r", lw=0.8, label="target")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("ms")
        ax.set_title(f"throughput: max {res['max_sessions']} sessions", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
    write_report(out, "throughput", res, markdown)


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
