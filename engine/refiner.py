"""Stage 3 (optional): a small causal audio refiner applied to the decoded frames.

Why: sampled tokens carry the style well, but a token is a coarse quantisation and a sample is a
sample: the jaw and lips of a sampled motion follow the audio only as well as the drawn token does, and
a rare event such as the start of a head turn is seldom drawn at the sampling temperature the lips need.
The refiner reads, per token, the audio vector the GPT already computed (its own audio + the 40 ms
lookahead, nothing later), the decoded frames of the tokens so far, a style code and the time since the
style was set, and

* adds a correction to the frame dimensions it owns (``dims``; default the 50 expression units and the
  jaw) from a causal convolution over all of these;
* with ``head``, adds a head-pose offset computed from the style and the time since it was set *only*
  (not from the audio or the sampled frames, so it cannot cancel the sampled head motion): the average
  course that the caption implies, e.g. a turn to the left over the first seconds after "turns the head
  to the left".

The style code is the refiner's own reading of the caption: a few learned queries attend over the text
encoder's contextual token states (``pool_text``), so a phrase like "turns the head to the left" can be
picked out of a long caption; the GPT's pooled sentence vector cannot (mean pooling puts "left" and
"right" captions at cosine 0.98). A stream computes it once per style text and cross-fades it like the
GPT's style vector. It is trained after stage 2 on the model's own sampled motions (``mm2face-train
refiner``) with an L2 loss to the ground truth.

Streaming is exact: the convolutions are causal (all padding on the left), so the output of token *k*
depends on the last ``receptive_tokens`` tokens only, and :meth:`Refiner.step` computes one new token
from a small per-stream state (each block's last inputs), so a hop costs one position per layer
(``tests/test_refiner.py``). The output layers start at zero, so an untrained refiner is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2face.engine.frame import EXP, FPS, FRAME_DIM, HEAD, JAW


def default_dims() -> list[int]:
    """Expression units and jaw pose: what audio says something about (head pose is left to the tokens)."""
    return list(range(EXP.start, EXP.stop)) + list(range(JAW.start, JAW.stop))


@dataclass
class RefinerConfig:
    width: int = 128                            # channels of the causal convolutions
    kernel: int = 3                             # taps per convolution (tokens)
    dilations: tuple = (1, 2, 4, 8)             # one residual block per entry; receptive field 31 tokens = 2.48 s
    dims: list = field(default_factory=default_dims)   # frame dimensions (0..55) the convolutional path corrects
    d_text: int = 384                           # token-state size of the text encoder; 0 = no text input
    text_queries: int = 4                       # learned attention-pooling queries over the caption's tokens
    d_key: int = 64                             # key/query size of that pooling
    time_tokens: int = 128                      # time since the style was set, in tokens (80 ms each), clamped
                                                # below this (10.2 s); 0 = no time input
    head: bool = True                           # head-pose offset from style + time only
    head_fade_s: float = 0.48                   # the head offset fades in linearly over this long after the
                                                # style is set (a new caption never snaps the head)

    def __post_init__(self):
        self.dilations = tuple(self.dilations)      # JSON and --set give lists


class _CausalBlock(nn.Module):
    """x + conv(relu(norm(x))), the convolution padded on the left only."""

    def __init__(self, width: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel, dilation=dilation)
        self.pad = (kernel - 1) * dilation

    def forward(self, x):                                     # (B, L, C)
        h = F.relu(self.norm(x)).transpose(1, 2)
        h = self.conv(F.pad(h, (self.pad, 0)))
        return x + h.transpose(1, 2)

    def step(self, x, past):
        """One new position: ``x (B, C)``, ``past (B, pad, C)`` this block's last normalised inputs
        (zeros before the stream start) -> (output ``(B, C)``, updated past)."""
        win = torch.cat([past, F.relu(self.norm(x))[:, None]], 1)              # (B, pad + 1, C)
        y = self.conv(win.transpose(1, 2))[:, :, -1]
        return x + y, win[:, 1:]


class Refiner(nn.Module):
    """``forward(audio_vec (B, L, d_audio), frames_norm (B, L*down, 56), style (B, L, width),
    t_tok (B, L) long) -> (B, L*down, 56)``, frames normalised; ``style`` = :meth:`pool_text` codes
    (or :attr:`null_style`), ``t_tok`` = tokens since the style was set."""

    def __init__(self, cfg: RefinerConfig, d_audio: int, down: int):
        super().__init__()
        self.cfg, self.down = cfg, down
        dims = [int(d) for d in cfg.dims]
        if not dims or min(dims) < 0 or max(dims) >= FRAME_DIM or len(set(dims)) != len(dims):
            raise ValueError(f"RefinerConfig.dims must be distinct frame dimensions in 0..{FRAME_DIM - 1}, got {cfg.dims}")
        if cfg.head and not (cfg.d_text or cfg.time_tokens):
            raise ValueError("RefinerConfig.head needs a text or time input (d_text > 0 or time_tokens > 0)")
        self.register_buffer("dims", torch.tensor(dims), persistent=False)
        self.register_buffer("head_dims", torch.arange(HEAD.start, HEAD.stop), persistent=False)
        W = cfg.width
        self.inp = nn.Linear(d_audio + down * FRAME_DIM, W)
        if cfg.d_text:
            self.text_key = nn.Linear(cfg.d_text, cfg.d_key)
            self.text_query = nn.Parameter(torch.randn(cfg.text_queries, cfg.d_key) * cfg.d_key ** -0.5)
            self.text_out = nn.Linear(cfg.text_queries * cfg.d_text, W)
            self.null_style = nn.Parameter(torch.zeros(W))          # the code of "no style text"
        self.time = nn.Embedding(cfg.time_tokens, W) if cfg.time_tokens else None
        self.blocks = nn.ModuleList(_CausalBlock(W, cfg.kernel, d) for d in cfg.dilations)
        self.norm = nn.LayerNorm(W)
        self.out = nn.Linear(W, down * len(dims))
        self.head_out = nn.Sequential(nn.ReLU(), nn.Linear(W, W), nn.ReLU(), nn.Linear(W, down * 3)) if cfg.head else None
        for lin in [self.out] + ([self.head_out[-1]] if cfg.head else []):
            nn.init.zeros_(lin.weight)                         # identity at start
            nn.init.zeros_(lin.bias)

    @property
    def fade_tokens(self) -> int:
        return round(self.cfg.head_fade_s * FPS / self.down)

    @property
    def receptive_tokens(self) -> int:
        """Tokens of history (incl. the current one) one output depends on."""
        return 1 + (self.cfg.kernel - 1) * sum(self.cfg.dilations)

    def pool_text(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Style code ``(B, width)`` of captions: ``states (B, N, d_text)`` the text encoder's token
        states, ``mask (B, N)`` bool (True = a real token; None = all)."""
        B, N, _ = states.shape
        att = torch.einsum("bnk,qk->bqn", self.text_key(states), self.text_query) * self.cfg.d_key ** -0.5
        if mask is not None:
            att = att.masked_fill(~mask[:, None, :], float("-inf"))
        pooled = torch.einsum("bqn,bnd->bqd", att.softmax(-1), states)           # (B, Q, d_text)
        return self.text_out(pooled.reshape(B, -1))

    def forward(self, audio_vec: torch.Tensor, frames_norm: torch.Tensor, style: torch.Tensor | None = None,
                t_tok: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = audio_vec.shape
        fr = frames_norm[:, :L * self.down]
        cond = self._cond(style, t_tok, audio_vec)
        x = self.inp(torch.cat([audio_vec, fr.reshape(B, L, self.down * FRAME_DIM)], -1)) + cond
        for blk in self.blocks:
            x = blk(x)
        delta = self.out(F.relu(self.norm(x))).view(B, L * self.down, -1)
        y = fr.index_add(2, self.dims, delta)
        if self.head_out is not None:
            y = y.index_add(2, self.head_dims, self._head(cond, t_tok).view(B, L * self.down, 3))
        return y

    def _cond(self, style, t_tok, like):
        cond = torch.zeros(*like.shape[:-1], self.cfg.width, device=like.device, dtype=like.dtype)
        if self.cfg.d_text:
            if style is None:
                raise ValueError("this refiner reads a style code: pass style (B, L, width) from pool_text")
            cond = cond + style
        if self.time is not None:
            if t_tok is None:
                raise ValueError("this refiner reads the time since the style was set: pass t_tok (B, L)")
            cond = cond + self.time(t_tok.clamp(0, self.cfg.time_tokens - 1))
        return cond

    def _head(self, cond, t_tok, head_from=None):
        """Head-pose offset ``(..., down * 3)`` (normalised), faded in from ``head_from`` (the offset in
        effect when the style was set; zeros = from rest) over ``fade_tokens`` tokens."""
        head = self.head_out(cond)
        if t_tok is not None and self.fade_tokens > 0:
            f = ((t_tok + 1).to(head.dtype) / self.fade_tokens).clamp(max=1.0)[..., None]
            head = head * f if head_from is None else head * f + head_from * (1 - f)
        return head

    def initial_state(self, batch: int, device=None) -> list[torch.Tensor]:
        """Streaming state before the first token: per block its last ``pad`` inputs, all zeros."""
        return [torch.zeros(batch, b.pad, self.cfg.width, device=device) for b in self.blocks]

    def step(self, state: list[torch.Tensor], audio_vec: torch.Tensor, frames_norm: torch.Tensor,
             style: torch.Tensor | None, t_tok: torch.Tensor, head_from: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """One token for ``B`` streams: ``audio_vec (B, d)``, ``frames_norm (B, down, 56)`` decoded,
        ``style (B, width)``, ``t_tok (B,)``; ``head_from (B, down * 3)``: the head offset in effect when
        the current style was set (None = rest), so a style change cross-fades the head instead of
        snapping it. Returns (refined frames ``(B, down, 56)``, new state, this token's head offset or
        None). Costs one position per layer; with ``head_from`` None it equals the matching rows of
        :meth:`forward` (``tests/test_refiner.py``)."""
        B = audio_vec.shape[0]
        cond = self._cond(style, t_tok, frames_norm[:, 0])
        x = self.inp(torch.cat([audio_vec, frames_norm.reshape(B, -1)], -1)) + cond
        new_state = []
        for blk, past in zip(self.blocks, state):
            x, past = blk.step(x, past)
            new_state.append(past)
        delta = self.out(F.relu(self.norm(x))).view(B, self.down, -1)
        y = frames_norm.index_add(2, self.dims, delta)
        head = None
        if self.head_out is not None:
            head = self._head(cond, t_tok, head_from)
            y = y.index_add(2, self.head_dims, head.view(B, self.down, 3))
        return y, new_state, head


__all__ = ["Refiner", "RefinerConfig", "default_dims"]
