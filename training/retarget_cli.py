"""``mm2face-retarget``: ARKit-52 maps for heads other than the stand-in.

    mm2face-retarget fit --flame ~/FLAME2020/generic_model.pkl --targets arkit_shapes/ --out flame_arkit.npz
    mm2face-retarget fit --flame generic_model.pkl --targets shapes.npz --out flame_arkit.npz
    mm2face-retarget info flame_arkit.npz
    mm2face-retarget standin           # the stand-in head's exact map: its table and measured errors

``fit`` reads a neutral mesh and the 52 ARKit target meshes of *your* avatar on FLAME's topology (same vertex
count and order as the FLAME model), and finds, for each of FLAME's 50 expression components and 3 jaw axes
(each sign separately), the non-negative ARKit weights whose shapes best explain FLAME's vertex offsets
(least squares). The result is a versioned .npz that mm2face-generate --format arkit-csv --retarget and
mm2face-live --arkit-retarget use instead of the stand-in map. See docs/arkit.md.

Targets:
  a folder   one .obj per ARKit name (eyeBlinkLeft.obj, ...; case does not matter, so EyeBlinkLeft.obj or
             Live Link Face's capitalised names work), plus neutral.obj unless --neutral is given;
  a .npz     one (V, 3) array per ARKit name (+ "neutral"), or "targets" (52, V, 3) in Apple's order.
Only the "v x y z" lines of an .obj are read, in file order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

NEUTRAL_NAMES = ("neutral", "basis", "base")
SCALE_TOLERANCE = 2.0        # the user's neutral may be this much larger or smaller than FLAME's before we refuse


class FitInputError(ValueError):
    """The neutral or target meshes cannot be used (missing, unreadable, wrong vertex count)."""


def read_obj_vertices(path) -> np.ndarray:
    """The ``v x y z`` vertex positions of a Wavefront .obj, in file order: ``(V, 3)`` float64."""
    path = Path(path)
    verts = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if line.startswith("v "):
                    parts = line.split()
                    if len(parts) < 4:
                        raise FitInputError(f"{path}:{n}: a vertex line needs x y z, got {line.strip()!r}")
                    verts.append([float(p) for p in parts[1:4]])
    except (OSError, ValueError) as exc:
        if isinstance(exc, FitInputError):
            raise
        raise FitInputError(f"{path}: cannot read as .obj ({exc})") from exc
    if not verts:
        raise FitInputError(f"{path}: no 'v x y z' vertex lines; is it a Wavefront .obj?")
    return np.asarray(verts, np.float64)


def _read_mesh(path) -> np.ndarray:
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path).astype(np.float64)
    return read_obj_vertices(path)


def load_targets(targets, neutral=None, allow_missing: bool = False):
    """Read the user's meshes. Returns ``(neutral (V, 3), targets (52, V, 3), missing names)``.

    A missing shape is an error unless ``allow_missing``; then it equals the neutral (never driven)."""
    from mm2face.engine.arkit import ARKIT_NAMES
    src = Path(targets)
    by_lower = {n.lower(): n for n in ARKIT_NAMES}
    found: dict[str, np.ndarray] = {}
    neu = None
    if src.is_dir():
        for f in sorted(src.iterdir()):
            if f.suffix.lower() not in (".obj", ".npy"):
                continue
            key = f.stem.lower()
            if key in by_lower:
                found[by_lower[key]] = _read_mesh(f)
            elif key in NEUTRAL_NAMES and neutral is None:
                neu = _read_mesh(f)
    elif src.suffix.lower() == ".npz" and src.exists():
        with np.load(src, allow_pickle=False) as z:
            if "targets" in z:
                arr = np.asarray(z["targets"], np.float64)
                if arr.ndim != 3 or arr.shape[0] != len(ARKIT_NAMES) or arr.shape[2] != 3:
                    raise FitInputError(f"{src}: 'targets' has shape {arr.shape}; expected (52, V, 3) in Apple's order")
                found = dict(zip(ARKIT_NAMES, arr))
            for k in z.files:
                if k.lower() in by_lower:
                    found[by_lower[k.lower()]] = np.asarray(z[k], np.float64)
                elif k.lower() in NEUTRAL_NAMES and neutral is None:
                    neu = np.asarray(z[k], np.float64)
    elif not src.exists():
        raise FitInputError(f"targets not found: {src} (give a folder of .obj files or an .npz)")
    else:
        raise FitInputError(f"{src}: targets must be a folder of .obj files or an .npz file")
    if neutral is not None:
        neu = _read_mesh(neutral)
    if neu is None:
        raise FitInputError(f"no neutral mesh: put neutral.obj in {src} (or a 'neutral' array in the .npz), "
                            f"or pass --neutral FILE")
    if not found:
        raise FitInputError(f"{src}: no target named after an ARKit shape (e.g. jawOpen.obj, EyeBlinkLeft.obj)")
    missing = [n for n in ARKIT_NAMES if n not in found]
    if missing and not allow_missing:
        raise FitInputError(f"{src}: {len(missing)} of the 52 ARKit targets are missing: {', '.join(missing)}. "
                            f"Add them, or pass --allow-missing to leave those shapes undriven")
    for n, v in found.items():
        if v.shape != neu.shape:
            raise FitInputError(f"target {n} has {v.shape[0]} vertices, the neutral {neu.shape[0]}: all meshes "
                                f"must share one topology (FLAME's)")
    stack = np.stack([found.get(n, neu) for n in ARKIT_NAMES])
    return neu, stack, missing


def _check_against_flame(head, neutral, scale: float):
    V = head.n_vertices
    if neutral.shape != (V, 3):
        raise FitInputError(f"the meshes have {neutral.shape[0]} vertices but the FLAME model has {V}: the "
                            f"targets must be on FLAME's topology (same vertices, same order)")
    size = lambda v: float(np.linalg.norm(v.max(0) - v.min(0)))
    ratio = size(neutral) * scale / size(head.v_template)
    if not (1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE):
        raise FitInputError(f"the neutral mesh is {ratio:.3g}x the size of the FLAME template (after --scale "
                            f"{scale:g}); FLAME is in metres: pass --scale {scale / ratio:.3g} to match")


def cmd_fit(args) -> int:
    from mm2face.engine.arkit import ARKIT_NAMES, RetargetError, fit_flame_retarget
    from mm2face.engine.flame import HeadModelError, load_head
    try:
        head = load_head(args.flame)
        neutral, targets, missing = load_targets(args.targets, args.neutral, args.allow_missing)
        _check_against_flame(head, neutral, args.scale)
        rt = fit_flame_retarget(head, neutral * args.scale, targets * args.scale, ridge=args.ridge,
                                source=f"fit: flame={Path(args.flame).name} targets={Path(args.targets).name}")
    except (FitInputError, HeadModelError, RetargetError) as exc:
        raise SystemExit(f"mm2face-retarget fit: {exc}")
    out = rt.save(args.out)
    res = np.array([v for k, v in rt.info.items() if k.startswith("rel_residual.+") and int(k[14:]) < 50])
    used = [n for i, n in enumerate(ARKIT_NAMES) if rt.pos[i].any() or rt.neg[i].any()]
    print(f"wrote {out} ({rt.version}): {len(used)} of 52 ARKit shapes used"
          + (f"; {len(missing)} targets missing (undriven)" if missing else ""))
    if len(res):
        print(f"FLAME expression offsets explained: relative residual median {np.median(res):.3f}, "
              f"max {res.max():.3f} (0 = exact, 1 = nothing explained)")
    return 0


def cmd_info(args) -> int:
    from mm2face.engine.arkit import ARKIT_NAMES, LinearRetarget, RetargetError
    try:
        rt = LinearRetarget.load(args.file)
    except RetargetError as exc:
        raise SystemExit(f"mm2face-retarget info: {exc}")
    print(f"{args.file}: version {rt.version}; source: {rt.source or '-'}")
    for i, n in enumerate(ARKIT_NAMES):
        dims = np.flatnonzero((rt.pos[i] > 0) | (rt.neg[i] > 0))
        if len(dims):
            print(f"  {n:20s} <- {len(dims)} frame values")
    return 0


def cmd_standin(args) -> int:
    from mm2face.engine.arkit import ARKIT_MAP_VERSION, standin_errors, standin_table_markdown
    print(f"stand-in ARKit map {ARKIT_MAP_VERSION}\n")
    print(standin_table_markdown())
    print("\nmeasured on the stand-in head (neutral + weights @ arkit_morph_targets vs the head's own mesh):")
    for k, v in standin_errors(n_frames=args.frames).items():
        print(f"  {k}: {v:.4g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mm2face-retarget", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit an ARKit map for real FLAME from your avatar's ARKit target meshes",
                       description="Fit a FLAME -> ARKit-52 map (least squares, weights >= 0) from a neutral "
                                   "mesh and 52 ARKit target meshes on FLAME's topology.")
    f.add_argument("--flame", required=True, help="FLAME model .pkl (generic_model.pkl / flame2023.pkl)")
    f.add_argument("--targets", required=True, help="folder of <arkitName>.obj files, or an .npz (see --help)")
    f.add_argument("--neutral", help="neutral mesh .obj/.npy (default: neutral.obj in the folder / 'neutral' in the .npz)")
    f.add_argument("--out", required=True, help="output map .npz")
    f.add_argument("--scale", type=float, default=1.0,
                   help="multiply the meshes by this to get metres (e.g. 0.01 for centimetres; default 1)")
    f.add_argument("--ridge", type=float, default=1e-6,
                   help="unitless ridge on the weights, relative to the targets' size (default 1e-6)")
    f.add_argument("--allow-missing", action="store_true",
                   help="fit with fewer than 52 targets; missing shapes stay undriven")
    f.set_defaults(func=cmd_fit)
    i = sub.add_parser("info", help="show what a map file drives")
    i.add_argument("file", help="map .npz from `fit`")
    i.set_defaults(func=cmd_info)
    s = sub.add_parser("standin", help="print the stand-in head's ARKit map (markdown) and its measured errors")
    s.add_argument("--frames", type=int, default=16, help="random frames per error measurement (default 16)")
    s.set_defaults(func=cmd_standin)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "scale", 1.0) <= 0:
        raise SystemExit("mm2face-retarget: --scale must be > 0")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
