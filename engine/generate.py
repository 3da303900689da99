"""Offline generation: a whole clip at once. The reference the streaming session is compared against.

It computes exactly what :class:`~mm2face.engine.session.StreamSession` computes (same audio windows,
same sliding attention window, same sampling order), but encodes the audio of all tokens in one
batch and decodes all tokens with one call of D.
"""
from __future__ import annotations

import numpy as np
import torch

from mm2face.engine.closure import apply_contact, standin_head
from mm2face.engine.batch_state import KVRing
from mm2face.engine.frame import SAMPLES_PER_FRAME
from mm2face.engine.session import StreamConfig, add_blinks, mouth_dims
from mm2face.engine.runners import runner_for
from mm2face.engine.style import GestureTrack, resolve_style
from mm2face.engine.vad import VadConfig, vad_frame_weights

_D = StreamConfig()          # one place for the sampling defaults: streaming and offline must agree


@torch.no_grad()
def audio_vectors(model, audio_16k: np.ndarray | None, n_tok: int, device="cpu", encode=None) -> torch.Tensor:
    """``(n_tok, d_model)`` the per-token audio vectors the GPT (and the refiner) read: the audio
    encoder's windows of ``audio_16k: (samples,)`` float32, or the learned "no audio" vector. ``encode``: what
    turns windows into vectors (default eager; :func:`generate` passes its runner's, as the stream uses)."""
    if audio_16k is None:
        return model.gpt.null_audio.detach()[None].expand(n_tok, -1)
    return model.audio.clip_tokens(torch.from_numpy(np.asarray(audio_16k, np.float32)).to(device)[None], n_tok,
                                   encode=encode)[0]


@torch.no_grad()
def generate(model, audio_16k: np.ndarray | None, text: str = "", seed: int = 0, guidance: float = _D.guidance,
             temperature: float = _D.temperature, top_k: int = _D.top_k, n_frames: int | None = None,
             device="cpu", return_tokens: bool = False, blinks: bool = True,
             parse_styles: bool = _D.parse_styles, vad: bool = _D.vad, contact: bool = _D.contact):
    """Motion ``(T, 56) float32`` for ``audio_16k: (samples,)`` float32 16 kHz (or ``None`` for
    text only, then ``n_frames`` is required) and a style ``text``.

    T = ceil(samples / 640) (25 fps) unless ``n_frames`` is given. Defaults equal StreamConfig's
    (``blinks``: procedural blinks, see :func:`mm2face.engine.session.blink_overlay`; ``parse_styles``:
    the style parser and gesture layer of :mod:`mm2face.engine.style`, False = raw text to the model;
    ``vad``: the voice-activity gate of :mod:`mm2face.engine.vad`, mouth at rest where no speech is heard;
    ``contact``: the lip-contact stage of :mod:`mm2face.engine.closure`, where the model has one)."""
    model = model.eval()
    dev = torch.device(device)
    if audio_16k is None:
        if not n_frames:
            raise ValueError("generate: text-only generation (audio_16k=None) needs n_frames")
    else:
        audio_16k = np.clip(np.asarray(audio_16k, np.float32).reshape(-1), -1.0, 1.0)
        if not np.isfinite(audio_16k).all():
            raise ValueError("generate: audio has NaN/Inf samples")
        if n_frames is None:
            n_frames = -(-len(audio_16k) // SAMPLES_PER_FRAME)
    n_tok = max(1, -(-n_frames // model.down))
    runner = runner_for(model)                       # the audio encoder and G step a StreamSession runs
    av = audio_vectors(model, audio_16k, n_tok, dev, encode=runner.encode_audio)
    style = resolve_style(text, model.text_encoder, parse_styles)   # the caption the model reads, gestures
    text_emb = model.text_embed(style.caption).to(dev)[None]
    gen = torch.Generator().manual_seed(int(seed))
    kv = KVRing(model.gpt.cfg, 2, dev)               # one stream: rows 0 (with the style) and 1 (null style)
    prev = model.gpt.bos
    toks = []
    for t in range(n_tok):
        logits = runner.g_logits(torch.tensor([prev], device=dev), av[t:t + 1], text_emb, kv, [0], guidance)
        prev = int(model.sample(logits[0], temperature, top_k, gen))
        toks.append(prev)
    codes = torch.tensor(toks, device=dev)[None]
    t_tok = torch.arange(n_tok, device=dev)[None]                               # tokens since the style was set
    code = model.refiner_style(style.caption)
    code = None if code is None else code[None, None].expand(1, n_tok, -1)
    audio_t = None if audio_16k is None else torch.from_numpy(audio_16k).to(dev)[None]
    frames = model.refine(av[None], model.vq.decode(codes), code, t_tok, audio_t)
    motion = model.to_params(frames[0])[:n_frames].float().cpu().numpy()
    gate = None
    if vad and audio_16k is not None:                # the same voice-activity gate as StreamSession
        gate = vad_frame_weights(audio_16k, len(motion), VadConfig(lookahead_samples=model.lookahead_samples))
        dims = mouth_dims(model.head_name)
        motion[:, dims] *= gate[:, None]
    GestureTrack(style.gestures, 0, gain=style.expression_gain).apply(motion, 0, model.head_name)  # as StreamSession
    if blinks:                                       # the same procedural blinks as StreamSession
        motion = add_blinks(motion, 0, seed, model.head_name)
    if contact and model.closure is not None and audio_16k is not None:   # as StreamSession, after all the above
        w = model.closure.clip_weights(audio_16k, len(motion))
        if gate is not None:                                             # contacts only where speech is heard
            w *= gate[:, None].astype(np.float32)
        motion = apply_contact(motion, w, standin_head(), model.closure.cfg)
    return (motion, toks) if return_tokens else motion
