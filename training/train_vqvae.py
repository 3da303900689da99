"""Stage 1 trainer: the motion VQ-VAE (helpers shared by all trainers: ``training/trainer.py``).

Loss, in normalised units: weighted MSE of the reconstruction (jaw and mouth dimensions weigh more,
lip sync lives there) + ``w_vel`` x the same on frame-to-frame velocity + commitment. The codebook
itself learns by EMA (no gradient). Under ``torchrun`` the gloo/nccl process group is set up from the
environment and gradients and codebook statistics are averaged across processes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mm2face.engine.frame import HEAD, JAW
from mm2face.training.trainer import (cleanup_dist, dim_weights, load_state, log_line, lr_at, make_adam,
                                      optimizer_step, progress_bar, report, save_state, seed_all, set_lr,
                                      setup_dist, torch_device)

# ---- stage 1 ---------------------------------------------------------------------------------
@dataclass
class VQTrainConfig:
    out: str = "runs/vqvae"        # output folder (last.pt = trainer state, model.pt = MM2Face file)
    steps: int = 3000              # optimiser steps
    batch: int = 32                # windows per step per process
    window: int = 64               # frames per window (2.56 s)
    lr: float = 3e-4
    w_jaw: float = 4.0             # loss weight of the jaw dims (relative)
    w_mouth: float = 2.0           # loss weight of mouth expression dims
    w_head: float = 3.0            # loss weight of the head pose dims (slow, large: easily averaged away)
    w_vel: float = 0.5             # velocity loss weight
    val_every: int = 250
    save_every: int = 500
    seed: int = 0
    head: str = "standin"          # parameter space of the data ("standin" or "flame")
    resume: bool = False
    device: str = "cpu"            # torch device ("cuda" on a GPU machine)
    vq: dict = field(default_factory=dict)   # VQConfig overrides


def train_vqvae(cfg: VQTrainConfig, train_clips, val_clips, progress: bool = True):
    """Train stage 1; returns the path of the MM2Face file (``out/model.pt``, stage "vqvae")."""
    from mm2face.engine.audio_encoder import AudioConfig
    from mm2face.engine.gpt import GPTConfig
    from mm2face.engine.model import MM2Face, ModelInfo
    from mm2face.engine.vqvae import VQConfig
    from mm2face.training.dataset import MotionWindows, motion_stats

    d = setup_dist()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)
    dev = torch_device(cfg.device)
    mean, std = motion_stats(train_clips)
    model = MM2Face(VQConfig(**cfg.vq), GPTConfig(n_layer=1, d_model=32, n_head=1),
                    AudioConfig(hidden=32, layers=1, heads=1, ffn=32, conv_dim=16, window_feats=8),
                    ModelInfo(head=cfg.head, stage="vqvae"))
    model.set_norm(mean, std)
    vq = model.vq
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = make_adam(params, cfg.lr)
    step = 0
    st = load_state(out, cfg.resume)
    if st is not None:
        model = MM2Face.from_checkpoint_dict(st["model"]).train()
        vq = model.vq
        params = [p for p in vq.parameters() if p.requires_grad]
        opt = make_adam(params, cfg.lr)
        opt.load_state_dict(st["opt"])
        step = st["step"]
        if d.main:
            print(f"resumed from {out / 'last.pt'} at step {step}")
    mean_t, std_t = model.mean.numpy(), model.std.numpy()
    ds = MotionWindows(train_clips, mean_t, std_t, window=cfg.window, seed=cfg.seed)
    vds = MotionWindows(val_clips or train_clips, mean_t, std_t, window=cfg.window, seed=cfg.seed + 999)
    model.to(dev)
    vbatch = torch.stack([vds[i] for i in range(min(128, max(cfg.batch, 16)))]).to(dev)
    net = vq
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(vq)
    w = dim_weights(cfg.head, cfg.w_jaw, cfg.w_mouth, cfg.w_head).to(dev)
    t_start = time.time()
    bar = progress_bar(cfg.steps, "vqvae", progress and d.main, initial=step)
    model.train()
    while step < cfg.steps:
        base = (step * d.world + d.rank) * cfg.batch
        x = torch.stack([ds[base + j] for j in range(cfg.batch)]).to(dev)
        set_lr(opt, lr_at(step, cfg.lr, cfg.steps))
        rec, commit, codes = net(x)
        rec_l = ((rec - x).pow(2) * w).mean()
        vel_l = ((rec[:, 1:] - rec[:, :-1]) - (x[:, 1:] - x[:, :-1])).pow(2).mul(w).mean()
        loss = rec_l + cfg.w_vel * vel_l + vq.cfg.commit * commit
        optimizer_step(opt, loss, params)
        step += 1
        used = int(torch.unique(codes).numel())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", rec=f"{rec_l.item():.4f}", codes=used)
        if d.main and (step % 50 == 0 or step == 1):
            log_line(out, {"step": step, "loss": loss.item(), "rec": rec_l.item(), "vel": vel_l.item(),
                           "commit": commit.item(), "codes_used": used, "t_s": time.time() - t_start})
        if d.main and (step % cfg.val_every == 0 or step == cfg.steps):
            model.eval()
            with torch.no_grad():
                r, _, c = vq(vbatch)
                raw_err = ((r - vbatch) * model.std).abs()
                rec_v = ((r - vbatch).pow(2) * w).mean().item()
            model.train()
            jaw = raw_err[..., JAW].mean().item()
            rec_val = {"step": step, "val_rec": rec_v, "val_jaw_mae_rad": jaw,
                       "val_head_mae_rad": raw_err[..., HEAD].mean().item(),
                       "val_mae": raw_err.mean().item(), "val_codes": int(torch.unique(c).numel())}
            report(out, rec_val, progress)
        if d.main and (step % cfg.save_every == 0 or step == cfg.steps):
            save_state(out / "last.pt", model, opt, step, asdict(cfg), {"wall_s": time.time() - t_start})
    bar.close()
    path = out / "model.pt"
    if d.main:
        model.info.meta.update({"vq_steps": step, "vq_wall_s": round(time.time() - t_start, 1)})
        model.eval().cpu().save(path)
    cleanup_dist()
    return path
