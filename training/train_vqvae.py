"""Stage 1 trainer: the motion VQ-VAE, plus the helpers both trainers share (DDP, schedule, state files).

Loss, in normalised units: weighted MSE of the reconstruction (jaw and mouth dimensions weigh more,
lip sync lives there) + ``w_vel`` x the same on frame-to-frame velocity + commitment. The codebook
itself learns by EMA (no gradient). Under ``torchrun`` the gloo/nccl process group is set up from the
environment and gradients and codebook statistics are averaged across processes.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from mm2face.engine.frame import FRAME_DIM, HEAD, JAW
from mm2face.engine.units import UNIT_INDEX

MOUTH_UNITS = ("upper_lip_raiser", "lip_corner_puller_left", "lip_corner_puller_right", "lower_lip_depressor",
               "chin_raiser", "lip_pucker", "lip_stretcher", "lip_funneler", "lip_tightener", "lip_pressor",
               "lips_part")


# ---- shared helpers --------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist() -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MM2FACE_NCCL") else "gloo"
        dist.init_process_group(backend)
        import atexit
        atexit.register(_destroy_at_exit)
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    return Dist()


def cleanup_dist():
    """Wait for all processes; the group stays up (a second trainer in the same process reuses it)
    and is destroyed at exit."""
    if dist.is_initialized():
        dist.barrier()


def _destroy_at_exit():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def lr_at(step: int, base: float, total: int, warmup: int = 100) -> float:
    """Linear warmup, then cosine decay to 10 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def save_state(path: Path, model, opt, step: int, train_cfg: dict, extra: dict | None = None):
    """Trainer state: the model checkpoint (rebuildable alone) + optimiser + step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.info.step = step
    state = {"model": model.checkpoint_dict(), "opt": opt.state_dict(), "step": step, "train_cfg": train_cfg,
             **(extra or {})}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def log_line(out: Path, rec: dict):
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def dim_weights(head: str, w_jaw: float, w_mouth: float, w_head: float = 1.0) -> torch.Tensor:
    w = torch.ones(FRAME_DIM)
    w[JAW] = w_jaw
    w[HEAD] = w_head
    if head == "standin":
        for u in MOUTH_UNITS:
            w[UNIT_INDEX[u]] = w_mouth
    else:                                   # FLAME: the first PCA components carry most mouth motion
        w[:10] = w_mouth
    return w / w.mean()


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
    torch.manual_seed(cfg.seed)
    mean, std = motion_stats(train_clips)
    model = MM2Face(VQConfig(**cfg.vq), GPTConfig(n_layer=1, d_model=32, n_head=1),
                    AudioConfig(hidden=32, layers=1, heads=1, ffn=32, conv_dim=16, window_feats=8),
                    ModelInfo(head=cfg.head, stage="vqvae"))
    model.set_norm(mean, std)
    vq = model.vq
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999))
    step = 0
    if cfg.resume and (out / "last.pt").exists():
        st = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        model = MM2Face.from_checkpoint_dict(st["model"]).train()
        vq = model.vq
        params = [p for p in vq.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.999))
        opt.load_state_dict(st["opt"])
        step = st["step"]
        if d.main:
            print(f"resumed from {out / 'last.pt'} at step {step}")
    mean_t, std_t = model.mean.numpy(), model.std.numpy()
    ds = MotionWindows(train_clips, mean_t, std_t, window=cfg.window, seed=cfg.seed)
    vds = MotionWindows(val_clips or train_clips, mean_t, std_t, window=cfg.window, seed=cfg.seed + 999)
    dev = torch.device(cfg.device)
    model.to(dev)
    vbatch = torch.stack([vds[i] for i in range(min(128, max(cfg.batch, 16)))]).to(dev)
    net = vq
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(vq)
    w = dim_weights(cfg.head, cfg.w_jaw, cfg.w_mouth, cfg.w_head).to(dev)
    t_start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="vqvae", disable=not (progress and d.main), dynamic_ncols=True)
    model.train()
    while step < cfg.steps:
        base = (step * d.world + d.rank) * cfg.batch
        x = torch.stack([ds[base + j] for j in range(cfg.batch)]).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.steps)
        rec, commit, codes = net(x)
        rec_l = ((rec - x).pow(2) * w).mean()
        vel_l = ((rec[:, 1:] - rec[:, :-1]) - (x[:, 1:] - x[:, :-1])).pow(2).mul(w).mean()
        loss = rec_l + cfg.w_vel * vel_l + vq.cfg.commit * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
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
            log_line(out, rec_val)
            tqdm.write(json.dumps(rec_val)) if progress else None
        if d.main and (step % cfg.save_every == 0 or step == cfg.steps):
            save_state(out / "last.pt", model, opt, step, asdict(cfg), {"wall_s": time.time() - t_start})
    bar.close()
    path = out / "model.pt"
    if d.main:
        model.info.meta.update({"vq_steps": step, "vq_wall_s": round(time.time() - t_start, 1)})
        model.eval().cpu().save(path)
    cleanup_dist()
    return path
