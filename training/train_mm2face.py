"""Stage 2 trainer: MotionGPT + the audio encoder on tokens of a frozen stage-1 VQ-VAE.

Per step: random crops of ``n_tokens`` tokens; the audio encoder turns each crop's audio (with its past
context) into one vector per token exactly as streaming does; next-token cross-entropy. The caption is
replaced by the learned null embedding with probability ``text_drop`` (classifier-free guidance) and a
talking clip's audio by the learned "no audio" vector with probability ``audio_drop``. Caption
embeddings come from the frozen text encoder once, before training (cached in the output folder).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2face.engine.frame import FRAME_DIM
from mm2face.training.trainer import (TimeBudget, cleanup_dist, load_state, log_line, lr_at, make_adam,
                                      optimizer_step, progress_bar, report, save_state, seed_all, set_lr,
                                      setup_dist, torch_device)


@dataclass
class GPTTrainConfig:
    out: str = "runs/mm2face"      # output folder (last.pt = trainer state, model.pt = MM2Face file)
    vq: str = "runs/vqvae/model.pt"  # stage-1 MM2Face file
    steps: int = 3000
    batch: int = 16                # crops per step per process
    n_tokens: int = 64             # tokens per crop (64 x 80 ms = 5.12 s)
    lr: float = 3e-4
    val_every: int = 250
    save_every: int = 250
    seed: int = 0
    resume: bool = False
    text_encoder: str = ""         # local text encoder folder ("" = bundled MiniLM)
    audio_encoder: str = ""        # local pretrained wav2vec2 folder ("" = small one trained here)
    time_budget_min: float = 0.0   # > 0: also stop after this many minutes (lr schedule follows time)
    device: str = "cpu"            # torch device for training ("cuda" on a GPU machine)
    token_noise: float = 0.15      # share of input tokens replaced by random ones (less copying, more audio)
    hist_drop: float = 0.0         # share of crops whose input tokens are all random: audio + text alone must
                                   # predict the motion (else the history carries emotion and pose, text is ignored)
    init: str = ""                 # MM2Face file to fine-tune: its GPT + audio weights and configs start stage 2
    # auxiliary regressions on the normalised ground-truth frames (training only, not in the model file);
    # they give the audio encoder, the GPT and the style path a dense signal next to token cross-entropy
    aux_audio: float = 1.0         # audio vector of token t -> its frames (lip sync from the audio path)
    aux_hidden: float = 0.5        # GPT hidden state of token t -> its frames
    aux_text: float = 1.0          # style vector -> the crop's mean frame (emotion/head pose from the caption)
    gpt: dict = field(default_factory=dict)     # GPTConfig overrides
    audio: dict = field(default_factory=dict)   # AudioConfig overrides


class _Stage2(nn.Module):
    """The trainable part (GPT + audio encoder + the auxiliary heads) with the loss, so DDP wraps one module.

    Loss = token cross-entropy + ``w_audio`` * MSE(audio vector -> the token's frames, talking crops)
    + ``w_hidden`` * MSE(GPT hidden -> the token's frames) + ``w_text`` * MSE(style vector -> the crop's
    mean frame, crops with a caption). Frames are normalised; the heads are linear and training-only."""

    def __init__(self, model, w_audio: float = 0.0, w_hidden: float = 0.0, w_text: float = 0.0):
        super().__init__()
        self.gpt, self.audio = model.gpt, model.audio
        self.w_audio, self.w_hidden, self.w_text = w_audio, w_hidden, w_text
        d, fd = model.gpt.cfg.d_model, model.down * FRAME_DIM
        heads = {"audio": (w_audio, fd), "hidden": (w_hidden, fd), "text": (w_text, FRAME_DIM)}
        self.aux = nn.ModuleDict({k: nn.Linear(d, n) for k, (w, n) in heads.items() if w > 0})

    @property
    def uses_motion(self) -> bool:
        return self.w_audio > 0 or self.w_hidden > 0 or self.w_text > 0

    def forward(self, prev, target, audio, use_audio, text_emb, use_text, motion=None, word_ids=None):
        B, L = prev.shape
        av = self.audio.tokens_from_context(audio, L)                            # (B, L, d)
        av_used = torch.where(use_audio[:, None, None], av, self.gpt.null_audio.expand_as(av))
        te = self.gpt.text_vector(text_emb, word_ids)
        te = torch.where(use_text[:, None], te, self.gpt.null_text.expand_as(te))
        logits, hidden, style = self.gpt(prev, av_used, te, return_hidden=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        m = target >= 0                                                          # (B, L) valid tokens
        if motion is not None and self.uses_motion:
            frames = motion.view(B, L, -1)                                       # (B, L, down * 56)
            mf = m[..., None].float()

            def mse(pred, tgt, w):                                               # masked mean
                return ((pred - tgt) ** 2 * w).sum() / (w.sum() * tgt.shape[-1]).clamp(min=1)

            if self.w_audio > 0:
                loss = loss + self.w_audio * mse(self.aux["audio"](av), frames, mf * use_audio[:, None, None])
            if self.w_hidden > 0:
                loss = loss + self.w_hidden * mse(self.aux["hidden"](hidden), frames, mf)
            if self.w_text > 0:
                fm = motion.view(B, L, -1, FRAME_DIM)
                crop_mean = (fm * mf[..., None]).sum((1, 2)) / (mf.sum(1) * fm.shape[2]).clamp(min=1)   # (B, 56)
                pred = self.aux["text"](style[:, 0])
                loss = loss + self.w_text * mse(pred, crop_mean, use_text[:, None].float())
        with torch.no_grad():
            acc = (logits.argmax(-1)[m] == target[m]).float().mean()
        return loss, acc


@torch.no_grad()
def tokenize_clips(model, clips) -> list[np.ndarray]:
    """VQ tokens of every clip: list of ``(ceil(T / down),)`` int64."""
    out = []
    down = model.down
    for c in clips:
        if getattr(c, "tokens", None) is not None:        # pre-tokenised (e.g. a packed corpus)
            out.append(np.asarray(c.tokens, np.int64))
            continue
        m = torch.as_tensor(np.asarray(c.motion, np.float32))
        pad = (-len(m)) % down
        if pad:
            m = torch.cat([m, m[-1:].repeat(pad, 1)])
        out.append(model.vq.encode(model.normalize(m)[None])[0].numpy().astype(np.int64))
    return out


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def build_model(cfg: GPTTrainConfig):
    from mm2face.engine.audio_encoder import AudioConfig
    from mm2face.engine.gpt import GPTConfig
    from mm2face.engine.model import MM2Face, ModelInfo
    vqm = MM2Face.load(cfg.vq)
    audio_cfg = AudioConfig(**{**cfg.audio, **({"pretrained_dir": cfg.audio_encoder} if cfg.audio_encoder else {})})
    model = MM2Face(vqm.vq.cfg, GPTConfig(**cfg.gpt), audio_cfg,
                    ModelInfo(head=vqm.info.head, text_encoder=cfg.text_encoder, stage="mm2face",
                              meta=dict(vqm.info.meta)))
    model.vq.load_state_dict(vqm.vq.state_dict())
    model.mean.copy_(vqm.mean)
    model.std.copy_(vqm.std)
    if cfg.init:                                   # fine-tuning: start from a trained stage 2
        from dataclasses import replace
        init = MM2Face.load(cfg.init)
        if init.vq.cfg != vqm.vq.cfg or not torch.equal(init.mean, vqm.mean):
            raise SystemExit(f"--init {cfg.init} was trained on another VQ-VAE than --vq {cfg.vq}: "
                             "pass the same file (or its stage-1 run) to both")
        shape_keys = {"d_model", "n_layer", "n_head", "n_codes", "d_text", "ctx_tokens"}
        if shape_keys & set(cfg.gpt) or cfg.audio or cfg.audio_encoder:
            raise SystemExit("--init keeps the GPT/audio shapes of the file: --set may only change "
                             "training knobs such as dropout or text_drop")
        model = MM2Face(vqm.vq.cfg, replace(init.gpt.cfg, **cfg.gpt), init.audio.cfg, model.info)
        model.vq.load_state_dict(vqm.vq.state_dict())
        model.mean.copy_(vqm.mean)
        model.std.copy_(vqm.std)
        missing, unexpected = model.gpt.load_state_dict(init.gpt.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("text_in.", "words.", "words_out.")) for k in missing):
            raise SystemExit(f"--init {cfg.init}: GPT weights do not fit (missing {missing}, unexpected {unexpected})")
        # a file without the text input path or word bag can start them: they are zero-initialised
        model.audio.load_state_dict(init.audio.state_dict())
        model.info.text_encoder = init.info.text_encoder
        model.info.meta["init"] = str(cfg.init)
    return model


def text_table(model, texts: list[str], cache_path: Path) -> torch.Tensor:
    """``(len(texts), d_text)`` frozen caption embeddings, cached on disk."""
    cache = {}
    if cache_path.exists():
        cache = torch.load(cache_path, weights_only=False)
    todo = [t for t in texts if t not in cache]
    if todo:
        emb = model.text_encoder.encode(todo)
        cache.update({t: torch.from_numpy(e) for t, e in zip(todo, emb)})
        torch.save(cache, cache_path)
    if not texts:
        return torch.zeros(0, model.gpt.cfg.d_text)
    return torch.stack([cache[t] for t in texts])


def train_mm2face(cfg: GPTTrainConfig, train_clips, val_clips, progress: bool = True):
    """Train stage 2; returns the path of the MM2Face file (``out/model.pt``)."""
    from mm2face.engine.model import MM2Face
    from mm2face.training.dataset import TokenCrops, clip_texts

    d = setup_dist()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(cfg.seed)
    dev = torch_device(cfg.device)
    model = build_model(cfg)
    step = 0
    st = load_state(out, cfg.resume)
    if st is not None:
        model = MM2Face.from_checkpoint_dict(st["model"])
        step = st["step"]
        if d.main:
            print(f"resumed from {out / 'last.pt'} at step {step}")
    for p in model.vq.parameters():
        p.requires_grad_(False)
    model.vq.eval()
    t0 = time.time()
    tr_tokens = tokenize_clips(model, train_clips)
    va_tokens = tokenize_clips(model, val_clips) if val_clips else tr_tokens
    texts = sorted({t for c in list(train_clips) + list(val_clips or []) for t in clip_texts(c)})
    if d.main:
        table = text_table(model, texts, out / "text_cache.pt")
    if d.world > 1:
        torch.distributed.barrier()
        if not d.main:
            table = text_table(model, texts, out / "text_cache.pt")
    word_ids = None
    if model.gpt.words is not None:
        if model.text_encoder.vocab_size > model.gpt.cfg.vocab and d.main:
            print(f"warning: the text encoder has {model.text_encoder.vocab_size} word pieces, the word bag "
                  f"{model.gpt.cfg.vocab}; pass --set vocab={model.text_encoder.vocab_size} to use them all")
        word_ids = torch.from_numpy(model.text_encoder.word_ids(texts))
    if d.main:
        print(f"tokenised {len(train_clips)} train / {len(val_clips or [])} val clips, "
              f"{len(texts)} captions embedded in {time.time() - t0:.1f} s")
    kw = dict(audio_encoder=model.audio, down=model.down, bos=model.gpt.bos, n_tokens=cfg.n_tokens, texts=texts)
    stage = _Stage2(model, cfg.aux_audio, cfg.aux_hidden, cfg.aux_text)
    if st is not None and "aux" in st:
        stage.aux.load_state_dict(st["aux"])

    def norm_motions(clips):
        if not stage.uses_motion:
            return None
        mean, std = model.mean.numpy(), model.std.numpy()
        return [((np.asarray(c.motion, np.float32) - mean) / std).astype(np.float32) for c in clips]

    ds = TokenCrops(train_clips, tr_tokens, seed=cfg.seed, motions=norm_motions(train_clips), **kw)
    vds = TokenCrops(val_clips or train_clips, va_tokens, seed=cfg.seed + 999,
                     motions=norm_motions(val_clips or train_clips), **kw)
    vbatches = [_collate([vds[i * cfg.batch + j] for j in range(cfg.batch)]) for i in range(4)]
    model.to(dev)
    table = table.to(dev)
    if word_ids is not None:
        word_ids = word_ids.to(dev)

    stage.to(dev)
    params = [p for p in stage.parameters() if p.requires_grad]
    opt = make_adam(params, cfg.lr)
    if st is not None:
        opt.load_state_dict(st["opt"])
    net = stage
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(stage, find_unused_parameters=bool(cfg.audio_encoder))
    g = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)
    g.manual_seed(cfg.seed * 1000 + d.rank + 7919 * step)   # deterministic across resume
    gc = model.gpt.cfg

    def batch_inputs(b, train: bool):
        b = {k: v.to(dev, non_blocking=True) for k, v in b.items()}
        te = table[b["text"].clamp(min=0)]
        use_text = b["text"] >= 0
        use_audio = b["has_audio"].clone()
        prev = b["prev"]
        if train:
            r = torch.rand(2 * cfg.batch, generator=g).to(dev)
            use_text &= r[:cfg.batch] >= gc.text_drop
            use_audio &= r[cfg.batch:] >= gc.audio_drop
            if cfg.token_noise > 0 or cfg.hist_drop > 0:
                rate = torch.where(torch.rand(prev.shape[0], generator=g) < cfg.hist_drop, 1.0, cfg.token_noise)
                noise = (torch.rand(prev.shape, generator=g) < rate[:, None]).to(dev) & (prev != model.gpt.bos)
                rnd = torch.randint(0, gc.n_codes, prev.shape, generator=g).to(dev)
                prev = torch.where(noise, rnd, prev)
        wi = word_ids[b["text"].clamp(min=0)] if word_ids is not None else None
        return prev, b["target"], b["audio"], use_audio, te, use_text, b.get("motion"), wi

    t_start = time.time()
    budget = TimeBudget(cfg.time_budget_min, spent_s=st.get("wall_s", 0.0) if st else 0.0)

    def state_extra() -> dict:          # what last.pt holds besides model and optimiser
        return {"wall_s": budget.elapsed_s(), "aux": stage.aux.state_dict()}
    best = float("inf")
    bar = progress_bar(cfg.steps, "mm2face", progress and d.main, initial=step)
    stage.train()
    model.vq.eval()
    while step < cfg.steps:
        base = (step * d.world + d.rank) * cfg.batch
        b = _collate([ds[base + j] for j in range(cfg.batch)])
        eff_step, eff_total = step, cfg.steps
        if budget.enabled:                          # the schedule follows whichever runs out first
            frac = budget.fraction()
            if frac >= 1.0 and d.world == 1:
                break
            eff_step = max(step, int(frac * cfg.steps))
        set_lr(opt, lr_at(eff_step, cfg.lr, eff_total))
        loss, acc = net(*batch_inputs(b, True))
        optimizer_step(opt, loss, params)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.3f}")
        if d.main and (step % 25 == 0 or step == 1):
            log_line(out, {"step": step, "loss": loss.item(), "acc": acc.item(), "t_s": time.time() - t_start})
        if d.main and (step % cfg.val_every == 0 or step == cfg.steps):
            stage.eval()
            with torch.no_grad():
                vl = [stage(*batch_inputs(vb, False)) for vb in vbatches]
            stage.train()
            rec = {"step": step, "val_loss": float(np.mean([x[0].item() for x in vl])),
                   "val_acc": float(np.mean([x[1].item() for x in vl]))}
            report(out, rec, progress)
            if rec["val_loss"] < best:                # keep the best validation model too
                best = rec["val_loss"]
                model.info.step = step
                model.info.meta.update({"best_val_loss": best, "best_val_acc": rec["val_acc"]})
                model.save(out / "model_best.pt")
        if d.main and (step % cfg.save_every == 0 or step == cfg.steps):
            save_state(out / "last.pt", model, opt, step, asdict(cfg), state_extra())
    bar.close()
    if d.main and step % cfg.save_every != 0 and step != cfg.steps:     # stopped by the time budget
        save_state(out / "last.pt", model, opt, step, asdict(cfg), state_extra())
    path = out / "model.pt"
    if d.main:
        model.info.step = step
        model.info.meta.update({"gpt_steps": step, "gpt_wall_s": round(budget.elapsed_s(), 1)})
        model.eval().cpu().save(path)
    cleanup_dist()
    return path
