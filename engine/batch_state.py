"""The per-stream model state, owned by the batch: a row per session, stepped in place.

    state = BatchState(model)          # the scheduler's (SessionBatcher) - or a session's own one-row state
    state.join(session)                # a row for the session (its state moves in if it had one elsewhere)
    step_sessions(sessions, state)     # one hop: gathers the ready rows, steps them, writes them back

What a row holds (everything the model carries from one token to the next, nothing else):

* :class:`KVRing` - the G step's keys/values: per layer ``(2 rows per stream, H, L, hd)`` with
  ``L = ctx_tokens - 1`` slots; token ``p`` of a stream lives in slot ``p % L`` and the attention bias
  gives each slot its distance (ALiBi) and masks slots not written yet, so a step writes one slot per
  layer and moves nothing. Rows ``2r`` (with the style) and ``2r + 1`` (null style) are stream r's.
* ``feats (rows, window_feats, C)`` - the audio encoder's window of CNN features.
* ``ref`` - the stage-3 refiner's past (:meth:`Refiner.initial_state` with the rows on the first axis).

The session keeps its timeline (audio ring, sample counts, token index ``k``), the token history D reads,
its style blend and the frame post-processing. Rows are allocated when a session joins and freed when it
joins another state or is garbage-collected; the capacity doubles when full and halves when at most a
quarter of it is in use (the live rows move to the front). A state is stepped by one thread at a time (``lock``); :meth:`release` may be called from any thread and takes effect at the
state's next step.
"""
from __future__ import annotations

import collections
import threading
import weakref

import torch

from mm2face.engine.audio_encoder import FEAT_HOP, FEAT_PAD
from mm2face.engine.gpt import alibi_bias


_BIAS_TABLES: dict[tuple, torch.Tensor] = {}     # (L, H, device, dtype) -> KVRing._bias_table(), built once


