"""Packing throughput and padding saved on a realistic multi-turn length distribution.

    pytest bench/bench_packing.py --benchmark-only

Workload (seeded): 64 trajectories of 5-30 turns, 20-200 tokens a turn (an observation and
an action of 10-40% of the turn), after a 64-token system prompt. Two ways of feeding it:

* ``trajectory``: whole multi-turn trajectories, rows of 8192 tokens;
* ``prefix``: one sample per turn, prompt = the last 2 observation/action pairs + the
  current observation, response = the action (the paper's prompt format), rows of 2048.

``extra_info``: ``tokens_per_s`` (real tokens packed per second), ``padding_saved`` (1 -
packed slots / right-padded slots, right padding being every sample padded to the longest),
and the slot counts. The curriculum window and segment-sum kernels are timed on the packed
trajectory batch for every backend available on the device.
"""

import random

import pytest
import torch

from tcod_kernels.api import available_backends
from tcod_kernels.packing import Trajectory, pack, segment_sum, window_mask

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BUDGETS = {"trajectory": 8192, "prefix": 2048}


def _turns(seed=0, n=64):
    """Per trajectory: list of (observation ids, action ids) per turn."""
    rng = random.Random(seed)

    def ids(k):
        return [rng.randrange(1, 32000) for _ in range(k)]

    out = []
    for _ in range(n):
        turns = []
        for _ in range(rng.randint(5, 30)):
            size = rng.randint(20, 200)
            action = max(1, int(size * rng.uniform(0.1, 0.4)))
            turns.append((ids(size - action), ids(action)))
        out.append(turns)
    return out


def workload(kind: str, seed=0):
    system = list(range(1, 65))
    samples = []
    for turns in _turns(seed):
        if kind == "trajectory":
            chunks = [("prompt", system, 0)]
            for k, (obs, act) in enumerate(turns):
                chunks += [("observation", obs, k), ("assistant", act, k)]
            samples.append(Trajectory.from_chunks(chunks))
        else:
            for k, (obs, act) in enumerate(turns):
                history = [tok for o, a in turns[max(0, k - 2):k] for tok in o + a]
                samples.append(Trajectory.from_chunks([("prompt", system + history + obs, k), ("assistant", act, k)]))
    return samples


@pytest.mark.parametrize("kind", ["trajectory", "prefix"])
def test_pack_throughput(benchmark, kind):
    samples = workload(kind)
    budget = BUDGETS[kind]
    batch = benchmark(pack, samples, budget)
    tokens = sum(len(t) for t in samples)
    packed_slots = batch.shape[0] * batch.shape[1]
    naive_slots = len(samples) * max(len(t) for t in samples)
    benchmark.extra_info.update(
        samples=len(samples), tokens=tokens, rows=batch.shape[0], row_len=batch.shape[1], budget=budget,
        packed_slots=packed_slots, right_padded_slots=naive_slots,
        padding_saved=round(1 - packed_slots / naive_slots, 4),
        packed_fill=round(tokens / packed_slots, 4), right_padded_fill=round(tokens / naive_slots, 4),
    )
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_s"] = round(tokens / benchmark.stats.stats.mean)
    assert batch.num_tokens == tokens and packed_slots < naive_slots


@pytest.fixture(scope="module")
def packed():
    return pack(workload("trajectory"), BUDGETS["trajectory"], device=DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backend", available_backends(DEVICE))
def test_window_mask(benchmark, packed, backend):
    S = packed.num_sequences
    lo = torch.randint(0, 5, (S,), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    hi = lo + 10

    def run():
        out = window_mask(packed.loss_mask, packed.turn_ids, packed.seq_ids, lo, hi, backend=backend)
        _sync()
        return out

    out = benchmark(run)
    ref = window_mask(packed.loss_mask, packed.turn_ids, packed.seq_ids, lo, hi, backend="torch")
    benchmark.extra_info.update(device=str(DEVICE), tokens=packed.loss_mask.numel())
    assert torch.equal(out, ref)


@pytest.mark.parametrize("backend", available_backends(DEVICE))
def test_segment_sum_per_turn(benchmark, packed, backend):
    values = torch.randn(packed.shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    seg, num = packed.turn_segments()

    def run():
        out = segment_sum(values, seg, num, backend=backend)
        _sync()
        return out

    out = benchmark(run)
    ref = segment_sum(values, seg, num, backend="torch")
    benchmark.extra_info.update(device=str(DEVICE), tokens=values.numel(), segments=num)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
