"""The environment protocol shared by every text environment in :mod:`tcod.envs`.

A task handle is a plain string (hashable, JSON-serializable). ``reset(task)`` starts an
episode and returns an :class:`Observation`; ``step(action)`` returns
``(observation, reward, done, info)`` with ``info["success"]`` (bool) and
``info["score"]`` (float, the episode's normalized score so far, in [0, 1] where the
environment has a bounded score). ``reward`` is the change of ``score`` over the step.
Episodes end when the task is won or lost, or after ``max_steps`` steps
(``info["truncated"]`` is then True).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

SPLITS = ("train", "dev", "test")


class EnvironmentCrashed(RuntimeError):
    """The simulator process behind an environment died; make a new environment."""


@dataclass(frozen=True)
class Observation:
    """What the agent sees after ``reset``/``step``.

    ``text``: the environment's feedback; ``admissible_actions``: the actions (or, where
    the environment has too many, compact action templates) valid now; ``task``: the goal
    description a prompt needs.
    """

    text: str
    admissible_actions: list[str] = field(default_factory=list)
    task: str = ""


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def check_positive_int(name: str, value) -> int:
    """Validate a positive integer option."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class TextEnv(abc.ABC):
    """Base class: step counting, truncation, argument checks; subclasses do the rest."""

    name: str = ""

    def __init__(self, max_steps: int):
        self.max_steps = check_positive_int("max_steps", max_steps)
        self._task: str | None = None
        self._steps = 0
        self._done = True
        self._closed = False
        self._last_obs: Observation | None = None
        self._last_info: dict = {}
        self.task_description = ""

    # -- protocol -----------------------------------------------------------------
    @abc.abstractmethod
    def tasks(self, split: str) -> list[str]:
        """Task handles of a split ("train", "dev" or "test"), in a deterministic order."""

    def reset(self, task: str) -> Observation:
        """Start an episode of ``task``."""
        self._check_open()
        if not isinstance(task, str):
            raise TypeError(f"task must be a str handle, got {type(task).__name__}")
        obs = self._reset(task)
        self._task, self._steps, self._done = task, 0, False
        self.task_description = obs.task
        self._last_obs, self._last_info = obs, {"success": False, "score": 0.0}
        return obs

    def step(self, action: str):
        """Play ``action``; returns ``(observation, reward, done, info)``."""
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        self._check_running()
        obs, reward, done, info = self._step(action.strip())
        return self._finish(obs, reward, done, info)

    def noop_step(self, message: str):
        """A turn that does not touch the simulator (e.g. an unparsable model reply).

        It counts toward ``max_steps``; the observation is ``message`` with the previous
        admissible actions, the reward 0 and the score unchanged.
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a str, got {type(message).__name__}")
        self._check_running()
        last = self._last_obs
        obs = Observation(message, list(last.admissible_actions), last.task)
        info = {"success": bool(self._last_info.get("success", False)),
                "score": float(self._last_info.get("score", 0.0)), "noop": True}
        return self._finish(obs, 0.0, False, info)

    def _check_running(self) -> None:
        self._check_open()
        if self._task is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("the episode is over; call reset(task)")

    def _finish(self, obs: Observation, reward, done, info: dict):
        self._steps += 1
        info.setdefault("truncated", False)
        if not done and self._steps >= self.max_steps:
            done, info["truncated"] = True, True
        info["steps"] = self._steps
        self._done = bool(done)
        self._last_obs, self._last_info = obs, info
        return obs, float(reward), bool(done), info

    def expert_actions(self, task: str) -> list[str] | None:
        """A gold action sequence that solves ``task``, or None where the env has none.

        May reset the simulator: call it before ``reset(task)``, not mid-episode.
        """
        self._check_open()
        if not isinstance(task, str):
            raise TypeError(f"task must be a str handle, got {type(task).__name__}")
        self._task, self._done = None, True
        return self._expert_actions(task)

    def close(self) -> None:
        """Release the simulator (idempotent)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- subclass hooks -----------------------------------------------------------
    @abc.abstractmethod
    def _reset(self, task: str) -> Observation: ...

    @abc.abstractmethod
    def _step(self, action: str): ...

    def _expert_actions(self, task: str) -> list[str] | None:  # noqa: B027 - optional hook
        """Gold actions for ``task``; environments without an expert keep this None."""
        return None

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the simulator; environments holding nothing keep this no-op."""

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name or type(self).__name__} environment is closed")
