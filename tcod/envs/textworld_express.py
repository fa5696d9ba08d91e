"""TextWorldExpress (``textworld-express`` on PyPI): 8 fast text games in a bundled JVM.

Games: cookingworld, twc, coin, mapreader, arithmetic, sorting, simonsays, peckingorder.
Task handles are ``"<game>/<seed>"``; the splits are the simulator's own train/dev/test
seed folds (first ``tasks_per_game`` seeds of each fold, per game). ``info["score"]`` is
the simulator's normalized score (1.0 = solved; some games go negative on mistakes),
``reward`` its change over the step, ``info["success"]`` the simulator's task-success
flag. Expert actions are the simulator's gold path. Needs a Java runtime.
"""

from __future__ import annotations

from .base import Observation, TextEnv, check_positive_int, check_split
from .java import JvmSimulator, require_java

GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays",
         "peckingorder")


def _parse_task(task: str) -> tuple[str, int]:
    game, _, seed = task.partition("/")
    if game not in GAMES or not seed.isdigit():
        raise ValueError(f"task must look like '<game>/<seed>' with game in {GAMES}, got {task!r}")
    return game, int(seed)


class TextWorldExpressEnv(JvmSimulator, TextEnv):
    """TextWorldExpress behind the :mod:`tcod.envs` protocol.

    Options: ``games`` (subset of :data:`GAMES`), ``game_params`` (game -> the
    simulator's parameter string, e.g. ``{"coin": "numLocations=4"}``),
    ``tasks_per_game`` (seeds per game and split), ``max_steps``.
    """

    name = "textworld_express"
    simulator_name = "TextWorldExpress"

    def __init__(self, games=GAMES, game_params: dict | None = None, tasks_per_game: int = 50,
                 max_steps: int = 30):
        super().__init__(max_steps)
        games = (games,) if isinstance(games, str) else tuple(games)
        bad = [g for g in games if g not in GAMES]
        if bad or not games:
            raise ValueError(f"games must be a non-empty subset of {GAMES}, got {games!r}")
        game_params = dict(game_params or {})
        if any(g not in GAMES or not isinstance(p, str) for g, p in game_params.items()):
            raise ValueError(f"game_params must map game names {GAMES} to parameter strings, "
                             f"got {game_params!r}")
        self.games = games
        self.game_params = game_params
        self.tasks_per_game = check_positive_int("tasks_per_game", tasks_per_game)
        require_java("TextWorldExpress")
        try:
            from textworld_express import TextWorldExpressEnv as _Sim
        except ImportError as exc:
            raise ImportError("the TextWorldExpress environment needs the optional package "
                              "'textworld-express': pip install 'tcod-kernels[envs]'") from exc
        # The simulator's own step limit is kept above ours; ours truncates.
        self._sim = _Sim(envStepLimit=10 ** 6)
        self._last_score = 0.0
        self._gold_paths: dict[str, list[str]] = {}

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        getter = {"train": "getValidSeedsTrain", "dev": "getValidSeedsDev",
                  "test": "getValidSeedsTest"}[split]
        out = []
        for game in self.games:
            self._call(self._sim.load, game, self.game_params.get(game, ""))
            seeds = sorted(self._call(getattr(self._sim, getter)))[: self.tasks_per_game]
            out += [f"{game}/{s}" for s in seeds]
        return out

    def _start(self, task: str, gold: bool) -> dict:
        game, seed = _parse_task(task)
        split = ("train", "dev", "test")[min(seed // 10000, 2)]
        _, infos = self._call(self._sim.reset, seed, split, game,
                              self.game_params.get(game, ""), gold)
        return infos

    def _reset(self, task: str) -> Observation:
        infos = self._start(task, gold=False)
        self._last_score = 0.0
        return Observation(infos["observation"].strip(), list(infos["validActions"]),
                           infos["taskDescription"].strip())

    def _step(self, action: str):
        _, _, _, infos = self._call(self._sim.step, action)
        score = float(infos["score"])
        reward, self._last_score = score - self._last_score, score
        success = bool(infos["tasksuccess"])
        done = success or bool(infos["taskfailure"])
        obs = Observation(infos["observation"].strip(), list(infos["validActions"]),
                          self.task_description)
        return obs, reward, done, {"success": success, "score": score}

    def _expert_actions(self, task: str) -> list[str]:
        """The simulator's gold path, computed once per task and then reused.

        The simulator's gold-path search is not seeded by the game seed (the same game gives
        paths of different lengths on repeated calls), so the first path found is kept: the
        expert of a task stays the same for the life of this environment.
        """
        if task not in self._gold_paths:
            self._start(task, gold=True)
            self._gold_paths[task] = [str(a) for a in self._call(self._sim.getGoldActionSequence)]
        return list(self._gold_paths[task])
