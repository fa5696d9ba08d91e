"""ScienceWorld (``scienceworld`` on PyPI): 30 elementary-science task types in a bundled JVM.

Task handles are ``"<task name>/<variation>"``; splits are the simulator's own
train/dev/test variations of each task type. Observations are kept compact for prompts:
``text`` is the step's feedback followed by the current room (when the action did not
already show it) and the inventory; ``admissible_actions`` lists the valid actions with
zero or one object in full, each object under its shortest name (``open door to
kitchen``, ``focus on water``), and the two-object action templates once each (``move OBJ to OBJ``), instead of the full
action x object x object product (thousands of strings).

Scores: ScienceWorld scores an episode 0-100. Here ``info["score"]`` is score/100 in
[0, 1] (negative when the simulator flags a failed task), ``reward`` its change over the
step, ``info["success"]`` True when the task is completed with score 100. Expert actions
come from ``get_gold_action_sequence()``. Needs a Java runtime.
"""

from __future__ import annotations

from .base import Observation, TextEnv, check_split
from .java import JvmSimulator, require_java

# Simulator meta-commands that are never useful to an agent.
_META_ACTIONS = {"reset task"}


class ScienceWorldEnv(JvmSimulator, TextEnv):
    """ScienceWorld behind the :mod:`tcod.envs` protocol.

    Options: ``task_names`` (subset of the 30 task names; default all),
    ``simplification`` (ScienceWorld's simplification string, e.g. ``"easy"``),
    ``max_variations`` (cap per task type and split, None = all), ``max_steps``.
    """

    name = "scienceworld"
    simulator_name = "ScienceWorld"

    def __init__(self, task_names=None, simplification: str = "", max_variations: int | None = None,
                 max_steps: int = 30):
        super().__init__(max_steps)
        if not isinstance(simplification, str):
            raise TypeError(f"simplification must be a str, got {type(simplification).__name__}")
        if max_variations is not None and (isinstance(max_variations, bool)
                                           or not isinstance(max_variations, int) or max_variations < 1):
            raise ValueError(f"max_variations must be None or a positive int, got {max_variations!r}")
        require_java("ScienceWorld")
        try:
            from scienceworld import ScienceWorldEnv as _Sim
        except ImportError as exc:
            raise ImportError("the ScienceWorld environment needs the optional package "
                              "'scienceworld': pip install 'tcod-kernels[envs]'") from exc
        self._sim = _Sim("", envStepLimit=10 ** 6)
        all_names = list(self._call(self._sim.get_task_names))
        if task_names is None:
            task_names = all_names
        task_names = [task_names] if isinstance(task_names, str) else list(task_names)
        bad = [t for t in task_names if t not in all_names]
        if bad or not task_names:
            self.close()
            raise ValueError(f"task_names must be a non-empty subset of {all_names}, got {task_names!r}")
        self.task_names = task_names
        self.simplification = simplification
        self.max_variations = max_variations
        self._variations: dict[str, dict[str, list[int]]] = {}
        self._last_score = 0.0

    def _split_variations(self, name: str) -> dict[str, list[int]]:
        if name not in self._variations:
            self._call(self._sim.load, name, 0, self.simplification, False)
            self._variations[name] = {
                "train": sorted(self._call(self._sim.get_variations_train)),
                "dev": sorted(self._call(self._sim.get_variations_dev)),
                "test": sorted(self._call(self._sim.get_variations_test))}
        return self._variations[name]

    def tasks(self, split: str) -> list[str]:
        check_split(split)
        out = []
        for name in self.task_names:
            variations = self._split_variations(name)[split][: self.max_variations]
            out += [f"{name}/{v}" for v in variations]
        return out

    def _load(self, task: str, gold: bool) -> None:
        name, _, var = task.rpartition("/")
        if name not in self.task_names or not var.isdigit():
            raise ValueError(f"task must look like '<task name>/<variation>' with a task name in "
                             f"{self.task_names}, got {task!r}")
        self._call(self._sim.load, name, int(var), self.simplification, gold)

    def _observe(self, feedback: str, action: str) -> Observation:
        server = self._sim.server
        parts = [feedback.strip()]
        if action not in ("look around", ""):
            parts.append(self._call(server.freeActionLook).strip())
        if action != "inventory":
            parts.append(self._call(server.freeActionInventory).strip())
        return Observation("\n\n".join(parts), self._admissible(), self.task_description)

    def _admissible(self) -> list[str]:
        combos = self._call(self._sim.get_valid_action_object_combinations_with_templates)
        templates = self._call(self._sim.get_possible_actions)
        single: dict[tuple, str] = {}      # (template, object) -> its shortest wording
        double: list[str] = []
        for combo in combos:
            tid, action = combo["template_id"], combo["action"]
            if len(combo["obj_ids"]) >= 2:
                template = templates[tid] if tid < len(templates) else action
                if template not in double:
                    double.append(template)
                continue
            key = (tid, tuple(combo["obj_ids"]))
            if key not in single or len(action) < len(single[key]):
                single[key] = action
        out = list(dict.fromkeys(a for a in single.values() if a not in _META_ACTIONS))
        return out + double

    def _reset(self, task: str) -> Observation:
        self._load(task, gold=False)
        self._call(self._sim.server.reset)
        self._last_score = 0.0
        desc = self._call(self._sim.server.freeActionTaskDesc).strip()
        self.task_description = desc.removeprefix("Task Description:").strip()
        feedback = self._call(self._sim.server.step, "look around")
        obs = self._observe(feedback, "look around")
        return Observation(obs.text, obs.admissible_actions, self.task_description)

    def _step(self, action: str):
        server = self._sim.server
        feedback = self._call(server.step, action)
        score = float(self._call(server.getScore))
        completed = bool(self._call(server.getCompleted))
        reward, self._last_score = score - self._last_score, score
        success = completed and score >= 1.0
        done = completed or score < 0
        return self._observe(feedback, action), reward, done, {"success": success, "score": score}

    def _expert_actions(self, task: str) -> list[str]:
        self._load(task, gold=True)
        return [str(a) for a in self._call(self._sim.get_gold_action_sequence)]
