"""What every trainer (``train_vqvae``, ``train_mm2face``, ``train_refiner``) shares, written once.

* device choice: :func:`torch_device` (a clear error for a device this machine lacks);
* seeding: :func:`seed_all` (torch and a numpy generator from one seed);
* data parallel: :class:`Dist`, :func:`setup_dist`, :func:`cleanup_dist` (torchrun, gloo on CPU);
* optimiser and schedule: :func:`make_adam` (Adam, betas :data:`ADAM_BETAS`), :func:`lr_at` (linear
  warm-up, cosine decay to :data:`LR_FLOOR` of the peak), :func:`set_lr`, :func:`optimizer_step`
  (zero grad, backward, clip the gradient norm to :data:`GRAD_CLIP_NORM`, step);
* time: :class:`TimeBudget` (``--time-budget-min``);
* progress and logs: :func:`progress_bar` (tqdm), :func:`log_line` (``OUT/log.jsonl``), :func:`report`
  (log line + the progress bar's output);
* state files: :func:`save_state` (``OUT/last.pt``, written atomically), :func:`load_state`;
* loss weights per frame dimension: :func:`dim_weights`.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mm2face.engine.frame import FRAME_DIM, HEAD, JAW
from mm2face.engine.units import UNIT_INDEX

ADAM_BETAS = (0.5, 0.999)    # every stage: a short first-moment memory (the losses are noisy per crop)
GRAD_CLIP_NORM = 1.0         # max global gradient norm per step
WARMUP_STEPS = 100           # linear learning-rate warm-up
LR_FLOOR = 0.1               # the cosine decays to this share of the peak learning rate
STATE_FILE = "last.pt"       # trainer state (model + optimiser + step) in OUT/, for --resume
LOG_FILE = "log.jsonl"       # one JSON record per line in OUT/

# The stand-in head's mouth expression units: lip sync lives there, so their loss weighs more.
MOUTH_UNITS = ("upper_lip_raiser", "lip_corner_puller_left", "lip_corner_puller_right", "lower_lip_depressor",
               "chin_raiser", "lip_pucker", "lip_stretcher", "lip_funneler", "lip_tightener", "lip_pressor",
               "lips_part")
FLAME_MOUTH_COMPONENTS = 10  # FLAME: the first PCA expression components carry most mouth motion


# ---- device and seeds ------------------------------------------------------------------------
def torch_device(name: str) -> torch.device:
    """``--device`` (cpu, cuda, cuda:1, mps ...) as a torch device; a device this machine lacks is a
    clear error (ValueError) instead of a failure deep in the first step."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {name!r} is not a torch device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch has no CUDA device (torch {torch.__version__}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    return dev


def seed_all(seed: int) -> np.random.Generator:
    """Seed torch's global generator; returns a numpy generator from the same seed."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


# ---- data parallel ---------------------------------------------------------------------------
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


# ---- optimiser and schedule ------------------------------------------------------------------
def make_adam(params, lr: float) -> torch.optim.Adam:
    """The optimiser of every stage: Adam with :data:`ADAM_BETAS`."""
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS)


def lr_at(step: int, base: float, total: int, warmup: int = WARMUP_STEPS) -> float:
    """Linear warmup, then cosine decay to :data:`LR_FLOOR` of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
    """One update: zero the gradients, backward, clip the global norm to :data:`GRAD_CLIP_NORM`, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP_NORM)
    opt.step()


class TimeBudget:
    """``--time-budget-min``: wall time spent (including ``spent_s`` from before a resume) against a
    budget in minutes; 0 = no budget."""

    def __init__(self, minutes: float, spent_s: float = 0.0, clock=time.time):
        self.minutes, self.spent_before_s, self.clock = float(minutes), float(spent_s), clock
        self.t_start = clock()

    @property
    def enabled(self) -> bool:
        return self.minutes > 0

    def elapsed_s(self) -> float:
        return self.spent_before_s + self.clock() - self.t_start

    def fraction(self) -> float:
        """Share of the budget spent (0 without a budget)."""
        return self.elapsed_s() / (60 * self.minutes) if self.enabled else 0.0

    def over(self) -> bool:
        return self.enabled and self.fraction() >= 1.0


# ---- progress and logs -----------------------------------------------------------------------
def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)


def log_line(out: Path, rec: dict):
    """Append ``rec`` as one JSON line to ``OUT/log.jsonl``."""
    with open(Path(out) / LOG_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def report(out: Path, rec: dict, progress: bool = True) -> None:
    """A validation record: into the log, and printed above the progress bar when there is one."""
    log_line(out, rec)
    if progress:
        tqdm.write(json.dumps(rec))


# ---- state files -----------------------------------------------------------------------------
def save_state(path: Path, model, opt, step: int, train_cfg: dict, extra: dict | None = None):
    """Trainer state: the model checkpoint (rebuildable alone) + optimiser + step, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.info.step = step
    state = {"model": model.checkpoint_dict(), "opt": opt.state_dict(), "step": step, "train_cfg": train_cfg,
             **(extra or {})}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_state(out: Path, resume: bool) -> dict | None:
    """``OUT/last.pt`` when resuming and it exists, else None."""
    path = Path(out) / STATE_FILE
    if not (resume and path.exists()):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


# ---- loss weights ----------------------------------------------------------------------------
def dim_weights(head: str, w_jaw: float, w_mouth: float, w_head: float = 1.0) -> torch.Tensor:
    """``(56,)`` loss weight per frame dimension (mean 1): jaw, head pose and mouth dims weighted up."""
    w = torch.ones(FRAME_DIM)
    w[JAW] = w_jaw
    w[HEAD] = w_head
    if head == "standin":
        for u in MOUTH_UNITS:
            w[UNIT_INDEX[u]] = w_mouth
    else:
        w[:FLAME_MOUTH_COMPONENTS] = w_mouth
    return w / w.mean()
