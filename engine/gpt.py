"""Stage 2: MotionGPT, an autoregressive transformer over motion tokens (nanoGPT-like).

Per token ``t`` the input is ``embed(previous token) + audio_vector[t]`` (the audio of token t's own
frames plus a bounded lookahead, or a learned "no audio" vector), and the output is the logits of
token ``t``. Style text enters through adaptive LayerNorm (per-token shift/scale from a sentence
embedding), so it can change between tokens without touching the keys/values already cached.

Positions are relative (ALiBi) and attention is limited to a sliding window of ``ctx_tokens``
(the current token and ``ctx_tokens - 1`` before it) in training and inference alike. A
:class:`KVCache` holding the last ``ctx_tokens - 1`` keys/values therefore makes incremental
decoding exactly equal to a full forward pass on a sequence of any length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    n_codes: int = 256         # motion token vocabulary (the VQ codebook size); BOS = n_codes
    d_model: int = 160         # transformer width
    n_layer: int = 4
    n_head: int = 4
    ctx_tokens: int = 64       # attention window in tokens (64 x 80 ms = 5.12 s)
    d_text: int = 384          # sentence embedding size (MiniLM: 384)
    dropout: float = 0.1
    text_drop: float = 0.15    # training: probability to replace the text by the learned null embedding
    audio_drop: float = 0.05   # training: probability to replace a talking clip's audio by "no audio"
    text_input: bool = True    # style vector also added to every token's input (a direct path next to adaLN)
    word_bag: int = 64         # > 0: a learned bag of the caption's word pieces (this width) is added to the
                               # sentence embedding; mean pooling blurs "left"/"right" (MiniLM cosine 0.98)
    vocab: int = 30522         # word-piece vocabulary of the text encoder's tokenizer (MiniLM/BERT: 30522)


class KVCache:
    """Keys/values of the last ``ctx_tokens - 1`` tokens for every layer, in time order, as the trainer's
    batched sampling grows them (streaming keeps its caches in the rows of a
    :class:`~mm2face.engine.batch_state.KVRing` instead). ``k[l], v[l]: (B, H, Tc, hd)``; ``t`` counts
    tokens seen."""

    def __init__(self, n_layer: int, ctx_tokens: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.ctx = ctx_tokens
        self.t = 0

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def clone(self) -> "KVCache":
        c = KVCache(len(self.k), self.ctx)
        c.k, c.v, c.t = list(self.k), list(self.v), self.t
        return c


def alibi_slopes(n_head: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / n_head) for i in range(n_head)])


def alibi_bias(dist: torch.Tensor, allowed: torch.Tensor, n_head: int) -> torch.Tensor:
    """The ALiBi attention bias, the one place it is computed: ``dist (...)`` float query-to-key distances,
    ``allowed (...)`` bool -> ``(n_head, ...)``: ``-slope_h * dist``, ``-inf`` where not allowed. Used by
    :meth:`MotionGPT.attn_bias` and the streaming KV ring's table (``engine/batch_state.py``)."""
    slopes = alibi_slopes(n_head).to(dist.device, dist.dtype).view(n_head, *[1] * dist.dim())
    return (-slopes * dist[None]).masked_fill(~allowed[None], float("-inf"))


class Attention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c = c
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.out = nn.Linear(c.d_model, c.d_model)
        self.drop = c.dropout

    def forward(self, x, layer: int, cache: KVCache | None, bias: torch.Tensor):
        """``x: (B, T, D)``; ``bias: (B or 1, H, T, Tc + T)`` the ALiBi + window (+ key) mask from
        :meth:`MotionGPT.attn_bias`, shared by all layers."""
        B, T, D = x.shape
        H = self.c.n_head
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)   # (B, H, T, hd) each
        if cache is not None and cache.k[layer] is not None:
            k = torch.cat([cache.k[layer], k], 2)
            v = torch.cat([cache.v[layer], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.drop if self.training else 0.0)
        if cache is not None:
            keep = self.c.ctx_tokens - 1
            cache.k[layer] = k[:, :, -keep:] if keep > 0 else k[:, :, :0]
            cache.v[layer] = v[:, :, -keep:] if keep > 0 else v[:, :, :0]
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(c.d_model, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(c.d_model, elementwise_affine=False)
        self.attn = Attention(c)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, 4 * c.d_model), nn.GELU(),
                                 nn.Linear(4 * c.d_model, c.d_model), nn.Dropout(c.dropout))
        self.ada = nn.Linear(c.d_model, 4 * c.d_model)        # style -> shift1, scale1, shift2, scale2
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, mod, layer, cache, bias):
        """``mod``: this block's ``ada(style)`` output ``(B, T, 4 D)`` (shift/scale before attention and MLP)."""
        s1, g1, s2, g2 = mod.chunk(4, -1)
        x = x + self.attn(self.ln1(x) * (1 + g1) + s1, layer, cache, bias)
        x = x + self.mlp(self.ln2(x) * (1 + g2) + s2)
        return x


class MotionGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = c = cfg
        self.tok = nn.Embedding(c.n_codes + 1, c.d_model)              # + BOS
        self.null_audio = nn.Parameter(torch.zeros(c.d_model))
        self.null_text = nn.Parameter(torch.randn(c.d_text) * 0.05)
        self.style = nn.Sequential(nn.Linear(c.d_text, c.d_model), nn.SiLU(), nn.Linear(c.d_model, c.d_model))
        self.text_in = nn.Linear(c.d_model, c.d_model) if c.text_input else None   # zero-init below
        self.words = (nn.EmbeddingBag(c.vocab + 1, c.word_bag, mode="mean", padding_idx=c.vocab)   # + padding
                      if c.word_bag else None)
        self.words_out = nn.Linear(c.word_bag, c.d_text) if c.word_bag else None   # zero-init below
        self.in_norm = nn.LayerNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_codes, bias=False)
        self.apply(self._init)
        for lin in (self.text_in, self.words_out):       # new paths start silent
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        for b in self.blocks:
            nn.init.zeros_(b.ada.weight)
            nn.init.zeros_(b.ada.bias)
            nn.init.normal_(b.attn.out.weight, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def text_vector(self, sentence: torch.Tensor, word_ids: torch.Tensor | None) -> torch.Tensor:
        """The style input: ``sentence: (B, d_text)`` frozen sentence embeddings plus, with a word bag,
        the learned mean of the caption's word-piece vectors; ``word_ids: (B, L)`` long, ``-1`` = padding.
        Returns ``(B, d_text)``."""
        if self.words is None or word_ids is None:
            return sentence
        ids = torch.where((word_ids >= 0) & (word_ids < self.cfg.vocab), word_ids, self.cfg.vocab)
        return sentence + self.words_out(self.words(ids))          # padding rows are left out of the mean

    @property
    def bos(self) -> int:
        return self.cfg.n_codes

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layer, self.cfg.ctx_tokens)

    def forward(self, prev_tokens, audio, text, cache: KVCache | None = None, return_hidden: bool = False,
                modulation: tuple | None = None, bias: torch.Tensor | None = None):
        """``prev_tokens: (B, T)`` long (BOS = n_codes at the stream start), ``audio: (B, T, d_model)``
        token audio vectors (use :attr:`null_audio` for none), ``text: (B, T, d_text)`` or
        ``(B, d_text)`` sentence embeddings (use :attr:`null_text` for none).
        Returns logits ``(B, T, n_codes)``; with ``cache`` the new keys/values are appended to it.
        ``return_hidden``: also return the final hidden states ``(B, T, d_model)`` and the style
        vectors ``(B, T, d_model)`` (the trainer's auxiliary heads read them).
        ``modulation``: :meth:`modulation`'s output for ``text`` computed beforehand (then ``text`` is not
        read): a compiled step takes it as an input instead of re-running the style MLP every token.
        ``bias``: :meth:`attn_bias`'s output for this call computed beforehand (likewise, so that a
        compiled step's graph holds no mask arithmetic)."""
        B, T = prev_tokens.shape
        if modulation is not None:
            style, mods, text_x = modulation
        else:
            if text.dim() == 2:
                text = text[:, None, :].expand(B, T, -1)
            style, mods, text_x = self.modulation(text)
        x = self.tok(prev_tokens) + audio
        if text_x is not None:
            x = x + text_x
        x = self.drop(self.in_norm(x))
        if bias is None:
            bias = self.attn_bias(T, 0 if cache is None else cache.length, x.dtype, x.device)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mods[i], i, cache, bias)
        if cache is not None:
            cache.t += T
        h = self.ln_f(x)
        return (self.head(h), h, style) if return_hidden else self.head(h)

    # ---- per-call constants, memoised in plain eager inference -----------------------------------
    # One incremental step with a full cache is about a hundred small kernels; rebuilding the same
    # ALiBi bias in every layer and re-running the style MLP for an unchanged style were a third of
    # them. Both are pure functions of their inputs, so eager inference reuses them; training, tracing,
    # ONNX export and torch.compile take the plain path (the backends see the same graph as before).

    @staticmethod
    def _can_memo() -> bool:
        return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                    or torch.onnx.is_in_onnx_export())

    def attn_bias(self, T: int, Tc: int, dtype, device):
        """ALiBi bias with the sliding window for ``T`` queries after ``Tc`` cached keys: ``(1, H, T, Tc + T)``."""
        key = (T, Tc, dtype, device)
        memo = self.__dict__.setdefault("_bias_memo", {}) if self._can_memo() else None
        bias = memo.get(key) if memo is not None else None
        if bias is None:
            qi = torch.arange(T, device=device)[:, None]
            kj = torch.arange(Tc + T, device=device)[None, :] - Tc         # key j sits at position j - Tc
            dist = (qi - kj).to(dtype)                                       # (T, Tc + T)
            allowed = (dist >= 0) & (dist < self.cfg.ctx_tokens)
            bias = alibi_bias(dist, allowed, self.cfg.n_head)[None]          # (1, H, T, Tk)
            if memo is not None:
                if len(memo) > 32:                                           # bounded: a few shapes in use
                    memo.clear()
                memo[key] = bias
        return bias

    def modulation(self, text):
        """``text (B, T, d_text)`` -> (style vectors ``(B, T, D)``, each block's ``ada`` output ``(B, T,
        4 D)``, the style's input term ``(B, T, D)`` or None); reused while ``text`` is unchanged."""
        can = self._can_memo()
        if can:      # weights changed in place (optimiser step, load_state_dict) -> new versions
            mods_of = (self.style, *(b.ada for b in self.blocks), *([self.text_in] if self.text_in is not None else []))
            version = tuple(p._version for m in mods_of for p in m.parameters())
            memo = self.__dict__.get("_mod_memo")
            if (memo is not None and memo[0] == version and memo[1].shape == text.shape
                    and memo[1].device == text.device and torch.equal(memo[1], text)):
                return memo[2]
        style = F.silu(self.style(text))
        out = (style, [blk.ada(style) for blk in self.blocks],
               self.text_in(style) if self.text_in is not None else None)
        if can:
            self.__dict__["_mod_memo"] = (version, text.clone(), out)
        return out
