"""The MM2Face bundle: VQ-VAE + MotionGPT + audio encoder (+ a frozen text encoder, loaded lazily),
per-dimension motion normalisation, and checkpoints that rebuild everything from the file alone.

    model = load_model()                    # engine/assets/default.pt
    model = MM2Face.random(seed=0)          # untrained, for wiring and tests
    model.save("x.pt"); MM2Face.load("x.pt")

A checkpoint stores every config, all weights except the text encoder's (only its folder, "" = the
bundled MiniLM), the normalisation statistics, the head the data speaks ("standin" or "flame"),
the training step and a schema version.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mm2face.engine.audio_encoder import AudioConfig, AudioEncoder
from mm2face.engine.frame import EXP, FPS, FRAME_DIM, SAMPLE_RATE, SAMPLES_PER_FRAME
from mm2face.engine.gpt import GPTConfig, KVCache, MotionGPT
from mm2face.engine.closure import ClosureConfig, LipContact
from mm2face.engine.refiner import Refiner, RefinerConfig
from mm2face.engine.runners import guide
from mm2face.engine.vqvae import VQConfig, VQVAE

SCHEMA_VERSION = 1


def default_checkpoint_path() -> Path:
    """``engine/assets/default.pt`` inside the installed package."""
    return Path(__file__).resolve().parent / "assets" / "default.pt"


@dataclass
class ModelInfo:
    head: str = "standin"          # parameter space of the training data: "standin" or "flame"
    text_encoder: str = ""         # local text encoder folder; "" = bundled all-MiniLM-L6-v2
    step: int = 0                  # training step of the GPT stage (or VQ stage for VQ-only files)
    stage: str = "mm2face"         # "vqvae" (stage 1 only) or "mm2face"
    empty_style: str = ""          # caption stage 2 reads when the style is empty ("" = the learned null
                                   # embedding, i.e. unconditional: any emotion the training clips showed)
    meta: dict = field(default_factory=dict)   # free-form: data, wall time, metrics ...


class MM2Face(nn.Module):
    """``vq``: motion VQ-VAE, ``gpt``: token transformer, ``audio``: Wav2Vec2 window encoder.
    Motion in and out is raw ``(T, 56)``; :meth:`normalize` / :meth:`denormalize` convert."""

    def __init__(self, vq_cfg: VQConfig, gpt_cfg: GPTConfig, audio_cfg: AudioConfig,
                 info: ModelInfo | None = None):
        super().__init__()
        audio_cfg.feats_per_token = 2 * vq_cfg.down
        audio_cfg.d_out = gpt_cfg.d_model
        gpt_cfg.n_codes = vq_cfg.n_codes
        self.vq = VQVAE(vq_cfg)
        self.gpt = MotionGPT(gpt_cfg)
        self.audio = AudioEncoder(audio_cfg)
        self.refiner: Refiner | None = None        # optional stage 3, see attach_refiner()
        self.runner = None                         # what runs the per-hop work (engine/runners.py; None = eager),
                                                   # set by engine/backends.py apply_backend
        self.closure: LipContact | None = None     # optional stage 4 (lip contact), see attach_closure()
        self.info = info or ModelInfo()
        self.register_buffer("mean", torch.zeros(FRAME_DIM))
        self.register_buffer("std", torch.ones(FRAME_DIM))
        self._text_encoder = None

    # ---- sizes and timing -------------------------------------------------------------------
    @property
    def down(self) -> int:
        """Motion frames per token."""
        return self.vq.cfg.down

    @property
    def samples_per_token(self) -> int:
        return self.down * SAMPLES_PER_FRAME

    @property
    def lookahead_samples(self) -> int:
        """Audio after a token's own audio that the model reads before emitting it."""
        return self.audio.cfg.lookahead_feats * 320

    @property
    def algorithmic_latency_s(self) -> float:
        """Worst case (first frame of a token): token length + audio lookahead, before compute."""
        return (self.samples_per_token + self.lookahead_samples) / SAMPLE_RATE

    @property
    def head_name(self) -> str:
        return self.info.head

    # ---- normalisation ----------------------------------------------------------------------
    def set_norm(self, mean, std, floor: float = 1e-2):
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=floor))

    def normalize(self, motion: torch.Tensor) -> torch.Tensor:
        return (motion - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def to_params(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(..., 56)`` -> the parameters the head reads: :meth:`denormalize`, and for
        the stand-in head its expression units floored at rest (0). Those units are activations (0 rest,
        1 full) and undefined below rest, where the refiner's correction, guided on text-only tokens,
        can push them; FLAME's expression coefficients are signed and stay as they are."""
        p = self.denormalize(x)
        if self.head_name == "standin":
            p = torch.cat([p[..., EXP].clamp(min=0.0), p[..., EXP.stop:]], -1)
        return p

    # ---- text ------------------------------------------------------------------------------
    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from mm2face.engine.text_encoder import TextEncoder
            self._text_encoder = TextEncoder(self.info.text_encoder, device="cpu")
            if self._text_encoder.dim != self.gpt.cfg.d_text:
                raise ValueError(f"text encoder {self._text_encoder.path} gives {self._text_encoder.dim}-d "
                                 f"embeddings but the model was trained with {self.gpt.cfg.d_text}-d")
        return self._text_encoder

    def text_embed(self, text: str) -> torch.Tensor:
        """Style vector ``(d_text,)`` of a caption: its frozen sentence embedding (+ the learned word bag
        when the model has one, see :meth:`MotionGPT.text_vector`). Empty text reads the checkpoint's
        ``info.empty_style`` caption, or the learned null embedding when that is empty too (as in the shipped
        default); guidance's unconditional row is the null embedding either way."""
        dev = self.mean.device
        text = (text or "").strip() or self.info.empty_style.strip()
        if not text:
            return self.gpt.null_text.detach().clone()
        sentence = torch.from_numpy(self.text_encoder.encode_one(text)).to(dev)
        if self.gpt.words is None:
            return sentence
        ids = torch.from_numpy(self.text_encoder.word_ids([text])).to(dev)
        with torch.no_grad():
            return self.gpt.text_vector(sentence[None], ids)[0]

    # ---- G step (shared by offline generation and streaming) --------------------------------
    @torch.no_grad()
    def g_logits(self, prev: torch.Tensor, audio_vec: torch.Tensor, text_emb: torch.Tensor,
                 cache: KVCache, guidance: torch.Tensor | float) -> torch.Tensor:
        """One token for ``B`` streams with classifier-free guidance.

        ``prev: (B,)`` previous tokens, ``audio_vec: (B, d_model)``, ``text_emb: (B, d_text)``,
        ``cache``: batch ``2B`` (row ``2b`` conditional, ``2b + 1`` unconditional, for stream b),
        ``guidance``: float or ``(B,)``. Returns guided logits ``(B, n_codes)``."""
        B = prev.shape[0]
        null = self.gpt.null_text.detach()[None].expand(B, -1)
        two = lambda a, b: torch.stack([a, b], 1).reshape(2 * B, *a.shape[1:])    # rows: b cond, b uncond
        logits = self.gpt(two(prev, prev)[:, None], two(audio_vec, audio_vec)[:, None],
                          two(text_emb, null)[:, None], cache)[:, -1].view(B, 2, -1)
        return guide(logits, guidance)

    @staticmethod
    def token_probs(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
        """``logits: (..., n_codes)`` -> sampling probabilities (same shape) at ``temperature > 0``,
        restricted to the ``top_k`` likeliest tokens (0 = all)."""
        logits = logits.float() / temperature
        if top_k and top_k < logits.shape[-1]:
            v, _ = torch.topk(logits, top_k)
            logits = logits.masked_fill(logits < v[..., -1:], float("-inf"))
        return torch.softmax(logits, -1)

    @staticmethod
    def sample(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator | None) -> torch.Tensor:
        """``logits: (n_codes,)`` -> one token (0-d long). temperature <= 0 -> greedy."""
        if temperature <= 0:
            return logits.argmax(-1)
        p = MM2Face.token_probs(logits, temperature, top_k)
        return torch.multinomial(p.cpu(), 1, generator=gen)[0].to(logits.device)

    # ---- constructors and checkpoints --------------------------------------------------------
    @classmethod
    def random(cls, seed: int = 0, small: bool = True, head: str = "standin") -> "MM2Face":
        """An untrained model (deterministic for a seed). ``small`` = a tiny config for tests."""
        torch.manual_seed(seed)
        if small:
            m = cls(VQConfig(width=64, depth=1, n_codes=64, code_dim=32),
                    GPTConfig(d_model=64, n_layer=2, n_head=2, ctx_tokens=16),
                    AudioConfig(window_feats=12, hidden=32, layers=1, heads=2, ffn=64, conv_dim=32),
                    ModelInfo(head=head))
        else:
            m = cls(VQConfig(), GPTConfig(), AudioConfig(), ModelInfo(head=head))
        return m.eval()

    def attach_refiner(self, cfg: RefinerConfig | None = None) -> Refiner:
        """Add (or replace) the stage-3 audio refiner; a new one is the identity until trained."""
        cfg = cfg or RefinerConfig()
        if cfg.d_text and cfg.d_text != self.gpt.cfg.d_text:
            raise ValueError(f"RefinerConfig.d_text={cfg.d_text} but the model's text encoder gives "
                             f"{self.gpt.cfg.d_text}-d token states")
        self.refiner = Refiner(cfg, self.gpt.cfg.d_model, self.down, self.samples_per_token,
                               self.lookahead_samples).to(self.mean.device)
        return self.refiner

    def attach_closure(self, cfg: ClosureConfig | None = None) -> LipContact:
        """Add (or replace) the stage-4 lip-contact classifier (``engine/closure.py``); needs a head with the
        ``mouth_close`` unit (the stand-in). An untrained one must not be shipped: train it with
        ``mm2face-train closure``."""
        if self.head_name != "standin":
            raise ValueError(f"the lip-contact stage needs the stand-in head's mouth_close unit; this model drives "
                             f"{self.head_name!r}")
        self.closure = LipContact(cfg or ClosureConfig(), self.lookahead_samples).to(self.mean.device)
        return self.closure

    def reconfigure_refiner(self, **changes) -> Refiner:
        """Rebuild the stage-3 refiner with some :class:`RefinerConfig` fields changed and its trained
        weights kept, e.g. ``silent_dims``; a change that alters the weights' shapes raises ValueError."""
        if self.refiner is None:
            raise ValueError("this model has no stage-3 refiner to reconfigure (train one with mm2face-train refiner)")
        old = self.refiner
        unknown = sorted(set(changes) - set(old.cfg.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown RefinerConfig fields {unknown}; known: {', '.join(old.cfg.__dataclass_fields__)}")
        new = self.attach_refiner(RefinerConfig(**{**asdict(old.cfg), **changes}))
        try:
            new.load_state_dict(old.state_dict())
        except RuntimeError as e:
            self.refiner = old
            raise ValueError(f"these changes alter the refiner's weights ({str(e)[:200]}); retrain it with "
                             "mm2face-train refiner --set instead") from None
        new.train(old.training)
        return new

    def take_refiner(self, other: "MM2Face") -> Refiner:
        """Attach a copy of ``other``'s trained stage-3 refiner, e.g. to keep a refiner after fine-tuning
        stage 2 (``mm2face-train refiner-config --refiner-from``). Both models must share the motion
        normalisation, the token rate and the GPT's widths the refiner reads; else ValueError."""
        if other.refiner is None:
            raise ValueError("the model to take the refiner from has none")
        same = (self.down == other.down and self.gpt.cfg.d_model == other.gpt.cfg.d_model
                and self.gpt.cfg.d_text == other.gpt.cfg.d_text and self.samples_per_token == other.samples_per_token
                and torch.equal(self.mean.cpu(), other.mean.cpu()) and torch.equal(self.std.cpu(), other.std.cpu()))
        if not same:
            raise ValueError("the refiner was trained for another motion normalisation, token rate or GPT width; "
                             "train one for this model with mm2face-train refiner")
        new = self.attach_refiner(RefinerConfig(**asdict(other.refiner.cfg)))
        new.load_state_dict(other.refiner.state_dict())
        return new.eval()

    def refiner_style(self, text: str) -> torch.Tensor | None:
        """The refiner's style code ``(width,)`` of a caption (None without a refiner or text input);
        empty text -> the learned null code."""
        r = self.refiner
        if r is None or not r.cfg.d_text:
            return None
        if not text or not text.strip():
            return r.null_style.detach().clone()
        states = torch.from_numpy(self.text_encoder.token_states([text.strip()])[0]).to(self.mean.device)
        with torch.no_grad():
            return r.pool_text(states[None])[0]

    def refine(self, audio_vec: torch.Tensor, frames_norm: torch.Tensor, style: torch.Tensor | None,
               t_tok: torch.Tensor, audio_16k: torch.Tensor | None = None) -> torch.Tensor:
        """Whole-sequence stage 3: ``audio_vec (B, L, d)`` (the vectors the GPT saw), ``frames_norm
        (B, L*down, 56)`` decoded, ``style (B, L, width)`` refiner style codes (:meth:`refiner_style`),
        ``t_tok (B, L)`` tokens since the style was set, ``audio_16k (B, samples)`` the clips' audio for
        the refiner's own front (None = no audio) -> refined frames; unchanged without a refiner."""
        if self.refiner is None:
            return frames_norm
        mel = self.refiner.clip_mel(audio_16k, audio_vec.shape[1])
        null = None if audio_16k is not None else torch.ones(audio_vec.shape[:2], dtype=torch.bool,
                                                               device=audio_vec.device)
        return self.refiner(audio_vec, frames_norm, style, t_tok, mel, null)

    def configs(self) -> dict:
        return {"vq": asdict(self.vq.cfg), "gpt": asdict(self.gpt.cfg), "audio": asdict(self.audio.cfg),
                "refiner": asdict(self.refiner.cfg) if self.refiner is not None else None,
                "closure": asdict(self.closure.cfg) if self.closure is not None else None,
                "info": asdict(self.info)}

    def save(self, path, **meta) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.info.meta.update(meta)
        ck = self.checkpoint_dict()
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(ck, tmp)
        tmp.replace(path)
        return path

    def checkpoint_dict(self) -> dict:
        """Everything :meth:`from_checkpoint_dict` needs (CPU tensors)."""
        return {"schema": SCHEMA_VERSION, "kind": "mm2face", "configs": self.configs(),
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
                "saved_at": time.time()}

    @classmethod
    def from_checkpoint_dict(cls, ck: dict, device="cpu") -> "MM2Face":
        if ck.get("kind") != "mm2face":
            raise ValueError("not an MM2Face checkpoint (missing kind='mm2face'); trainer state files "
                             "hold the model under 'model'")
        if ck.get("schema", 0) > SCHEMA_VERSION:
            raise ValueError(f"checkpoint schema {ck['schema']} is newer than this code ({SCHEMA_VERSION}); update mm2face")
        c = ck["configs"]
        gpt = {"text_input": False, "word_bag": 0, **c["gpt"]}   # files written before these paths existed
        m = cls(VQConfig(**c["vq"]), GPTConfig(**gpt), AudioConfig(**c["audio"]), ModelInfo(**c["info"]))
        if c.get("refiner"):                                     # absent in files written before stage 3
            m.attach_refiner(RefinerConfig(**{"mel_bins": 0, **c["refiner"]}))   # no front before it existed
        if c.get("closure"):                                     # absent in files written before stage 4
            m.attach_closure(ClosureConfig(**c["closure"]))
        m.load_state_dict(ck["state_dict"])
        return m.to(device).eval()

    @classmethod
    def load(cls, path, device="cpu") -> "MM2Face":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if "model" in ck and "kind" not in ck:       # a trainer state file
            ck = ck["model"]
        return cls.from_checkpoint_dict(ck, device)


def load_model(path=None, device="cpu") -> MM2Face:
    """Load a checkpoint (default: the shipped ``engine/assets/default.pt``)."""
    p = Path(path) if path else default_checkpoint_path()
    if not p.exists():
        if path:
            raise FileNotFoundError(f"checkpoint not found: {p}")
        raise FileNotFoundError(
            f"the default checkpoint {p} is missing. Train one with `mm2face-train vqvae ...` then "
            "`mm2face-train mm2face ...` (see docs/model.md), pass --ckpt PATH, or use MM2Face.random() "
            "for an untrained model")
    return MM2Face.load(p, device)
