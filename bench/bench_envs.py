"""Environment throughput: steps per second of each :mod:`tcod.envs` environment.

Each benchmark replays expert actions (so that episodes visit realistic states) and
times only ``env.step`` + the ``reset`` of each episode; ``extra_info["steps_per_s"]``
is steps / wall time of one round. Run::

    pytest bench/bench_envs.py --benchmark-only
"""

import importlib.util
import time

import pytest

import tcod.envs
from tcod.envs.java import find_java

JAVA = find_java() is not None


def _episodes(env, tasks):
    """(task, expert actions) pairs, computed before timing."""
    return [(t, env.expert_actions(t)) for t in tasks]


def _play(env, episodes):
    steps = 0
    for task, actions in episodes:
        env.reset(task)
        for action in actions:
            steps += 1
            if env.step(action)[2]:
                break
    return steps


def _bench(benchmark, env, episodes, name):
    timings = []

    def run():
        start = time.perf_counter()
        steps = _play(env, episodes)
        timings.append((steps, time.perf_counter() - start))
        return steps

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    steps, seconds = min(timings, key=lambda s: s[1])
    benchmark.extra_info.update(env=name, steps=steps, steps_per_s=round(steps / seconds, 2))


def test_bench_webshop_offline(benchmark):
    env = tcod.envs.make("webshop", backend="offline")
    _bench(benchmark, env, _episodes(env, env.tasks("test")), "webshop-offline")
    env.close()


@pytest.mark.skipif(not (JAVA and importlib.util.find_spec("textworld_express")),
                    reason="needs Java and textworld-express")
def test_bench_textworld_express(benchmark):
    env = tcod.envs.make("textworld_express", games=["coin", "twc", "sorting", "arithmetic"],
                         tasks_per_game=2, max_steps=60)
    _bench(benchmark, env, _episodes(env, env.tasks("test")), "textworld_express")
    env.close()


@pytest.mark.skipif(not (JAVA and importlib.util.find_spec("scienceworld")),
                    reason="needs Java and scienceworld")
def test_bench_scienceworld(benchmark):
    env = tcod.envs.make("scienceworld", task_names=["find-living-thing", "lifespan-longest-lived"],
                         max_variations=1, max_steps=40)
    _bench(benchmark, env, _episodes(env, env.tasks("test")), "scienceworld")
    env.close()


@pytest.mark.skipif(not (importlib.util.find_spec("alfworld") and importlib.util.find_spec("textworld")),
                    reason="needs alfworld and textworld")
def test_bench_alfworld_generated(benchmark, tmp_path):
    from tcod.envs.alfworld_gen import generate

    generate(str(tmp_path), 3, seed=0, split="test", max_expert_steps=30)
    env = tcod.envs.make("alfworld", source="generated", games_dir=str(tmp_path),
                         games_per_split=3, max_steps=30)
    _bench(benchmark, env, _episodes(env, env.tasks("test")), "alfworld-generated")
    env.close()
