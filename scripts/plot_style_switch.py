"""Plot what a stream does when the style text changes mid-speech (the model card's figure).

    python scripts/plot_style_switch.py --out docs/img/style_switch.png

Streams the bundled demo speech (looped to ``--seconds``) through a StreamSession of the default
checkpoint in 40 ms chunks and calls ``set_style`` at the given times, exactly as mm2face-live does when
a new style line is typed. Plots the jaw opening and the three head rotations over time.
"""
from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="", help="MM2Face file (default: the shipped default checkpoint)")
    ap.add_argument("--seconds", type=float, default=14.0, help="stream length, s")
    ap.add_argument("--styles", nargs="+", metavar="T_S=TEXT",
                    default=["0=A person talks calmly.", "4=The person turns the head to the left.",
                             "8=The person looks up and smiles."],
                    help="style changes as seconds=text (default: calm, turn left at 4 s, look up at 8 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="style_switch.png", help="PNG to write")
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from mm2face.engine.audio import load_audio_16k
    from mm2face.engine.frame import FPS, SAMPLE_RATE
    from mm2face.engine.model import load_model
    from mm2face.engine.session import StreamConfig, StreamSession
    from mm2face.realtime.sources import DEMO_WAV

    torch.set_num_threads(1)
    changes = sorted((float(t), text) for t, text in (s.split("=", 1) for s in args.styles))
    speech = load_audio_16k(DEMO_WAV)
    n = int(args.seconds * SAMPLE_RATE)
    audio = np.resize(speech, n)                                   # loop the clip
    model = load_model(args.ckpt or None)
    s = StreamSession(model, StreamConfig(seed=args.seed), style=changes[0][1] if changes[0][0] <= 0 else "")
    pending = [c for c in changes if c[0] > 0]
    chunk = SAMPLE_RATE * 40 // 1000                               # 40 ms, as a microphone delivers
    frames = []
    for i in range(0, n, chunk):
        while pending and i >= pending[0][0] * SAMPLE_RATE:
            s.set_style(pending.pop(0)[1])
        s.push_audio(audio[i:i + chunk])
        frames += s.poll()
    p = np.stack([f.params for f in frames])
    t = np.arange(len(p)) / FPS
    fig, ax = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    ax[0].plot(t, p[:, 53], lw=1, color="tab:red")
    ax[0].set_ylabel("jaw opening (rad)")
    for j, (name, c) in enumerate((("rx (+ down / − up)", "tab:blue"), ("ry (+ left / − right)", "tab:green"),
                                   ("rz (+ tilt right)", "tab:gray"))):
        ax[1].plot(t, p[:, 50 + j], lw=1.3, color=c, label=name)
    ax[1].set_ylabel("head rotation (rad)")
    ax[1].set_xlabel("time (s)")
    ax[1].legend(loc="lower left", fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
        for ts, text in changes:
            a.axvline(ts, color="k", lw=0.8, ls="--")
    for ts, text in changes:
        ax[0].text(ts + 0.05, ax[0].get_ylim()[1] * 0.92, text, fontsize=8, va="top")
    fig.suptitle("Style text changed mid-stream (default checkpoint, demo speech, 40 ms chunks)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(p)} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
