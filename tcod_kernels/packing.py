"""Packed multi-turn sequences: trajectories, packing, curriculum masks, segment reductions.

A :class:`Trajectory` is kept *token-in/token-out*: the exact token ids the sampler saw and
produced, never re-tokenized text, cut into :class:`Span` s that carry a role and a turn
index. :func:`pack` places many trajectories (whole multi-turn trajectories or per-turn
prefix samples, each just a short trajectory) into rows under a token budget and returns a
:class:`PackedBatch` ready for varlen attention and the fused kernels.

Alignment (the one rule to remember): every *label* tensor of a packed batch --
``loss_mask``, ``target_ids``, ``turn_ids``, ``sampler_logprobs`` -- describes the token
*predicted* at a position, i.e. the token at ``t + 1`` of the same sequence. So the hidden
state at ``t``, ``target_ids[t]`` and ``turn_ids[t]`` all belong together, and a per-token
quantity computed from the hidden states (a KL, a log-prob gap) is attributed to the turn of
the token it predicts. The last token of each sequence predicts nothing (label ``-100``, turn
``-1``); ``seq_ids`` and ``position_ids`` describe the *input* token at ``t``.

Curriculum windows (:func:`window_mask`) and segment sums (:func:`segment_sum`) run on the
torch reference (CPU default), Triton (``tcod_kernels.triton.packing``) or the compiled CUDA
helpers (``tcod_kernels.cuda``); all inputs are validated here, before any kernel runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from tcod_kernels.api import BACKENDS, IGNORE_INDEX, available_backends

ROLES = ("prompt", "observation", "assistant", "expert")
"""Span roles. Only ``"assistant"`` tokens (sampled by the student) are trained and carry
sampler log-probs; ``"expert"`` marks replayed gold actions (b2f), context only."""
TRAINED_ROLE = "assistant"
NO_TURN = -1
"""``turn_ids``/``seq_ids`` value of positions that predict no token / hold padding."""

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------- trajectories


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of a trajectory with one role, belonging to turn ``turn``.

    ``turn`` is the turn index (the environment step the span belongs to: turn k holds
    observation k and action k). ``meta`` carries free per-turn metadata (env step, reward,
    expert flag, ...); packing ignores it.
    """

    start: int
    end: int
    role: str
    turn: int
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        for name in ("start", "end", "turn"):
            if not _is_int(getattr(self, name)):
                raise TypeError(f"Span.{name} must be an int, got {type(getattr(self, name)).__name__}")
        if self.role not in ROLES:
            raise ValueError(f"Span.role must be one of {ROLES}, got {self.role!r}")
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"Span must satisfy 0 <= start < end, got [{self.start}, {self.end})")
        if self.turn < 0:
            raise ValueError(f"Span.turn must be >= 0, got {self.turn}")


