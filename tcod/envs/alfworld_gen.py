"""Generate ALFWorld-format text games offline, from what the ``alfworld`` wheel ships.

The official ALFWorld games are PDDL problems written by ALFRED's THOR-based generator.
The wheel ships the pieces needed to write new ones without THOR: the PDDL domain
(``alfred.pddl``), the text grammar (``alfred.twl2``), the floor plans of the 120 ALFRED
rooms (receptacle instances and their poses, object types per room), the goal PDDL and
instruction templates of each task type (``goal_library``) and which receptacle holds
which object (``constants``). This module samples, deterministically from a seed, a
room, a task of one of the 6 ALFWorld types, and an initial placement of objects, then
writes each game as ALFWorld lays it out on disk::

    OUT/<split>/<task_type>-<Object>-<Mrecep>-<Parent>-<scene>/trial_<seed>_<i>/
        initial_state.pddl   the PDDL problem
        traj_data.json       task type + pddl_params (what the handcoded expert reads)
        game.tw-pddl         domain + grammar (with the instruction) + problem

Command line::

    python -m tcod.envs.alfworld_gen --out DIR -n 60 --seed 0 [--split train]

Games whose handcoded expert does not win are discarded (``verify=True``), so every
written game is solvable and has an expert path.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

# Scene number ranges that ALFRED uses per room kind.
_ROOM_KINDS = {"Kitchen": range(1, 31), "LivingRoom": range(201, 231),
               "Bedroom": range(301, 331), "Bathroom": range(401, 431)}
_LAMP_HOLDERS = ("Desk", "SideTable", "Dresser")
_APPLIANCE = {"pick_clean_then_place_in_recep": "SinkBasin",
              "pick_heat_then_place_in_recep": "Microwave",
              "pick_cool_then_place_in_recep": "Fridge"}
_ABILITY = {"pick_clean_then_place_in_recep": "Cleanable",
            "pick_heat_then_place_in_recep": "Heatable",
            "pick_cool_then_place_in_recep": "Coolable"}
_DISTRACTORS = (4, 9)          # how many extra objects per game (min, max)


def _require_alfworld():
    try:
        import alfworld  # noqa: F401
        from alfworld.gen import constants, goal_library
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "ALFWorld game generation needs the optional packages 'alfworld' and 'textworld': "
            "pip install 'tcod-kernels[envs]'") from exc
    return os.path.dirname(alfworld.__file__), constants, goal_library


def mangle(name: str) -> str:
    """ALFRED object id -> PDDL identifier (``Apple|+01.00|...`` -> ``Apple_bar__plus_01_dot_00...``)."""
    for a, b in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(a, b)
    return name


def _coord(rng: random.Random) -> str:
    return "{:+06.2f}".format(rng.uniform(-4.0, 4.0))


@dataclass
class _Room:
    scene: int
    kind: str
    object_types: list[str]
    receptacles: dict[str, tuple[int, int, int, int]]   # ALFRED id -> (x, z, rot, horizon) on the grid


def _load_room(layout_dir: str, scene: int, constants, rng: random.Random) -> _Room | None:
    base = os.path.join(layout_dir, f"FloorPlan{scene}")
    try:
        with open(base + "-objects.json") as f:
            object_types = json.load(f)
        with open(base + "-openable.json") as f:
            poses = json.load(f)
    except FileNotFoundError:
        return None
    kind = next(k for k, r in _ROOM_KINDS.items() if scene in r)
    static = set(constants.RECEPTACLES) - set(constants.MOVABLE_RECEPTACLES)
    receptacles: dict[str, tuple[int, int, int, int]] = {}
    for rid, (x, z, rot, hor) in sorted(poses.items()):
        rtype = rid.split("|")[0]
        if rtype in ("Sink", "Bathtub"):        # ALFRED interacts with the basin inside
            rid, rtype = rid + "|" + rtype + "Basin", rtype + "Basin"
        if rtype not in static:
            continue
        receptacles[rid] = (int(round(x / 0.25)), int(round(z / 0.25)), int(rot) // 90 % 4, int(hor))
    # Receptacles present in the room but without a recorded pose (stove burners, toaster...).
    posed_types = {rid.split("|")[-1] if "Basin" in rid else rid.split("|")[0] for rid in receptacles}
    for rtype in sorted(set(object_types) & static - posed_types):
        if rtype.endswith("Basin"):
            continue
        for _ in range(1 if rtype != "StoveBurner" else 2):
            rid = f"{rtype}|{_coord(rng)}|{_coord(rng)}|{_coord(rng)}"
            receptacles[rid] = (rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(0, 3), 30)
    return _Room(scene, kind, sorted(object_types), receptacles)


def _rtype(rid: str) -> str:
    parts = rid.split("|")
    return parts[-1] if parts[-1].endswith("Basin") else parts[0]


def _loc(pose: tuple[int, int, int, int]) -> str:
    return mangle("loc|%d|%d|%d|%d" % pose)


class _Sampler:
    """Samples one solvable-by-construction game description from a seeded RNG."""

    def __init__(self, constants, goal_library, layout_dir: str):
        self.c = constants
        self.glib = goal_library
        self.layout_dir = layout_dir
        self.pickupable = set().union(*constants.VAL_RECEPTACLE_OBJECTS.values()) - {
            o for o in constants.OBJECTS if o.endswith("Sliced")}

    def holders(self, room: _Room, otype: str) -> list[str]:
        return [rid for rid in room.receptacles
                if otype in self.c.VAL_RECEPTACLE_OBJECTS.get(_rtype(rid), ())]

    def sample(self, rng: random.Random, task_type: str, scenes: list[int]):
        for _ in range(200):
            room = _load_room(self.layout_dir, rng.choice(scenes), self.c, rng)
            if room is None or room.kind not in self.c.GOALS_VALID[task_type]:
                continue
            spec = self._task(rng, room, task_type)
            if spec is not None:
                return room, spec
        return None

    def _task(self, rng, room: _Room, task_type: str):
        rtypes = {_rtype(r) for r in room.receptacles}
        present = [o for o in room.object_types if o in self.pickupable]
        toggle = ""
        if task_type in _APPLIANCE:
            if _APPLIANCE[task_type] not in rtypes:
                return None
            able = self.c.VAL_ACTION_OBJECTS[_ABILITY[task_type]]
            present = [o for o in present if o in able]
        if task_type == "look_at_obj_in_light":
            lamps = [r for r in room.receptacles if _rtype(r) in _LAMP_HOLDERS]
            if not lamps:
                return None
            toggle = "DeskLamp"
        rng.shuffle(present)
        for obj in present:
            holders = self.holders(room, obj)
            if task_type == "look_at_obj_in_light":
                parents = [""]
            else:   # never "put a hot X in the microwave": the appliance is not a destination
                parents = sorted({_rtype(r) for r in holders} - {_APPLIANCE.get(task_type)})
            rng.shuffle(parents)
            for parent in parents:
                starts = [r for r in holders if _rtype(r) != parent]
                if starts:
                    return {"object_target": obj, "parent_target": parent, "toggle_target": toggle,
                            "mrecep_target": "", "object_sliced": False}
        return None


def _problem(rng, sampler: _Sampler, room: _Room, task_type: str, params: dict, name: str) -> str:
    c = sampler.c
    obj, parent, toggle = params["object_target"], params["parent_target"], params["toggle_target"]
    # Objects: the target (two or three for pick_two, one to three otherwise) + distractors.
    n_target = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    choices = [o for o in room.object_types if o in sampler.pickupable and o != obj and sampler.holders(room, o)]
    distractors = [rng.choice(choices) for _ in range(rng.randint(*_DISTRACTORS))] if choices else []
    placed: list[tuple[str, str, str]] = []          # (object id, object type, receptacle id)
    for otype in [obj] * n_target + distractors:
        holders = sampler.holders(room, otype)
        if otype == obj:
            holders = [r for r in holders if _rtype(r) != parent]
        rid = rng.choice(holders)
        oid = f"{otype}|{_coord(rng)}|{_coord(rng)}|{_coord(rng)}"
        placed.append((oid, otype, rid))
    if toggle:
        rid = rng.choice([r for r in room.receptacles if _rtype(r) in _LAMP_HOLDERS])
        placed.append((f"{toggle}|{_coord(rng)}|{_coord(rng)}|{_coord(rng)}", toggle, rid))

    receptacles = sorted(room.receptacles)
    locations = sorted({room.receptacles[r] for r in receptacles})
    agent_pose = (rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(0, 3), 30)
    while agent_pose in locations:
        agent_pose = (agent_pose[0] + 1,) + agent_pose[1:]
    static = set(c.RECEPTACLES) - set(c.MOVABLE_RECEPTACLES)
    otypes = sorted(set(c.OBJECTS_SET) - static)
    rtypes = sorted(static)

    objects = ["agent1 - agent"]
    objects += [f"{o} - object" for o in otypes]
    objects += [f"{o}Type - otype" for o in otypes]
    objects += [f"{r}Type - rtype" for r in rtypes]
    objects += [f"{mangle(oid)} - object" for oid, _, _ in sorted(placed)]
    objects += [f"{mangle(r)} - receptacle" for r in receptacles]
    objects += [f"{_loc(p)} - location" for p in sorted(set(locations) | {agent_pose})]

    init = [f"(receptacleType {mangle(r)} {_rtype(r)}Type)" for r in receptacles]
    init += [f"(objectType {mangle(oid)} {t}Type)" for oid, t, _ in placed]
    seen = set()
    for r in receptacles:
        rt = _rtype(r)
        if rt in seen:
            continue
        seen.add(rt)
        init += [f"(canContain {rt}Type {t}Type)" for t in sorted({t for _, t, _ in placed})
                 if t in c.VAL_RECEPTACLE_OBJECTS.get(rt, ())]
    for oid, t, _ in placed:
        m = mangle(oid)
        if t != toggle:
            init.append(f"(pickupable {m})")
        if t in c.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {m})")
        for ability, pred in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if t in c.VAL_ACTION_OBJECTS[ability]:
                init.append(f"({pred} {m})")
        if t == toggle:
            init.append(f"(toggleable {m})")
    init += [f"(openable {mangle(r)})" for r in receptacles if _rtype(r) in c.OPENABLE_CLASS_SET]
    init.append(f"(atLocation agent1 {_loc(agent_pose)})")
    for oid, _, rid in placed:
        init.append(f"(inReceptacle {mangle(oid)} {mangle(rid)})")
        init.append(f"(objectAtLocation {mangle(oid)} {_loc(room.receptacles[rid])})")
    init += [f"(receptacleAtLocation {mangle(r)} {_loc(room.receptacles[r])})" for r in receptacles]

    goal = sampler.glib.gdict[task_type]["pddl"].replace("#", "-")
    goal = goal.format(obj=obj, recep=parent, toggle=toggle, mrecep="")
    sep = "\n        "
    return (f"\n(define (problem plan_{name})\n(:domain alfred)\n(:objects{sep}"
            + sep.join(objects) + f"\n        )\n(:init{sep}" + sep.join(init)
            + "\n        )\n" + goal + "\n")


def instruction(task_type: str, params: dict, rng: random.Random, goal_library) -> str:
    """One of the goal library's instruction templates, filled in (as ALFWorld's templated goals)."""
    template = rng.choice(goal_library.gdict[task_type]["templates"])
    return template.format(obj=params["object_target"].lower(), recep=params["parent_target"].lower(),
                           toggle=params["toggle_target"].lower(), mrecep="")


def expert_walkthrough(game_file: str, max_steps: int = 50, seed: int = 0) -> list[str] | None:
    """Play the game with ALFWorld's handcoded expert; its actions when it wins, else None.

    The game's ``traj_data.json`` (next to it) gives the expert its task. Driven here
    rather than through ALFWorld's ``AlfredExpert`` wrapper to fix one mismatch in the
    wheel: its grammar names the placing command ``move X to Y`` while the expert's
    bookkeeping only recognizes ``put``; without the fix the expert believes it still
    holds a placed object (which breaks every ``pick_two_obj_and_place`` game). The expert
    breaks ties with the global ``random`` module, seeded with ``seed`` for the run (and
    restored after), so the walkthrough is deterministic.
    """
    from alfworld.agents.expert import HandCodedAgentFailed, HandCodedAgentTimeout, HandCodedTWAgent

    from . import alfworld as alf_env

    saved = random.getstate()
    random.seed(seed)
    env = alf_env.load_game_env(game_file, facts=True)
    try:
        state = env.reset()
        expert = HandCodedTWAgent(max_steps=max_steps + 10)
        expert.reset(game_file)
        expert.observe(state["feedback"])
        action, actions = "look", []
        for _ in range(max_steps):
            state, _, done = env.step(action)
            actions.append(action)
            if done:
                return actions if state["won"] else None
            last = "put" + action[len("move"):] if action.startswith("move ") else action
            action = expert.act(state, 0, state["won"], last)
            if action not in state["admissible_commands"]:
                action = "look"
        return None
    except (HandCodedAgentFailed, HandCodedAgentTimeout):
        return None
    finally:
        env.close()
        random.setstate(saved)


def generate(out_dir: str, n: int, seed: int = 0, split: str = "train",
             task_types=TASK_TYPES, verify: bool = True, max_expert_steps: int = 50) -> list[str]:
    """Write ``n`` games under ``out_dir/split`` and return their ``game.tw-pddl`` paths.

    Task types cycle through ``task_types`` so every type is represented. With ``verify``,
    a game is kept only when the handcoded expert wins it within ``max_expert_steps``
    steps, and its walkthrough is stored in the game file. Deterministic: the same
    arguments write the same games.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    task_types = (task_types,) if isinstance(task_types, str) else tuple(task_types)
    unknown = set(task_types) - set(TASK_TYPES)
    if unknown or not task_types:
        raise ValueError(f"task_types must be a non-empty subset of {TASK_TYPES}, got {task_types!r}")
    pkg_dir, constants, goal_library = _require_alfworld()
    with open(os.path.join(pkg_dir, "data", "alfred.pddl")) as f:
        domain = f.read()
    with open(os.path.join(pkg_dir, "data", "alfred.twl2")) as f:
        grammar = f.read()
    sampler = _Sampler(constants, goal_library, os.path.join(pkg_dir, "gen", "layouts"))
    # Disjoint scenes per split, like ALFWorld's seen/unseen rooms.
    all_scenes = [s for r in _ROOM_KINDS.values() for s in r]
    scenes = {"train": [s for s in all_scenes if s % 10 not in (1, 2)],
              "dev": [s for s in all_scenes if s % 10 == 1],
              "test": [s for s in all_scenes if s % 10 == 2]}
    if split not in scenes:
        raise ValueError(f"split must be one of {sorted(scenes)}, got {split!r}")
    rng = random.Random(f"{seed}-{split}")
    written: list[str] = []
    attempt = 0
    while len(written) < n:
        if attempt > 20 * n + 50:
            raise RuntimeError(f"could only generate {len(written)} of {n} solvable games")
        task_type = task_types[len(written) % len(task_types)]
        sub = random.Random(rng.random())
        attempt += 1
        found = sampler.sample(sub, task_type, scenes[split])
        if found is None:
            continue
        room, params = found
        name = f"{seed}_{attempt}"
        folder = os.path.join(out_dir, split, "{}-{}-{}-{}-{}".format(
            task_type, params["object_target"], params["mrecep_target"] or "None",
            params["parent_target"] or params["toggle_target"], room.scene), f"trial_{name}")
        os.makedirs(folder, exist_ok=True)
        problem = _problem(sub, sampler, room, task_type, params, name)
        desc = instruction(task_type, params, sub, goal_library)
        traj = {"task_type": task_type, "pddl_params": params, "scene": {"scene_num": room.scene},
                "task_id": f"trial_{name}", "turk_annotations": {"anns": [{"task_desc": desc}]}}
        with open(os.path.join(folder, "initial_state.pddl"), "w") as f:
            f.write(problem)
        with open(os.path.join(folder, "traj_data.json"), "w") as f:
            json.dump(traj, f, indent=1)
        game_file = os.path.join(folder, "game.tw-pddl")
        game = {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", desc),
                "pddl_problem": problem, "solvable": None, "walkthrough": None}
        with open(game_file, "w") as f:
            json.dump(game, f)
        if verify:
            walkthrough = expert_walkthrough(game_file, max_expert_steps)
            if walkthrough is None:
                for fname in ("initial_state.pddl", "traj_data.json", "game.tw-pddl"):
                    os.remove(os.path.join(folder, fname))
                os.rmdir(folder)
                if not os.listdir(os.path.dirname(folder)):
                    os.rmdir(os.path.dirname(folder))
                continue
            game.update(solvable=True, walkthrough=walkthrough)
            with open(game_file, "w") as f:
                json.dump(game, f)
        written.append(game_file)
    return written


def main(argv=None) -> None:
    """Command-line entry point: ``python -m tcod.envs.alfworld_gen --out DIR -n N --seed S``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("-n", type=int, default=60, help="number of games per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", action="append", choices=["train", "dev", "test"],
                        help="split(s) to generate (default: all three)")
    parser.add_argument("--max-expert-steps", type=int, default=50,
                        help="keep a game only if the expert wins it within this many steps")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the expert check (games may then be unsolvable)")
    args = parser.parse_args(argv)
    for split in args.split or ["train", "dev", "test"]:
        paths = generate(args.out, args.n, seed=args.seed, split=split, verify=not args.no_verify,
                         max_expert_steps=args.max_expert_steps)
        print(f"{split}: {len(paths)} games in {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
