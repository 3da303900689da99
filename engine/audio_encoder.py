"""Audio encoder: a Wav2Vec2 model run on sliding windows, one window per motion token.

Timing (16 kHz audio, 25 fps motion, ``down`` frames per token):

* the Wav2Vec2 CNN turns audio into 50 Hz features (stride 320 samples, receptive field 400);
  we left-pad the audio by 80 samples so that feature ``i`` covers audio samples
  ``[320 i - 80, 320 i + 320)``, i.e. it *ends* exactly at the 20 ms boundary ``320 (i + 1)``;
* a motion frame ``f`` (40 ms) owns features ``2f`` and ``2f + 1``; token ``k`` owns frames
  ``down*k .. down*k + down - 1``, so features ``2 down k .. 2 down (k + 1) - 1``;
* token ``k`` looks at a window of ``window_feats`` features that ends ``lookahead_feats`` features
  after its own last feature (bounded past context, bounded lookahead, never the whole future);
  the Wav2Vec2 transformer layers run on that window only, and the outputs at the token's own and
  lookahead positions are concatenated and projected to ``d_out``.

Audio before the stream start is zeros, in offline generation and streaming alike, so both compute
exactly the same windows. The CNN is local in time (``feat_extract_norm="layer"``), so its features
can be computed once per clip (offline) or a few at a time (streaming).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

FEAT_HOP = 320        # audio samples per Wav2Vec2 feature (20 ms at 16 kHz)
FEAT_RF = 400         # receptive field of one feature, samples
FEAT_PAD = FEAT_RF - FEAT_HOP   # 80 samples of left padding aligns feature ends with 20 ms boundaries


@dataclass
class AudioConfig:
    window_feats: int = 12          # features per window (20 ms each): past context + own + lookahead
    lookahead_feats: int = 2        # features after the token's own audio it may see (2 = one frame = 40 ms)
    feats_per_token: int = 4        # 50 Hz features per token (= 2 * frames per token); set by the model
    d_out: int = 192                # output size (the transformer width)
    pretrained_dir: str = ""        # a local wav2vec2 folder to start from ("" = small config trained here)
    freeze_cnn: bool = True         # freeze the CNN feature extractor when pretrained_dir is set
    # the small Wav2Vec2 trained from scratch (ignored when pretrained_dir is set)
    hidden: int = 96                # transformer width
    layers: int = 1                 # transformer layers
    heads: int = 4
    ffn: int = 192
    conv_dim: int = 64              # channels of the CNN layers (the first two get half)
    pos_conv: int = 8               # kernel of the convolutional position embedding
    w2v_config: dict = field(default_factory=dict)   # filled in at build time: the exact Wav2Vec2Config

    @property
    def own_and_ahead(self) -> int:
        return self.feats_per_token + self.lookahead_feats


def small_wav2vec2_config(c: AudioConfig) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=c.hidden, num_hidden_layers=c.layers, num_attention_heads=c.heads,
        intermediate_size=c.ffn, conv_dim=(c.conv_dim // 2,) * 2 + (c.conv_dim,) * 5, feat_extract_norm="layer",
        do_stable_layer_norm=True, num_conv_pos_embeddings=c.pos_conv, num_conv_pos_embedding_groups=8,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.0, mask_feature_prob=0.0, apply_spec_augment=False,
        vocab_size=32)


class AudioEncoder(nn.Module):
    """Wav2Vec2 on sliding windows -> one ``(d_out,)`` vector per motion token."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.w2v_config:
            w2v_cfg = Wav2Vec2Config(**cfg.w2v_config)
            self.w2v = Wav2Vec2Model(w2v_cfg)
        elif cfg.pretrained_dir:
            self.w2v = Wav2Vec2Model.from_pretrained(cfg.pretrained_dir, local_files_only=True)
            self.w2v.config.apply_spec_augment = False
            self.w2v.config.layerdrop = 0.0
        else:
            self.w2v = Wav2Vec2Model(small_wav2vec2_config(cfg))
        if not cfg.w2v_config:
            d = self.w2v.config.to_dict()
            cfg.w2v_config = {k: v for k, v in d.items() if not k.startswith("_")}
        if cfg.pretrained_dir and cfg.freeze_cnn:
            self.w2v.freeze_feature_encoder()
        self.w2v.config.apply_spec_augment = False
        H = self.w2v.config.hidden_size
        self.proj = nn.Sequential(nn.LayerNorm(H * cfg.own_and_ahead), nn.Linear(H * cfg.own_and_ahead, cfg.d_out))

    @property
    def cnn_channels(self) -> int:
        return self.w2v.config.conv_dim[-1]

    def cnn(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """CNN features. ``audio_16k: (B, S)`` whose first sample is the start of a feature's span
        (i.e. already includes the 80-sample left pad) -> ``(B, (S - 400) // 320 + 1, C)``."""
        return self.w2v.feature_extractor(audio_16k).transpose(1, 2)

    def clip_cnn(self, audio_16k: torch.Tensor, n_feats: int) -> torch.Tensor:
        """CNN features ``-window_feats .. n_feats - 1`` of a clip (negative indices see zeros).

        ``audio_16k: (B, S)`` starting at the clip start; zero-padded on the right as needed.
        Returns ``(B, window_feats + n_feats, C)``; row ``j`` is feature ``j - window_feats``."""
        W = self.cfg.window_feats
        need = n_feats * FEAT_HOP                 # samples covered by features 0..n_feats-1
        x = audio_16k[:, :need]
        if x.shape[1] < need:
            x = torch.nn.functional.pad(x, (0, need - x.shape[1]))
        return self.cnn(torch.nn.functional.pad(x, (self.context_samples, 0)))

    @property
    def context_samples(self) -> int:
        """Audio before a token range's first sample that its windows read (window_feats features + 80)."""
        return self.cfg.window_feats * FEAT_HOP + FEAT_PAD

    def context_len(self, n_tokens: int) -> int:
        """Samples :meth:`tokens_from_context` needs for ``n_tokens`` tokens."""
        return self.context_samples + self.n_feats_for_tokens(n_tokens) * FEAT_HOP

    def tokens_from_context(self, audio_ctx: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Token vectors for tokens ``s .. s + n_tokens - 1`` of a clip from ``audio_ctx: (B, S)``, the clip's
        samples ``[1280 s - context_samples, ...)`` (zeros before the clip start), ``S = context_len(n)``.
        Returns ``(B, n_tokens, d_out)`` (used by training on random crops)."""
        feats = self.cnn(audio_ctx[:, :self.context_len(n_tokens)])
        return self._windows(feats, n_tokens)

    def encode_windows(self, cnn_windows: torch.Tensor) -> torch.Tensor:
        """``cnn_windows: (N, window_feats, C)`` -> token audio vectors ``(N, d_out)``."""
        hidden, _ = self.w2v.feature_projection(cnn_windows)
        hidden = self.w2v.encoder(hidden)[0]
        tail = hidden[:, -self.cfg.own_and_ahead:, :]
        return self.proj(tail.reshape(tail.shape[0], -1))

    def window_index(self, n_tokens: int, device=None) -> torch.Tensor:
        """Row indices into :meth:`clip_cnn` output of each token's window: ``(n_tokens, window_feats)``."""
        c = self.cfg
        ends = torch.arange(n_tokens, device=device) * c.feats_per_token + c.own_and_ahead  # exclusive, feature idx
        # row = feature + window_feats; window covers features [end - W, end)
        return ends[:, None] + torch.arange(c.window_feats, device=device)[None, :]

    def n_feats_for_tokens(self, n_tokens: int) -> int:
        return n_tokens * self.cfg.feats_per_token + self.cfg.lookahead_feats

    def clip_tokens(self, audio_16k: torch.Tensor, n_tokens: int, encode=None) -> torch.Tensor:
        """Token audio vectors for a whole clip: ``audio_16k: (B, S)`` -> ``(B, n_tokens, d_out)``.
        ``encode``: what turns windows into vectors (default :meth:`encode_windows`; offline generation
        passes its runner's, so that it computes what the stream computes on any backend)."""
        return self._windows(self.clip_cnn(audio_16k, self.n_feats_for_tokens(n_tokens)), n_tokens, encode=encode)

    def _windows(self, feats: torch.Tensor, n_tokens: int, chunk: int = 1024, encode=None) -> torch.Tensor:
        idx = self.window_index(n_tokens, feats.device)                         # (T, W)
        B = feats.shape[0]
        wins = feats[:, idx].reshape(B * n_tokens, self.cfg.window_feats, -1)   # (B*T, W, C)
        encode = encode or self.encode_windows
        out = torch.cat([encode(wins[i:i + chunk]) for i in range(0, len(wins), chunk)], 0)
        return out.reshape(B, n_tokens, -1)


def audio_config_dict(c: AudioConfig) -> dict:
    return asdict(c)