class Trajectory:
    """Exact token ids of one (multi-turn) sequence, its spans, and sampler log-probs.

    Args:
        token_ids: the token ids, 1-D (list of ints or integer tensor), as sampled.
        spans: :class:`Span` s that tile the sequence exactly (every token in exactly one
            span; any order, sorted on construction). Turn indices never decrease along the
            sequence. The first token cannot be an assistant token (nothing predicts it).
        logprobs: the sampler's log-probs of the assistant tokens, in order (one per
            assistant token), or ``None``.
        meta: free per-trajectory metadata (task, reward, ...).

    Raises ``ValueError`` for an empty trajectory, overlapping spans, gaps, spans beyond
    the sequence, decreasing turns, or a log-probs length that is not the number of
    assistant tokens.
    """

    def __init__(self, token_ids, spans: Sequence[Span], logprobs=None, meta: Optional[Mapping[str, Any]] = None):
        self.token_ids = _as_token_tensor(token_ids)
        n = self.token_ids.numel()
        if n == 0:
            raise ValueError("token_ids is empty: a trajectory needs at least one token")
        spans = list(spans)
        if not spans:
            raise ValueError("spans is empty: every token of a trajectory must belong to a span")
        for s in spans:
            if not isinstance(s, Span):
                raise TypeError(f"spans must hold Span objects, got {type(s).__name__}")
        spans.sort(key=lambda s: s.start)
        cursor, last_turn = 0, 0
        for s in spans:
            if s.start < cursor:
                raise ValueError(f"spans overlap: [{s.start}, {s.end}) starts before the previous span ends at {cursor}")
            if s.start > cursor:
                raise ValueError(f"spans leave tokens [{cursor}, {s.start}) uncovered: every token needs a span")
            if s.end > n:
                raise ValueError(f"span [{s.start}, {s.end}) goes beyond the sequence of {n} tokens")
            if s.turn < last_turn:
                raise ValueError(f"span turns must not decrease along the sequence: turn {s.turn} after turn {last_turn}")
            cursor, last_turn = s.end, s.turn
        if cursor != n:
            raise ValueError(f"spans end at token {cursor} but the sequence has {n} tokens: every token needs a span")
        if spans[0].role == TRAINED_ROLE:
            raise ValueError("the first token of a trajectory cannot be an assistant token: nothing predicts it")
        self.spans: Tuple[Span, ...] = tuple(spans)
        self.num_assistant_tokens = sum(s.end - s.start for s in spans if s.role == TRAINED_ROLE)
        self.logprobs = None
        if logprobs is not None:
            lp = torch.as_tensor(logprobs)
            if lp.dtype not in _FLOAT_DTYPES or lp.dim() != 1:
                raise TypeError(f"logprobs must be a 1-D float sequence or tensor, got dtype {lp.dtype}, shape {tuple(lp.shape)}")
            if lp.numel() != self.num_assistant_tokens:
                raise ValueError(
                    f"logprobs has {lp.numel()} entries but the trajectory has {self.num_assistant_tokens} assistant tokens"
                )
            self.logprobs = lp.detach().to("cpu", torch.float32)
        self.meta = dict(meta or {})

    @classmethod
    def from_chunks(cls, chunks: Iterable[Tuple], logprobs=None, meta=None) -> "Trajectory":
        """Builds a trajectory from consecutive ``(role, token_ids, turn)`` or
        ``(role, token_ids, turn, span_meta)`` chunks (empty chunks are skipped).

        ``Trajectory.from_chunks([("prompt", p, 0), ("assistant", a0, 0, {"env_step": 0}), ("observation", o1, 1), ...])``
        """
        ids, spans, cursor = [], [], 0
        for chunk in chunks:
            if not isinstance(chunk, (tuple, list)) or len(chunk) not in (3, 4):
                raise TypeError(f"chunks must be (role, token_ids, turn[, meta]) tuples, got {chunk!r}")
            role, chunk_ids, turn = chunk[:3]
            chunk_ids = _as_token_tensor(chunk_ids)
            if chunk_ids.numel() == 0:  # an empty chunk adds no token and no span
                continue
            span_meta = dict(chunk[3]) if len(chunk) == 4 else {}
            spans.append(Span(cursor, cursor + chunk_ids.numel(), role, turn, span_meta))
            ids.append(chunk_ids)
            cursor += chunk_ids.numel()
        token_ids = torch.cat(ids) if ids else torch.empty(0, dtype=torch.long)
        return cls(token_ids, spans, logprobs=logprobs, meta=meta)

    def __len__(self) -> int:
        return self.token_ids.numel()

    @property
    def num_turns(self) -> int:
        """1 + the largest turn index."""
        return self.spans[-1].turn + 1

    def token_roles(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(trained bool[n], turn int32[n])`` per token: assistant flag and turn index."""
        trained = torch.zeros(len(self), dtype=torch.bool)
        turn = torch.empty(len(self), dtype=torch.int32)
        for s in self.spans:
            trained[s.start:s.end] = s.role == TRAINED_ROLE
            turn[s.start:s.end] = s.turn
        return trained, turn

    def __repr__(self) -> str:
        return f"Trajectory(tokens={len(self)}, turns={self.num_turns}, assistant_tokens={self.num_assistant_tokens})"


def _as_token_tensor(token_ids) -> torch.Tensor:
    if isinstance(token_ids, torch.Tensor):
        t = token_ids
    else:
        try:
            t = torch.as_tensor(list(token_ids), dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"token_ids must be a sequence of ints or an integer tensor ({exc})") from None
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"token_ids must hold integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.long)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"token_ids must be >= 0, found {int(t.min())}")
    return t


# --------------------------------------------------------------------------- packed batches


@dataclass
class PackedBatch:
    """Trajectories packed into ``R`` rows of ``L`` tokens (see the module docstring).

    Per-position tensors, shape ``[R, L]``:

    * ``input_ids`` (long; ``pad_id`` on padding) and ``position_ids`` (long, restart at 0
      for every sequence; a row's trailing padding counts 0, 1, ... as its own run);
    * ``seq_ids`` (int32): index into the packed trajectory list, ``-1`` on padding;
    * ``loss_mask`` (bool): the token at ``t + 1`` is an assistant token of the same sequence;
    * ``target_ids`` (long): that token where ``loss_mask``, else ``-100``;
    * ``turn_ids`` (int32): the turn of the token at ``t + 1`` in the same sequence, else -1;
    * ``sampler_logprobs`` (float32, or ``None`` when the trajectories carry none): the
      sampler's log-prob of ``target_ids[t]`` where ``loss_mask``, else 0.

    Varlen attention: ``cu_seqlens`` (int32) holds the boundaries of every run -- each
    sequence and each row's trailing padding -- over the flattened ``[R * L]`` tokens (the
    same boundaries ``position_ids == 0`` marks), ``max_seqlen`` the longest run.

    Per-sequence (long, CPU, ``[S]``): ``seq_rows``, ``seq_offsets``, ``seq_lengths`` (where
    each trajectory sits) and ``num_turns``.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    loss_mask: torch.Tensor
    target_ids: torch.Tensor
    turn_ids: torch.Tensor
    seq_ids: torch.Tensor
    sampler_logprobs: Optional[torch.Tensor]
    seq_rows: torch.Tensor
    seq_offsets: torch.Tensor
    seq_lengths: torch.Tensor
    num_turns: torch.Tensor

    @property
    def num_sequences(self) -> int:
        return self.seq_lengths.numel()

    @property
    def shape(self) -> torch.Size:
        return self.input_ids.shape

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.seq_lengths.sum())

    def to(self, device) -> "PackedBatch":
        """The same batch with its per-position tensors and ``cu_seqlens`` on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("input_ids", "position_ids", "cu_seqlens", "loss_mask", "target_ids", "turn_ids", "seq_ids")
        }
        lp = self.sampler_logprobs
        return replace(self, sampler_logprobs=None if lp is None else lp.to(device), **moved)

    def unpack(self, values: torch.Tensor) -> List[torch.Tensor]:
        """Splits a per-position tensor ``[R, L, ...]`` back into one ``[n_i, ...]`` per trajectory.

        Input order is kept. For label-aligned values (log-probs, KL) entry ``j`` of a
        trajectory predicts its token ``j + 1``; the last entry predicts nothing.
        """
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        if tuple(values.shape[:2]) != tuple(self.shape):
            raise ValueError(f"values must have leading shape {tuple(self.shape)}, got {tuple(values.shape)}")
        return [
            values[r, o:o + n]
            for r, o, n in zip(self.seq_rows.tolist(), self.seq_offsets.tolist(), self.seq_lengths.tolist())
        ]

    def window_mask(self, lo, hi=None, *, loss_mask: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
        """Training mask of the turns in ``[lo, hi)`` per trajectory (see :func:`window_mask`).

        ``lo``/``hi``: an int for every trajectory, or one value per trajectory (sequence or
        tensor of length ``S``); ``hi=None`` means no upper bound. f2b trains ``[0, k)``,
        b2f ``[c, None)``.
        """
        S = self.num_sequences
        lo_t = _window_bounds("lo", lo, S, self.device)
        hi_t = _window_bounds("hi", hi, S, self.device) if hi is not None else torch.full(
            (S,), torch.iinfo(torch.int32).max, dtype=torch.int64, device=self.device
        )
        return window_mask(
            self.loss_mask if loss_mask is None else loss_mask, self.turn_ids, self.seq_ids, lo_t, hi_t, backend=backend
        )

    def turn_segments(self) -> Tuple[torch.Tensor, int]:
        """``(segment_ids long[R, L], num_segments)`` with segment ``seq * max_turns + turn``.

        Positions that predict no token (turn -1) or hold padding get -1.
        """
        max_turns = int(self.num_turns.max())
        seg = self.seq_ids.long() * max_turns + self.turn_ids.long()
        seg = torch.where((self.seq_ids >= 0) & (self.turn_ids >= 0), seg, torch.full_like(seg, -1))
        return seg, self.num_sequences * max_turns

    def turn_reduce(self, values: torch.Tensor, *, reduction: str = "mean", mask: Optional[torch.Tensor] = None,
                    backend: str = "auto") -> torch.Tensor:
        """Per-turn sum or mean of a label-aligned per-token quantity -> ``[S, max_turns]``.

        Counts positions where ``mask`` (default ``loss_mask``) is True, each attributed to
        the turn of the token it predicts. A turn with no counted token gives 0 (mean too).
        """
        seg, num = self.turn_segments()
        out = _masked_reduce(values, seg, num, self, reduction, mask, backend)
        return out.reshape(self.num_sequences, -1)

    def sequence_reduce(self, values: torch.Tensor, *, reduction: str = "mean", mask: Optional[torch.Tensor] = None,
                        backend: str = "auto") -> torch.Tensor:
        """Per-trajectory sum or mean of a label-aligned per-token quantity -> ``[S]``."""
        return _masked_reduce(values, self.seq_ids.long(), self.num_sequences, self, reduction, mask, backend)


def _window_bounds(name: str, value, S: int, device) -> torch.Tensor:
    if _is_int(value):
        return torch.full((S,), value, dtype=torch.int64, device=device)
    t = torch.as_tensor(value, device=device) if not isinstance(value, torch.Tensor) else value.to(device)
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an int or integer values per trajectory, got dtype {t.dtype}")
    if tuple(t.shape) != (S,):
        raise ValueError(f"{name} must be an int or have shape [{S}] (one per trajectory), got {tuple(t.shape)}")
    return t.long()


def _masked_reduce(values, seg, num, batch: PackedBatch, reduction, mask, backend):
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if tuple(values.shape) != tuple(batch.shape):
        raise ValueError(f"values must have the batch shape {tuple(batch.shape)}, got {tuple(values.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    mask = batch.loss_mask if mask is None else mask
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != batch.shape:
        raise TypeError(f"mask must be a bool tensor of shape {tuple(batch.shape)}")
    seg = torch.where(mask.to(seg.device), seg, torch.full_like(seg, -1))
    total = segment_sum(values, seg, num, backend=backend)
    if reduction == "sum":
        return total
    count = torch.bincount(seg[seg >= 0].reshape(-1), minlength=num).to(total.dtype)
    return total / count.clamp(min=1)


def pack(
    trajectories: Sequence[Trajectory],
    max_tokens: int,
    *,
    pad_id: int = 0,
    pad_to_multiple_of: int = 1,
    device=None,
) -> PackedBatch:
    """Packs trajectories into rows of at most ``max_tokens`` tokens (first-fit decreasing).

    Longest first, each trajectory goes into the first row with room; all rows are padded on
    the right with ``pad_id`` to the fullest row's length, rounded up to a multiple of
    ``pad_to_multiple_of`` (the rounding may exceed ``max_tokens``). A trajectory is never
    split: one longer than ``max_tokens`` raises ``ValueError``. ``seq_ids`` index
    ``trajectories`` in the given order. ``device``: where the batch's tensors go (CPU if None).
    """
    trajectories = list(trajectories)
    if not trajectories:
        raise ValueError("trajectories is empty: nothing to pack")
    for i, tr in enumerate(trajectories):
        if not isinstance(tr, Trajectory):
            raise TypeError(f"trajectories[{i}] must be a Trajectory, got {type(tr).__name__}")
    if not _is_int(max_tokens):
        raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
    if not _is_int(pad_id) or pad_id < 0:
        raise ValueError(f"pad_id must be an int >= 0, got {pad_id!r}")
    if not _is_int(pad_to_multiple_of) or pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be an int >= 1, got {pad_to_multiple_of!r}")
    lengths = [len(t) for t in trajectories]
    longest = max(lengths)
    if max_tokens < longest:
        raise ValueError(
            f"max_tokens={max_tokens} is smaller than the longest trajectory "
            f"(trajectories[{lengths.index(longest)}] has {longest} tokens); trajectories are never split"
        )
    with_lp = [t.logprobs is not None for t in trajectories]
    if any(with_lp) and not all(with_lp):
        raise ValueError("either every trajectory carries sampler logprobs or none does "
                         f"(trajectories[{with_lp.index(False)}] has none)")

    rows, fill = first_fit_decreasing(lengths, max_tokens)
    L = max(fill)
    L = -(-L // pad_to_multiple_of) * pad_to_multiple_of
    R, S = len(rows), len(trajectories)

    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.empty((R, L), dtype=torch.long)
    loss_mask = torch.zeros((R, L), dtype=torch.bool)
    target_ids = torch.full((R, L), IGNORE_INDEX, dtype=torch.long)
    turn_ids = torch.full((R, L), NO_TURN, dtype=torch.int32)
    seq_ids = torch.full((R, L), -1, dtype=torch.int32)
    sampler_lp = torch.zeros((R, L), dtype=torch.float32) if all(with_lp) else None
    seq_rows = torch.empty(S, dtype=torch.long)
    seq_offsets = torch.empty(S, dtype=torch.long)
    arange = torch.arange(L, dtype=torch.long)
    bounds = []
    for r, members in enumerate(rows):
        offset = 0
        for i in members:
            tr, n = trajectories[i], lengths[i]
            seq_rows[i], seq_offsets[i] = r, offset
            sl = slice(offset, offset + n)
            input_ids[r, sl] = tr.token_ids
            position_ids[r, sl] = arange[:n]
            seq_ids[r, sl] = i
            trained, turn = tr.token_roles()
            lab = slice(offset, offset + n - 1)  # position t predicts t + 1 within the sequence
            loss_mask[r, lab] = trained[1:]
            turn_ids[r, lab] = turn[1:]
            target_ids[r, lab] = torch.where(trained[1:], tr.token_ids[1:], IGNORE_INDEX)
            if sampler_lp is not None:
                row_lp = torch.zeros(n, dtype=torch.float32)
                row_lp[trained] = tr.logprobs
                sampler_lp[r, lab] = row_lp[1:]
            bounds.append(r * L + offset)
            offset += n
        position_ids[r, offset:] = arange[: L - offset]
        if offset < L:
            bounds.append(r * L + offset)
    bounds.append(R * L)
    cu = torch.tensor(bounds, dtype=torch.int32)
    batch = PackedBatch(
        input_ids=input_ids, position_ids=position_ids, cu_seqlens=cu, max_seqlen=int(cu.diff().max()),
        loss_mask=loss_mask, target_ids=target_ids, turn_ids=turn_ids, seq_ids=seq_ids,
        sampler_logprobs=sampler_lp, seq_rows=seq_rows, seq_offsets=seq_offsets,
        seq_lengths=torch.tensor(lengths, dtype=torch.long),
        num_turns=torch.tensor([t.num_turns for t in trajectories], dtype=torch.long),
    )
    return batch if device is None else batch.to(device)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> Tuple[List[List[int]], List[int]]:
    """Bins of item indices (each summing to <= ``capacity``) and their fills.

    Items are taken longest first (ties by index) and put in the first bin with room.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: List[List[int]] = []
    fill: List[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} of length {n} exceeds the capacity {capacity}")
        for r, f in enumerate(fill):
            if f + n <= capacity:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    return rows, fill


