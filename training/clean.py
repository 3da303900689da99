"""Cleaning of reconstructed FLAME motion, following MMHead's two steps.

1. **Outlier replacement** (per sequence). For each parameter group (expression, pose, and, when the
   fitter provides them, shape and face-box size) take the L2 distance of every frame's vector to the
   group's mean over the sequence. Frames whose distance falls outside ``[Q1 - s*IQR, Q3 + s*IQR]``
   in any group are outliers; their values are replaced by linear interpolation between the nearest
   good frames (nearest good value at the ends).
2. **Temporal smoothing** with Adam, minimising MMHead's Equation 1
   ``||psi[1:] - psi[:-1]||^2 + lam * ||theta[1:] - theta[:-1]||^2`` (psi: expression, theta: head
   and jaw pose). On its own this objective is minimised by a constant sequence, which would erase the
   motion, so we add a data term anchoring the result to the (outlier-free) input:
   ``+ anchor * (||psi - psi0||^2 + ||theta - theta0||^2)``. The optimum is a low-pass filter: higher
   ``anchor`` keeps more detail (at ``anchor=1`` the gain is 1/2 near 4 Hz for ``lam=1``).

Functions take and return ``(T, 56)`` arrays; :func:`clean_corpus` applies them to an MMHead-layout folder.
"""
from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mm2face.engine.frame import EXP, to_mmhead


@dataclass
class CleanConfig:
    scale: float = 3.0       # s: IQR multiple of the outlier interval [Q1 - s*IQR, Q3 + s*IQR] (Tukey's far fence)
    lam: float = 1.0         # lambda: weight of the pose (head + jaw) smoothness term in Eq. 1
    anchor: float = 1.0      # weight of the data term ||x - x0||^2 (0 would collapse to a constant)
    steps: int = 200         # Adam steps per sequence
    lr: float = 0.02         # Adam learning rate (cosine-decayed to 0)


def distance_outliers(vectors: np.ndarray, scale: float = 1.5) -> np.ndarray:
    """(T,) bool: frames whose L2 distance to the sequence mean lies outside [Q1 - s*IQR, Q3 + s*IQR].

    ``vectors``: (T, D) (or (T,) for a scalar such as box size).
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    d = np.linalg.norm(v - v.mean(0, keepdims=True), axis=1)
    q1, q3 = np.percentile(d, [25, 75])
    iqr = q3 - q1
    return (d < q1 - scale * iqr) | (d > q3 + scale * iqr)


def outlier_frames(motion: np.ndarray, scale: float = 1.5, shape: np.ndarray | None = None,
                   box_size: np.ndarray | None = None) -> np.ndarray:
    """(T,) bool union of the per-group outlier tests (expression, pose, optional shape and box size)."""
    m = np.asarray(motion)
    groups = [m[:, EXP], m[:, 50:56]]
    groups += [g for g in (shape, box_size) if g is not None]
    bad = np.zeros(len(m), bool)
    for g in groups:
        if len(g) != len(m):
            raise ValueError(f"extra feature has {len(g)} frames, motion has {len(m)}")
        bad |= distance_outliers(g, scale)
    return bad


def interpolate_frames(x: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Replace rows where ``bad`` by linear interpolation over the good rows (per column)."""
    x = np.array(x, dtype=np.float32, copy=True)
    good = np.flatnonzero(~bad)
    if bad.any() and len(good):
        idx = np.flatnonzero(bad)
        for d in range(x.shape[1]):
            x[idx, d] = np.interp(idx, good, x[good, d])
    return x


def smooth_motion(motion: np.ndarray, lam: float = 1.0, anchor: float = 1.0, steps: int = 200,
                  lr: float = 0.02, device="cpu") -> np.ndarray:
    """Minimise Eq. 1 plus the anchoring data term with Adam; returns ``(T, 56)`` float32."""
    import torch
    x0 = torch.as_tensor(np.asarray(motion, dtype=np.float32), device=device)
    if len(x0) < 3 or steps <= 0:
        return x0.cpu().numpy()
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        opt.zero_grad()
        dpsi = x[1:, :50] - x[:-1, :50]
        dtheta = x[1:, 50:] - x[:-1, 50:]
        loss = (dpsi ** 2).sum() + lam * (dtheta ** 2).sum() + anchor * ((x - x0) ** 2).sum()
        loss.backward()
        opt.step()
        sched.step()
    return x.detach().cpu().numpy().astype(np.float32)


