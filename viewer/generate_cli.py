"""``mm2face-generate``: a whole clip offline (audio file and/or style text -> motion .npz, optional MP4).

    mm2face-generate --wav speech.wav --text "a cheerful speaker who smiles" --out motion.npz
    mm2face-generate --wav speech.wav --text "frowns" --out m.npz --video m.mp4    # audio muxed in
    mm2face-generate --text "nods slowly" --seconds 4 --out nod.npz                # text only
    mm2face-generate --wav speech.wav --format arkit-csv --out take.csv             # ARKit-52, Live Link Face CSV

--format arkit-csv writes Live Link Face's CSV layout (Timecode, BlendShapeCount, the 52 ARKit shapes,
HeadYaw/Pitch/Roll in radians, eye columns 0) at 25 fps, through the stand-in's ARKit map (docs/arkit.md), or
through a map fitted for real FLAME with `mm2face-retarget fit` (--retarget FILE).

It lives with the viewer because it makes what the viewer shows and renders (motion clips, MP4s);
``engine/`` stays free of command-line and I/O layers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path



OUTPUT_FORMATS = ("npz", "arkit-csv")


def write_arkit_csv(path, motion, head_name: str, retarget=None) -> Path:
    """Write ``motion (T, 56)`` at 25 fps as a Live Link Face CSV; a non-stand-in head needs ``retarget``."""
    from mm2face.engine.arkit import live_link_csv, to_arkit
    from mm2face.engine.frame import FPS
    if retarget is None and head_name != "standin":
        raise SystemExit(f"the model drives the {head_name!r} head, whose expression slots are not the stand-in's "
                         f"named units; fit an ARKit map for it with `mm2face-retarget fit` and pass --retarget FILE")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(live_link_csv(to_arkit(motion, retarget), FPS))
    return path


def build_parser():
    ap = argparse.ArgumentParser(prog="mm2face-generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wav", help="speech audio (any rate, mixed to mono, resampled to 16 kHz)")
    ap.add_argument("--text", default="", help="style in free text, read by the style parser (engine/style.py; empty: calm)")
    ap.add_argument("--seconds", type=float, default=0.0, help="length for text-only generation (no --wav)")
    ap.add_argument("--out", required=True,
                    help="output file: .npz (motion (T, 56) at 25 fps, head, style) or, with --format arkit-csv, .csv")
    ap.add_argument("--format", choices=OUTPUT_FORMATS, default="npz",
                    help="npz: the 56-number frames (default); arkit-csv: ARKit-52 weights + head rotation in "
                         "Live Link Face's CSV layout")
    ap.add_argument("--retarget", help="ARKit map .npz from `mm2face-retarget fit` (needed for a real-FLAME model; "
                                       "default: the stand-in map)")
    ap.add_argument("--video", help="also render an MP4 with the audio muxed in")
    ap.add_argument("--ckpt", help="MM2Face checkpoint (default: the shipped engine/assets/default.pt)")
    ap.add_argument("--seed", type=int, default=0)
    from mm2face.engine.session import StreamConfig    # the sampling defaults streaming uses (imports torch)
    d = StreamConfig()
    ap.add_argument("--guidance", type=float, default=d.guidance,
                    help=f"style strength (classifier-free guidance, 1 = off; default {d.guidance})")
    ap.add_argument("--temperature", type=float, default=d.temperature,
                    help=f"sampling temperature (0 = greedy; default {d.temperature})")
    ap.add_argument("--top-k", type=int, default=d.top_k, help=f"sample among the k likeliest tokens (0 = all; default {d.top_k})")
    ap.add_argument("--no-vad", action="store_true",
                    help="turn off the voice-activity gate (by default the mouth rests where no speech is heard)")
    ap.add_argument("--no-contact", action="store_true",
                    help="turn off the lip-contact stage (lips meeting on p/b/m, the lower lip on the upper teeth on "
                         "f/v; engine/closure.py), as mm2face-live --no-contact")
    ap.add_argument("--raw-styles", action="store_true",
                    help="send --text to the model as typed: no style parser, no head-gesture layer (engine/style.py)")
    ap.add_argument("--device", default="cpu", help="torch device for the model, e.g. cpu or cuda (default: cpu)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from mm2face.engine.frame import FPS, MotionClip
    from mm2face.engine.generate import generate
    from mm2face.engine.model import load_model
    if not args.wav and args.seconds <= 0:
        raise SystemExit("give --wav FILE, or --seconds N for text-only generation")
    from mm2face.engine.audio import AudioFileError, load_audio_16k
    try:
        audio = load_audio_16k(args.wav) if args.wav else None
    except AudioFileError as e:
        raise SystemExit(f"mm2face-generate: --wav: {e}") from None
    retarget = None
    if args.format == "arkit-csv" and args.retarget:
        from mm2face.engine.arkit import LinearRetarget, RetargetError
        try:
            retarget = LinearRetarget.load(args.retarget)
        except RetargetError as e:
            raise SystemExit(str(e))
    try:
        model = load_model(args.ckpt, device=args.device)
    except FileNotFoundError as e:
        raise SystemExit(str(e))
    n_frames = None if audio is not None else int(round(args.seconds * FPS))
    motion = generate(model, audio, args.text, seed=args.seed, guidance=args.guidance,
                      temperature=args.temperature, top_k=args.top_k, n_frames=n_frames, device=args.device,
                      vad=not args.no_vad, parse_styles=not args.raw_styles,
                      contact=not args.no_contact)
    if args.format == "arkit-csv":
        out = write_arkit_csv(args.out, motion, model.head_name, retarget)
        print(f"wrote {out}: {len(motion)} frames ({len(motion) / FPS:.2f} s) as ARKit-52 (Live Link Face CSV)")
    else:
        out = MotionClip(motion=motion, fps=FPS, head=model.head_name, style=args.text).save(args.out)
        print(f"wrote {out}: {len(motion)} frames ({len(motion) / FPS:.2f} s), head={model.head_name}")
    if args.video:
        from mm2face.engine.flame import load_head
        from mm2face.viewer.output import write_mp4
        head = load_head(model.head_name)
        write_mp4(args.video, motion, head, fps=FPS, audio_path=args.wav, style=args.text)
        print(f"wrote {args.video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
