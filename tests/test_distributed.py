"""Two CPU processes (torchrun, gloo, DDP through accelerate) train like one process.

Episodes are seeded per task slot and loss normalizers are reduced over processes, so a
2-process run must reproduce the 1-process run: same rollouts and losses, and final weights
that differ only by float summation order.
"""

import os
import socket
import subprocess
import sys

import pytest
from test_trainer import save_tiny_pair, tiny_overrides

from tcod import checkpoint
from tcod.config import load_config
from tcod.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    return save_tiny_pair(str(tmp_path_factory.mktemp("tiny_models")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tiny_pair, tmp_path):
    from tcod.trainer import Trainer

    extra = {"train.steps": 2, "train.eval_tasks": 2, "curriculum.eta": 1}
    one_cfg = load_config("alfworld_opd", tiny_overrides(tiny_pair, str(tmp_path), "f2b", **extra,
                                                           **{"train.run_name": "one"}))
    trainer = Trainer(one_cfg, os.path.join(str(tmp_path), "one"))
    w0 = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    try:
        trainer.train()
    finally:
        trainer.close()

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tcod.train", "--config", "alfworld_opd",
           *tiny_overrides(tiny_pair, str(tmp_path), "f2b", **extra, **{"train.run_name": "two"})]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    two = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    m1, m2 = read_metrics(os.path.join(str(tmp_path), "one")), read_metrics(os.path.join(str(tmp_path), "two"))
    assert [m["processes"] for m in m1] == [1, 1] and [m["processes"] for m in m2] == [2, 2]
    assert len(m2) == 2  # only the main process writes
    for a, b in zip(m1, m2):
        assert a["episodes"] == b["episodes"] == 2
        for key in ("trained_tokens", "tokens", "rounds", "depth", "eval/dev/episodes"):
            assert a.get(key) == b.get(key), key
        for key in ("loss", "kl_traj", "kl_token", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), key

    wa = checkpoint.load(checkpoint.latest(os.path.join(str(tmp_path), "one")))["model"]
    wb = checkpoint.load(checkpoint.latest(os.path.join(str(tmp_path), "two")))["model"]
    moved = sum(float((wa[k] - w0[k]).double().norm() ** 2) for k in wa) ** 0.5
    apart = sum(float((wa[k] - wb[k]).double().norm() ** 2) for k in wa) ** 0.5
    assert moved > 1e-3          # training changed the weights
    assert apart < 1e-3 * moved  # and both runs changed them the same way (measured: ~5e-5)