def clean_motion(motion: np.ndarray, cfg: CleanConfig | None = None, shape=None, box_size=None,
                 device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Outlier replacement then smoothing. Returns (cleaned (T, 56) float32, outlier mask (T,) bool)."""
    cfg = cfg or CleanConfig()
    bad = outlier_frames(motion, cfg.scale, shape, box_size)
    fixed = interpolate_frames(motion, bad)
    return smooth_motion(fixed, cfg.lam, cfg.anchor, cfg.steps, cfg.lr, device), bad


def clean_corpus(src, dst, cfg: CleanConfig | None = None, limit: int | None = None, device="cpu") -> dict:
    """Copy an MMHead-layout folder ``src`` to ``dst`` with every motion cleaned. Returns a report dict."""
    import torch
    from tqdm import tqdm

    from .mmhead import CAPTION_KINDS, MMHeadCorpus, read_motion_pkl
    cfg = cfg or CleanConfig()
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("--out must differ from --in (the input is left untouched)")
    torch.set_num_threads(1)
    corpus = MMHeadCorpus(src)
    (dst / "facial_motion").mkdir(parents=True, exist_ok=True)
    index = corpus._index[:limit]
    ids = [cid for cid, _, _ in index]
    for subset, name in (("talking", "talking_subset.json"), ("t2m", "t2m_subset.json")):
        if (src / name).is_file():      # split files list only the clips written here
            table = {sp: [cid for cid, su, s2 in index if su == subset and s2 == sp] for sp in ("train", "val", "test")}
            (dst / name).write_text(json.dumps(table, indent=1))
    if (src / "README.md").is_file():
        shutil.copy2(src / "README.md", dst / "README.md")
    per_clip, n_bad = {}, 0
    for cid in tqdm(ids, desc="clean", unit="clip"):
        motion = read_motion_pkl(corpus.motion.read(cid), corpus.motion.where(cid))
        out, bad = clean_motion(motion, cfg, device=device)
        with open(dst / "facial_motion" / f"{cid}.pkl", "wb") as f:
            pickle.dump(to_mmhead(out), f)
        per_clip[cid] = {"frames": len(motion), "outliers": int(bad.sum()),
                         "mean_abs_change": float(np.abs(out - motion).mean())}
        n_bad += int(bad.sum())
        if cid in corpus.audio:
            (dst / "audio").mkdir(exist_ok=True)
            (dst / "audio" / f"{cid}.wav").write_bytes(corpus.audio.read(cid))
        for kind in CAPTION_KINDS:
            p = src / "text_annotations" / kind / f"{cid}.txt"
            if p.is_file():
                (dst / "text_annotations" / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dst / "text_annotations" / kind / p.name)
        p = src / "synth_meta" / f"{cid}.json"
        if p.is_file():
            (dst / "synth_meta").mkdir(exist_ok=True)
            shutil.copy2(p, dst / "synth_meta" / p.name)
    report = {"clips": len(ids), "outlier_frames": n_bad, "config": asdict(cfg), "load_errors": corpus.errors,
              "per_clip": per_clip}
    (dst / "clean_report.json").write_text(json.dumps(report, indent=1))
    return {k: v for k, v in report.items() if k != "per_clip"}


def corrupt(motion: np.ndarray, rng: np.random.Generator, n_outliers: int = 6, jitter: float = 0.03,
            outlier_size: float = 1.0) -> np.ndarray:
    """Test helper: add white jitter and a few single-frame outliers (as bad fits produce)."""
    m = np.asarray(motion, dtype=np.float32).copy()
    scale = np.maximum(np.abs(m).max(0), 0.05)
    m += rng.standard_normal(m.shape).astype(np.float32) * jitter * scale
    for t in rng.choice(len(m), size=min(n_outliers, len(m)), replace=False):
        m[t] += rng.standard_normal(m.shape[1]).astype(np.float32) * outlier_size * scale
    return m


def plot_example(motion: np.ndarray, out_png, cfg: CleanConfig | None = None, seed: int = 0,
                 title: str = "") -> dict:
    """Plot clean vs corrupted vs cleaned for a few channels; return the RMS errors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mm2face.engine.units import unit
    rng = np.random.default_rng(seed)
    raw = corrupt(motion, rng)
    cleaned, bad = clean_motion(raw, cfg)
    chans = [(53, "jaw rx (rad)"), (50, "head rx (rad)"), (unit("lip_corner_puller_left"), "lip corner puller L"),
             (unit("inner_brow_raiser"), "inner brow raiser")]
    t = np.arange(len(motion)) / 25.0
    fig, axes = plt.subplots(len(chans), 1, figsize=(9, 8), sharex=True)
    for ax, (d, name) in zip(axes, chans):
        ax.plot(t, raw[:, d], color="0.6", lw=0.8, label="raw (jitter + outliers)")
        ax.plot(t, motion[:, d], color="tab:green", lw=1.2, ls="--", label="clean reference")
        ax.plot(t, cleaned[:, d], color="tab:blue", lw=1.4, label="cleaned")
        ax.scatter(t[bad], raw[bad, d], color="tab:red", s=12, zorder=5, label="detected outliers")
        ax.set_ylabel(name, fontsize=8)
    axes[0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1].set_xlabel("time (s)")
    err = {"rms_raw": float(np.sqrt(((raw - motion) ** 2).mean())),
           "rms_cleaned": float(np.sqrt(((cleaned - motion) ** 2).mean())), "outliers_found": int(bad.sum())}
    fig.suptitle(title or f"cleaning: RMS error vs reference {err['rms_raw']:.4f} -> {err['rms_cleaned']:.4f}",
                 fontsize=10)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return err
