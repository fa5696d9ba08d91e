"""Per-step metrics: ``metrics.jsonl`` in the run folder, TensorBoard when installed, wandb when asked.

One JSON object per line, ``{"step": n, "loss": ..., "kl/turn_3": ..., "eval/dev/success": ...}``.
Only the main process writes. On resume, lines of steps after the checkpoint (written by
the killed run after its last save) are dropped so the file reads like one clean run.
"""

from __future__ import annotations

import json
import math
import os
import resource
from typing import Optional

import torch

METRICS_FILE = "metrics.jsonl"


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def read_metrics(run_dir: str) -> list:
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class MetricsLogger:
    """Writes metric dicts; a no-op on non-main processes."""

    def __init__(self, run_dir: str, *, main: bool = True, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "tcod", config: Optional[dict] = None, resume_step: Optional[int] = None):
        self.main = main
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.tb = None
        self.wandb = None
        if not main:
            return
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as exc:
                raise ValueError("train.wandb=true needs the wandb package installed") from exc
            self.wandb = wandb_module.init(project=wandb_project, config=config, dir=run_dir,
                                           name=os.path.basename(run_dir.rstrip("/")))

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        record = {"step": step}
        for k, v in metrics.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else None
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and v is not None and self.tb is not None:
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