# --------------------------------------------------------------------------- kernels: checks + dispatch


def _check_backend(backend, device: torch.device, op: str) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    avail = available_backends(device)
    if backend == "auto":
        for name in avail:  # fastest first; torch is always there
            if name == "torch" or _kernel(name, op) is not None:
                return name
    if backend not in avail:
        raise ValueError(f"backend={backend!r} is not available on {device}. Available: {avail}")
    if backend != "torch" and _kernel(backend, op) is None:
        raise ValueError(f"backend={backend!r} does not provide {op}")
    return backend


def _kernel(name: str, op: str):
    """The backend's implementation of ``op``, or None where it has none."""
    module = {"triton": "tcod_kernels.triton.packing", "cuda": "tcod_kernels.cuda", "torch": __name__}[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, op if name != "torch" else f"_{op}_torch", None)


def _check_int_tensor(name: str, t, shape=None, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(t.shape)} must equal {tuple(shape)}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_device(name: str, t: torch.Tensor, device: torch.device):
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def window_mask(loss_mask, turn_ids, seq_ids, lo, hi, *, backend: str = "auto") -> torch.Tensor:
    """``out[t] = loss_mask[t] and seq_ids[t] >= 0 and lo[s] <= turn_ids[t] < hi[s]``, ``s = seq_ids[t]``.

    ``loss_mask`` bool, ``turn_ids``/``seq_ids`` integer tensors of the same shape (int32 in
    the kernels), ``lo``/``hi`` integer ``[S]`` (int64 in the kernels). ``turn_ids[t]`` must
    be the turn of the token *predicted* at ``t`` (``t + 1``), as :func:`pack` writes it, so
    a window selects the targets of its turns and never the last token of the turn before.
    Returns bool, the shape of ``loss_mask``.
    """
    if not isinstance(loss_mask, torch.Tensor):
        raise TypeError(f"loss_mask must be a bool torch.Tensor, got {type(loss_mask).__name__}")
    if loss_mask.dtype != torch.bool:
        raise TypeError(f"loss_mask must have dtype torch.bool, got {loss_mask.dtype}")
    _check_int_tensor("turn_ids", turn_ids, shape=loss_mask.shape)
    _check_int_tensor("seq_ids", seq_ids, shape=loss_mask.shape)
    _check_int_tensor("lo", lo, ndim=1)
    _check_int_tensor("hi", hi, shape=lo.shape)
    device = loss_mask.device
    for name, t in (("turn_ids", turn_ids), ("seq_ids", seq_ids), ("lo", lo), ("hi", hi)):
        _check_device(name, t, device)
    S = lo.shape[0]
    if seq_ids.numel() and int(seq_ids.max()) >= S:
        raise ValueError(f"seq_ids must be < len(lo) = {S}, found {int(seq_ids.max())}")
    name = _check_backend(backend, device, "window_mask")
    flat = lambda t, dt: t.reshape(-1).to(dt).contiguous()  # noqa: E731
    out = _kernel(name, "window_mask")(
        flat(loss_mask, torch.bool), flat(turn_ids, torch.int32), flat(seq_ids, torch.int32),
        lo.to(torch.int64).contiguous(), hi.to(torch.int64).contiguous(),
    )
    return out.reshape(loss_mask.shape)


