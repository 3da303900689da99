"""``mm2face-view``: show a motion clip (or the live stream) on a head, in a window or headless.

Examples::

    mm2face-view --demo --out demo.mp4                 # built-in clip of the stand-in head -> MP4
    mm2face-view clip.npz                              # window (needs a display)
    mm2face-view clip.npz --out clip.mp4 --audio speech.wav
    mm2face-view clip.npz --out frames/                # one PNG per frame
    mm2face-view clip.npz --out face.png --frame 40    # a single frame
    mm2face-view ws://127.0.0.1:8765                   # the live WebSocket stream, in a window
    mm2face-view clip.npz --flame ~/FLAME2020/generic_model.pkl --out clip.mp4
    mm2face-view --export head.glb                     # the stand-in head as glTF 2.0 (52 ARKit morph targets)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mm2face.engine.frame import FPS, MotionClip, MotionError, validate_motion


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or WxH with positive numbers, got {text!r}")
    return parts[0], parts[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mm2face-view",
        description="Draw FLAME motion (56 numbers per frame, 25 fps) on the stand-in head or the real FLAME, "
                    "in a window or headless to MP4/PNG.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("source", nargs="?", help="a motion file (.npz MotionClip or .npy (T, 56)) or ws://host:port for the live stream")
    p.add_argument("--motion", help="motion file (same as the positional argument)")
    p.add_argument("--demo", action="store_true", help="use the built-in demo clip (neutral, smile, open mouth, blink, nod, brows)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the --demo clip in seconds (default 6)")
    p.add_argument("--out", help="render headless: NAME.mp4 (video), NAME.png (one frame) or a folder (PNG per frame)")
    p.add_argument("--audio", help="audio file to mux into the MP4 (e.g. the speech that drove the motion)")
    p.add_argument("--flame", help="path to the real FLAME generic_model.pkl / flame2023.pkl instead of the stand-in head")
    p.add_argument("--size", type=_parse_size, default=(512, 512), help="image size, N or WxH pixels (default 512)")
    p.add_argument("--style-overlay", action="store_true", help="draw the clip's style text (and time in the window) at the bottom")
    p.add_argument("--frame", type=int, help="only this frame index (PNG output or a still window)")
    p.add_argument("--fps", type=int, help=f"override the clip's frame rate (default: the clip's, else {FPS})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--export", metavar="HEAD.glb",
                   help="write the stand-in head as a glTF 2.0 binary (mesh, material, neck/head/jaw/eye nodes, "
                        "the 52 ARKit morph targets) for any engine, then exit")
    return p


def _load_motion(path: str) -> MotionClip:
    path_ = Path(path)
    if path_.suffix == ".npy":
        return MotionClip(motion=validate_motion(np.load(path_), name=str(path_), check_ranges=False))
    return MotionClip.load(path_)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    source_arg = args.source or args.motion
    if args.source and args.motion:
        print("mm2face-view: give the motion file once (positional or --motion), not both", file=sys.stderr)
        return 2
    if args.demo and source_arg:
        print("mm2face-view: --demo replaces the motion file; pass one or the other", file=sys.stderr)
        return 2
    if args.export:
        return _export(args, source_arg)
    if not args.demo and not source_arg:
        print("mm2face-view: nothing to show: pass a motion file, ws://host:port, or --demo (see --help)", file=sys.stderr)
        return 2

    from mm2face.engine.flame import HeadModelError, load_head

    try:
        head = load_head(args.flame) if args.flame else load_head("standin")
    except HeadModelError as exc:
        print(f"mm2face-view: {exc}", file=sys.stderr)
        return 2

    if source_arg and str(source_arg).startswith(("ws://", "wss://")):
        if args.out:
            print("mm2face-view: --out records motion files, not the live stream; save the stream's motion and "
                  "render that file instead", file=sys.stderr)
            return 2
        from mm2face.realtime.ws_source import WebSocketSource
        return _window(WebSocketSource(source_arg), head, args)

    if args.demo:
        from .demo_clip import demo_motion
        clip = MotionClip(motion=demo_motion(args.seconds), style="demo: neutral, smile, talk, blink, nod, brows")
    else:
        try:
            clip = _load_motion(source_arg)
        except (FileNotFoundError, MotionError) as exc:
            print(f"mm2face-view: {exc}", file=sys.stderr)
            return 2
    if clip.head == "flame" and not args.flame:
        print("mm2face-view: this clip is in the real FLAME's parameter space; pass --flame path/to/generic_model.pkl "
              "(its expressions mean nothing on the stand-in head)", file=sys.stderr)
        return 2
    fps = args.fps or clip.fps or FPS
    motion = validate_motion(clip.motion)
    if args.frame is not None:
        if not -len(motion) <= args.frame < len(motion):
            print(f"mm2face-view: --frame {args.frame} is outside the clip (0..{len(motion) - 1})", file=sys.stderr)
            return 2
        motion = motion[[args.frame]]
    style = clip.style if args.style_overlay else ""

    if not args.out:
        from .source import ClipSource, StaticSource
        src = StaticSource(motion[0], clip.style) if args.frame is not None else ClipSource(motion, fps, clip.style, loop=True)
        return _window(src, head, args)
    return _render_out(args, head, motion, fps, style)


def _export(args, source_arg) -> int:
    if source_arg or args.demo or args.out or args.flame:
        print("mm2face-view: --export writes the stand-in head on its own; leave out the motion, --demo, --out "
              "and --flame (the real FLAME is licensed and is never exported)", file=sys.stderr)
        return 2
    from .gltf import GltfError, export_head_glb
    try:
        path = export_head_glb(args.export)
    except (GltfError, OSError) as exc:
        print(f"mm2face-view: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _window(source, head, args) -> int:
    from .window import NoDisplayError, run_window
    try:
        run_window(source, head, size=args.size, style_overlay=args.style_overlay)
    except NoDisplayError as exc:
        print(f"mm2face-view: {exc}", file=sys.stderr)
        return 3
    return 0


def _render_out(args, head, motion, fps, style) -> int:
    from .output import render_frames, write_mp4, write_png, write_pngs
    out = Path(args.out)
    progress = not args.no_progress
    try:
        if out.suffix.lower() == ".mp4":
            write_mp4(out, motion, head, fps=fps, audio_path=args.audio, size=args.size, style=style, progress=progress)
        elif out.suffix.lower() == ".png":
            img = next(iter(render_frames(head, motion[:1], size=args.size, style=style, progress=False)))
            write_png(out, img)
        elif out.suffix:
            print(f"mm2face-view: --out must end in .mp4 or .png, or be a folder; got {out}", file=sys.stderr)
            return 2
        else:
            write_pngs(out, render_frames(head, motion, size=args.size, style=style, progress=progress))
    except RuntimeError as exc:               # EGL missing, ffmpeg failures: the message says what to do
        print(f"mm2face-view: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
