"""Throughput benchmark: the most concurrent real-time sessions one process holds.

    mm2face-bench throughput                              # CPU, doubling then bisecting N
    mm2face-bench throughput --server                     # ... and the real server, N WebSocket clients
    mm2face-bench throughput --device cuda --backend compile --start 64 --max 1024

All sessions share one model through :class:`mm2face.engine.batching.SessionBatcher` (sessions whose
hop is ready are batched into one step). Each is fed speech at real-time pace, the sessions' start
times spread over one hop as independent clients would be. A level N *holds* when every session's
audio-to-face p95 stays under ``--target-ms``, every expected frame arrived, and the feeder kept pace.
The search doubles N until a level fails, then bisects. Writes ``throughput.json``/``.md``/``.png``.

``--server`` then measures the same for the real server: ``mm2face-live --serve`` (the same code path, in
its own process, on a port the OS picks, with the same model flags) and N WebSocket clients in this one
process (asyncio; its CPU use is reported) that each open a session and stream the speech at real-time
pace. Latency is the clients' own: a frame's receipt minus the send of the audio it shows. It reports
the largest N that holds and its ratio to the in-process figure of the same scheduler (target >= 80 %).
The server also runs its own text-only 'default' session throughout, as ``mm2face-live --serve`` does.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mm2face.benchmarks import harness
from mm2face.benchmarks.common import machine_info, md_table, write_json, write_report
from mm2face.benchmarks.latency import add_common_args, setup

SERVER_WARMUP_S = 3.0       # --server: an unmeasured first level (first-step costs at the server's batch sizes)


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
    p.add_argument("--time-budget-s", type=float, default=None, help="stop searching after this much wall time "
                   "(per search)")
    p.add_argument("--server", action="store_true", help="also measure the real server (mm2face-live --serve in "
                   "its own process) with N WebSocket clients from this process, and the ratio to in-process")
    p.add_argument("--server-args", default="", help="extra mm2face-live flags for --server, e.g. '--ingest-speed 2'")
    p.add_argument("--target-ratio", type=float, default=0.8,
                   help="server capacity / in-process capacity the server should reach (0.8)")
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


def server_level(url: str, audio, n, args) -> dict:
    """One level against the real server: ``n`` WebSocket clients streaming at real-time pace."""
    runr = harness.run_server_clients(url, audio, n, args.chunk_ms / 1e3)
    s = harness.summarize(runr)
    worst = s.get("worst_session_a2f_p95_ms", float("inf"))
    complete = s["frames"] >= (s.get("expected_frames") or 0)
    lag_ok = runr["feeder_lag"].get("p95", 0.0) < 20.0
    s["client_cpu_frac"] = runr["client_cpu_frac"]
    s["error_messages"] = runr["error_messages"]
    s["holds"] = bool(worst <= args.target_ms and complete and lag_ok and not runr["errors"])
    s["why_not"] = None if s["holds"] else ", ".join(
        w for w, bad in (("p95 over target", worst > args.target_ms), ("frames missing", not complete),
                         ("clients fell behind", not lag_ok), ("errors", bool(runr["errors"]))) if bad)
    return s


def server_cmd_args(args) -> list[str]:
    """mm2face-live flags for the same model, backend and threads as the in-process levels, with admission
    limits above the largest level (the search finds the capacity, not the admission control)."""
    n = max([args.max] + [int(x) for x in (args.levels or "").split(",") if x]) + 1
    out = ["--device", args.device, "--backend", args.backend, "--threads", str(args.threads),
           "--capacity", str(n), "--max-sessions", str(n + 1), "--max-sessions-per-client", str(n),
           "--idle-timeout", "0"]
    if args.tiny:
        out.append("--random-model")
    elif args.ckpt:
        out += ["--ckpt", args.ckpt]
    return out + args.server_args.split()


def search(args, test) -> None:
    """Explicit ``--levels``, or double N until a level fails, then bisect; ``test(n) -> holds``."""
    t_start = time.perf_counter()

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


def _levels(tried: dict) -> list[dict]:
    return [{"n": n, **{k: v for k, v in s.items() if k not in ("stages_ms",)}} for n, s in sorted(tried.items())]


def _max_holding(tried: dict) -> int:
    return max([n for n, s in tried.items() if s["holds"]] or [0])


def run(args) -> dict:
    model, desc, out = setup(args, "throughput")
    audio, src = harness.load_speech(args.seconds)
    res = {"benchmark": "throughput", "machine": machine_info(args.device), "model": desc, "args": vars(args),
           "audio": src, "target_ms": args.target_ms, "levels": []}
    t_start = time.perf_counter()
    tried: dict[int, dict] = {}
    served: dict[int, dict] = {}

    def save():                                   # kept if a later level runs out of time
        res["levels"], res["max_sessions"] = _levels(tried), _max_holding(tried)
        if "server" in res:
            res["server"]["levels"], res["server"]["max_sessions"] = _levels(served), _max_holding(served)
        write_json(Path(out) / "throughput.json", res)

    def report(tag, n, s):
        a = s.get("audio_to_face_ms", {})
        extra = (f"client CPU {s['client_cpu_frac']:.0%}" if "client_cpu_frac" in s
                 else f"worker busy {s.get('worker_busy_frac', float('nan')):.0%}")
        print(f"{tag} N={n:4d}: a2f p50 {a.get('p50', float('nan')):7.1f} p95 {a.get('p95', float('nan')):7.1f} ms, "
              f"worst session p95 {s.get('worst_session_a2f_p95_ms', float('nan')):7.1f} ms, {extra} -> "
              f"{'holds' if s['holds'] else 'fails (' + s['why_not'] + ')'}", flush=True)

    def measured(cache: dict, measure, tag: str):
        """``n -> holds?`` for :func:`search`: each level measured once (``measure(n)``), saved and reported."""
        def test(n):
            if n not in cache:
                t = time.perf_counter()
                s = measure(n)
                s["wall_s"] = time.perf_counter() - t
                cache[n] = s
                save()
                report(tag, n, s)
            return cache[n]["holds"]
        return test

    search(args, measured(tried, lambda n: level(model, audio, n, args), "in-process"))
    if args.server:
        del model                                  # the server process loads its own
        import gc
        gc.collect()
        res["server"] = {"cmd": " ".join(harness.ServerProcess.base_cmd() + server_cmd_args(args)), "levels": []}
        with harness.ServerProcess(server_cmd_args(args), Path(out) / "server-stderr.log") as srv:
            print(f"[throughput] server up at {srv.url}; warm-up level (unmeasured) ...", flush=True)
            t = time.perf_counter()
            harness.run_server_clients(srv.url, audio[:int(SERVER_WARMUP_S * 16000)], max(1, args.start),
                                       args.chunk_ms / 1e3)
            res["server"]["warmup_s"] = time.perf_counter() - t

            search(args, measured(served, lambda n: server_level(srv.url, audio, n, args), "server    "))
        inproc = _max_holding(tried)
        res["server"]["ratio"] = _max_holding(served) / inproc if inproc else None
        res["server"]["target_ratio"] = args.target_ratio
        cpu = [s["client_cpu_frac"] for s in served.values()]
        res["server"]["client_cpu_frac_max"] = max(cpu) if cpu else None
    save()
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
    srv = res.get("server")
    if srv:
        ratio = srv.get("ratio")
        lines += ["", f"#### The real server: `mm2face-live --serve` in its own process, N WebSocket clients "
                  "streaming at real-time pace from one client process (latency on the clients' clocks)", "",
                  f"Server: `{' '.join(srv['cmd'].split()[1:])}`", "",
                  f"**Most sessions that hold: {srv.get('max_sessions', 0)}** "
                  f"({'n/a' if ratio is None else f'{ratio:.0%}'} of in-process; target >= "
                  f"{srv.get('target_ratio', 0.8):.0%}); client process CPU at most "
                  f"{srv.get('client_cpu_frac_max') or 0:.0%} of one core", ""]
        rows = []
        for lv in srv.get("levels", []):
            a = lv.get("audio_to_face_ms", {})
            rows.append([lv["n"], a.get("p50", float("nan")), a.get("p95", float("nan")),
                         lv.get("worst_session_a2f_p95_ms", float("nan")), f"{lv.get('client_cpu_frac', float('nan')):.0%}",
                         "yes" if lv["holds"] else f"no: {lv['why_not']}"])
        lines.append(md_table(["sessions", "a2f p50 (ms)", "a2f p95 (ms)", "worst session p95 (ms)",
                               "client CPU", "holds"], rows))
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
        slv = (res.get("server") or {}).get("levels") or []
        if slv:
            ax.plot([x["n"] for x in slv], [x.get("worst_session_a2f_p95_ms", np.nan) for x in slv], "^-",
                    label="server: worst session p95")
        ax.axhline(res["target_ms"], color="r", lw=0.8, label="target")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("ms")
        srv = res.get("server") or {}
        ax.set_title(f"throughput: max {res['max_sessions']} sessions in-process" +
                     (f", {srv.get('max_sessions', 0)} through the server" if srv else ""), fontsize=10)
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
