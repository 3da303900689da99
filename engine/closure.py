"""Stage 4 (optional): lip contact. The lips meet on p/b/m and the lower lip reaches the upper teeth on f/v.

Why: the refiner regresses the frames with an L2 loss, and a closure lasts one or two frames (a p is 30-90
ms), so the average it learns is a mouth that never quite closes (about 15 % of p/b/m closed before this
stage). Contact is a constraint, not a target to average: the synthetic truth is made the same way
(``training/synth_face.py: articulate``). So this stage splits the problem in two:

* **when**: a small classifier (:class:`LipContact`) reads the audio itself through its own log-mel front
  (the refiner's :class:`~mm2face.engine.refiner.MelFront` with its own weights) over the frame's own 40 ms
  plus the model's 40 ms lookahead and about 0.2 s before, and gives per frame (25 fps) the probability of
  a bilabial and of a labiodental contact. It is trained with cross-entropy on the corpus's phone timings
  under microphone-like augmentation (``mm2face-train closure``). No extra latency: it reads no further
  than the GPT.
* **how**: where a contact is predicted, :func:`apply_contact` solves ``mouth_close`` on the head's mesh
  so the midline lip gap is exactly the closed-lip gap for that frame's jaw and other units (f/v:
  ``lower_lip_roll`` and the lower lip lifted to the upper teeth), as the truth does; over a contact the
  jaw opens no more than :attr:`ClosureConfig.jaw_max_rad`, from which ``mouth_close`` can close the lips.

The probability maps to a contact weight ``clip((p - on_p) / (full_p - on_p), 0, 1)``: continuous, so
streaming and offline (which compute the same logits from the same samples up to float rounding) give
the same frames. Frames without audio (text-only tokens) get no contact. Only heads with the
``mouth_close`` unit (the stand-in) have this stage; a FLAME model simply has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2face.engine.frame import JAW, SAMPLES_PER_FRAME
from mm2face.engine.refiner import MEL_HOP, MelFront
from mm2face.engine.units import unit

CONTACTS = ("bilabial", "labiodental")       # the classifier's outputs, in this order
LIP_ON_TEETH_MM = 0.5                        # f/v: the lower lip's midline this far below the upper teeth's edge
                                             # (one value for the engine and the synthetic truth)


@dataclass
class ClosureConfig:
    n_mels: int = 40               # log-mel bands of the front
    channels: int = 64             # channels of its valid convolutions
    kernel: int = 5                # taps per convolution (10 ms log-mel frames)
    layers: int = 4                # convolutions: 4 x 4 = 16 frames of context before the frame's own 40 ms
    hidden: int = 64               # width of the per-frame feature before the two logits
    on_p: float = 0.35             # contact weight 0 at or below this probability ...
    full_p: float = 0.55           # ... 1 at or above this one, linear between (chosen on the val split)
    jaw_max_rad: float = 0.18      # over a full contact the jaw opens at most this far (mouth_close <= unit_max
                                   # closes the lips from there on the stand-in head: 1.24 at 0.18 rad)
    unit_max: float = 1.5          # largest mouth_close / lower_lip_roll coefficient used (as the corpus)


class LipContact(nn.Module):
    """``clip_logits(audio_16k (B, S), n_frames) -> (B, n_frames, 2)`` contact logits (bilabial, labiodental)
    per 25 fps frame; frame ``k`` reads audio up to sample ``640 (k + 1) + lookahead_samples``."""

    def __init__(self, cfg: ClosureConfig, lookahead_samples: int):
        super().__init__()
        self.cfg = cfg
        self.front = MelFront(cfg.n_mels, cfg.channels, cfg.kernel, cfg.layers, SAMPLES_PER_FRAME,
                              lookahead_samples, cfg.hidden)
        self.front.out.reset_parameters()          # MelFront starts at zero for the refiner; a classifier must not
        self.out = nn.Linear(cfg.hidden, len(CONTACTS))

    @property
    def window_samples(self) -> int:
        """Audio samples the first frame of a run reads (each further frame adds 640)."""
        return self.front.window_samples

    @property
    def left_samples(self) -> int:
        """How far before frame ``k``'s start (sample 640 k) its window begins."""
        return self.front.window_samples - MEL_HOP * self.front.positions

    def logits_from_mel(self, mel: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Raw log-mel ``(B, F, n_mels)`` (:meth:`MelFront.clip_mel` layout) -> logits ``(B, n_frames, 2)``."""
        return self.out(F.relu(self.front.tokens(mel, n_frames)))

    def clip_logits(self, audio_16k: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Whole clips ``audio_16k (B, S)`` float -> logits ``(B, n_frames, 2)``."""
        return self.logits_from_mel(self.front.clip_mel(audio_16k, n_frames), n_frames)

    def weights(self, logits: torch.Tensor) -> np.ndarray:
        """Logits ``(..., 2)`` -> contact weights ``(..., 2)`` float32 in 0..1."""
        p = torch.sigmoid(logits.float()).cpu().numpy()
        return np.clip((p - self.cfg.on_p) / (self.cfg.full_p - self.cfg.on_p), 0.0, 1.0).astype(np.float32)

    @torch.no_grad()
    def clip_weights(self, audio_16k: np.ndarray, n_frames: int) -> np.ndarray:
        """Offline: ``audio_16k (samples,)`` float32 -> contact weights ``(n_frames, 2)``."""
        dev = self.out.weight.device
        x = torch.from_numpy(np.asarray(audio_16k, np.float32).reshape(1, -1)).to(dev)
        return self.weights(self.clip_logits(x, n_frames)[0])

    @torch.no_grad()
    def stream_weights(self, get_samples: Callable[[int, int], np.ndarray], f0: int, n: int) -> np.ndarray:
        """Streaming: contact weights ``(n, 2)`` of frames ``f0 .. f0 + n - 1``; ``get_samples(a, b)`` returns
        the session's samples ``[a, b)`` (zeros before 0). Reads the same samples as :meth:`clip_weights`."""
        a = SAMPLES_PER_FRAME * f0 - self.left_samples
        b = a + SAMPLES_PER_FRAME * (n - 1) + self.window_samples
        x = torch.from_numpy(np.asarray(get_samples(a, b), np.float32)[None]).to(self.out.weight.device)
        return self.weights(self.logits_from_mel(self.front.log_mel(x), n)[0])


def standin_head():
    """The stand-in head the contacts are solved on (built once per process, cached by :func:`load_head`)."""
    from mm2face.engine.flame import load_head
    return load_head("standin")


def apply_contact(params: np.ndarray, w: np.ndarray, head, cfg: ClosureConfig) -> np.ndarray:
    """Frames ``params (n, 56)`` with the contacts of weights ``w (n, 2)`` (bilabial, labiodental) applied
    (a new array): over a contact the jaw is limited to ``cfg.jaw_max_rad`` and ``mouth_close`` blends
    towards the value that closes the midline (p/b/m) or lifts the lower lip to the upper teeth with
    ``lower_lip_roll`` (f/v), both solved on ``head``'s mesh for the frame as it is."""
    from mm2face.engine.lips import closed_gap_mm, incisor_edge_y_mm, solve_unit
    out = np.array(params, np.float32, copy=True)
    wb, wl = np.asarray(w[:, 0], np.float32), np.asarray(w[:, 1], np.float32)
    wl = np.where(wb > 0, 0.0, wl)                          # one contact per frame: the bilabial wins
    both = np.maximum(wb, wl)
    if not both.any():
        return out
    rx = out[:, JAW.start]
    out[:, JAW.start] = rx - both * np.maximum(rx - cfg.jaw_max_rad, 0.0)
    close, roll = unit("mouth_close"), unit("lower_lip_roll")
    if wl.any():
        out[:, roll] = np.maximum(out[:, roll], wl)
        lift = solve_unit(head, out, "mouth_close", np.full(len(out), incisor_edge_y_mm(head) - LIP_ON_TEETH_MM),
                          "lower_y")
        out[:, close] = (1 - wl) * out[:, close] + wl * np.clip(lift, 0.0, cfg.unit_max)
    if wb.any():
        shut = solve_unit(head, out, "mouth_close", np.full(len(out), closed_gap_mm(head)), "gap")
        out[:, close] = (1 - wb) * out[:, close] + wb * np.clip(shut, 0.0, cfg.unit_max)
    return out
