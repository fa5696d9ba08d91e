"""Text environments for multi-turn agents, behind one protocol (see :mod:`tcod.envs.base`).

::

    import tcod.envs
    env = tcod.envs.make("textworld_express")
    task = env.tasks("train")[0]
    obs = env.reset(task)
    obs, reward, done, info = env.step(obs.admissible_actions[0])

Importing this package needs neither Java nor the optional environment packages: each
environment module is imported when ``make`` asks for it.
"""

from __future__ import annotations

import importlib

from .base import SPLITS, EnvironmentCrashed, Observation, TextEnv
from .java import JavaNotFoundError

# name -> (module, class)
_REGISTRY = {
    "scienceworld": ("tcod.envs.scienceworld", "ScienceWorldEnv"),
    "alfworld": ("tcod.envs.alfworld", "ALFWorldEnv"),
    "webshop": ("tcod.envs.webshop", "make_webshop"),
    "textworld_express": ("tcod.envs.textworld_express", "TextWorldExpressEnv"),
}


def available() -> list[str]:
    """Names accepted by :func:`make`."""
    return sorted(_REGISTRY)


def make(name: str, **options) -> TextEnv:
    """Build the environment ``name`` with its ``options`` (see each module)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown environment name {name!r}; available: {available()}")
    module, attr = _REGISTRY[name]
    return getattr(importlib.import_module(module), attr)(**options)


__all__ = ["EnvironmentCrashed", "JavaNotFoundError", "Observation", "SPLITS", "TextEnv",
           "available", "make"]