class KVRing:
    """Keys/values of the last ``L = ctx_tokens - 1`` tokens of every G row, stepped in place.

    ``k[l], v[l]: (rows, H, L, hd)``; ``t[row]`` counts the tokens the row has seen. The ALiBi bias of
    a row depends only on ``t`` (which slot holds which distance, and which slots are still empty), so
    :meth:`bias` reads it from a table of ``2 L`` entries built once."""

    def __init__(self, gpt_cfg, rows: int, device, dtype=torch.float32):
        c = gpt_cfg
        if c.ctx_tokens < 2:
            raise ValueError(f"a KV ring needs ctx_tokens >= 2, got {c.ctx_tokens}")
        self.L, self.H, self.hd, self.n_layer = c.ctx_tokens - 1, c.n_head, c.d_model // c.n_head, c.n_layer
        self.device, self.dtype = torch.device(device), dtype
        z = lambda n: torch.zeros(n, self.H, self.L, self.hd, device=self.device, dtype=dtype)
        self.k = [z(rows) for _ in range(self.n_layer)]
        self.v = [z(rows) for _ in range(self.n_layer)]
        self.t = [0] * rows
        key = (self.L, self.H, str(self.device), dtype)
        if key not in _BIAS_TABLES:
            _BIAS_TABLES[key] = self._bias_table()
        self._table = _BIAS_TABLES[key]

    @property
    def rows(self) -> int:
        return len(self.t)

    def _bias_table(self) -> torch.Tensor:
        """``(2 L, H, 1, L + 1)``: entry ``t`` (``t < L``) or ``L + t % L`` (a full ring) is the bias of a row
        that has seen ``t`` tokens: slot ``j`` holds the token at distance ``((t - j - 1) mod L) + 1``,
        masked while that token would be before the stream start; the last column is the new token."""
        L = self.L
        t = torch.cat([torch.arange(L), L + torch.arange(L)])                        # a t for each entry
        j = torch.arange(L)
        dist = (t[:, None] - j[None] - 1) % L + 1                                     # (2L, L)
        dist = torch.cat([dist, torch.zeros(2 * L, 1, dtype=dist.dtype)], 1)          # + the new token
        bias = alibi_bias(dist.to(torch.float32), dist <= t[:, None], self.H)         # (H, 2L, L + 1)
        return bias.transpose(0, 1)[:, :, None, :].to(self.device, self.dtype).contiguous()

    def bias(self, rows: list[int]) -> torch.Tensor:
        """The attention bias of ``rows`` for their next token: ``(len(rows), H, 1, L + 1)``."""
        L = self.L
        idx = [t if t < L else L + t % L for t in (self.t[r] for r in rows)]
        if idx.count(idx[0]) == len(idx):            # streams in step (one stream's two rows): no gather
            return self._table[idx[0]:idx[0] + 1].expand(len(idx), -1, -1, -1)
        return self._table[torch.tensor(idx, device=self.device)]

    def gather(self, rows: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer ``k, v (len(rows), H, L, hd)`` of ``rows``: views when the rows are consecutive."""
        r0 = rows[0]
        if rows == list(range(r0, r0 + len(rows))):
            return [k[r0:r0 + len(rows)] for k in self.k], [v[r0:r0 + len(rows)] for v in self.v]
        idx = torch.tensor(rows, device=self.device)
        return [k[idx] for k in self.k], [v[idx] for v in self.v]

    def write(self, rows: list[int], k_new: list[torch.Tensor], v_new: list[torch.Tensor]) -> None:
        """Store each row's new token ``k_new[l], v_new[l] (len(rows), H, 1, hd)`` in its slot; ``t += 1``."""
        slots = [self.t[i] % self.L for i in rows]
        r0 = rows[0]
        if rows == list(range(r0, r0 + len(rows))) and slots.count(slots[0]) == len(slots):
            at = (slice(r0, r0 + len(rows)), slice(None), slice(slots[0], slots[0] + 1))   # streams in step
        else:
            at = (torch.tensor(rows, device=self.device), slice(None), torch.tensor(slots, device=self.device))
            k_new, v_new = [k[:, :, 0] for k in k_new], [v[:, :, 0] for v in v_new]
        for l in range(self.n_layer):
            self.k[l][at] = k_new[l]
            self.v[l][at] = v_new[l]
        for i in rows:
            self.t[i] += 1

    def resize(self, rows: int) -> None:
        """Keep rows ``[0, min(rows, self.rows))``; new rows are empty."""
        n = min(rows, self.rows)
        for lst in (self.k, self.v):
            for l, x in enumerate(lst):
                y = x.new_zeros(rows, *x.shape[1:])
                y[:n] = x[:n]
                lst[l] = y
        self.t = self.t[:n] + [0] * (rows - n)

    def copy_row(self, dst: int, src: "KVRing", src_row: int) -> None:
        for mine, theirs in ((self.k, src.k), (self.v, src.v)):
            for l in range(self.n_layer):
                mine[l][dst] = theirs[l][src_row]
        self.t[dst] = src.t[src_row]

    def clear_row(self, row: int) -> None:
        if self.t[row] == 0:                # never written (a slot is only read once t says it was)
            return
        for lst in (self.k, self.v):
            for x in lst:
                x[row] = 0
        self.t[row] = 0


MIN_SHRINK_ROWS = 8          # a state never shrinks below this many rows (growing back costs a copy)


class BatchState:
    """The model state of up to ``capacity`` streams (grows by doubling). See the module docstring.

    A session's row is ``session.row``; its G rows are ``2 * row`` and ``2 * row + 1`` of :attr:`kv`."""

    def __init__(self, model, capacity: int = 1, device="cpu"):
        self.model = model
        self.device = torch.device(device)
        cap = max(1, int(capacity))
        self.kv = KVRing(model.gpt.cfg, 2 * cap, self.device)
        a = model.audio
        self.W, self.C = a.cfg.window_feats, a.cnn_channels
        self.feats = torch.zeros(cap, self.W, self.C, device=self.device)
        r = model.refiner
        self.ref = r.initial_state(cap, self.device) if r is not None else None
        self.owner: list[weakref.ref | None] = [None] * cap       # the session holding each row
        self.lock = threading.RLock()
        self._released: collections.deque = collections.deque()
        self._zero_feats = None

    @property
    def capacity(self) -> int:
        return len(self.owner)

    def sessions(self) -> list:
        """The live sessions that hold a row here."""
        return [s for s in (o() if o is not None else None for o in self.owner) if s is not None]

    # ---- rows ----------------------------------------------------------------------------------
    def join(self, session) -> int:
        """Give ``session`` a row here. A session that holds a row in another state moves: its row is
        copied here and freed there. Returns the row."""
        with self.lock:
            self._apply_released()
            old, old_row = getattr(session, "batch_state", None), getattr(session, "row", None)
            if old is self:
                return old_row
            if session.model is not self.model:
                raise ValueError("BatchState.join: the session uses another model than this state")
            row = self._alloc()
            if old is not None:
                with old.lock:
                    self._copy_row(row, old, old_row)
                    old._free(old_row)
            else:
                self._clear_row(row)
            self.owner[row] = weakref.ref(session)
            session.batch_state, session.row = self, row
            return row

    def join_all(self, sessions) -> None:
        """:meth:`join` every session not yet here (after applying pending :meth:`release` s)."""
        with self.lock:
            self._apply_released()
            for s in sessions:
                if s.batch_state is not self:
                    self.join(s)

    def release(self, session) -> None:
        """``session`` leaves this state (e.g. removed from the batcher): at the state's next step or
        join it moves to a one-row state of its own (it stays usable alone). Any thread."""
        self._released.append(weakref.ref(session))

    def apply_released(self) -> None:
        """Move the sessions :meth:`release` d since the last step out (each to a one-row state)."""
        with self.lock:
            self._apply_released()

    def _apply_released(self) -> None:
        if not self._released:
            return
        while self._released:
            s = self._released.popleft()()
            if s is not None and s.batch_state is self:
                BatchState(self.model, 1, self.device).join(s)
        self._shrink()

    def _shrink(self) -> None:
        """Halve the capacity while at most a quarter of it is in use (not below ``MIN_SHRINK_ROWS``): the
        live rows move to the front, in order, so a burst of sessions does not keep its memory."""
        live = [(i, s) for i, s in ((i, o() if o is not None else None) for i, o in enumerate(self.owner))
                if s is not None]
        cap = self.capacity
        while cap > MIN_SHRINK_ROWS and len(live) <= cap // 4:
            cap //= 2
        if cap == self.capacity:
            return
        self.owner = [None] * self.capacity
        for new, (old, s) in enumerate(live):         # new <= old: front to back never overwrites a live row
            if new != old:
                self._copy_row(new, self, old)
            self.owner[new] = weakref.ref(s)
            s.row = new
        self._resize(cap)

    def _alloc(self) -> int:
        for i, o in enumerate(self.owner):
            if o is None or o() is None:             # free, or its session was garbage-collected
                self.owner[i] = None
                return i
        row = self.capacity
        self._resize(2 * self.capacity)
        return row

    def _free(self, row: int) -> None:
        self.owner[row] = None

    def _resize(self, cap: int) -> None:
        n = min(cap, self.capacity)
        self.kv.resize(2 * cap)
        grow = lambda x: torch.cat([x[:n], x.new_zeros(cap - n, *x.shape[1:])])
        self.feats = grow(self.feats)
        if self.ref is not None:
            self.ref = [grow(x) for x in self.ref]
        self.owner = self.owner[:n] + [None] * (cap - n)

    def zero_feats(self) -> torch.Tensor:
        """``(W, C)`` the CNN features a stream starts with (its windows see only zeros before 0)."""
        if self._zero_feats is None:
            with torch.no_grad():
                z = torch.zeros(1, self.W * FEAT_HOP + FEAT_PAD, device=self.device)
                self._zero_feats = self.model.audio.cnn(z)[0]
        return self._zero_feats

    def _clear_row(self, row: int) -> None:
        self.kv.clear_row(2 * row)
        self.kv.clear_row(2 * row + 1)
        self.feats[row] = self.zero_feats()
        if self.ref is not None:
            for x in self.ref:
                x[row] = 0

    def _copy_row(self, row: int, src: "BatchState", src_row: int) -> None:
        self.kv.copy_row(2 * row, src.kv, 2 * src_row)
        self.kv.copy_row(2 * row + 1, src.kv, 2 * src_row + 1)
        self.feats[row] = src.feats[src_row]
        if self.ref is not None:
            for x, y in zip(self.ref, src.ref):
                x[row] = y[src_row]

    # ---- per-hop access (step_sessions) ----------------------------------------------------------
    def rows_index(self, rows: list[int]):
        """A slice when ``rows`` are consecutive (views, no copies), else an index tensor."""
        r0 = rows[0]
        if rows == list(range(r0, r0 + len(rows))):
            return slice(r0, r0 + len(rows))
        return torch.tensor(rows, device=self.device)


__all__ = ["BatchState", "KVRing"]
