"""Regenerate the documentation pictures of the stand-in head.

    python -m mm2face.viewer.gallery docs/img      # neutral.png, smile_open.png, units_grid.png

``units_grid.png`` shows every named expression unit at full activation (coefficient 1), labelled.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mm2face.engine.frame import JAW
from mm2face.engine.units import USED_UNITS, unit


def smile_open_frame() -> np.ndarray:
    """An open-mouth smile: both lip-corner pullers, cheeks raised, lips parted, jaw open 0.17 rad."""
    f = np.zeros(56, np.float32)
    f[unit("lip_corner_puller_left")] = 1.4
    f[unit("lip_corner_puller_right")] = 1.4
    f[unit("cheek_raiser")] = 0.8
    f[unit("lips_part")] = 0.5
    f[unit("upper_lip_raiser")] = 0.4
    f[JAW.start] = 0.17
    return f


def units_grid(renderer, units=USED_UNITS, cols: int = 7, crop: float = 0.0) -> np.ndarray:
    """One labelled tile per unit at coefficient 1 -> (rows*H, cols*W, 3) uint8."""
    from PIL import Image, ImageDraw, ImageFont
    W, H = renderer.size
    rows = (len(units) + cols - 1) // cols
    grid = Image.new("RGB", (cols * W, rows * H), (20, 20, 24))
    try:
        font = ImageFont.load_default(size=max(10, W // 14))
    except TypeError:
        font = ImageFont.load_default()
    for k, name in enumerate(units):
        f = np.zeros(56, np.float32)
        f[unit(name)] = 1.0
        tile = Image.fromarray(renderer.render(f))
        d = ImageDraw.Draw(tile)
        d.rectangle([0, 0, W, W // 11 + 4], fill=(0, 0, 0))
        d.text((4, 2), f"{unit(name)} {name}", font=font, fill=(255, 255, 255))
        grid.paste(tile, ((k % cols) * W, (k // cols) * H))
    return np.asarray(grid)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Render the stand-in head's documentation pictures.")
    p.add_argument("out_dir", nargs="?", default="docs/img", help="folder for the PNGs (default docs/img)")
    p.add_argument("--size", type=int, default=512, help="size of neutral.png / smile_open.png (pixels)")
    p.add_argument("--tile", type=int, default=220, help="size of one units_grid.png tile (pixels)")
    args = p.parse_args(argv)

    from mm2face.engine.flame import load_head
    from .output import write_png
    from .render import Renderer, create_headless_context

    head = load_head("standin")
    out = Path(args.out_dir)
    ctx = create_headless_context()
    r = Renderer(ctx, head, size=(args.size, args.size))
    write_png(out / "neutral.png", r.render(np.zeros(56, np.float32)))
    write_png(out / "smile_open.png", r.render(smile_open_frame()))
    r.release()
    r = Renderer(ctx, head, size=(args.tile, args.tile), zoom=1.45)
    write_png(out / "units_grid.png", units_grid(r))
    r.release()
    ctx.release()
    print(f"wrote {out}/neutral.png, smile_open.png, units_grid.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
