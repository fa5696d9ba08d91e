"""Packed multi-turn batches: trajectories, packing, curriculum windows, segment reductions.

Expected values come from hand-written examples or from plain Python loops over the
trajectories' spans, never from the packing code itself.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run on the CPU interpreter; set before importing triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tcod_kernels import available_backends  # noqa: E402
from tcod_kernels import packing as P  # noqa: E402
from tcod_kernels.packing import Span, Trajectory, pack, segment_sum, window_mask  # noqa: E402


@pytest.fixture
def triton_device():
    """Where the Triton kernels run: the GPU when there is one, else the CPU interpreter."""
    pytest.importorskip("triton")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def traj(*chunks, logprobs=None):
    return Trajectory.from_chunks(chunks, logprobs=logprobs)


def two_trajectories():
    # a: prompt [1,2] turn0, assistant [3,4] turn0, obs [5] turn1, assistant [6] turn1
    a = traj(("prompt", [1, 2], 0), ("assistant", [3, 4], 0), ("observation", [5], 1), ("assistant", [6], 1),
             logprobs=[-0.1, -0.2, -0.3])
    # b: prompt [7] turn0, assistant [8] turn0
    b = traj(("prompt", [7], 0), ("assistant", [8], 0), logprobs=[-0.4])
    return a, b


# --------------------------------------------------------------------------- trajectories


def test_trajectory_from_chunks_spans_and_roles():
    a, _ = two_trajectories()
    assert a.token_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert [(s.start, s.end, s.role, s.turn) for s in a.spans] == [
        (0, 2, "prompt", 0), (2, 4, "assistant", 0), (4, 5, "observation", 1), (5, 6, "assistant", 1)]
    assert a.num_assistant_tokens == 3 and a.num_turns == 2
    trained, turn = a.token_roles()
    assert trained.tolist() == [False, False, True, True, False, True]
    assert turn.tolist() == [0, 0, 0, 0, 1, 1]


def test_from_chunks_span_meta_and_empty_chunks():
    t = traj(("prompt", [1, 2], 0), ("observation", [], 0), ("assistant", [3], 0, {"env_step": 7}))
    assert t.token_ids.tolist() == [1, 2, 3]
    assert [(s.role, dict(s.meta)) for s in t.spans] == [("prompt", {}), ("assistant", {"env_step": 7})]
    assert len({t.spans[0], t.spans[1]}) == 2  # spans stay hashable with metadata
    with pytest.raises(TypeError, match="chunks"):
        traj(("prompt", [1, 2]))


def test_trajectory_sorts_spans_given_out_of_order():
    t = Trajectory([4, 5, 6], [Span(1, 3, "assistant", 0), Span(0, 1, "prompt", 0)])
    assert [s.start for s in t.spans] == [0, 1]


@pytest.mark.parametrize("ids, spans, logprobs, match", [
    ([], [Span(0, 1, "prompt", 0)], None, "token_ids is empty"),
    ([1, 2], [], None, "spans is empty"),
    ([1, 2, 3], [Span(0, 2, "prompt", 0), Span(1, 3, "assistant", 0)], None, "overlap"),
    ([1, 2, 3], [Span(0, 1, "prompt", 0), Span(2, 3, "assistant", 0)], None, "uncovered"),
    ([1, 2, 3], [Span(0, 1, "prompt", 0), Span(1, 4, "assistant", 0)], None, "beyond the sequence"),
    ([1, 2, 3], [Span(0, 1, "prompt", 0), Span(1, 2, "assistant", 0)], None, "spans end at token 2"),
    ([1, 2, 3], [Span(0, 1, "prompt", 1), Span(1, 3, "assistant", 0)], None, "must not decrease"),
    ([1, 2, 3], [Span(0, 1, "assistant", 0), Span(1, 3, "prompt", 0)], None, "first token"),
    ([1, 2, 3], [Span(0, 1, "prompt", 0), Span(1, 3, "assistant", 0)], [-0.5], "logprobs has 1 entries"),
    ([1, -2, 3], [Span(0, 1, "prompt", 0), Span(1, 3, "assistant", 0)], None, "token_ids must be >= 0"),
])
def test_trajectory_rejects_bad_input(ids, spans, logprobs, match):
    with pytest.raises(ValueError, match=match):
        Trajectory(ids, spans, logprobs=logprobs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(start=0, end=1, role="user", turn=0), ValueError, "role"),
    (dict(start=2, end=2, role="prompt", turn=0), ValueError, "start < end"),
    (dict(start=0, end=1, role="prompt", turn=-1), ValueError, "turn"),
    (dict(start=0.0, end=1, role="prompt", turn=0), TypeError, "start"),
])
def test_span_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Span(**kwargs)


def test_trajectory_rejects_bad_types():
    with pytest.raises(TypeError, match="token_ids"):
        Trajectory(torch.tensor([1.0, 2.0]), [Span(0, 2, "prompt", 0)])
    with pytest.raises(TypeError, match="spans"):
        Trajectory([1, 2], [(0, 2, "prompt", 0)])
    with pytest.raises(TypeError, match="logprobs"):
        Trajectory([1, 2], [Span(0, 1, "prompt", 0), Span(1, 2, "assistant", 0)], logprobs=[1])


# --------------------------------------------------------------------------- packing


def test_pack_hand_example():
    a, b = two_trajectories()
    batch = pack([a, b], max_tokens=8)
    # one row: a (longest first) at 0..5, b at 6..7
    assert batch.shape == (1, 8)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1]]
    assert batch.seq_ids.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1]]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == [0, 6, 8]
    assert batch.max_seqlen == 6
    # label at t describes token t+1 of the same sequence
    assert batch.loss_mask.tolist() == [[False, True, True, False, True, False, True, False]]
    assert batch.target_ids.tolist() == [[-100, 3, 4, -100, 6, -100, 8, -100]]
    assert batch.turn_ids.tolist() == [[0, 0, 0, 1, 1, -1, 0, -1]]
    assert torch.allclose(batch.sampler_logprobs,
                          torch.tensor([[0, -0.1, -0.2, 0, -0.3, 0, -0.4, 0]]))
    assert batch.turn_ids.dtype == torch.int32 and batch.seq_ids.dtype == torch.int32
    assert [t.tolist() for t in batch.unpack(batch.input_ids)] == [[1, 2, 3, 4, 5, 6], [7, 8]]


def test_pack_rows_and_padding():
    a, b = two_trajectories()
    batch = pack([b, a], max_tokens=6, pad_id=99, pad_to_multiple_of=4)
    # a (6 tokens) fills row 0; b goes to row 1; rows padded to 8 (multiple of 4)
    assert batch.shape == (2, 8)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 99, 99], [7, 8, 99, 99, 99, 99, 99, 99]]
    assert batch.seq_ids.tolist() == [[1, 1, 1, 1, 1, 1, -1, -1], [0, 0, -1, -1, -1, -1, -1, -1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch.cu_seqlens.tolist() == [0, 6, 8, 10, 16]
    assert batch.max_seqlen == 6
    assert not batch.loss_mask[:, 6:].any() and not batch.loss_mask[1, 1:].any()
    assert batch.seq_rows.tolist() == [1, 0] and batch.seq_offsets.tolist() == [0, 0]


def test_first_fit_decreasing_hand_example():
    rows, fill = P.first_fit_decreasing([5, 3, 8, 2, 4], 10)
    assert rows == [[2, 3], [0, 4], [1]] and fill == [10, 9, 3]


def test_pack_without_logprobs():
    batch = pack([traj(("prompt", [1], 0), ("assistant", [2], 0))], max_tokens=4)
    assert batch.sampler_logprobs is None


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(max_tokens=5), ValueError, "max_tokens=5 is smaller than the longest"),
    (dict(max_tokens=8.0), TypeError, "max_tokens"),
    (dict(max_tokens=8, pad_to_multiple_of=0), ValueError, "pad_to_multiple_of"),
    (dict(max_tokens=8, pad_id=-1), ValueError, "pad_id"),
])
def test_pack_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pack(list(two_trajectories()), **kwargs)


def test_pack_rejects_empty_mixed_and_non_trajectories():
    a, _ = two_trajectories()
    with pytest.raises(ValueError, match="empty"):
        pack([], max_tokens=8)
    with pytest.raises(ValueError, match="logprobs"):
        pack([a, traj(("prompt", [1], 0), ("assistant", [2], 0))], max_tokens=8)
    with pytest.raises(TypeError, match=r"trajectories\[0\]"):
        pack([[1, 2, 3]], max_tokens=8)


def test_unpack_rejects_wrong_shape():
    batch = pack(list(two_trajectories()), max_tokens=8)
    with pytest.raises(ValueError, match="leading shape"):
        batch.unpack(torch.zeros(2, 8))


# random multi-turn trajectories -------------------------------------------------------

@st.composite
def trajectories(draw, max_trajectories=6):
    out = []
    for _ in range(draw(st.integers(1, max_trajectories))):
        chunks, turn = [], 0
        for k in range(draw(st.integers(1, 4))):
            turn += draw(st.integers(0, 2))
            ctx_role = "prompt" if k == 0 else draw(st.sampled_from(["observation", "expert"]))
            chunks.append((ctx_role, draw(st.lists(st.integers(0, 50), min_size=1, max_size=4)), turn))
            if draw(st.booleans()) or k == 0:
                chunks.append(("assistant", draw(st.lists(st.integers(0, 50), min_size=1, max_size=4)), turn))
        n_assistant = sum(len(c[1]) for c in chunks if c[0] == "assistant")
        lps = [-float(i + 1) / 8 for i in range(n_assistant)]
        out.append(Trajectory.from_chunks(chunks, logprobs=lps))
    return out


def expected_labels(tr):
    """Per-position labels of one trajectory from a plain loop over its spans."""
    n = len(tr)
    role, turn = [None] * n, [None] * n
    for s in tr.spans:
        for j in range(s.start, s.end):
            role[j], turn[j] = s.role, s.turn
    mask, target, turns, lps = [], [], [], []
    lp_iter = iter(tr.logprobs.tolist())
    for j in range(n):
        nxt = j + 1
        trained = nxt < n and role[nxt] == "assistant"
        mask.append(trained)
        target.append(int(tr.token_ids[nxt]) if trained else -100)
        turns.append(turn[nxt] if nxt < n else -1)
        lps.append(next(lp_iter) if trained else 0.0)
    return mask, target, turns, lps


@settings(max_examples=40, deadline=None)
@given(trajs=trajectories(), slack=st.integers(0, 12))
def test_pack_properties(trajs, slack):
    budget = max(len(t) for t in trajs) + slack
    batch = pack(trajs, max_tokens=budget)
    R, L = batch.shape
    assert L <= budget
    assert batch.num_tokens == sum(len(t) for t in trajs)
    for i, tr in enumerate(trajs):
        mask, target, turns, lps = expected_labels(tr)
        assert batch.unpack(batch.input_ids)[i].tolist() == tr.token_ids.tolist()
        assert batch.unpack(batch.position_ids)[i].tolist() == list(range(len(tr)))
        assert batch.unpack(batch.seq_ids)[i].tolist() == [i] * len(tr)
        assert batch.unpack(batch.loss_mask)[i].tolist() == mask
        assert batch.unpack(batch.target_ids)[i].tolist() == target
        assert batch.unpack(batch.turn_ids)[i].tolist() == turns
        assert batch.unpack(batch.sampler_logprobs)[i].tolist() == pytest.approx(lps)
    # padding carries no labels, and a label never crosses a sequence boundary
    pad = batch.seq_ids < 0
    assert not batch.loss_mask[pad].any() and (batch.target_ids[pad] == -100).all() and (batch.turn_ids[pad] == -1).all()
    nxt_same = torch.zeros_like(batch.loss_mask)
    nxt_same[:, :-1] = (batch.seq_ids[:, 1:] == batch.seq_ids[:, :-1]) & (batch.position_ids[:, 1:] != 0)
    assert not (batch.loss_mask & ~nxt_same).any()
    # varlen boundaries: every run start (position 0) and the end
    starts = (batch.position_ids.reshape(-1) == 0).nonzero().squeeze(1).tolist()
    assert batch.cu_seqlens.tolist() == starts + [R * L]
    assert batch.max_seqlen == max(b - a for a, b in zip(starts + [R * L], (starts + [R * L])[1:]))
    # never more rows than a trajectory per row, never a row over budget
    assert R <= len(trajs)
    assert all(int((batch.seq_ids[r] >= 0).sum()) <= budget for r in range(R))


# --------------------------------------------------------------------------- curriculum windows


def curriculum_trajectory():
    """turns 0..3: observation then assistant per turn, distinct token ids per turn."""
    chunks = []
    for k in range(4):
        chunks.append(("prompt" if k == 0 else "observation", [10 * k + 1, 10 * k + 2], k))
        chunks.append(("assistant", [10 * k + 5, 10 * k + 6, 10 * k + 7], k))
    return traj(*chunks)


@pytest.mark.parametrize("lo, hi, turns", [(0, 1, {0}), (1, 3, {1, 2}), (2, None, {2, 3}), (0, None, {0, 1, 2, 3}),
                                          (3, 3, set())])
def test_window_selects_exactly_the_assistant_tokens_of_its_turns(lo, hi, turns):
    tr = curriculum_trajectory()
    batch = pack([tr], max_tokens=32)
    sel = batch.window_mask(lo, hi)
    trained_targets = sorted(int(x) for x in batch.target_ids[sel])
    expected = sorted(10 * k + d for k in turns for d in (5, 6, 7))
    assert trained_targets == expected  # no observation token, none of another turn


def test_window_per_trajectory_bounds_f2b_b2f():
    tr = curriculum_trajectory()
    batch = pack([tr, tr], max_tokens=64)
    # f2b: first trajectory trains turns [0, 2); b2f: second trains from checkpoint 3 on
    sel = batch.window_mask(torch.tensor([0, 3]), torch.tensor([2, 100]))
    per_seq = [sorted(int(x) for x in t[m]) for t, m in zip(batch.unpack(batch.target_ids), batch.unpack(sel))]
    assert per_seq == [[5, 6, 7, 15, 16, 17], [35, 36, 37]]


def test_window_mask_padding_and_no_turn_positions():
    loss_mask = torch.tensor([True, True, True, True])
    turn_ids = torch.tensor([0, -1, 1, 1], dtype=torch.int32)
    seq_ids = torch.tensor([0, 0, 1, -1], dtype=torch.int32)
    out = window_mask(loss_mask, turn_ids, seq_ids, torch.tensor([0, 1]), torch.tensor([5, 2]))
    assert out.tolist() == [True, False, True, False]


@pytest.mark.parametrize("change, exc, match", [
    (dict(loss_mask=torch.ones(4, dtype=torch.int32)), TypeError, "loss_mask"),
    (dict(turn_ids=torch.zeros(3, dtype=torch.int32)), ValueError, "turn_ids"),
    (dict(seq_ids=torch.zeros(4)), TypeError, "seq_ids"),
    (dict(seq_ids=torch.full((4,), 2, dtype=torch.int32)), ValueError, "seq_ids must be < len"),
    (dict(lo=torch.zeros(2, 1, dtype=torch.long)), ValueError, "lo"),
    (dict(hi=torch.zeros(3, dtype=torch.long)), ValueError, "hi"),
    (dict(backend="bogus"), ValueError, "backend"),
    (dict(backend="cuda"), ValueError, "backend='cuda'"),
])
def test_window_mask_rejects_bad_input(change, exc, match):
    args = dict(loss_mask=torch.ones(4, dtype=torch.bool), turn_ids=torch.zeros(4, dtype=torch.int32),
                seq_ids=torch.zeros(4, dtype=torch.int32), lo=torch.zeros(2, dtype=torch.long),
                hi=torch.ones(2, dtype=torch.long), backend="torch")
    args.update(change)
    backend = args.pop("backend")
    with pytest.raises(exc, match=match):
        window_mask(**args, backend=backend)


def test_batch_window_rejects_bad_bounds():
    batch = pack(list(two_trajectories()), max_tokens=8)
    with pytest.raises(ValueError, match=r"lo must be an int or have shape \[2\]"):
        batch.window_mask([0, 1, 2])
    with pytest.raises(TypeError, match="hi"):
        batch.window_mask(0, torch.tensor([1.0, 2.0]))


@settings(max_examples=25, deadline=None)
@given(trajs=trajectories(), data=st.data())
def test_window_mask_matches_span_loop(trajs, data):
    batch = pack(trajs, max_tokens=max(len(t) for t in trajs) + 3)
    lo = [data.draw(st.integers(0, 4)) for _ in trajs]
    hi = [data.draw(st.integers(0, 6)) for _ in trajs]
    sel = batch.window_mask(torch.tensor(lo), torch.tensor(hi))
    for i, tr in enumerate(trajs):
        mask, _, turns, _ = expected_labels(tr)
        expected = [m and lo[i] <= k < hi[i] for m, k in zip(mask, turns)]
        assert batch.unpack(sel)[i].tolist() == expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 3000), S=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_window_mask_triton_matches_torch(n, S, seed, triton_device):
    g = torch.Generator().manual_seed(seed)
    loss_mask = torch.rand(n, generator=g) < 0.6
    turn_ids = torch.randint(-1, 8, (n,), generator=g, dtype=torch.int32)
    seq_ids = torch.randint(-1, S, (n,), generator=g, dtype=torch.int32)
    lo = torch.randint(0, 5, (S,), generator=g)
    hi = torch.randint(0, 9, (S,), generator=g)
    ref = window_mask(loss_mask, turn_ids, seq_ids, lo, hi, backend="torch")
    args = [t.to(triton_device) for t in (loss_mask, turn_ids, seq_ids, lo, hi)]
    out = window_mask(*args, backend="triton").cpu()
    assert out.dtype == torch.bool and torch.equal(out, ref)


# --------------------------------------------------------------------------- segment reductions


def loop_segment_sum(values, ids, num):
    out = [0.0] * num
    for v, k in zip(values.reshape(-1).tolist(), ids.reshape(-1).tolist()):
        if k >= 0:
            out[k] += v
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_segment_sum_matches_loop_with_gradient(backend, dtype, request):
    device = request.getfixturevalue("triton_device") if backend == "triton" else torch.device("cpu")
    g = torch.Generator().manual_seed(3)
    values = torch.randn(3, 700, generator=g).to(dtype).requires_grad_()
    ids = torch.randint(-2, 11, (3, 700), generator=g)
    out = segment_sum(values.to(device), ids.to(device), 11, backend=backend).cpu()
    assert out.shape == (11,) and out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), loop_segment_sum(values.detach().double(), ids, 11), rtol=1e-5, atol=1e-4)
    weights = torch.randn(11, generator=g, dtype=out.dtype)
    (out * weights).sum().backward()
    expected_grad = torch.where(ids >= 0, weights[ids.clamp(min=0)].double(), torch.zeros((), dtype=torch.float64))
    assert values.grad.dtype == dtype
    torch.testing.assert_close(values.grad.double(), expected_grad.to(dtype).double())


def test_segment_sum_gradcheck():
    values = torch.randn(20, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, -1, 2] * 5)
    assert torch.autograd.gradcheck(lambda v: segment_sum(v, ids, 4, backend="torch"), (values,))


@settings(max_examples=15, deadline=None)
@given(ids=st.lists(st.integers(-1, 5), max_size=50), seed=st.integers(0, 100))
def test_segment_sum_property(ids, seed):
    ids = torch.tensor(ids, dtype=torch.long)
    values = torch.randn(len(ids), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = segment_sum(values, ids, 6, backend="torch")
    torch.testing.assert_close(out, loop_segment_sum(values, ids, 6))


def test_segment_sum_empty_and_zero_segments(triton_device):
    for backend, d in (("torch", "cpu"), ("triton", triton_device)):
        empty = segment_sum(torch.zeros(0, device=d), torch.zeros(0, dtype=torch.long, device=d), 3, backend=backend)
        assert empty.tolist() == [0.0] * 3
        assert segment_sum(torch.ones(4, device=d), torch.full((4,), -1, device=d), 0, backend=backend).shape == (0,)


@pytest.mark.parametrize("args, exc, match", [
    ((torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 2), TypeError, "values"),
    ((torch.ones(3), torch.zeros(3), 2), TypeError, "segment_ids"),
    ((torch.ones(3), torch.zeros(4, dtype=torch.long), 2), ValueError, "segment_ids shape"),
    ((torch.ones(3), torch.zeros(3, dtype=torch.long), 2.0), TypeError, "num_segments"),
    ((torch.ones(3), torch.zeros(3, dtype=torch.long), -1), ValueError, "num_segments"),
    ((torch.ones(3), torch.tensor([0, 5, 1]), 2), ValueError, "segment_ids must be < num_segments"),
])
def test_segment_sum_rejects_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        segment_sum(*args)


def test_turn_and_sequence_reductions_match_loop():
    a, b = two_trajectories()
    batch = pack([a, b], max_tokens=8)
    values = torch.arange(8, dtype=torch.float32).reshape(1, 8) + 1.0  # position t holds t + 1
    # counted positions (loss_mask): 1,2 (seq0 turn0), 4 (seq0 turn1), 6 (seq1 turn0)
    sums = batch.turn_reduce(values, reduction="sum")
    means = batch.turn_reduce(values, reduction="mean")
    assert sums.tolist() == [[2.0 + 3.0, 5.0], [7.0, 0.0]]
    assert means.tolist() == [[2.5, 5.0], [7.0, 0.0]]
    assert batch.sequence_reduce(values, reduction="sum").tolist() == [10.0, 7.0]
    assert batch.sequence_reduce(values).tolist() == pytest.approx([10.0 / 3, 7.0])
    everything = torch.ones_like(batch.loss_mask)
    # counting every position: turn_ids = [0, 0, 0, 1, 1, -1, 0, -1] (turn of the predicted token);
    # positions 5 and 7 predict nothing and drop out
    assert batch.turn_reduce(values, reduction="sum", mask=everything).tolist() == [[1 + 2 + 3.0, 4 + 5.0], [7.0, 0.0]]


def test_reductions_gradient_and_empty_mean():
    a, b = two_trajectories()
    batch = pack([a, b], max_tokens=8)
    values = torch.ones(1, 8, requires_grad=True)
    none = torch.zeros_like(batch.loss_mask)
    out = batch.sequence_reduce(values, mask=none)
    assert out.tolist() == [0.0, 0.0]
    out.sum().backward()
    assert values.grad.abs().sum() == 0 and not values.grad.isnan().any()
    values.grad = None
    batch.sequence_reduce(values).sum().backward()
    # seq 0 averages 3 counted positions (1, 2, 4), seq 1 one (6)
    torch.testing.assert_close(values.grad, torch.tensor([[0, 1 / 3, 1 / 3, 0, 1 / 3, 0, 1.0, 0]]))


AOT_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import tcod_kernels.triton.packing as K
    assert not K.INTERPRET
    target = GPUTarget("cuda", 90, 32)
    for val, out in (("*bf16", "*fp32"), ("*fp32", "*fp32"), ("*fp64", "*fp64")):
        sig = {"val_ptr": val, "seg_ptr": "*i64", "out_ptr": out, "T": "i32", "BLOCK": "constexpr"}
        triton.compile(ASTSource(fn=K._segment_sum_kernel, signature=sig, constexprs={"BLOCK": 1024}), target=target)
    sig = {"mask_ptr": "*u8", "turn_ptr": "*i32", "seq_ptr": "*i32", "lo_ptr": "*i64", "hi_ptr": "*i64",
           "out_ptr": "*u8", "T": "i32", "BLOCK": "constexpr"}
    k = triton.compile(ASTSource(fn=K._window_mask_kernel, signature=sig, constexprs={"BLOCK": 1024}), target=target)
    assert "cubin" in k.asm
""")


