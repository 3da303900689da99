"""Endurance benchmark: one long real-time stream; frame count, memory drift, latency creep.

    mm2face-bench soak                 # 30 minutes
    mm2face-bench soak --minutes 3     # shorter

The stream (the bundled speech, looped) is fed at real-time pace through the batcher worker, then
ended. Checks: the frames cover the audio exactly (seq 0..ceil(samples / 640) - 1, no gap, no
duplicate), resident memory is flat after warm-up (drift reported in MiB and MiB/hour), and latency
does not creep (audio-to-face p95 per minute; first vs last tenth). Writes ``soak.json``/``.md``/``.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mm2face.benchmarks import harness
from mm2face.benchmarks.common import machine_info, md_table, rss_mb, stats_ms, write_report
from mm2face.benchmarks.latency import add_common_args, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm2face-bench soak", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--minutes", type=float, default=30.0, help="stream length in minutes (default 30)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent streams (default 1)")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio chunk per push (default 20)")
    p.add_argument("--accelerated-minutes", type=float, default=10.0,
                   help="then stream this much audio as fast as possible, recording nothing, to read the "
                        "engine's own memory drift (default 10; 0 skips)")
    return p


def accelerated_memory_check(model, base, minutes: float, device="cpu") -> dict:
    """Stream ``minutes`` of audio through one batched session as fast as the CPU allows, recording
    nothing, and sample RSS every audio minute: the engine's own memory, free of the recorder."""
    import gc
    from mm2face.engine.batching import SessionBatcher
    b = SessionBatcher(model, device=device)
    k = b.add(harness.make_session(model, device))
    n = 640
    series, i = [], 0
    t = time.perf_counter()
    for minute in range(int(np.ceil(minutes))):
        for _ in range(60 * 25):
            a = (i * n) % (len(base) - n)
            b.push_audio(k, base[a:a + n])
            b.step()
            b.drain(k)
            i += 1
        gc.collect()
        series.append((minute + 1, rss_mb()))
    r = np.array(series)
    return {"audio_minutes": float(len(series)), "wall_s": time.perf_counter() - t, "rss_series": series,
            "drift_after_first_minute_mb": float(r[-1, 1] - r[0, 1])}


def run(args) -> dict:
    model, desc, out = setup(args, "soak")
    base, src = harness.load_speech(30.0)
    audio = harness.LoopedAudio(base, args.minutes * 60)
    rss: list[tuple[float, float]] = [(0.0, rss_mb())]

    def tick(elapsed):
        rss.append((elapsed, rss_mb()))
        if int(elapsed) % 60 == 0:
            print(f"  {elapsed / 60:5.1f} min, RSS {rss[-1][1]:.1f} MiB", flush=True)

    t = time.perf_counter()
    runr = harness.run_inproc(model, audio, args.sessions, args.chunk_ms / 1e3, args.device, on_tick=tick,
                              finish=True)
    wall = time.perf_counter() - t
    rss.append((wall, rss_mb()))
    res = {"benchmark": "soak", "machine": machine_info(args.device), "model": desc, "args": vars(args),
           "audio": f"{src}, looped", "minutes": args.minutes, "wall_s": wall,
           "summary": harness.summarize(runr, model.samples_per_token / 16000)}
    # frame count: every session's frames cover the audio exactly
    n_audio = runr["n_audio_frames"]
    counts = []
    F = runr["frames"]
    for s in range(args.sessions):
        seqs = sorted(int(q) for q in F[F[:, 0] == s, 1])
        audio_seqs = [q for q in seqs if q < n_audio]
        counts.append({"session": s, "audio_frames": len(audio_seqs), "expected": n_audio,
                       "exact": audio_seqs == list(range(n_audio)), "tail_frames": len(seqs) - len(audio_seqs)})
    res["frame_count"] = counts
    res["frame_count_exact"] = all(c["exact"] for c in counts)
    # memory: drift after the first tenth (warm-up)
    r = np.array(rss)
    warm = r[r[:, 0] >= 0.1 * r[-1, 0]]
    slope = float(np.polyfit(warm[:, 0], warm[:, 1], 1)[0]) * 3600 if len(warm) > 2 else 0.0
    res["rss_mb"] = {"start": float(r[0, 1]), "after_warmup": float(warm[0, 1]), "end": float(r[-1, 1]),
                     "recorder_mb": runr["record_bytes"] / 2**20,
                     "max": float(r[:, 1].max()), "drift_after_warmup": float(warm[-1, 1] - warm[0, 1]),
                     "slope_mb_per_hour": slope}
    res["rss_series"] = r.tolist()
    # latency creep: a2f p95 per minute of stream time
    fr = F[F[:, 1] < n_audio]
    a2f = (fr[:, 5] - fr[:, 3])
    t_s = fr[:, 2]
    per_min = []
    span = max(60.0, args.minutes * 60 / 10) if args.minutes >= 10 else max(10.0, args.minutes * 6)
    for lo in np.arange(0, t_s.max() + 1e-9, span):
        sel = (t_s >= lo) & (t_s < lo + span)
        if sel.sum() > 10:
            per_min.append((float(lo), stats_ms(a2f[sel])["p95"]))
    pm = np.array(per_min)
    tenth = t_s.max() / 10
    first, last = stats_ms(a2f[t_s < tenth]), stats_ms(a2f[t_s >= t_s.max() - tenth])
    res["latency_creep"] = {"window_s": span, "a2f_p95_by_window_ms": per_min,
                            "first_tenth_p95_ms": first.get("p95"), "last_tenth_p95_ms": last.get("p95"),
                            "slope_ms_per_hour": float(np.polyfit(pm[:, 0], pm[:, 1], 1)[0] * 3600) if len(pm) > 2 else 0.0}
    if args.accelerated_minutes > 0:
        res["accelerated"] = accelerated_memory_check(model, base, args.accelerated_minutes, args.device)
    write_outputs(res, Path(out))
    return res


