"""Same-run A/B of the engine's hop cost: two source trees (e.g. a ``git worktree`` of an older commit
and this one), N sessions stepped together, interleaved so that both see the same machine load.

    python benchmarks/hop_ab.py --trees /tmp/old19 . --sessions 1 16 --backend eager onnx

Per backend and N, one worker process per tree imports ``mm2face`` from its tree, loads the checkpoint
(``--ckpt``, default: the first tree's ``engine/assets/default.pt``, the same file for both), makes N
sessions (sampling on, VAD on, different seeds) that are each given ``--seconds`` of the bundled demo
speech up front, and runs the first ``--skip`` hops untimed (by then the attention window is full: the
steady state of a long stream). Both workers stay loaded; the driver then asks them in turn (the order
alternating) for ``--reps`` blocks of ``--block`` hops, each hop one ``step_sessions`` over all N.
Reported per tree: p50 and p95 wall ms per hop and p50 CPU ms (``--threads 1``: the timed thread does
all the work, so its CPU time is the hop's cost, which other load on the machine disturbs far less than
wall time), and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(root: str, n: int, backend: str, ckpt: str, seconds: float, skip: int, threads: int) -> None:
    """Serve timing requests on stdin: ``run K`` -> K hops of N sessions, one JSON line of per-hop wall
    and CPU ms on stdout (the first ``skip`` hops run before the first request)."""
    import importlib
    finder = importlib.import_module("__editable___mm2face_live_0_1_0_finder")
    here = str(Path(__file__).resolve().parents[1])
    for k, v in list(finder.MAPPING.items()):           # import mm2face from ``root``
        finder.MAPPING[k] = v.replace(here, str(Path(root).resolve()), 1)
    import wave

    import numpy as np
    import torch
    torch.set_grad_enabled(False)
    torch.set_num_threads(threads)
    import mm2face.engine.session as sess_mod
    from mm2face.engine.backends import apply_backend
    from mm2face.engine.model import MM2Face
    from mm2face.engine.session import StreamConfig, StreamSession, step_sessions
    assert str(Path(sess_mod.__file__).resolve()).startswith(str(Path(root).resolve())), sess_mod.__file__
    with wave.open(str(Path(here) / "realtime" / "assets" / "demo_speech.wav"), "rb") as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    audio = np.tile(x, -(-int(seconds * 16000) // len(x)))[:int(seconds * 16000)]
    model = apply_backend(MM2Face.load(ckpt), backend, "cpu")
    ss = [StreamSession(model, StreamConfig(seed=i)) for i in range(n)]
    for i, s in enumerate(ss):
        s.push_audio(np.roll(audio, 8000 * i))           # different speech in each session
    for _ in range(skip):
        step_sessions(ss)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        k = int(line.split()[1])
        wall, cpu = [], []
        for _ in range(k):
            if not all(s.hop_ready() for s in ss):
                raise SystemExit("out of audio: raise --seconds")
            t, c = time.perf_counter(), time.thread_time()
            step_sessions(ss)
            wall.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.thread_time() - c) * 1e3)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", nargs=2, required=True, metavar=("A", "B"), help="two source trees to compare")
    p.add_argument("--sessions", nargs="+", type=int, default=[1, 16], help="sessions stepped together")
    p.add_argument("--backend", nargs="+", default=["eager", "onnx"], help="backends (apply_backend names)")
    p.add_argument("--ckpt", default=None, help="checkpoint (default: tree A's engine/assets/default.pt)")
    p.add_argument("--seconds", type=float, default=12.0, help="speech per session, seconds")
    p.add_argument("--skip", type=int, default=70, help="hops not timed at the start (window filling)")
    p.add_argument("--reps", type=int, default=20, help="interleaved blocks per configuration")
    p.add_argument("--block", type=int, default=10, help="hops per block")
    p.add_argument("--threads", type=int, default=1,
                   help="torch (and ONNX Runtime) threads; with 1 all compute runs in the timed thread, so its "
                        "CPU time per hop is measured too, which other load on the machine disturbs far less")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", nargs=3, metavar=("ROOT", "N", "BACKEND"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    ckpt = a.ckpt or str(Path(a.trees[0]) / "engine" / "assets" / "default.pt")
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), a.worker[2], ckpt, a.seconds, a.skip, a.threads)
        return 0
    res: dict = {}
    loads = []
    for backend in a.backend:
        for n in a.sessions:
            procs = {}
            for tree in a.trees:                          # both trees loaded side by side, then interleaved
                procs[tree] = subprocess.Popen([sys.executable, __file__, "--trees", *a.trees, "--ckpt", ckpt,
                                                "--seconds", str(a.seconds), "--skip", str(a.skip),
                                                "--threads", str(a.threads), "--worker", tree, str(n), backend],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for tree, pr in procs.items():
                if not json.loads(pr.stdout.readline()).get("ready"):
                    raise SystemExit(f"worker for {tree} failed")
            for rep in range(a.reps):
                loads.append(os.getloadavg()[0])
                for tree in (a.trees if rep % 2 == 0 else a.trees[::-1]):
                    pr = procs[tree]
                    pr.stdin.write(f"run {a.block}\n")
                    pr.stdin.flush()
                    line = pr.stdout.readline()
                    if not line:
                        raise SystemExit(f"worker for {tree} stopped (see its stderr)")
                    r = json.loads(line)
                    res.setdefault((tree, backend, n), {"wall": [], "cpu": [], "blocks": []})
                    d = res[(tree, backend, n)]
                    d["wall"] += r["wall"]
                    d["cpu"] += r["cpu"]
                    d["blocks"].append(statistics.median(r["cpu"]))
            for pr in procs.values():
                pr.stdin.close()
                pr.wait()
            for tree in a.trees:
                d = res[(tree, backend, n)]
                print(f"{backend:6s} N={n:3d} {tree}: wall p50 {_q(d['wall'], 50):.2f} ms, p95 {_q(d['wall'], 95):.2f} ms, "
                      f"CPU p50 {_q(d['cpu'], 50):.2f} ms ({len(d['wall'])} hops)", flush=True)
    print(f"\nload average (1 min) during the runs: {min(loads):.2f} - {max(loads):.2f}")
    print("| backend | sessions | " + " | ".join(f"{t}: wall p50 / p95, CPU p50 (ms)" for t in a.trees) + " |")
    print("|---|---|" + "---|" * len(a.trees))
    rows = []
    for backend in a.backend:
        for n in a.sessions:
            cells = []
            for tree in a.trees:
                d = res[(tree, backend, n)]
                cells.append(f"{_q(d['wall'], 50):.2f} / {_q(d['wall'], 95):.2f}, {_q(d['cpu'], 50):.2f}")
            rows.append({"backend": backend, "sessions": n, **{t: res[(t, backend, n)] for t in a.trees}})
            print(f"| {backend} | {n} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "load": [min(loads), max(loads)]}, indent=1))
    return 0


def _q(x, q: float) -> float:
    import numpy as np
    return float(np.percentile(x, q))


if __name__ == "__main__":
    sys.exit(main())
