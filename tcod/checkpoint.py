"""Atomic, resumable checkpoints of a training run.

A checkpoint is one file ``<run>/checkpoints/step_<NNNNNNNN>.pt`` holding the student's
state dict, the optimizer and scheduler state, the curriculum state, the random-number
generator states (python, numpy, torch, CUDA) and the step. It is written to a temporary
file in the same folder and moved into place with ``os.replace``, so a run killed while
saving leaves either the old set of checkpoints or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
import re
from typing import Optional

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: str, step: int, state: dict, keep: int = 2) -> str:
    """Writes ``state`` (plus ``step``) atomically; keeps the newest ``keep`` checkpoints (0: all)."""
    folder = checkpoint_dir(run_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step_{step:08d}.pt")
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(dict(state, step=step), tmp)
    with open(tmp, "rb") as fh:  # flush to disk before the rename makes it visible
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            os.remove(old)
    return path


def list_checkpoints(run_dir: str) -> list:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if _NAME.match(n))
    return [os.path.join(folder, n) for n in names]


def latest(run_dir: str) -> Optional[str]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load(path: str) -> dict:
    """The state dict saved by :func:`save` (on CPU)."""
    return torch.load(path, map_location="cpu", weights_only=False)
