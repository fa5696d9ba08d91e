"""ALFWorld (text) through TextWorld's PDDL engine, with ALFWorld's handcoded expert.

Games come from one of two places:

* ``source="official"``: ALFWorld's released games under ``$ALFWORLD_DATA/json_2.1.1``
  (``train``, ``valid_seen`` -> dev, ``valid_unseen`` -> test), fetched once with
  ``alfworld-download`` (needs the internet).
* ``source="generated"``: games written offline by :mod:`tcod.envs.alfworld_gen` from the
  floor plans, PDDL domain and goal templates that the ``alfworld`` wheel ships, into
  ``games_dir`` (default ``~/.cache/tcod/alfworld/seed<seed>``), deterministically by
  seed. Missing games are generated on the first ``tasks(split)`` call, each checked by
  the handcoded expert within ``max_steps`` (a few seconds per game; pre-generate with
  ``python -m tcod.envs.alfworld_gen``).
* ``source="auto"`` (default): official when ``$ALFWORLD_DATA/json_2.1.1`` exists,
  generated otherwise.

Task handles are the paths of the ``game.tw-pddl`` files. Reward is 1 on the winning
step, 0 otherwise; ``info["score"]`` is 1.0 once won. Expert actions are the game file's
walkthrough when it has one, else the handcoded expert's actions played to the end.
"""

from __future__ import annotations

import glob
import json
import os

from .base import Observation, TextEnv, check_positive_int, check_split

OFFICIAL_SPLITS = {"train": "train", "dev": "valid_seen", "test": "valid_unseen"}
DOWNLOAD_HINT = ("set $ALFWORLD_DATA to a folder and run `alfworld-download` (it fetches the "
                 "official games from the internet), or use source='generated'")


def _import_textworld():
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        from textworld.envs import PddlEnv
    except ImportError as exc:
        raise ImportError("the ALFWorld environment needs the optional packages 'alfworld' and "
                          "'textworld[pddl]': pip install 'tcod-kernels[envs]'") from exc
    return textworld, PddlEnv, AlfredDemangler, AlfredInfos


def load_game_env(game_file: str, facts: bool = False):
    """A TextWorld env playing ``game_file`` with ALFWorld's name demangling.

    ``facts`` adds the state's logical facts to each state (what ALFWorld's handcoded
    expert reads; slower).
    """
    textworld, PddlEnv, AlfredDemangler, AlfredInfos = _import_textworld()
    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=facts, extras=["gamefile"])
    env = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))
    env.load(game_file)
    return env


def official_data_dir() -> str | None:
    """``$ALFWORLD_DATA/json_2.1.1`` when it exists."""
    root = os.environ.get("ALFWORLD_DATA")
    if root and os.path.isdir(os.path.join(root, "json_2.1.1")):
        return os.path.join(root, "json_2.1.1")
    return None


def _generated_games(folder: str) -> list[str]:
    """Generated game files under ``folder`` in generation order (trial_<seed>_<attempt>)."""
    def order(path):
        _, seed, attempt = os.path.basename(os.path.dirname(path)).split("_")
        return int(seed), int(attempt)

    return sorted(glob.glob(os.path.join(folder, "*", "trial_*", "game.tw-pddl")), key=order)


def _task_text(feedback: str) -> str:
    marker = "Your task is to:"
    return feedback.split(marker, 1)[1].strip() if marker in feedback else ""


class ALFWorldEnv(TextEnv):
    """ALFWorld text games (6 household task types)."""

    name = "alfworld"

    def __init__(self, source: str = "auto", games_dir: str | None = None, seed: int = 0,
                 games_per_split: int = 30, max_steps: int = 30):
        super().__init__(max_steps)
        if source not in ("auto", "official", "generated"):
            raise ValueError(f"source must be 'auto', 'official' or 'generated', got {source!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.games_per_split = check_positive_int("games_per_split", games_per_split)
        _import_textworld()
        official = official_data_dir()
        if source == "official" and official is None:
            raise FileNotFoundError("ALFWorld's official games were not found under "
                                    f"$ALFWORLD_DATA/json_2.1.1: {DOWNLOAD_HINT}")
        self.source = "official" if (source == "official" or (source == "auto" and official)) \
            else "generated"
        self.seed = seed
        if self.source == "official":
            self.games_dir = official
        else:
            self.games_dir = games_dir or os.path.join(
                os.path.expanduser("~"), ".cache", "tcod", "alfworld", f"seed{seed}")
        self._env = None
        self._loaded: str | None = None
        self._won = False

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        if self.source == "official":
            pattern = os.path.join(self.games_dir, OFFICIAL_SPLITS[split], "**", "game.tw-pddl")
            files = sorted(glob.glob(pattern, recursive=True))
            files = [f for f in files if "movable" not in f and "Sliced" not in f]
            return files
        folder = os.path.join(self.games_dir, split)
        files = _generated_games(folder)
        if len(files) < self.games_per_split:
            from .alfworld_gen import generate

            generate(self.games_dir, self.games_per_split - len(files),
                     seed=self.seed * 1000 + len(files), split=split,
                     max_expert_steps=self.max_steps)
            files = _generated_games(folder)
        return files[: self.games_per_split]

    def _reset(self, task: str) -> Observation:
        if not os.path.isfile(task):
            raise ValueError(f"task must be the path of an ALFWorld game file, got {task!r}")
        if self._loaded != task:          # re-parsing a game costs ~1 s: keep the last one
            if self._env is not None:
                self._env.close()
            self._env, self._loaded = load_game_env(task), task
        state = self._env.reset()
        self._won = False
        feedback = state["feedback"].replace("-= Welcome to TextWorld, ALFRED! =-", "").strip()
        return Observation(feedback, self._admissible(state), _task_text(feedback))

    def _step(self, action: str):
        state, _, done = self._env.step(action)
        won = bool(state["won"])
        reward = 1.0 if won and not self._won else 0.0
        self._won = self._won or won
        obs = Observation(state["feedback"].strip(), self._admissible(state), self.task_description)
        info = {"success": self._won, "score": 1.0 if self._won else 0.0}
        return obs, reward, bool(done) or self._won, info

    @staticmethod
    def _admissible(state) -> list[str]:
        return [a for a in state["admissible_commands"] if a != "help"]

    def _expert_actions(self, task: str) -> list[str] | None:
        with open(task) as f:
            walkthrough = json.load(f).get("walkthrough")
        if walkthrough:
            return list(walkthrough)
        from .alfworld_gen import expert_walkthrough

        return expert_walkthrough(task, max_steps=max(50, self.max_steps))

    def _close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env, self._loaded = None, None
