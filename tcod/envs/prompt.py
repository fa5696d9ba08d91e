"""Prompts for text-environment agents and a tolerant parser for their replies.

The prompt follows the TCOD paper's setup: the task, the last ``history_length``
(default 2) observation/action pairs, the current observation and the admissible
actions; the model is asked to reason inside ``<think>...</think>`` and answer with one
action inside ``<action>...</action>``. :func:`parse_action` extracts that action and
:func:`step_text` turns a raw model reply into an environment step: an unparsable reply
becomes a no-op turn whose observation says ``Invalid action.``, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import Observation, TextEnv

INVALID_ACTION = "Invalid action."
MAX_ACTION_CHARS = 300

_INTRO = {
    "alfworld": "You are an expert agent acting in a household (ALFWorld).",
    "scienceworld": "You are an expert agent doing science experiments in a text world (ScienceWorld).",
    "webshop": "You are an expert agent shopping on a web store (WebShop).",
    "textworld_express": "You are an expert agent playing a text game (TextWorldExpress).",
}
_DEFAULT_INTRO = "You are an expert agent acting in a text environment."
_ACTION = re.compile(r"<action>(.*?)(?:</action>|\Z)", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.IGNORECASE | re.DOTALL)


def build_prompt(task: str, observation: Observation | str, history: Sequence[tuple[str, str]] = (),
                 *, admissible_actions: Sequence[str] | None = None, history_length: int = 2,
                 step: int | None = None, env_name: str | None = None) -> str:
    """The user prompt for the next action.

    ``history``: the episode's earlier (observation text, action) pairs, oldest first;
    only the last ``history_length`` are shown. ``admissible_actions`` defaults to
    ``observation.admissible_actions``. ``step`` (0-based turn index) defaults to
    ``len(history)``.
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a str, got {type(task).__name__}")
    if isinstance(history_length, bool) or not isinstance(history_length, int) or history_length < 0:
        raise ValueError(f"history_length must be an int >= 0, got {history_length!r}")
    if isinstance(observation, Observation):
        text = observation.text
        if admissible_actions is None:
            admissible_actions = observation.admissible_actions
    elif isinstance(observation, str):
        text = observation
    else:
        raise TypeError(f"observation must be an Observation or str, got {type(observation).__name__}")
    history = list(history)
    if any(not (isinstance(h, (tuple, list)) and len(h) == 2) for h in history):
        raise ValueError("history must be a sequence of (observation, action) pairs")
    step = len(history) if step is None else step
    shown = history[len(history) - history_length:] if history_length else []

    lines = [_INTRO.get(env_name or "", _DEFAULT_INTRO), f"Your task is to: {task.strip()}"]
    if shown:
        first = step - len(shown)
        lines.append(f"You have taken {step} step(s) so far. Your last {len(shown)} "
                     "observation(s) and action(s):")
        for i, (obs_text, action) in enumerate(shown):
            lines.append(f"[Step {first + i + 1}] Observation: {obs_text.strip()}\n"
                         f"[Step {first + i + 1}] Action: {action.strip()}")
    lines.append(f"[Step {step + 1}] Current observation: {text.strip()}")
    if admissible_actions:
        lines.append("Admissible actions: [" + ", ".join(f"'{a}'" for a in admissible_actions) + "]")
    lines.append("Think step by step about the situation inside <think> </think> tags, then "
                 "give exactly one admissible action inside <action> </action> tags.")
    return "\n\n".join(lines)


def build_messages(task: str, observation: Observation | str, history: Sequence[tuple[str, str]] = (),
                   *, system: str | None = None, **kwargs) -> list[dict[str, str]]:
    """Chat messages (an optional system message, then the :func:`build_prompt` user turn)."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": build_prompt(task, observation, history, **kwargs)}]


def parse_action(text: str) -> str | None:
    """The action inside the reply's last ``<action>...</action>``; None when there is none.

    Tolerates a missing closing tag at the end (generation stopped at ``</action>``),
    tag case, surrounding whitespace and quotes; ignores tags inside ``<think>``. Blank
    or over-long (> ``MAX_ACTION_CHARS``) actions count as missing.
    """
    if not isinstance(text, str):
        return None
    found = _ACTION.findall(_THINK.sub("", text))
    if not found:
        return None
    action = " ".join(found[-1].split()).strip("'\"`")
    action = action.strip()
    if not action or len(action) > MAX_ACTION_CHARS:
        return None
    return action


def step_text(env: TextEnv, model_output: str, invalid_message: str = INVALID_ACTION):
    """One turn from a raw model reply: ``(observation, reward, done, info)``.

    A reply without a usable action is a no-op turn (it counts toward ``max_steps``):
    the simulator is not touched, the observation text is ``invalid_message`` and
    ``info["invalid_format"]`` is True. ``info["action"]`` is the parsed action or None.
    """
    action = parse_action(model_output)
    if action is None:
        obs, reward, done, info = env.noop_step(invalid_message)
        info["invalid_format"] = True
    else:
        obs, reward, done, info = env.step(action)
        info.setdefault("invalid_format", False)
    info["action"] = action
    return obs, reward, done, info
