"""Stage 3 (optional): a small causal audio refiner applied to the decoded frames.

Why: sampled tokens carry the style well, but a token is a coarse quantisation and a sample is a
sample: the jaw and lips of a sampled motion follow the audio only as well as the drawn token does, and
a rare event such as the start of a head turn is seldom drawn at the sampling temperature the lips need.
The refiner reads, per token, the audio vector the GPT already computed (its own audio + the 40 ms
lookahead, nothing later), the decoded frames of the tokens so far, a style code and the time since the
style was set, and

* adds a correction to the frame dimensions it owns (``dims``; default the 50 expression units and the
  jaw) from a causal convolution over all of these;
* with ``mel_bins > 0``, also reads the audio itself through its own small front end (:class:`MelFront`):
  a log-mel spectrogram (10 ms hop) and a few convolutions over the token's own 80 ms plus the same
  40 ms lookahead, so no extra latency. The GPT's audio vector was trained only to pick the next motion
  token; the front is trained on the lips themselves and hears phone detail the vector lost;
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
    mel_bins: int = 80                          # the own audio front's log-mel bands (0 = no front: read only
                                                # the GPT's audio vector, as files written before it)
    mel_channels: int = 64                      # channels of its convolutions
    mel_kernel: int = 5                         # taps per convolution (10 ms frames)
    mel_layers: int = 3                         # convolutions (each valid, so the window is all it needs)
    silent_dims: list | None = None             # on tokens without audio the correction changes only these of
                                                # ``dims`` (None = all of them). Without audio it is a regression
                                                # to the caption's average and tames the sampled expression
    silent_guidance: float = 1.0                # classifier-free guidance of the correction on tokens without
                                                # audio, at inference: delta(null) + g * (delta(style) -
                                                # delta(null)), the null style standing in for "no caption";
                                                # 1 = off (one pass). Where there is audio it would also amplify
                                                # the caption's pull on the lips. Training is always unguided

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


MEL_HOP = 160         # samples per log-mel frame (10 ms at 16 kHz)
MEL_WIN = 400         # samples per FFT window (25 ms)


def mel_filterbank(n_mels: int, n_fft: int = MEL_WIN, sample_rate: int = 16000) -> torch.Tensor:
    """Triangular mel filters ``(n_fft // 2 + 1, n_mels)`` over 0..sample_rate/2 (HTK mel scale)."""
    mel = lambda f: 2595.0 * torch.log10(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    edges = hz(torch.linspace(0.0, float(mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64))
    f = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)[:, None]
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up, down = (f - lo) / (mid - lo), (hi - f) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class MelFront(nn.Module):
    """The refiner's own audio reading: log-mel frames -> ``layers`` valid convolutions -> the outputs
    at the token's own and lookahead frames (``positions`` of them, 10 ms each), flattened and
    projected to ``width``. Conv output ``o`` ends exactly at audio sample ``MEL_HOP * (o + 1)`` of the
    padded timeline, so token ``k`` reads audio up to the end of its own samples + the lookahead and
    nothing later. Its projection starts at zero (a new front changes nothing until trained)."""

    def __init__(self, n_mels: int, channels: int, kernel: int, layers: int, samples_per_token: int,
                 lookahead_samples: int, width: int):
        super().__init__()
        if samples_per_token % MEL_HOP or lookahead_samples % MEL_HOP:
            raise ValueError(f"token ({samples_per_token}) and lookahead ({lookahead_samples}) samples must be "
                             f"multiples of the {MEL_HOP}-sample log-mel hop")
        self.samples_per_token = samples_per_token
        self.hop_frames = samples_per_token // MEL_HOP                  # log-mel frames per token
        self.positions = (samples_per_token + lookahead_samples) // MEL_HOP   # own + lookahead frames read
        self.shrink = layers * (kernel - 1)                       # frames each valid conv stack eats
        self.register_buffer("window", torch.hann_window(MEL_WIN), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_mels), persistent=False)
        self.register_buffer("mel_mean", torch.zeros(n_mels))     # log-mel normalisation, set by the trainer
        self.register_buffer("mel_std", torch.ones(n_mels))
        self.convs = nn.ModuleList(nn.Conv1d(n_mels if i == 0 else channels, channels, kernel) for i in range(layers))
        self.out = nn.Linear(self.positions * channels, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def window_frames(self) -> int:
        """Log-mel frames one token reads."""
        return self.positions + self.shrink

    @property
    def window_samples(self) -> int:
        """Audio samples one token reads, ending at the end of its lookahead."""
        return MEL_HOP * (self.window_frames - 1) + MEL_WIN

    def log_mel(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """``audio_16k (B, S)`` -> raw log-mel ``(B, (S - 400) // 160 + 1, n_mels)`` (frame ``i`` = samples
        ``[160 i, 160 i + 400)``, no centring, so a window's frames equal the clip's frames there)."""
        spec = torch.stft(audio_16k.float(), MEL_WIN, MEL_HOP, window=self.window, center=False, return_complex=True)
        return torch.log(spec.abs().pow(2).transpose(1, 2) @ self.fbank + 1e-6)

    def clip_mel(self, audio_16k: torch.Tensor, n_tok: int) -> torch.Tensor:
        """Raw log-mel ``(B, F, n_mels)`` of whole clips ``audio_16k (B, S)`` laid out for :meth:`tokens`:
        zeros before the start and after the end, so that token ``k``'s window (the ``window_samples``
        ending at its own end + lookahead) starts at padded sample ``samples_per_token * k``."""
        B, S = audio_16k.shape
        left = self.window_samples - MEL_HOP * self.positions
        total = self.samples_per_token * (n_tok - 1) + self.window_samples
        x = audio_16k.new_zeros(B, total)
        n = max(0, min(S, total - left))
        x[:, left:left + n] = audio_16k[:, :n]
        return self.log_mel(x)

    def tokens(self, mel: torch.Tensor, n_tok: int) -> torch.Tensor:
        """``mel (B, F, n_mels)`` raw log-mel from :meth:`clip_mel` (or one window, ``F = window_frames``
        and ``n_tok = 1``) -> ``(B, n_tok, width)``."""
        h = ((mel - self.mel_mean) / self.mel_std).transpose(1, 2)
        for i, conv in enumerate(self.convs):
            h = conv(h if i == 0 else F.relu(h))
        h = F.relu(h)                                                             # (B, C, F - shrink)
        h = h.unfold(2, self.positions, self.hop_frames)[:, :, :n_tok]          # (B, C, n_tok, positions)
        return self.out(h.permute(0, 2, 3, 1).flatten(2))


class Refiner(nn.Module):
    """``forward(audio_vec (B, L, d_audio), frames_norm (B, L*down, 56), style (B, L, width),
    t_tok (B, L) long, mel, audio_null) -> (B, L*down, 56)``, frames normalised; ``style`` =
    :meth:`pool_text` codes (or :attr:`null_style`), ``t_tok`` = tokens since the style was set, ``mel``
    the front's raw log-mel (:meth:`clip_mel`; None = no audio), ``audio_null (B, L)`` True where a token
    has no audio (the front adds nothing there)."""

    def __init__(self, cfg: RefinerConfig, d_audio: int, down: int, samples_per_token: int = 0,
                 lookahead_samples: int = 0):
        super().__init__()
        self.cfg, self.down = cfg, down
        dims = [int(d) for d in cfg.dims]
        if not dims or min(dims) < 0 or max(dims) >= FRAME_DIM or len(set(dims)) != len(dims):
            raise ValueError(f"RefinerConfig.dims must be distinct frame dimensions in 0..{FRAME_DIM - 1}, got {cfg.dims}")
        if cfg.head and not (cfg.d_text or cfg.time_tokens):
            raise ValueError("RefinerConfig.head needs a text or time input (d_text > 0 or time_tokens > 0)")
        if cfg.silent_guidance != 1.0 and not cfg.d_text:
            raise ValueError("RefinerConfig.silent_guidance needs a style input (d_text > 0); set it to 1.0")
        self.register_buffer("dims", torch.tensor(dims), persistent=False)
        silent = None
        if cfg.silent_dims is not None:
            extra = sorted(set(int(d) for d in cfg.silent_dims) - set(dims))
            if extra:
                raise ValueError(f"RefinerConfig.silent_dims must be a subset of dims; {extra} are not in dims")
            keep = {int(x) for x in cfg.silent_dims}
            silent = torch.tensor([float(d in keep) for d in dims])
        # (len(dims),) 1 where the correction also applies to tokens without audio; None = everywhere
        self.register_buffer("silent_keep", silent, persistent=False)
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
        self.front = None
        if cfg.mel_bins:
            if not samples_per_token:
                raise ValueError("a refiner with an audio front (mel_bins > 0) needs samples_per_token")
            self.front = MelFront(cfg.mel_bins, cfg.mel_channels, cfg.mel_kernel, cfg.mel_layers,
                                  samples_per_token, lookahead_samples, W)
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

    def clip_mel(self, audio_16k: torch.Tensor | None, n_tok: int) -> torch.Tensor | None:
        """The front's raw log-mel of whole clips ``audio_16k (B, S)`` for :meth:`forward` (None without
        a front or audio)."""
        return None if self.front is None or audio_16k is None else self.front.clip_mel(audio_16k, n_tok)

    def _front(self, mel, audio_null, n_tok: int, like: torch.Tensor):
        """The audio front's term ``(B, n_tok, width)`` (zero where ``audio_null``), or 0."""
        if self.front is None or mel is None:
            return 0.0
        a = self.front.tokens(mel.to(like.dtype), n_tok)
        return a if audio_null is None else a.masked_fill(audio_null[..., None], 0.0)

    def forward(self, audio_vec: torch.Tensor, frames_norm: torch.Tensor, style: torch.Tensor | None = None,
                t_tok: torch.Tensor | None = None, mel: torch.Tensor | None = None,
                audio_null: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        """``guidance``: the correction's classifier-free guidance on tokens without audio (None =
        ``cfg.silent_guidance``; the trainer passes 1.0)."""
        B, L, _ = audio_vec.shape
        fr = frames_norm[:, :L * self.down]
        g = self.cfg.silent_guidance if guidance is None else float(guidance)
        if audio_null is None or not bool(audio_null.any()):
            g = 1.0                                   # every token has audio: nothing to guide
        cond = self._cond(style, t_tok, audio_vec)
        x = self.inp(torch.cat([audio_vec, fr.reshape(B, L, self.down * FRAME_DIM)], -1))
        x = x + self._front(mel, audio_null, L, x)
        x = self._passes(x, cond, style, t_tok, g)
        for blk in self.blocks:
            x = blk(x)
        delta = self._guide(self.out(F.relu(self.norm(x))), g, audio_null)
        delta = self._silence(delta.view(B, L, self.down, -1), audio_null)
        y = fr.index_add(2, self.dims, delta.view(B, L * self.down, -1))
        if self.head_out is not None:
            y = y.index_add(2, self.head_dims, self._head(cond, t_tok).view(B, L * self.down, 3))
        return y

    def _passes(self, x, cond, style, t_tok, g: float) -> torch.Tensor:
        """The convolutions' input: ``x + cond`` ``(B, ...)``, or with guidance (``g`` != 1) the styled
        rows then the null-style rows ``(2B, ...)`` as one batch."""
        if g == 1.0:
            return x + cond
        return torch.cat([x + cond, x + self._cond(self.null_style.expand_as(style), t_tok, x)])

    @staticmethod
    def _guide(delta: torch.Tensor, g: float, audio_null: torch.Tensor | None) -> torch.Tensor:
        """``delta (2B, L, C)`` (or ``(2B, C)`` for one token) = the styled rows then the null-style rows
        -> ``(B, ...)``: guided where ``audio_null`` (``(B, L)`` or ``(B,)``) is True, styled elsewhere;
        with ``g`` 1 the input is already ``(B, ...)`` and comes back as it is."""
        if g == 1.0:
            return delta
        styled, null = delta.chunk(2)
        if audio_null is None:
            return styled
        return torch.where(audio_null[..., None], null + g * (styled - null), styled)

    def _silence(self, delta, audio_null):
        """``delta (B, L, down, len(dims))`` with the dims outside ``silent_dims`` zeroed on the tokens
        where ``audio_null (B, L)`` is True (unchanged without ``silent_dims`` or ``audio_null``)."""
        if self.silent_keep is None or audio_null is None:
            return delta
        keep = torch.where(audio_null[..., None, None], self.silent_keep.to(delta.dtype), delta.new_ones(()))
        return delta * keep

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
        """Streaming state before the first token: per block its last ``pad`` inputs ``(batch, pad,
        width)``, all zeros; with guidance a second such list follows for the null-style pass. Every
        entry has the streams on its first axis, so the states of several streams concatenate."""
        passes = 1 if self.cfg.silent_guidance == 1.0 else 2
        return [torch.zeros(batch, b.pad, self.cfg.width, device=device) for _ in range(passes) for b in self.blocks]

    def step(self, state: list[torch.Tensor], audio_vec: torch.Tensor, frames_norm: torch.Tensor,
             style: torch.Tensor | None, t_tok: torch.Tensor, head_from: torch.Tensor | None = None,
             audio_window: torch.Tensor | None = None, audio_null: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """One token for ``B`` streams: ``audio_vec (B, d)``, ``frames_norm (B, down, 56)`` decoded,
        ``style (B, width)``, ``t_tok (B,)``; ``head_from (B, down * 3)``: the head offset in effect when
        the current style was set (None = rest), so a style change cross-fades the head instead of
        snapping it; ``audio_window (B, front.window_samples)`` float32, the audio that ends at the
        token's own end + lookahead (zeros before the stream start; None = no audio), ``audio_null
        (B,)`` True where the token has no audio. Returns (refined frames ``(B, down, 56)``, new state,
        this token's head offset or None). Costs one position per layer (and one short log-mel window),
        twice with ``silent_guidance`` (styled and null style, on every token, so that the null pass has
        its history when the audio stops); with ``head_from`` None it equals the matching rows of
        :meth:`forward` (``tests/test_refiner.py``). ``state`` comes from :meth:`initial_state`."""
        B, n, g = audio_vec.shape[0], len(self.blocks), self.cfg.silent_guidance
        cond = self._cond(style, t_tok, frames_norm[:, 0])
        x = self.inp(torch.cat([audio_vec, frames_norm.reshape(B, -1)], -1))
        if self.front is not None and audio_window is not None:
            mel = self.front.log_mel(audio_window)
            x = x + self._front(mel, None if audio_null is None else audio_null[:, None], 1, x)[:, 0]
        x = self._passes(x, cond, style, t_tok, g)   # the null pass runs on every token, so that its
                                                      # state is there when the audio stops
        pasts = state if g == 1.0 else [torch.cat([state[i], state[n + i]]) for i in range(n)]
        new_state = []
        for blk, past in zip(self.blocks, pasts):
            x, past = blk.step(x, past)
            new_state.append(past)
        if g != 1.0:
            new_state = [p[:B] for p in new_state] + [p[B:] for p in new_state]
        delta = self._guide(self.out(F.relu(self.norm(x))), g, audio_null).view(B, self.down, -1)
        if audio_null is not None:
            delta = self._silence(delta[:, None], audio_null[:, None])[:, 0]
        y = frames_norm.index_add(2, self.dims, delta)
        head = None
        if self.head_out is not None:
            head = self._head(cond, t_tok, head_from)
            y = y.index_add(2, self.head_dims, head.view(B, self.down, 3))
        return y, new_state, head


__all__ = ["MelFront", "Refiner", "RefinerConfig", "default_dims", "mel_filterbank"]