def test_triton_kernels_compile_for_the_gpu(tmp_path):
    """The compiled (non-interpreter) frontend accepts the kernels: ahead-of-time build for sm_90, no GPU needed."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=root, TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    run = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [name for name in available_backends("cuda") if name != "torch"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_packing_kernels_match_torch(backend):
    """Compiled kernels on CUDA (3M tokens, so many blocks) against the torch reference on the same device."""
    g = torch.Generator(device="cuda").manual_seed(0)
    n, S = 3_000_000, 700
    loss_mask = torch.rand(n, generator=g, device="cuda") < 0.6
    turn_ids = torch.randint(-1, 30, (n,), generator=g, device="cuda", dtype=torch.int32)
    seq_ids = torch.randint(-1, S, (n,), generator=g, device="cuda", dtype=torch.int32)
    lo = torch.randint(0, 10, (S,), generator=g, device="cuda")
    hi = lo + torch.randint(0, 20, (S,), generator=g, device="cuda")
    ref = window_mask(loss_mask, turn_ids, seq_ids, lo, hi, backend="torch")
    assert torch.equal(window_mask(loss_mask, turn_ids, seq_ids, lo, hi, backend=backend), ref)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        values = torch.randn(n, generator=g, device="cuda").to(dtype).requires_grad_()
        ids = seq_ids.long() * 30 + turn_ids.long().clamp(min=0)
        out = segment_sum(values, ids, S * 30, backend=backend)
        expected = segment_sum(values.detach().double(), ids, S * 30, backend="torch")
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)
        out.sum().backward()
        assert torch.equal(values.grad, (ids >= 0).to(dtype))