def _window_mask_torch(loss_mask, turn_ids, seq_ids, lo, hi):
    valid = seq_ids >= 0
    s = seq_ids.clamp(min=0).long()
    turn = turn_ids.long()
    return loss_mask & valid & (lo[s] <= turn) & (turn < hi[s])


def segment_sum(values, segment_ids, num_segments: int, *, backend: str = "auto") -> torch.Tensor:
    """``out[k] = sum of values[t] where segment_ids[t] == k``; ids < 0 are ignored.

    ``values`` float ``[...]`` and ``segment_ids`` integer of the same shape. Accumulates in
    float32 (float64 stays float64); the result is ``[num_segments]`` of that dtype.
    Differentiable in ``values``.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"values must be a floating tensor, got {values.dtype}")
    _check_int_tensor("segment_ids", segment_ids, shape=values.shape)
    _check_device("segment_ids", segment_ids, values.device)
    if not _is_int(num_segments):
        raise TypeError(f"num_segments must be an int, got {type(num_segments).__name__}")
    if num_segments < 0:
        raise ValueError(f"num_segments must be >= 0, got {num_segments}")
    if segment_ids.numel() and int(segment_ids.max()) >= num_segments:
        raise ValueError(f"segment_ids must be < num_segments = {num_segments}, found {int(segment_ids.max())}")
    name = _check_backend(backend, values.device, "segment_sum")
    return _SegmentSum.apply(values.reshape(-1), segment_ids.reshape(-1).long().contiguous(), num_segments, name)


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _segment_sum_torch(values, segment_ids, num_segments):
    keep = segment_ids >= 0
    out = torch.zeros(num_segments, dtype=_accum_dtype(values.dtype), device=values.device)
    return out.index_add_(0, segment_ids[keep], values[keep].to(out.dtype))


class _SegmentSum(torch.autograd.Function):
    """Backend forward; backward is a gather: d values[t] = d out[segment_ids[t]] (0 if id < 0)."""

    @staticmethod
    def forward(ctx, values, segment_ids, num_segments, name):
        ctx.save_for_backward(segment_ids)
        ctx.values_dtype = values.dtype
        return _kernel(name, "segment_sum")(values.contiguous(), segment_ids, num_segments)

    @staticmethod
    def backward(ctx, grad):
        (segment_ids,) = ctx.saved_tensors
        keep = segment_ids >= 0
        g = grad.index_select(0, segment_ids.clamp(min=0)) * keep.to(grad.dtype)
        return g.to(ctx.values_dtype), None, None, None
