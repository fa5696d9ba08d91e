"""Evaluation at full depth: success rate and average rounds per split.

Every episode starts from the task's first turn and may run ``env.max_steps`` turns (no
curriculum, no expert replay), sampled at the evaluation temperature. With several
processes each evaluates its share of the tasks and the sums are reduced.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

from tcod.curriculum import Window
from tcod.rollout import Job, RolloutRunner


def eval_seed(seed: int, step: int, index: int) -> int:
    """Sampling seed of evaluation episode ``index`` at ``step`` (independent of training seeds)."""
    return ((seed * 100_003 + step) * 8_191 + index + 7) % 2**40


def evaluate(runner: RolloutRunner, envs: Sequence, tasks: Sequence[str], *, max_turns: int, seed: int, step: int,
             rank: int = 0, world: int = 1, reduce_sum: Callable = None) -> Dict[str, float]:
    """``{"success", "rounds", "score", "episodes"}`` over ``tasks`` (this rank plays ``tasks[rank::world]``)."""
    jobs = [Job(task, Window(0, max_turns), eval_seed(seed, step, i))
            for i, task in list(enumerate(tasks))[rank::world]]
    episodes = runner.run(envs, jobs) if jobs else []
    sums = [float(len(episodes)), float(sum(e.success for e in episodes)),
            float(sum(e.rounds for e in episodes)), float(sum(e.score for e in episodes))]
    if reduce_sum is not None:
        sums = reduce_sum(sums)
    n = max(sums[0], 1.0)
    return {"episodes": sums[0], "success": sums[1] / n, "rounds": sums[2] / n, "score": sums[3] / n}