def markdown(res: dict) -> str:
    m, s, r, c = res["machine"], res["summary"], res["rss_mb"], res["latency_creep"]
    a = s.get("audio_to_face_ms", {})
    lines = [f"### Soak: {res['minutes']:g} min real-time stream", "",
             f"Machine: {m.get('gpu') or m.get('cpu')} ({m.get('cpu_count')} CPUs, load {m.get('loadavg_1m', 0):.1f}). "
             f"Model: {res['model']}.", "",
             md_table(["check", "result"], [
                 ["frames cover the audio exactly", "yes" if res["frame_count_exact"] else f"NO: {res['frame_count']}"],
                 ["frames", f"{res['frame_count'][0]['audio_frames']} (+{res['frame_count'][0]['tail_frames']} closing tail)"],
                 ["RSS start / after warm-up / end (MiB)", f"{r['start']:.1f} / {r['after_warmup']:.1f} / {r['end']:.1f}"],
                 ["RSS drift after warm-up", f"{r['drift_after_warmup']:+.1f} MiB ({r['slope_mb_per_hour']:+.1f} MiB/h); "
                  f"the benchmark's own frame records hold {r.get('recorder_mb', 0):.1f} MiB of it at most"],
                 ["audio-to-face p50 / p95 / p99 (ms)", f"{a.get('p50', 0):.1f} / {a.get('p95', 0):.1f} / {a.get('p99', 0):.1f}"],
                 ["a2f p95 first vs last tenth (ms)", f"{c['first_tenth_p95_ms']:.1f} vs {c['last_tenth_p95_ms']:.1f}"],
                 ["a2f p95 trend", f"{c['slope_ms_per_hour']:+.1f} ms/h"],
             ] + ([[f"engine alone: {res['accelerated']['audio_minutes']:.0f} min of audio as fast as possible "
                    f"({res['accelerated']['wall_s']:.0f} s), nothing recorded",
                    f"RSS drift after the first minute {res['accelerated']['drift_after_first_minute_mb']:+.1f} MiB"]]
                  if "accelerated" in res else []))]
    return "\n".join(lines) + "\n"


def write_outputs(res: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    r = np.array(res["rss_series"])
    a1.plot(r[:, 0] / 60, r[:, 1])
    a1.set_xlabel("minutes")
    a1.set_ylabel("RSS (MiB)")
    a1.set_title("resident memory", fontsize=10)
    a1.grid(alpha=0.3)
    pm = np.array(res["latency_creep"]["a2f_p95_by_window_ms"]) if res["latency_creep"]["a2f_p95_by_window_ms"] else np.zeros((0, 2))
    if len(pm):
        a2.plot(pm[:, 0] / 60, pm[:, 1], "o-")
    a2.set_xlabel("stream minutes")
    a2.set_ylabel("audio-to-face p95 (ms)")
    a2.set_title("latency per window", fontsize=10)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    plt.close(fig)
    write_report(out, "soak", res, markdown)


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
