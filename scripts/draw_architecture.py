"""Draw docs/img/architecture_hop.svg: one hop of a served session (audio in -> frames out) and who owns
which state. Every code name on the picture is checked against the code first (``check_names``), so a
rename makes this script fail instead of leaving a stale picture; ``tests/test_architecture_doc.py`` runs
that check.

    python scripts/draw_architecture.py                      # -> docs/img/architecture_hop.svg
    python scripts/draw_architecture.py --out /tmp/hop.png   # any format matplotlib writes
"""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img" / "architecture_hop.svg"

# module -> names the picture shows (classes, functions, attributes of classes as "Class.attr")
NAMES = {
    "mm2face.realtime.connection": ["handle_connection", "ClientConn.send_frame", "ClientConn.writer"],
    "mm2face.realtime.dispatch": ["Dispatcher.dispatch", "Dispatcher.on_audio", "Dispatcher.handlers"],
    "mm2face.engine.audio": ["StreamResampler"],
    "mm2face.realtime.server": ["LiveSession.stream_audio", "LiveSession.frames_until_caught_up", "Hub._on_frames",
                                "INGEST_BACKLOG_HOPS",
                                "LiveSession._publish", "Hub", "LiveSession"],
    "mm2face.realtime.idle": ["IdleClock", "idle_frames_due"],
    "mm2face.realtime.stats": ["SessionMeter"],
    "mm2face.engine.batching": ["SessionBatcher.push_audio", "SessionBatcher._apply_inbox", "SessionBatcher.step",
                                "SessionBatcher.input_samples",
                                "SessionBatcher.when_caught_up", "SessionBatcher"],
    "mm2face.engine.session": ["StreamSession.push_audio", "StreamSession.hop_ready", "step_sessions",
                               "StreamSession._after_hop", "StreamSession", "Frame"],
    "mm2face.engine.batch_state": ["BatchState", "KVRing"],
    "mm2face.engine.runners": ["Runner.encode_audio", "Runner.g_logits", "Runner.decode", "guide"],
    "mm2face.realtime.protocol": ["FrameBatchEncoder"],
}
# attributes set in __init__ (not visible on the class): checked in the source text instead
INSTANCE_ATTRS = {
    "mm2face.engine.batch_state.BatchState": ["self.kv", "self.feats", "self.ref"],
    "mm2face.engine.session.StreamSession": ["self.buf", "self.arrivals", "self.hist", "self.gestures",
                                             "self.vad", "self.mouth_w", "self.pending", "self.row"],
    "mm2face.realtime.server.LiveSession": ["self.subscribers", "self.play_end", "self.idle_loop",
                                            "self.resampler", "self.meter"],
    "mm2face.realtime.connection.ClientConn": ["self.outbox", "self.audio_rate", "self.own"],
    "mm2face.realtime.server.Hub": ["self.batcher", "self.idle_clock", "self.dispatcher", "self.admission",
                                    "self.clock", "self.sleep"],
}


def check_names() -> list[str]:
    """Names on the picture that the code lacks (empty: the picture matches the code)."""
    import inspect
    missing = []
    for mod, names in NAMES.items():
        m = importlib.import_module(mod)
        for n in names:
            obj = m
            for part in n.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if obj is None and not (n.endswith(".handlers") and hasattr(m, n.split(".")[0])):
                missing.append(f"{mod}.{n}")
    for qual, attrs in INSTANCE_ATTRS.items():
        mod, cls = qual.rsplit(".", 1)
        src = inspect.getsource(getattr(importlib.import_module(mod), cls))
        missing += [f"{qual}: {a}" for a in attrs
                    if not re.search(re.escape(a) + r"\s*(:[^=\n]*)?=[^=]|" + re.escape(a) + r",", src)]
    return missing


# ---- drawing ---------------------------------------------------------------------------------
LANES = [("event loop (realtime/, asyncio)", "#e8f1fb"),
         ("scheduler worker thread (engine/batching.py)", "#fdf1e3"),
         ("event loop again", "#e8f1fb")]


