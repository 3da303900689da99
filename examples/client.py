#!/usr/bin/env python3
"""Reference client for the mm2face-live WebSocket protocol v2 (docs/protocol.md).

Depends only on ``websockets`` and ``numpy`` (+ ``soundfile`` for ``stream``), so it can be copied
out of this repository. The binary frame layout is unpacked here by hand on purpose.

    python examples/client.py subscribe [--session default] [--binary | --arkit] [--seconds 10 | --frames 250]
    python examples/client.py stream speech.wav [--style "cheerful"] [--fast] [--out frames.npy]
    python examples/client.py style "a calm, friendly speaker" [--session default] [--blend 0.5]
    python examples/client.py stats

``subscribe`` and ``stream`` print each frame's jaw opening and, at the end, the latencies measured
from the frames' server timestamps (same machine: same clock). ``subscribe --arkit`` receives ARKit-52
frames instead (docs/arkit.md) and prints jawOpen and the strongest blendshape.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time

import numpy as np

FRAME = struct.Struct("<4sHHII4d56f")       # magic, version, flags, seq, session_num, 4 times, 56 floats


def unpack(data: bytes) -> dict:
    magic, ver, flags, seq, num, t, send, arrival, ready, *params = FRAME.unpack(data)
    assert magic == b"MMF1" and ver == 1, "not an MMF1 frame (layout version 1)"
    nan_none = lambda x: None if x != x else x  # noqa: E731
    return {"seq": seq, "session_num": num, "t_audio_s": t, "server_send_time": send,
            "audio_arrival_time": nan_none(arrival), "input_ready_time": nan_none(ready),
            "params": np.asarray(params, np.float32), "final": bool(flags & 1)}


def as_frame(raw) -> dict | None:
    if isinstance(raw, bytes):
        return unpack(raw)
    msg = json.loads(raw)
    if msg.get("type") != "frame":
        if msg.get("type") in ("error", "warning"):
            print(f"{msg['type']}: {msg['code']}: {msg['message']}", file=sys.stderr)
            if msg["type"] == "error" and msg.get("ref") == "subscribe":
                sys.exit(1)
        elif msg.get("type") == "subscribed" and "arkit_names" in msg:
            ARKIT_NAMES[:] = msg["arkit_names"]          # sent once; frames carry bare arrays in this order
        return None
    if "arkit" in msg:
        msg["weights"] = np.asarray(msg["arkit"], np.float32)
    else:
        msg["params"] = np.asarray(msg["expression"] + msg["head_pose"] + msg["jaw_pose"], np.float32)
    return msg


ARKIT_NAMES: list[str] = []


def describe(f: dict) -> str:
    """One line per frame: the jaw opening (rad), or for ARKit frames jawOpen and the strongest shape."""
    if "weights" in f:
        w = f["weights"]
        top = int(np.argmax(w))
        jaw = w[ARKIT_NAMES.index("jawOpen")] if "jawOpen" in ARKIT_NAMES else float("nan")
        return f"jawOpen {jaw:.2f}  strongest {ARKIT_NAMES[top] if ARKIT_NAMES else top} {w[top]:.2f}"
    return f"jaw {f['params'][53]:+.3f} rad"


class Latency:
    """Audio-to-face and processing latency of received frames, ms."""

    def __init__(self):
        self.a2f, self.proc = [], []

    def add(self, f: dict, t_recv: float):
        if f.get("audio_arrival_time") is not None:
            self.a2f.append(1e3 * (t_recv - f["audio_arrival_time"]))
        if f.get("input_ready_time") is not None:
            self.proc.append(1e3 * (t_recv - f["input_ready_time"]))

    def report(self) -> str:
        def pct(x):
            return "n/a" if not x else f"p50 {np.percentile(x, 50):.0f} / p95 {np.percentile(x, 95):.0f} ms"
        return f"audio-to-face {pct(self.a2f)}; processing {pct(self.proc)}"


async def cmd_subscribe(args):
    from websockets.asyncio.client import connect
    lat, n = Latency(), 0
    async with connect(args.url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "session": args.session,
                                  "format": "arkit" if args.arkit else "binary" if args.binary else "json"}))
        t_end = time.time() + args.seconds if args.seconds else float("inf")
        async for raw in ws:
            f = as_frame(raw)
            if f is None:
                continue
            lat.add(f, time.time())
            n += 1
            if n % 25 == 0 or args.verbose:
                print(f"seq {f['seq']:6d}  t {f['t_audio_s']:7.2f} s  {describe(f)}")
            if time.time() > t_end or n == args.frames:
                break
    print(f"{n} frames; {lat.report()}")


async def cmd_stream(args):
    import soundfile as sf
    from websockets.asyncio.client import connect
    audio, rate = sf.read(args.wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    chunk = int(rate * 0.02)                          # 20 ms chunks
    frames, lat = [], Latency()
    async with connect(args.url, max_size=2 ** 22) as ws:
        await ws.send(json.dumps({"type": "open", "sample_rate": rate, "sample_format": "f32",
                                  "style": args.style, "format": "binary"}))

        async def receive():
            async for raw in ws:
                if isinstance(raw, str) and json.loads(raw).get("type") == "ended":
                    return
                f = as_frame(raw)
                if f is not None:
                    lat.add(f, time.time())
                    frames.append(f)

        rx = asyncio.create_task(receive())
        t0 = time.monotonic()
        for i in range(0, len(audio), chunk):
            if not args.fast:                         # real-time pace, as a live TTS would send
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            await ws.send(audio[i:i + chunk].astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(rx, 60)
    motion = np.stack([f["params"] for f in frames]) if frames else np.zeros((0, 56), np.float32)
    print(f"{len(frames)} frames for {len(audio) / rate:.2f} s of audio; {lat.report()}")
    if args.out:
        np.save(args.out, motion)
        print(f"wrote {args.out}: {motion.shape}")


async def cmd_style(args):
    from websockets.asyncio.client import connect
    async with connect(args.url) as ws:
        msg = {"type": "style", "session": args.session, "text": args.text, "blend_s": args.blend}
        if args.token:
            msg["token"] = args.token
        await ws.send(json.dumps(msg))
        print(await ws.recv())


async def cmd_stats(args):
    from websockets.asyncio.client import connect
    async with connect(args.url) as ws:
        await ws.send(json.dumps({"type": "stats", "session": args.session}))
        print(json.dumps(json.loads(await ws.recv()), indent=2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8765", help="server address (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("subscribe", help="print a session's frames and their latency")
    p.add_argument("--session", default="default")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--binary", action="store_true", help="packed 272-byte frames instead of JSON")
    fmt.add_argument("--arkit", action="store_true", help="ARKit-52 blendshape weights + head rotation (JSON)")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until closed)")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = until closed)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every frame")
    p = sub.add_parser("stream", help="open a session, stream an audio file into it, receive its frames")
    p.add_argument("wav")
    p.add_argument("--style", default="")
    p.add_argument("--fast", action="store_true", help="send as fast as possible instead of real time")
    p.add_argument("--out", help="save the received frames as a (T, 56) .npy")
    p = sub.add_parser("style", help="change a session's style")
    p.add_argument("text")
    p.add_argument("--session", default="default")
    p.add_argument("--blend", type=float, default=0.5, help="cross-fade seconds")
    p.add_argument("--token", default=None)
    p = sub.add_parser("stats", help="print server and session statistics")
    p.add_argument("--session", default=None)
    args = ap.parse_args(argv)
    try:
        asyncio.run({"subscribe": cmd_subscribe, "stream": cmd_stream, "style": cmd_style,
                     "stats": cmd_stats}[args.cmd](args))
    except OSError as e:
        sys.exit(f"cannot reach {args.url} ({e}); is `mm2face-live --serve` running?")


if __name__ == "__main__":
    main()
