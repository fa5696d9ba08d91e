"""Success rate of a model playing an environment with the trainer's own rollout code.

The episodes are played exactly as the trainer's evaluation plays them
(:class:`tcod.rollout.RolloutRunner` in ``window`` mode with the shared prompt, full depth
from the first turn, sampled at a low temperature), so the number a demo build reports is
the number a training run starts from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def evaluate_agent(model, tokenizer, make_env: Callable, tasks: Sequence[str], *, max_turns: int,
                   history: int = 2, temperature: float = 0.4, num_envs: int = 8, seed: int = 0,
                   max_turn_tokens: int = 48) -> dict:
    """``{"success", "rounds", "score", "episodes"}`` of ``model`` over ``tasks``.

    ``make_env()`` builds one environment; ``min(num_envs, len(tasks))`` of them play in
    parallel and are closed afterwards.
    """
    from tcod.evaluate import evaluate
    from tcod.rollout import RolloutRunner

    runner = RolloutRunner(model, tokenizer, context="window", history=history, max_turn_tokens=max_turn_tokens,
                           max_context_tokens=max(4096, 4 * max_turn_tokens), temperature=temperature)
    envs = [make_env() for _ in range(max(1, min(num_envs, len(tasks))))]
    try:
        return evaluate(runner, envs, list(tasks), max_turns=max_turns, seed=seed, step=0)
    finally:
        for env in envs:
            env.close()