def draw(out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt.rcParams["svg.fonttype"] = "none"          # text stays text in the SVG
    fig = plt.figure(figsize=(15, 11.6))
    ax = fig.add_axes([0, 0.36, 1, 0.64])
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 60)
    ax.axis("off")
    ax.text(50, 58.3, "One hop of a served session: 80 ms of audio in, 2 frames (56 numbers each) out",
            ha="center", va="center", fontsize=14, weight="bold")

    lane_y = [(38, 56), (17, 37), (0.5, 16)]
    for (name, color), (y0, y1) in zip(LANES, lane_y):
        ax.add_patch(FancyBboxPatch((0.5, y0), 99, y1 - y0, boxstyle="round,pad=0,rounding_size=0.8",
                                    fc=color, ec="#999999", lw=0.8))
        ax.text(98.8, y0 + 0.5, name, fontsize=10, style="italic", color="#555555", va="bottom", ha="right")

    def box(x, y, w, h, title, body, fc="white"):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.2,rounding_size=0.6", fc=fc,
                                    ec="#333333", lw=1.0))
        ax.text(x + w / 2, y + h - 1.0, title, ha="center", va="top", fontsize=9.5, weight="bold",
                family="monospace")
        ax.text(x + w / 2, y + h - 3.3, body, ha="center", va="top", fontsize=8.2, linespacing=1.35)
        return (x, y, w, h)

    def arrow(a, b, label="", side="top", rad=0.0):
        (xa, ya, wa, ha_), (xb, yb, wb, hb) = a, b
        if side == "right":      # a's right edge -> b's left edge
            p, q = (xa + wa + 0.2, ya + ha_ / 2), (xb - 0.2, yb + hb / 2)
        elif side == "down":     # a's bottom -> b's top
            p, q = (xa + wa / 2, ya - 0.2), (xb + wb / 2, yb + hb + 0.2)
        else:                    # a's right edge -> b's right edge (up/down lanes)
            p, q = (xa + wa / 2, ya + ha_ + 0.2), (xb + wb / 2, yb - 0.2)
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=13, lw=1.3, color="#1f4e79",
                                     connectionstyle=f"arc3,rad={rad}"))
        if label:
            ax.text((p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + 1.2, label, ha="center", va="bottom", fontsize=8,
                    color="#1f4e79", bbox=dict(fc="white", ec="none", pad=0.4, alpha=0.85))

    # lane 1: audio in
    b1 = box(2, 41, 17, 12.5, "handle_connection", "WebSocket client\nbinary message = audio\n(PCM16 / f32, any rate)\n"
             "rate limits as backpressure")
    b2 = box(22, 41, 19, 12.5, "Dispatcher.on_audio", "handlers table: type -> handler\nStreamResampler -> 16 kHz\n"
             "80 ms slices (INGEST_SLICE_SAMPLES)\npaced by --ingest-speed")
    b3 = box(44, 41, 19, 12.5, "LiveSession.stream_audio", "arrival_time = server clock\nplay-out / idle bookkeeping\n"
             "audio taps, MMAU to audio subscribers\nbacklog > 2 hops: await catch-up")
    b4 = box(66, 41, 19, 12.5, "SessionBatcher.push_audio", "queued in the session's inbox,\nreturns at once "
             "(any thread);\nwhen_caught_up(fn) tells the\nloop when it has stepped it")
    arrow(b1, b2, "1 bytes", "right")
    arrow(b2, b3, "2 audio_16k", "right")
    arrow(b3, b4, "3 (audio, t)", "right")
    ax.text(92.5, 47, "idle sessions:\nIdleClock ticks\nidle_frames_due\n-> push_no_audio", ha="center", va="center",
            fontsize=8, color="#555555")

    # lane 2: the scheduler's round
    c1 = box(2, 20.5, 18, 14.5, "_apply_inbox", "StreamSession.push_audio:\naudio ring, arrival times\n"
             "(style, end, flush in order)\nhop_ready(): own 80 ms\n+ 40 ms lookahead heard")
    c2 = box(23, 20.5, 23, 14.5, "step_sessions(ready, state)", "one batched call for every ready session\n"
             "CNN features -> state.feats (window slides)\nrunner.encode_audio -> audio vector\n"
             "runner.g_logits: one G step, 2 rows each\n(style / null style), KVRing rows in place,\nguide() = CFG")
    c3 = box(49, 20.5, 20, 14.5, "sample + decode + refine", "top-k sampling, per-session rng\n"
             "runner.decode: D on the session's\ntoken history -> 2 frames\nrefiner step on state.ref\n"
             "(own audio front, lookahead 40 ms)")
    c4 = box(72, 20.5, 25, 14.5, "StreamSession._after_hop", "to_params, head gestures (style layer)\n"
             "blinks, VAD gate (mouth rests in silence)\nlip contact (p/b/m, f/v), mouth close\n"
             "Frame(seq, t_audio_s, params (56,),\naudio_arrival_time, input_ready_time)")
    arrow(b4, c1, "4 next round", "down")
    arrow(c1, c2, "5", "right")
    arrow(c2, c3, "6 logits", "right")
    arrow(c3, c4, "7 frames_norm", "right")

    # lane 3: frames out
    d1 = box(72, 3, 25, 11.5, "Hub._on_frames", "worker -> loop.call_soon_threadsafe\n(never blocks the worker)\n"
             "LiveSession._deliver")
    box(45, 3, 24, 11.5, "LiveSession._publish", "wire seq (idle playback offset)\nSessionMeter: fps, latencies\n"
             "FrameBatchEncoder: each format once")
    box(20, 3, 22, 11.5, "ClientConn.send_frame", "bounded outbox per client\n(slow reader: its oldest\n"
             "frames dropped, counted)")
    box(2, 3, 15, 11.5, "ClientConn.writer", "frames out:\nJSON / binary / ARKit\n+ listeners: MQTT,\nVMC, Live Link")
    arrow(c4, d1, "8 on_frames", "down")
    ax.add_patch(FancyArrowPatch((72 - 0.2, 8.75), (69 + 0.2, 8.75), arrowstyle="-|>", mutation_scale=13, lw=1.3,
                                 color="#1f4e79"))
    ax.text(70.5, 9.7, "9", ha="center", fontsize=8, color="#1f4e79")
    ax.add_patch(FancyArrowPatch((45 - 0.2, 8.75), (42 + 0.2, 8.75), arrowstyle="-|>", mutation_scale=13, lw=1.3,
                                 color="#1f4e79"))
    ax.text(43.5, 9.7, "10", ha="center", fontsize=8, color="#1f4e79")
    ax.add_patch(FancyArrowPatch((20 - 0.2, 8.75), (17 + 0.2, 8.75), arrowstyle="-|>", mutation_scale=13, lw=1.3,
                                 color="#1f4e79"))
    ax.text(18.5, 9.7, "11", ha="center", fontsize=8, color="#1f4e79")

    # ownership table
    tax = fig.add_axes([0.02, 0.01, 0.96, 0.33])
    tax.axis("off")
    tax.text(0.5, 1.0, "Who owns which state", ha="center", va="top", fontsize=13, weight="bold",
             transform=tax.transAxes)
    rows = [
        ("model (shared, read-only)", "engine/model.py", "weights, norm stats; model.runner (eager / static / compile / "
         "onnx / tensorrt), set once by apply_backend"),
        ("BatchState (the scheduler's)", "engine/batch_state.py", "a row per session: KVRing (keys/values per layer, "
         "2 rows per stream, per-row position t),\nfeats (audio encoder's CNN window), ref (refiner's past); "
         "stepped in place under its lock; grows and shrinks with the sessions"),
        ("SessionBatcher", "engine/batching.py", "per-session inbox (audio, no-audio, style, guidance, end, flush), "
         "round order (speakers first),\nthe worker thread; the only thing that steps sessions; input_samples = "
         "the session's one sample clock"),
        ("StreamSession", "engine/session.py", "timeline: audio ring, sample counts, arrival times, token index k; "
         "token history for D;\nstyle blend, guidance, gesture track; VAD stream; mouth-close state; "
         "pending frames; sampling rng"),
        ("LiveSession", "realtime/server.py", "no sample count of its own (reads input_samples); subscribers and "
         "formats, audio subscribers; idle state\n(play_end, idle_active), the idle-loop recording; the client's "
         "resampler and sample format; SessionMeter"),
        ("ClientConn", "realtime/connection.py", "bounded outbox (frames, MMAU audio, control replies), rate "
         "limiters, subscriptions, the session it owns"),
        ("Hub", "realtime/server.py", "sessions, clients, admission limits, the SessionBatcher, IdleClock, "
         "Dispatcher, metrics, the injected clock and sleep"),
    ]
    y = 0.88
    for name, where, what in rows:
        tax.text(0.0, y, name, fontsize=9.5, weight="bold", va="top", transform=tax.transAxes)
        tax.text(0.0, y - 0.055, where, fontsize=8.5, family="monospace", color="#555555", va="top",
                 transform=tax.transAxes)
        tax.text(0.25, y, what, fontsize=9, va="top", transform=tax.transAxes, linespacing=1.3)
        y -= 0.128
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else None)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="image to write (default: %(default)s)")
    args = ap.parse_args(argv)
    missing = check_names()
    if missing:
        raise SystemExit("the picture names code that is not there (update NAMES and the drawing): "
                         + ", ".join(missing))
    print(f"wrote {draw(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
