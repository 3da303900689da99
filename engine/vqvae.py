"""Stage 1: motion VQ-VAE. (T, 56) normalised frames <-> (T / down,) discrete tokens.

Encoder E: non-causal 1D ResNet with strided convolutions (it only runs on ground truth).
Decoder D: causal 1D ResNet (left padding only) with nearest-neighbour upsampling, so the frames of
token ``k`` depend on tokens ``<= k`` only and D can decode a stream one token at a time
(:meth:`VQVAE.decode_last`, exact given ``receptive_tokens`` of history).
Normalisation is over channels per time step (never over time), so it is local in time too.
Codebook: EMA updates with dead-code reset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQConfig:
    frame_dim: int = 56        # numbers per motion frame
    down: int = 2              # frames per token (2 -> a token is 80 ms at 25 fps); a power of two
    width: int = 128           # conv channels
    depth: int = 2             # residual blocks per resolution
    code_dim: int = 64         # codebook vector size
    n_codes: int = 256         # codebook size
    ema_decay: float = 0.99    # codebook EMA decay
    commit: float = 0.25       # commitment loss weight
    dead_after: int = 200      # reset a code unused for this many training steps


class ChannelNorm(nn.Module):
    """LayerNorm over channels of a ``(B, C, T)`` tensor, per time step."""

    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.transpose(1, 2)).transpose(1, 2)


class CConv(nn.Conv1d):
    """Conv1d with explicit padding: causal (all left) or centred."""

    def __init__(self, cin, cout, k, dilation=1, causal=True, stride=1):
        super().__init__(cin, cout, k, stride=stride, dilation=dilation)
        total = dilation * (k - 1)
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x):
        return super().forward(F.pad(x, self.pad))


class ResBlock(nn.Module):
    def __init__(self, c, dilation, causal):
        super().__init__()
        self.net = nn.Sequential(ChannelNorm(c), nn.ReLU(), CConv(c, c, 3, dilation, causal),
                                 ChannelNorm(c), nn.ReLU(), CConv(c, c, 1, 1, causal))

    def forward(self, x):
        return x + self.net(x)


class Encoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        layers = [CConv(c.frame_dim, c.width, 3, causal=False)]
        n_down = c.down.bit_length() - 1
        for _ in range(n_down):
            layers += [nn.Conv1d(c.width, c.width, 4, stride=2, padding=1)]
            layers += [ResBlock(c.width, 3 ** i, causal=False) for i in range(c.depth)]
        if n_down == 0:
            layers += [ResBlock(c.width, 3 ** i, causal=False) for i in range(c.depth)]
        layers += [ChannelNorm(c.width), nn.ReLU(), nn.Conv1d(c.width, c.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):            # (B, 56, T) -> (B, code_dim, T / down)
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        layers = [CConv(c.code_dim, c.width, 3)]
        layers += [ResBlock(c.width, 3 ** i, causal=True) for i in range(c.depth)]
        for _ in range(c.down.bit_length() - 1):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), CConv(c.width, c.width, 3)]
            layers += [ResBlock(c.width, 3 ** i, causal=True) for i in range(c.depth)]
        layers += [ChannelNorm(c.width), nn.ReLU(), CConv(c.width, c.frame_dim, 3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):            # (B, code_dim, K) -> (B, 56, K * down)
        return self.net(z)


class Codebook(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        self.c = c
        self.register_buffer("embed", torch.randn(c.n_codes, c.code_dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(c.n_codes))
        self.register_buffer("ema_sum", self.embed.clone())
        self.register_buffer("unused_steps", torch.zeros(c.n_codes, dtype=torch.long))

    def quantize(self, z):           # z: (N, D) -> codes (N,)
        d = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed.t() + self.embed.pow(2).sum(1)[None])
        return d.argmin(1)

    def lookup(self, codes):         # (...,) -> (..., D)
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def ema_update(self, z, codes):
        """EMA codebook update and dead-code reset (training only; all-reduced under DDP)."""
        c = self.c
        onehot = F.one_hot(codes, c.n_codes).type(z.dtype)         # (N, K)
        count = onehot.sum(0)
        s = onehot.t() @ z
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            torch.distributed.all_reduce(s)
        self.ema_count.mul_(c.ema_decay).add_(count, alpha=1 - c.ema_decay)
        self.ema_sum.mul_(c.ema_decay).add_(s, alpha=1 - c.ema_decay)
        n = self.ema_count.sum()
        count_s = (self.ema_count + 1e-5) / (n + c.n_codes * 1e-5) * n
        self.embed.copy_(self.ema_sum / count_s[:, None])
        self.unused_steps.add_(1)
        self.unused_steps[count > 0] = 0
        dead = self.unused_steps > c.dead_after
        if dead.any():
            nd = int(dead.sum())
            pick = z[torch.randint(0, len(z), (nd,), device=z.device)]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(pick, 0)
            self.embed[dead] = pick
            self.ema_sum[dead] = pick
            self.ema_count[dead] = 1.0
            self.unused_steps[dead] = 0


class VQVAE(nn.Module):
    """``encode``: normalised motion ``(B, T, 56)`` -> tokens ``(B, T / down)``;
    ``decode``: tokens -> normalised motion ``(B, K * down, 56)``."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        assert cfg.down >= 1 and (cfg.down & (cfg.down - 1)) == 0, "VQConfig.down must be a power of two"
        self.cfg = cfg
        self.enc = Encoder(cfg)
        self.dec = Decoder(cfg)
        self.codebook = Codebook(cfg)
        self.receptive_tokens = self._receptive_tokens()

    def _receptive_tokens(self) -> int:
        """How many tokens of history (incl. the current one) D needs for an exact output."""
        c = self.cfg
        rf_tok = (3 - 1) + sum(2 * 3 ** i for i in range(c.depth))       # token-rate convs
        rf_frames = sum(2 + sum(2 * 3 ** i for i in range(c.depth)) for _ in range(c.down.bit_length() - 1)) + 2
        return rf_tok + (rf_frames + 1) // 2 + 1     # conservative for down > 2

    def encode(self, x):
        z = self.enc(x.transpose(1, 2)).transpose(1, 2)                       # (B, K, D)
        return self.codebook.quantize(z.reshape(-1, z.shape[-1])).view(z.shape[:2])

    def decode(self, codes):
        zq = self.codebook.lookup(codes).transpose(1, 2)                         # (B, D, K)
        return self.dec(zq).transpose(1, 2)

    def decode_last(self, codes_hist):
        """Frames of the last token only: ``codes_hist: (B, k)`` the tokens so far (at least the last
        ``receptive_tokens``; fewer only at the stream start) -> ``(B, down, 56)``."""
        return self.decode(codes_hist[:, -self.receptive_tokens:])[:, -self.cfg.down:]

    def forward(self, x):
        """Training pass. ``x: (B, T, 56)`` normalised, T a multiple of down.
        Returns (reconstruction (B, T, 56), commitment loss, codes (B, K))."""
        z = self.enc(x.transpose(1, 2)).transpose(1, 2)                          # (B, K, D)
        flat = z.reshape(-1, z.shape[-1])
        codes = self.codebook.quantize(flat.detach())
        zq = self.codebook.lookup(codes).view_as(z)
        if self.training:
            self.codebook.ema_update(flat.detach(), codes)
        commit = F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()                                               # straight-through
        rec = self.dec(zq.transpose(1, 2)).transpose(1, 2)
        return rec, commit, codes.view(z.shape[:2])
