"""Hop cost of the scheduler: milliseconds of one round in which N sessions each run one hop.

    python -m mm2face.benchmarks.hopcost --sessions 1,16          # JSON on stdout

N sessions of the measured model each get ``--seconds`` of speech at once; then
:class:`~mm2face.engine.batching.SessionBatcher` rounds are run by hand (no worker thread, no pacing),
every round one batched hop of all N. Reports the median and p90 round time after ``--warmup`` rounds,
and the median CPU time of the calling thread (which does all the work at one thread, and which other
load on a shared machine disturbs less than wall time).
It uses only ``SessionBatcher.add/push_audio/step`` and ``harness.load_bench_model``, which older
versions of the engine have too, so the same file measures an older checkout for a same-run A/B
(docs/benchmarks.md: run it alternately against both trees).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mm2face.benchmarks.hopcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="1,16", help="comma list of N (default 1,16)")
    p.add_argument("--rounds", type=int, default=60, help="timed rounds per N (default 60)")
    p.add_argument("--warmup", type=int, default=8, help="untimed rounds first (default 8)")
    p.add_argument("--seconds", type=float, default=8.0, help="speech pushed per session (default 8; must cover "
                   "warmup + rounds hops of 80 ms)")
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default)")
    p.add_argument("--backend", default="auto", help="backend (default auto)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--tiny", action="store_true", help="random tiny test config (smoke test)")
    return p


def measure(model, audio, n: int, rounds: int, warmup: int) -> dict:
    from mm2face.benchmarks.harness import make_session
    from mm2face.engine.batching import SessionBatcher
    b = SessionBatcher(model)
    keys = [b.add(make_session(model, seed=j)) for j in range(n)]
    for k in keys:
        b.push_audio(k, audio)
    times, cpu = [], []
    for i in range(warmup + rounds):
        t, c = time.perf_counter(), time.thread_time()
        hops = b.step()
        dt, dc = time.perf_counter() - t, time.thread_time() - c
        if hops != n:
            raise RuntimeError(f"round {i} ran {hops} hops, not {n}: push more --seconds")
        if i >= warmup:
            times.append(dt * 1e3)
            cpu.append(dc * 1e3)
    return {"sessions": n, "round_ms_p50": float(np.median(times)), "round_ms_p90": float(np.percentile(times, 90)),
            "round_ms_min": float(np.min(times)), "round_cpu_ms_p50": float(np.median(cpu)), "rounds": rounds}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from mm2face.benchmarks import harness
    model, desc = harness.load_bench_model(args.ckpt, "cpu", args.backend, tiny=args.tiny)
    audio, _ = harness.load_speech(args.seconds)
    with torch.no_grad():
        res = [measure(model, audio, int(n), args.rounds, args.warmup) for n in args.sessions.split(",") if n]
    print(json.dumps({"model": desc, "results": res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
