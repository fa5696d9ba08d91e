"""Supervised turns from an environment's gold trajectories, in the shared prompt format.

Each turn of a gold episode becomes one example: the chat messages a rollout would send
(:func:`tcod.envs.prompt.build_messages`: task, last ``history`` observation/action
pairs, current observation, admissible actions) and the reply the agent should give,
``<think>...</think><action>...</action>`` with the gold action.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcod.envs.prompt import build_messages


@dataclass(frozen=True)
class Turn:
    """One supervised turn: the chat messages before the reply, and the reply."""

    messages: list
    response: str


def expert_response(action: str) -> str:
    """The reply that plays ``action``: a one-line thought, then the action tag."""
    return f"<think>I should {action}.</think><action>{action}</action>"


def gold_turns(env, task: str, *, history: int = 2, env_name: str | None = None) -> list[Turn]:
    """Every turn of ``task``'s gold episode; empty when the env has no expert path.

    The gold actions are replayed in ``env``, so each prompt shows exactly what the
    agent would see at that point of the episode.
    """
    actions = env.expert_actions(task)
    if not actions:
        return []
    obs = env.reset(task)
    past, turns = [], []
    for action in actions:
        messages = build_messages(obs.task, obs, past, history_length=history, env_name=env_name)
        turns.append(Turn(messages, expert_response(action)))
        past.append((obs.text, action))
        obs, _, done, _ = env.step(action)
        if done:
            break
    return turns


def prompt_texts(env, task: str, *, history: int = 2, env_name: str | None = None) -> list[str]:
    """Prompt and reply texts of ``task``'s gold episode: tokenizer training text."""
    out = []
    for turn in gold_turns(env, task, history=history, env_name=env_name):
        out += [m["content"] for m in turn.messages] + [turn.response]
    return out
