"""Environment tests: registry, protocol, expert replay, invalid actions, crashes.

The JVM-backed and ALFWorld tests need the ``envs`` extra (textworld-express,
scienceworld, alfworld + textworld) and Java; they are skipped, with the reason, only
where those are not installed. Environments are shared per module (JVM start-up is slow).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tcod.envs
from tcod.envs import EnvironmentCrashed, Observation
from tcod.envs.java import find_java

HAVE_JAVA = find_java() is not None
needs = {
    "textworld_express": pytest.mark.skipif(
        not (HAVE_JAVA and importlib.util.find_spec("textworld_express")),
        reason="needs Java and the 'textworld-express' package (pip install 'tcod-kernels[envs]')"),
    "scienceworld": pytest.mark.skipif(
        not (HAVE_JAVA and importlib.util.find_spec("scienceworld")),
        reason="needs Java and the 'scienceworld' package (pip install 'tcod-kernels[envs]')"),
    "alfworld": pytest.mark.skipif(
        not (importlib.util.find_spec("alfworld") and importlib.util.find_spec("textworld")),
        reason="needs the 'alfworld' and 'textworld' packages (pip install 'tcod-kernels[envs]')"),
}


def replay(env, task, actions):
    """Reset ``task`` and play ``actions`` until done; the last (obs, reward, done, info)."""
    env.reset(task)
    total = 0.0
    for action in actions:
        obs, reward, done, info = env.step(action)
        total += reward
        if done:
            break
    return obs, total, done, info


# -- registry ---------------------------------------------------------------------------

def test_import_is_lazy():
    code = ("import sys, tcod.envs; heavy = {'py4j', 'textworld', 'textworld_express', "
            "'scienceworld', 'alfworld'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "[]"


def test_registry_names_and_errors():
    assert tcod.envs.available() == ["alfworld", "scienceworld", "textworld_express", "webshop"]
    with pytest.raises(ValueError, match="unknown environment name 'nope'"):
        tcod.envs.make("nope")
    with pytest.raises(TypeError, match="name"):
        tcod.envs.make(3)


def test_missing_java_is_a_clear_error(monkeypatch):
    from tcod.envs import java

    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(tcod.envs.JavaNotFoundError, match="openjdk-17-jre-headless"):
        java.require_java("ScienceWorld")
    for name in ("scienceworld", "textworld_express"):
        with pytest.raises(tcod.envs.JavaNotFoundError, match="JAVA_HOME"):
            tcod.envs.make(name)


def test_java_found_through_java_home(monkeypatch, tmp_path):
    from tcod.envs import java

    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert java.require_java("X") == str(fake)
    assert os.environ["PATH"].split(os.pathsep)[0] == str(fake.parent)


@pytest.mark.skipif(not importlib.util.find_spec("py4j"), reason="needs py4j (pip install 'tcod-kernels[envs]')")
def test_jvm_call_maps_a_bridge_dying_mid_call_to_environment_crashed():
    from py4j.protocol import Py4JNetworkError

    from tcod.envs.java import jvm_call

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def dies_mid_call():
        proc.kill()
        raise Py4JNetworkError("Answer from Java side is empty")

    with pytest.raises(EnvironmentCrashed, match="stopped answering"):
        jvm_call("Sim", proc, dies_mid_call)
    with pytest.raises(EnvironmentCrashed, match="has exited"):
        jvm_call("Sim", proc, lambda: 1)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert jvm_call("Sim", live, lambda x: x + 1, 1) == 2

        def bug():
            raise KeyError("not a crash")

        with pytest.raises(KeyError):
            jvm_call("Sim", live, bug)
    finally:
        live.kill()
        live.wait()


# -- WebShop (offline catalog) ----------------------------------------------------------

@pytest.fixture(scope="module")
def webshop():
    env = tcod.envs.make("webshop", backend="offline")
    yield env
    env.close()


def test_webshop_splits_are_disjoint_and_deterministic(webshop):
    splits = {s: webshop.tasks(s) for s in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [60, 20, 20]
    assert not (set(splits["train"]) & set(splits["dev"]) or set(splits["dev"]) & set(splits["test"]))
    assert splits["test"] == tcod.envs.make("webshop", backend="offline").tasks("test")
    json.dumps(splits)
    with pytest.raises(ValueError, match="split"):
        webshop.tasks("valid")


def test_webshop_expert_reaches_full_reward_on_every_goal(webshop):
    for task in webshop.tasks("train") + webshop.tasks("dev") + webshop.tasks("test"):
        actions = webshop.expert_actions(task)
        assert actions[0].startswith("search[") and actions[-1] == "click[buy now]"
        assert len(actions) <= webshop.max_steps
        obs, total, done, info = replay(webshop, task, actions)
        assert done and info["success"] and info["score"] == pytest.approx(1.0), (task, info)
        assert total == pytest.approx(1.0)


def test_webshop_page_flow_and_partial_reward(webshop):
    obs = webshop.reset("goal/0")
    goal = webshop.goals[0]
    assert obs.task == goal["instruction"] and obs.admissible_actions == ["search[<your query>]"]
    obs, r, done, info = webshop.step(f"search[{goal['search']}]")
    assert "Page 1" in obs.text and f"click[{goal['asin'].lower()}]" in obs.admissible_actions
    obs, r, done, info = webshop.step(f"click[{goal['asin'].lower()}]")
    assert "click[buy now]" in obs.admissible_actions and r == 0.0 and not done
    # Buying the right product without choosing options: 2 goal attributes + price hit,
    # options missed -> (2 + 0 + 1) / (2 + n_options + 1).
    obs, r, done, info = webshop.step("click[buy now]")
    expected = 3 / (2 + len(goal["goal_options"]) + 1)
    assert done and not info["success"] and r == pytest.approx(expected)


def test_webshop_reward_components():
    from tcod.envs.webshop import reward

    product = {"title": "Acme Blue Running Shoes", "name": "running shoes", "query": "running shoes",
               "product_category": "A › B › C", "price": 30.0, "attributes": ["non slip"],
               "bullet_points": [], "description": ""}
    goal = {"name": "running shoes", "query": "running shoes", "product_category": "A › B › C",
            "attributes": ["non slip", "arch support"], "goal_options": {"size": "8"},
            "price_upper": 40.0}
    assert reward(product, goal, {"size": "8"}) == pytest.approx(3 / 4)       # 1 attr + 1 opt + price
    assert reward(product, goal, {"size": "9"}) == pytest.approx(2 / 4)
    assert reward(product, {**goal, "price_upper": 20.0}, {"size": "8"}) == pytest.approx(2 / 4)
    other = {**product, "title": "Acme Coffee Mug", "name": "coffee mug", "query": "mug",
             "product_category": "X › Y"}
    assert reward(other, goal, {"size": "8"}) == 0.0                           # r_type = 0


def test_webshop_invalid_actions_keep_the_page(webshop):
    webshop.reset("goal/1")
    for bad in ("click[buy now]", "buy it", "search[]", "click[b0tc999999]"):
        obs, r, done, info = webshop.step(bad)
        assert info["invalid"] and r == 0.0 and not done
        assert obs.text.startswith("Invalid action") and obs.admissible_actions == ["search[<your query>]"]


def test_webshop_truncates_at_max_steps():
    env = tcod.envs.make("webshop", backend="offline", max_steps=3)
    env.reset("goal/2")
    results = [env.step("look") for _ in range(3)]
    assert [d for _, _, d, _ in results] == [False, False, True]
    assert results[-1][3]["truncated"]
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("look")


def test_protocol_argument_errors(webshop):
    with pytest.raises(TypeError, match="task"):
        webshop.reset(3)
    with pytest.raises(ValueError, match="goal/<index>"):
        webshop.reset("goal/100000")
    webshop.reset("goal/0")
    with pytest.raises(TypeError, match="action"):
        webshop.step(None)
    with pytest.raises(ValueError, match="max_steps"):
        tcod.envs.make("webshop", backend="offline", max_steps=0)
    with pytest.raises(ValueError, match="backend"):
        tcod.envs.make("webshop", backend="cloud")
    fresh = tcod.envs.make("webshop", backend="offline")
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step("search[x]")
    fresh.close()
    with pytest.raises(RuntimeError, match="closed"):
        fresh.reset("goal/0")


def test_real_webshop_backend_needs_the_repository():
    if importlib.util.find_spec("web_agent_site"):
        pytest.skip("web_agent_site is installed here; this checks the message when it is not")
    with pytest.raises(ImportError, match="princeton-nlp/WebShop"):
        tcod.envs.make("webshop", backend="real")


# -- TextWorldExpress -------------------------------------------------------------------

@pytest.fixture(scope="module")
def twx():
    env = tcod.envs.make("textworld_express", tasks_per_game=4, max_steps=60)
    yield env
    env.close()


@needs["textworld_express"]
def test_twx_tasks(twx):
    train, test = twx.tasks("train"), twx.tasks("test")
    assert len(train) == len(test) == 8 * 4
    assert {t.split("/")[0] for t in train} == set(tcod.envs.textworld_express.GAMES)
    assert not set(train) & set(test)


@needs["textworld_express"]
def test_twx_gold_paths_solve_every_game(twx):
    for task in twx.tasks("test")[::4]:           # one task per game
        gold = twx.expert_actions(task)
        obs, total, done, info = replay(twx, task, gold)
        assert done and info["success"] and info["score"] == pytest.approx(1.0), (task, info)
        assert total == pytest.approx(1.0)
        assert obs.task


@needs["textworld_express"]
def test_twx_is_deterministic_and_handles_invalid_actions(twx):
    first = twx.reset("coin/3")
    assert first.admissible_actions and "coin" in first.task
    obs, r, done, info = twx.step("dance wildly")
    assert not done and r == 0.0 and not info["success"]
    assert twx.reset("coin/3") == first


@needs["textworld_express"]
def test_twx_expert_path_is_stable_for_a_task(twx):
    # The simulator's gold-path search is unseeded; the env must give one path per task.
    first = twx.expert_actions("coin/1")
    twx.reset("coin/1")
    twx.step(first[0])
    assert twx.expert_actions("coin/1") == first
    assert twx.expert_actions("coin/1") == first


@needs["textworld_express"]
def test_twx_killed_jvm_raises_environment_crashed():
    env = tcod.envs.make("textworld_express", games="coin", tasks_per_game=1)
    env.reset("coin/0")
    os.kill(env.pid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(EnvironmentCrashed, match="make a new one"):
        env.step("look around")
    with pytest.raises(EnvironmentCrashed):
        env.reset("coin/0")
    env.close()
    fresh = tcod.envs.make("textworld_express", games="coin", tasks_per_game=1)
    assert fresh.reset("coin/0").text
    fresh.close()


# -- ScienceWorld -----------------------------------------------------------------------

SW_TASKS = ["find-living-thing", "lifespan-longest-lived"]


@pytest.fixture(scope="module")
def sciworld():
    env = tcod.envs.make("scienceworld", task_names=SW_TASKS, max_variations=2, max_steps=40)
    yield env
    env.close()


@needs["scienceworld"]
def test_scienceworld_tasks(sciworld):
    splits = {s: sciworld.tasks(s) for s in ("train", "dev", "test")}
    assert all(len(v) == 2 * len(SW_TASKS) for v in splits.values())
    assert not set(splits["train"]) & set(splits["test"])
    with pytest.raises(ValueError, match="task_names"):
        tcod.envs.make("scienceworld", task_names=["not-a-task"])


@needs["scienceworld"]
def test_scienceworld_gold_paths_succeed(sciworld):
    for task in sciworld.tasks("dev")[::2]:       # one variation per task type
        gold = sciworld.expert_actions(task)
        obs, total, done, info = replay(sciworld, task, gold)
        assert done and info["success"] and info["score"] == pytest.approx(1.0), (task, info)
        assert total == pytest.approx(1.0)


@needs["scienceworld"]
def test_scienceworld_compact_observation_and_invalid_action(sciworld):
    obs = sciworld.reset(sciworld.tasks("test")[0])
    assert obs.task.startswith("Your task is to")
    assert "In your inventory" in obs.text
    assert "look around" in obs.admissible_actions
    assert len(obs.admissible_actions) < 200
    assert any("OBJ" in a for a in obs.admissible_actions)     # two-object templates, compacted
    obs, r, done, info = sciworld.step("fly to the moon")
    assert "No known action" in obs.text and r == 0.0 and not done


@needs["scienceworld"]
def test_scienceworld_killed_jvm_raises_environment_crashed():
    env = tcod.envs.make("scienceworld", task_names=["find-living-thing"], max_variations=1)
    task = env.tasks("train")[0]
    env.reset(task)
    os.kill(env.pid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(EnvironmentCrashed):
        env.step("look around")
    env.close()
    fresh = tcod.envs.make("scienceworld", task_names=["find-living-thing"], max_variations=1)
    assert fresh.reset(task).text
    fresh.close()


# -- ALFWorld (generated offline) -------------------------------------------------------

ALF_SEED = 0   # a seed whose 6 unverified games (one per type) the expert solves in <= 17 steps


@pytest.fixture(scope="module")
def alf_games(tmp_path_factory):
    from tcod.envs.alfworld_gen import generate

    out = tmp_path_factory.mktemp("alfworld")
    paths = generate(str(out), 6, seed=ALF_SEED, split="test", verify=False)
    return str(out), paths


@pytest.fixture(scope="module")
def alfworld(alf_games):
    env = tcod.envs.make("alfworld", source="generated", games_dir=alf_games[0],
                         games_per_split=6, max_steps=50)
    yield env
    env.close()


@needs["alfworld"]
def test_alfworld_generation_covers_all_types_and_is_deterministic(alf_games, tmp_path):
    from tcod.envs.alfworld_gen import TASK_TYPES, generate

    out, paths = alf_games
    assert sorted(os.path.basename(os.path.dirname(os.path.dirname(p))).split("-")[0]
                  for p in paths) == sorted(TASK_TYPES)
    again = generate(str(tmp_path), 6, seed=ALF_SEED, split="test", verify=False)
    for a, b in zip(paths, again, strict=True):
        assert os.path.relpath(a, out) == os.path.relpath(b, str(tmp_path))
        with open(a) as fa, open(b) as fb:
            assert fa.read() == fb.read()
    other = generate(str(tmp_path / "other"), 6, seed=ALF_SEED + 1, split="test", verify=False)
    with open(paths[0]) as fa, open(other[0]) as fb:
        assert fa.read() != fb.read()
    with open(paths[0]) as f:
        game = json.load(f)
    assert set(game) >= {"pddl_domain", "grammar", "pddl_problem"}
    assert "UNKNOWN GOAL" not in game["grammar"]
    with pytest.raises(ValueError, match="task_types"):
        generate(str(tmp_path), 1, task_types=["fly"])


@needs["alfworld"]
def test_alfworld_expert_solves_all_six_task_types(alfworld):
    tasks = alfworld.tasks("test")
    assert len(tasks) == 6
    for task in tasks:
        actions = alfworld.expert_actions(task)
        assert actions, task
        obs, total, done, info = replay(alfworld, task, actions)
        assert done and info["success"] and total == 1.0, (task, info)


@needs["alfworld"]
def test_alfworld_generates_missing_games_verified_by_the_expert(tmp_path):
    env = tcod.envs.make("alfworld", source="generated", games_dir=str(tmp_path), games_per_split=1,
                         max_steps=20)
    (path,) = env.tasks("dev")                      # generated now: the folder was empty
    assert path.startswith(str(tmp_path / "dev"))
    with open(path) as f:
        game = json.load(f)
    assert game["solvable"] is True and 0 < len(game["walkthrough"]) <= 20
    assert env.tasks("dev") == [path]               # nothing regenerated
    assert env.expert_actions(path) == game["walkthrough"]
    obs, total, done, info = replay(env, path, game["walkthrough"])
    assert done and info["success"]
    env.close()


@needs["alfworld"]
def test_alfworld_observation_and_invalid_action(alfworld):
    task = alfworld.tasks("test")[0]
    obs = first = alfworld.reset(task)
    assert obs.task and obs.task in obs.text
    assert any(a.startswith("go to ") for a in obs.admissible_actions)
    assert "help" not in obs.admissible_actions
    obs, r, done, info = alfworld.step("fly to the moon")
    assert obs.text == "Nothing happens." and r == 0.0 and not done and not info["success"]
    moved, *_ = alfworld.step(first.admissible_actions[0])
    assert moved.text.startswith("You arrive at")
    assert alfworld.reset(task) == first            # a reset of the same game starts afresh
    with pytest.raises(ValueError, match="game file"):
        alfworld.reset("/no/such/game.tw-pddl")


@needs["alfworld"]
def test_alfworld_official_source_without_data_names_the_download(monkeypatch, tmp_path):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\$ALFWORLD_DATA.*alfworld-download"):
        tcod.envs.make("alfworld", source="official")


@needs["alfworld"]
def test_alfworld_gen_command_line(tmp_path):
    cmd = [sys.executable, "-m", "tcod.envs.alfworld_gen", "--out", str(tmp_path), "-n", "2",
           "--seed", "1", "--split", "dev", "--no-verify"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "dev: 2 games" in out.stdout
    assert len(list((tmp_path / "dev").glob("*/*/game.tw-pddl"))) == 2


# -- prompts and parsing ----------------------------------------------------------------

def test_build_prompt_shows_last_two_turns_and_actions():
    from tcod.envs.prompt import build_messages, build_prompt

    history = [("obs A", "act A"), ("obs B", "act B"), ("obs C", "act C")]
    obs = Observation("you see a mug", ["take mug", "look"], "put a mug in the sink")
    text = build_prompt(obs.task, obs, history, env_name="alfworld")
    assert "Your task is to: put a mug in the sink" in text
    assert "obs A" not in text and "act A" not in text
    assert text.index("obs B") < text.index("act B") < text.index("obs C") < text.index("you see a mug")
    assert "[Step 4] Current observation: you see a mug" in text
    assert "'take mug', 'look'" in text and "<think>" in text and "<action>" in text
    assert "obs" not in build_prompt("t", obs, history, history_length=0).replace("observation", "")
    msgs = build_messages("t", obs, history, system="be brief")
    assert [m["role"] for m in msgs] == ["system", "user"]
    with pytest.raises(ValueError, match="history_length"):
        build_prompt("t", obs, history, history_length=-1)
    with pytest.raises(TypeError, match="observation"):
        build_prompt("t", 5)


@pytest.mark.parametrize("reply, expected", [
    ("<think>go</think><action>open fridge 1</action>", "open fridge 1"),
    ("<think>x</think>\n<action>  take apple 1 from table 1 \n</action>", "take apple 1 from table 1"),
    ("<ACTION>look</ACTION>", "look"),
    ("<think>maybe <action>wrong</action></think><action>right</action>", "right"),
    ("<action>first</action> then <action>second</action>", "second"),
    ("<think>done thinking</think><action>click[buy now]", "click[buy now]"),   # stop-token cut
    ("<action>'go to desk 1'</action>", "go to desk 1"),
    ("no tags at all", None),
    ("<action>   </action>", None),
    ("<think>never closed <action>x</action>", None),
    ("<action>" + "a" * 400 + "</action>", None),
    (None, None),
])
def test_parse_action(reply, expected):
    from tcod.envs.prompt import parse_action

    assert parse_action(reply) == expected


def test_step_text_turns_bad_replies_into_noop_turns():
    from tcod.envs.prompt import step_text

    env = tcod.envs.make("webshop", backend="offline", max_steps=3)
    first = env.reset("goal/0")
    obs, r, done, info = step_text(env, "I will search now")
    assert obs.text == "Invalid action." and obs.admissible_actions == first.admissible_actions
    assert info["invalid_format"] and info["action"] is None and r == 0.0 and not done
    goal = env.goals[0]
    obs, r, done, info = step_text(env, f"<think>search</think><action>search[{goal['search']}]</action>")
    assert info["action"] == f"search[{goal['search']}]" and "Page 1" in obs.text
    obs, r, done, info = step_text(env, "")
    assert done and info["truncated"] and info["steps"] == 3
