"""Latency benchmark: speech streamed at real-time pace, per-frame audio-to-face and processing latency.

    mm2face-bench latency                         # 20 s, one session, through the WebSocket server
    mm2face-bench latency --sessions 4 --seconds 30
    mm2face-bench latency --transport inproc --device cuda --backend compile

Per frame (see docs/benchmarks.md):

* audio-to-face: from the arrival of the audio at the frame's own instant (``t_audio_s``) to the
  frame's receipt by the client. Includes the model's lookahead, waiting for the rest of the token's
  audio, compute and transport.
* processing: from the arrival of the last audio sample the frame depends on to receipt.

Also per-stage times (audio encoder, G step, decode, send), the real-time factor, hop-interval jitter,
and, in the same run, the comparisons of :mod:`mm2face.benchmarks.compare`. Writes ``latency.json``,
``latency.md`` and ``latency.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mm2face.benchmarks import compare, harness
from mm2face.benchmarks.common import (STATS_HEADER, machine_info, md_table, save_plot, stats_rows,
                                       write_json)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default checkpoint; random "
                   "weights of the default config if there is none yet)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", default="auto", help="auto (the device's default backend: onnx on CPU, eager on "
                   "CUDA), eager, static, compile, int8, onnx, tensorrt (default auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch / ONNX Runtime CPU threads (default 1: on a small shared CPU more threads only "
                        "wait for each other; see docs/benchmarks.md)")
    p.add_argument("--tiny", action="store_true", help="random tiny test config (for smoke tests)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench/<name>-<time>)")


def setup(args, name: str):
    import torch
    torch.set_num_threads(max(1, args.threads))
    print(f"[{name}] building the model (backend {args.backend} on {args.device}) and warming up ...", flush=True)
    model, desc = harness.load_bench_model(args.ckpt, args.device, args.backend, tiny=args.tiny)
    print(f"[{name}] {desc}", flush=True)
    out = Path(args.out or f"runs/bench/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    return model, desc, out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm2face-bench latency", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--sessions", type=int, default=1, help="concurrent streams (default 1)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per stream, seconds (default 20)")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio chunk size sent at real-time pace (default 20)")
    p.add_argument("--transport", choices=("ws", "inproc"), default="ws",
                   help="ws: WebSocket clients -> the real server (default); inproc: batcher in this process")
    p.add_argument("--no-compare", action="store_true", help="skip the same-run comparisons")
    p.add_argument("--no-vad", action="store_true",
                   help="stream without the voice-activity gate (engine/vad.py; on by default, as mm2face-live)")
    p.add_argument("--contexts", default="5,10,30", help="contexts (s) for KV cache vs prefix recomputation")
    p.add_argument("--compare-backends", default="eager,static,onnx,int8",
                   help="backends compared with eager (comma list; 'compile' adds a minute of compiling on CPU)")
    p.add_argument("--compare-seconds", type=float, default=8.0, help="audio for the backend/offline comparisons")
    p.add_argument("--audio", default=None, help="a 16 kHz PCM16 wav to stream (default: the bundled demo speech)")
    p.add_argument("--head", default="standin",
                   help="head for the stream-vs-offline vertex error ('none' skips it; default standin)")
    return p


def run(args) -> dict:
    model, desc, out = setup(args, "latency")
    audio, src = harness.load_speech(args.seconds, args.audio)
    res = {"benchmark": "latency", "machine": machine_info(args.device), "model": desc,
           "args": vars(args), "audio": src, "hop_ms": model.samples_per_token / 16,
           "algorithmic_latency_ms": model.algorithmic_latency_s * 1e3}
    t = time.perf_counter()
    if args.transport == "ws":
        try:
            import websockets  # noqa: F401
            runr = harness.run_ws(model, audio, args.sessions, args.chunk_ms / 1e3, args.device, vad=not args.no_vad)
        except ImportError:
            print("websockets is not installed here: measuring in-process instead (--transport inproc)")
            runr = harness.run_inproc(model, audio, args.sessions, args.chunk_ms / 1e3, args.device,
                                      vad=not args.no_vad)
    else:
        runr = harness.run_inproc(model, audio, args.sessions, args.chunk_ms / 1e3, args.device, vad=not args.no_vad)
    res["stream"] = harness.summarize(runr, model.samples_per_token / 16000)
    res["stream"]["wall_s"] = time.perf_counter() - t
    series = harness.latency_series(runr)
    if not args.no_vad:
        res["vad_cost"] = compare.vad_cost(audio, model.down)
    if not args.no_compare:
        ctx = [float(x) for x in args.contexts.split(",") if x]
        res["kv_vs_prefix"] = compare.kv_vs_prefix(model, ctx, device=args.device)
        short, _ = harness.load_speech(args.compare_seconds, args.audio)
        res["streaming_vs_offline"] = compare.streaming_vs_offline(
            model, short, args.device, head=None if args.head == "none" else args.head)
        backs = [b for b in args.compare_backends.split(",") if b]
        if backs:
            def load():
                return harness.load_bench_model(args.ckpt, args.device, "eager", tiny=args.tiny)[0]
            res["backends"] = compare.backends_vs_eager(load, backs, short, args.device)
    write_outputs(res, series, out)
    return res


def markdown(res: dict) -> str:
    s = res["stream"]
    m = res["machine"]
    lines = [f"### Latency: {s['sessions']} session(s), {s['audio_s']:.0f} s of speech, {s['transport']}", "",
             f"Machine: {m.get('gpu') or m.get('cpu')} ({m.get('cpu_count')} CPUs), torch {m.get('torch')}, "
             f"{m.get('torch_threads')} threads. Model: {res['model']}. Hop {res['hop_ms']:.0f} ms, algorithmic "
             f"latency (token + lookahead) {res['algorithmic_latency_ms']:.0f} ms.", ""]
    rows = stats_rows({"audio-to-face": s.get("audio_to_face_ms", {}), "processing": s.get("processing_ms", {}),
                       "hop interval": s.get("hop_interval_ms", {}),
                       **{f"stage: {k}": v for k, v in s.get("stages_ms", {}).items()}})
    lines.append(md_table(STATS_HEADER, rows))
    extra = []
    if s.get("rtf") is not None:
        extra.append(f"real-time factor {s['rtf']:.3f} (compute {s['compute_ms_per_hop']:.2f} ms per "
                     f"{res['hop_ms']:.0f} ms hop)")
    if "jitter_ms" in s:
        extra.append(f"hop jitter: std {s['jitter_ms']['std']:.1f} ms, p95 |dev| {s['jitter_ms']['p95_abs_dev']:.1f} ms")
    if "worst_session_a2f_p95_ms" in s:
        extra.append(f"worst session audio-to-face p95 {s['worst_session_a2f_p95_ms']:.1f} ms")
    if extra:
        lines += ["", "; ".join(extra) + "."]
    if res.get("kv_vs_prefix"):
        kvr = res["kv_vs_prefix"]
        per = kvr[0].get("kv_per_prefix")
        lines += ["", "KV cache vs recomputing the whole prefix every step (one stream, 2 guidance rows, G only; "
                  "eager PyTorch both, and the KV step through the run's backend"
                  + (f"; {per} KV steps per prefix run, interleaved; the last column: the KV steps right after a "
                     "prefix run" if per else "") + "):", ""]
        hb = "kv_cache_backend_ms" in kvr[0]
        cold = hb and "kv_backend_after_prefix_ms" in kvr[0]
        head = ["context", "tokens", "KV step p50 (ms)", "prefix step p50 (ms)", "speed-up"]
        if hb:
            head += [f"KV step, {kvr[0]['kv_cache_backend']} (ms)", "speed-up"]
        if cold:
            head += ["right after a prefix run (ms)"]
        rows = []
        for r in kvr:
            row = [f"{r['context_s']:g} s", r["tokens"], r["kv_cache_ms"]["p50"], r["prefix_ms"]["p50"],
                   f"{r['speedup_p50']:.1f}x"]
            if hb:
                row += [r["kv_cache_backend_ms"]["p50"], f"{r['speedup_backend_p50']:.1f}x"]
            if cold:
                row += [r["kv_backend_after_prefix_ms"].get("p50", float("nan"))]
            rows.append(row)
        lines.append(md_table(head, rows))
    vc = res.get("vad_cost")
    if vc:
        lines += ["", f"Voice-activity gate (Silero VAD, onnxruntime, 1 thread; in the latency above): "
                  f"{vc['cpu_us_per_hop']:.0f} µs of CPU per {vc['hop_ms']:.0f} ms hop "
                  f"({vc['cpu_us_per_chunk']:.0f} µs per 32 ms model call; wall {vc['wall_us_per_hop']:.0f} µs "
                  f"per hop), best of 3 passes over the {vc['hops']} hops."]
    so = res.get("streaming_vs_offline")
    if so:
        lve = so.get("lve_mm_stream_vs_offline")
        lines += ["", f"Streaming vs offline on {so['audio_s']:.0f} s: max |frame difference| {so['max_abs_diff']:.2e}, "
                  f"{so['identical_frames']:.0%} of frames identical (< 1e-4)"
                  + (f", LVE between them {lve:.4f} mm" if lve is not None else "")
                  + f"; offline's first frame comes {so['offline_first_frame_latency_s']:.2f} s after the clip "
                  f"starts (it needs the whole clip), streaming's after p95 "
                  f"{s.get('audio_to_face_ms', {}).get('p95', float('nan')):.0f} ms."]
    if res.get("backends"):
        rows = []
        for r in res["backends"]:
            if "single" in r:
                b8 = next((v for k, v in r.items() if k.startswith("batch") and not k.endswith("_passes")), None)
                rows.append([r["backend"], r["single"]["round_ms"]["p50"],
                             b8["round_ms"]["p50"] if b8 else "–", f"{r['max_abs_diff_vs_eager']:.1e}",
                             f"{r['build_and_first_run_s']:.1f}"])
            else:
                rows.append([r["backend"], "–", "–", "–", r.get("unavailable") or r.get("error", "")])
        lines += ["", "Backends (compute per hop, audio pushed as fast as possible):", "",
                  md_table(["backend", "1 stream p50 (ms)", "8 streams p50 (ms/round)", "max |diff| vs eager",
                            "build + first run (s)"], rows)]
    return "\n".join(lines) + "\n"


def write_outputs(res: dict, series, out: Path) -> None:
    write_json(out / "latency.json", res)              # first: kept even if the report below fails
    t, a2f, proc = series
    stages = res["stream"].get("stages_ms", {})
    save_plot(out / "latency.png", {"audio-to-face": (t, a2f), "processing": (t, proc)}, stages,
              title=f"latency over time ({res['stream']['sessions']} session(s), session 0)")
    (out / "latency.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out}/latency.json, latency.md, latency.png")


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
