"""What a free-text style does, as a picture: for a few everyday styles, text-only motion from the model
(with the style parser and gesture layer of :mod:`mm2face.engine.style`), a strip of rendered frames and
a plot of the head pose and of the emotion checks' key units over time.

    python -m mm2face.training.style_strip --out docs/img/styles_everyday.png
    python -m mm2face.training.style_strip --style "over the moon" --style "shaking the head, fed up"
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_STYLES = ["cheerful, nods a lot", "grumpy and shaking the head", "scared, glancing to the left",
                  "just reading the news", "not angry at all"]
STRIP_TIMES_S = (0.4, 1.0, 1.6, 2.4, 3.4)      # frames shown per style
SECONDS = 4.0


def style_motions(model, styles, seconds: float = SECONDS, seed: int = 0) -> list[np.ndarray]:
    """Text-only ``(T, 56)`` motion per style (offline, the parser on)."""
    from mm2face.engine.generate import generate
    n = int(round(seconds * 25))
    return [generate(model, None, s, seed=seed, n_frames=n) for s in styles]


def draw(styles, motions, frames_rgb, path, captions=None) -> Path:
    """PNG: per style a row of rendered frames and a plot of head pose (rad) and emotion unit scores."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mm2face.engine.units import unit
    from mm2face.training import metrics as M
    k = len(STRIP_TIMES_S)
    fig, axes = plt.subplots(len(styles), k + 1, figsize=(2.0 * k + 5.0, 2.2 * len(styles)),
                             gridspec_kw={"width_ratios": [1] * k + [2.6]}, squeeze=False)
    for r, (style, m) in enumerate(zip(styles, motions)):
        for j, t in enumerate(STRIP_TIMES_S):
            ax = axes[r, j]
            ax.imshow(frames_rgb[r][j])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{t:.1f} s", fontsize=8)
        axes[r, 0].set_ylabel(f"\"{style}\"" + (f"\n→ {captions[r]}" if captions else ""), fontsize=7)
        ax = axes[r, -1]
        t = np.arange(len(m)) / 25.0
        ax.plot(t, m[:, 50], lw=1.2, label="head pitch rx (+ down)")
        ax.plot(t, m[:, 51], lw=1.2, label="head yaw ry (+ left)")
        for rule in M.STYLE_RULES:
            a = m[:, [unit(u) for u in rule.up]]
            ax.plot(t, a.min(1) if rule.all_units else a.mean(1), lw=0.9, ls="--", label=rule.name)
        ax.axhline(0.25, color="grey", lw=0.5, ls=":")
        ax.set_ylim(-0.45, 1.2)
        ax.grid(alpha=0.3)
        if r == 0:
            ax.legend(fontsize=5.5, ncol=2, loc="upper right")
        if r == len(styles) - 1:
            ax.set_xlabel("time (s), text only")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mm2face.training.style_strip",
                                description="Render what free-text styles do: a strip of frames and a plot of the "
                                            "head pose and emotion units per style (text only, default model).")
    p.add_argument("--style", action="append", default=None, help="a style (repeat; default: five everyday styles)")
    p.add_argument("--ckpt", default=None, help="checkpoint (default: the shipped default)")
    p.add_argument("--out", default="docs/img/styles_everyday.png", help="PNG to write")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--tile", type=int, default=200, help="rendered frame size, pixels (default 200)")
    args = p.parse_args(argv)

    from mm2face.engine.flame import load_head
    from mm2face.engine.model import load_model
    from mm2face.engine.style import resolve_style
    from mm2face.viewer.render import Renderer, create_headless_context

    styles = args.style or DEFAULT_STYLES
    model = load_model(args.ckpt)
    motions = style_motions(model, styles, seed=args.seed)
    ctx = create_headless_context()
    r = Renderer(ctx, load_head(model.head_name), size=(args.tile, args.tile), zoom=1.1)
    frames = [[r.render(m[min(int(t * 25), len(m) - 1)]) for t in STRIP_TIMES_S] for m in motions]
    r.release()
    ctx.release()
    caps = [resolve_style(s, model.text_encoder).caption for s in styles]
    print(f"wrote {draw(styles, motions, frames, args.out, caps)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
