"""A run killed (SIGKILL) mid-training and resumed with --resume auto ends exactly where an
uninterrupted run ends: same step, curriculum state, optimizer state, weights and metrics."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_trainer import save_tiny_pair, tiny_overrides

from tcod import checkpoint
from tcod.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    return save_tiny_pair(str(tmp_path_factory.mktemp("tiny_models")))
STEPS = 4


def _cmd(paths, out_dir, name, resume=False):
    overrides = tiny_overrides(paths, out_dir, "adaptive", **{
        "train.steps": STEPS, "train.save_every": 1, "train.keep_checkpoints": 0, "train.run_name": name,
        "curriculum.adaptive_min_steps": 1, "curriculum.adaptive_tol": 10.0, "train.eval_tasks": 1,
        "train.schedule": "cosine", "train.warmup_steps": 2})
    return [sys.executable, "-m", "tcod.train", "--config", "alfworld_opd", *overrides] + (["--resume", "auto"] if resume else [])


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")


def _assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_sigkill_then_resume_matches_uninterrupted(tiny_pair, tmp_path):
    out = str(tmp_path)
    from tcod.train import (
        main,  # the uninterrupted run, in this process (same code path as the CLI)
    )

    assert main(_cmd(tiny_pair, out, "full")[3:]) == 0

    killed_dir = os.path.join(out, "killed")
    proc = subprocess.Popen(_cmd(tiny_pair, out, "killed"), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = os.path.join(checkpoint.checkpoint_dir(killed_dir), "step_00000002.pt")
    deadline = time.time() + 300
    while not os.path.exists(target) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = checkpoint.list_checkpoints(killed_dir)
    assert before and len(before) < STEPS and not os.path.exists(os.path.join(killed_dir, "final"))

    # without --resume the folder is protected
    again = subprocess.run(_cmd(tiny_pair, out, "killed"), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 2 and "--resume auto" in again.stderr

    resumed = subprocess.run(_cmd(tiny_pair, out, "killed", resume=True), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = checkpoint.load(checkpoint.latest(os.path.join(out, "full")))
    b = checkpoint.load(checkpoint.latest(killed_dir))
    assert a["step"] == b["step"] == STEPS
    assert a["curriculum"] == b["curriculum"]
    assert a["curriculum"]["depth"] > 1  # the adaptive curriculum did move, so its state matters
    _assert_same(a["scheduler"], b["scheduler"], "scheduler")
    _assert_same(a["optimizer"], b["optimizer"], "optimizer")
    _assert_same(a["model"], b["model"], "model")
    ma, mb = read_metrics(os.path.join(out, "full")), read_metrics(killed_dir)
    assert [m["step"] for m in mb] == list(range(1, STEPS + 1))
    timing = ("rollout_s", "update_s", "step_s", "tokens_per_s", "peak_mem_gb")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(ma) == strip(mb)
