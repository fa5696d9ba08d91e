"""Trainer step throughput and peak memory: fused losses vs the same step with materialized logits.

One measured call is :meth:`tcod.trainer.Trainer.update` on a fixed batch of synthetic
multi-turn trajectories (half of the tokens are the student's, with sampler log-probs):
pack -> student and teacher forward to last hidden states -> loss -> backward -> AdamW step.
``impl="fused"`` is the trainer as shipped (tcod_kernels, no logits tensor);
``impl="materialized"`` swaps in :mod:`tcod_kernels.reference`, which forms the
``[tokens x vocab]`` logits of both models, everything else unchanged.
Both loss kinds are measured: the paper's sampled-token OPD and the full-vocabulary KL.

``extra_info``: ``tokens_per_s`` (packed tokens per second of the update), peak memory
(``peak_extra_mb``: CPU resident-set growth of one step in a fresh process, via
``/proc/self/clear_refs``; ``peak_gb``: ``torch.cuda.max_memory_allocated`` on a GPU).
CPU sizes by default (student H=256, teacher H=384, V=16384, 2 x 1024 tokens); on CUDA,
Qwen2.5-1.5B/7B widths and vocabularies (151936 / 152064 rows) with 2 layers each, bf16,
8 x 2048 tokens. Run: ``pytest bench/bench_trainer.py --benchmark-only``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CUDA = torch.cuda.is_available()
if CUDA:
    SIZES = dict(student=(1536, 151936), teacher=(3584, 152064), layers=2, trajectories=8, length=2048,
                 row=8192, dtype="bfloat16")
else:
    SIZES = dict(student=(256, 16384), teacher=(384, 16384 + 128), layers=2, trajectories=2, length=1024,
                 row=2048, dtype="float32")


class _NoEnv:
    """The trainer asks its environment for the task list only; the bench feeds episodes directly."""

    def tasks(self, split):
        return ["synthetic"]

    def close(self):
        pass


def _model(hidden, vocab, seed):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    heads = hidden // (128 if CUDA else 64)  # head_dim 128 like Qwen2.5 on GPU
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=SIZES["layers"], num_attention_heads=heads, num_key_value_heads=2,
                         max_position_embeddings=2 * SIZES["length"], tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).to(getattr(torch, SIZES["dtype"]))


class _Tok:
    pad_token_id = 0


def _episodes():
    """Synthetic trajectories: 4 turns of (observation, assistant) chunks, half assistant tokens."""
    from tcod.curriculum import Window
    from tcod.rollout import Episode
    from tcod_kernels.packing import Trajectory

    g = torch.Generator().manual_seed(0)
    V, n, turns = SIZES["student"][1], SIZES["length"], 4
    per = n // (2 * turns)
    episodes = []
    for _ in range(SIZES["trajectories"]):
        chunks = []
        for t in range(turns):
            chunks.append(("prompt" if t == 0 else "observation", torch.randint(0, V, (per,), generator=g), t))
            chunks.append(("assistant", torch.randint(0, V, (per,), generator=g), t))
        lp = -torch.rand(turns * per, generator=g) * 5
        ep = Episode("synthetic", Window(0, turns), student_turns=turns)
        ep.samples = [Trajectory.from_chunks(chunks, logprobs=lp)]
        episodes.append(ep)
    return episodes


def _use_reference(setattr_):
    """Swap the fused kernels for the naive reference that materializes the logits."""
    import tcod.losses
    import tcod.teacher
    import tcod.trainer
    from tcod_kernels import reference

    def logprobs(*args, backend=None, **kwargs):
        return reference.fused_logprobs(*args, **kwargs)

    def kl(*args, backend=None, **kwargs):
        return reference.fused_kl(*args, **kwargs)

    setattr_(tcod.trainer, "fused_logprobs", logprobs)
    setattr_(tcod.teacher, "fused_logprobs", logprobs)
    setattr_(tcod.losses, "fused_kl", kl)


def build(kind: str, impl: str, setattr_=setattr):
    """A Trainer on the bench models and a function running one update."""
    from tcod.config import load_config
    from tcod.trainer import Trainer

    if impl == "materialized":
        _use_reference(setattr_)
    device = "cuda" if CUDA else "cpu"
    cfg = load_config("alfworld_opd", [
        f"loss.kind={kind}", f"train.micro_batch_tokens={SIZES['row']}", "env.max_steps=4", "rollout.tasks_per_step=1",
        f"train.device={device}", "train.tensorboard=false", "train.progress=false", "model.attn_implementation=sdpa",
        f"model.dtype={SIZES['dtype']}", f"model.teacher_dtype={SIZES['dtype']}", "train.lr=1e-6"])
    student = _model(*SIZES["student"], seed=0)
    teacher = _model(*SIZES["teacher"], seed=1).requires_grad_(False)
    vocab = min(SIZES["student"][1], SIZES["teacher"][1])
    run_dir = tempfile.mkdtemp(prefix="bench_trainer_")
    trainer = Trainer(cfg, run_dir, models=(student.to(device), teacher, _Tok(), vocab), envs=[_NoEnv()])
    episodes = _episodes()
    tokens = sum(len(s) for e in episodes for s in e.samples)

    def step():
        trainer.update(0, episodes)
        if CUDA:
            torch.cuda.synchronize()

    return step, tokens


def _probe(kind: str, impl: str) -> None:
    """Prints the resident-set growth (bytes) of one update after a warm-up update."""
    from _memprobe import peak_rss_growth

    step, _ = build(kind, impl)
    print(peak_rss_growth(step))


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("kind", ["sampled", "full"])
def test_trainer_update(benchmark, monkeypatch, kind, impl):
    step, tokens = build(kind, impl, monkeypatch.setattr)
    step()  # warm-up
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    benchmark.group = f"trainer update, {kind} loss"
    benchmark.pedantic(step, rounds=3, iterations=1)
    info = benchmark.extra_info
    info.update(tokens=tokens, tokens_per_s=round(tokens / benchmark.stats.stats.mean, 1),
                device=torch.cuda.get_device_name() if CUDA else "cpu", threads=torch.get_num_threads(), **{
                    "student": SIZES["student"], "teacher": SIZES["teacher"]})
    if CUDA:
        info["peak_gb"] = round((torch.cuda.max_memory_allocated() - before) / 1e9, 3)
    else:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), kind, impl], check=True,
                             capture_output=True, text=True, cwd=ROOT)
        info["peak_extra_mb"] = round(int(out.stdout.strip().splitlines()[-1]) / 2**20, 1)


if __name__ == "__main__":
    _probe(*sys.argv[1:3])
