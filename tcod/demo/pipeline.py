"""The demo pipeline: builds (once) and loads the demo's tokenizer, teacher and student.

Build: gold episodes of the recipe's train tasks in the shared prompt format -> a BPE
tokenizer trained on their text -> a teacher trained from scratch by SFT on the replies ->
a one-layer student holding the teacher's embeddings, briefly trained -> both evaluated
on the recipe's evaluation split with the trainer's rollout code -> saved atomically in
the cache. Later calls load the cached folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from . import cache
from .recipe import DemoRecipe, get_recipe

DEFAULT_ENV = "textworld_express"


class DemoModels(NamedTuple):
    """The demo pair; unpacks as ``tokenizer, teacher, student``."""

    tokenizer: object
    teacher: object
    student: object


def make_env(recipe: DemoRecipe, tasks_per_game: int):
    """An environment of the recipe with ``tasks_per_game`` tasks per split."""
    import tcod.envs

    return tcod.envs.make(recipe.env_name, **recipe.env_options, tasks_per_game=tasks_per_game,
                          max_steps=recipe.max_steps)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[tcod.demo] {message}", flush=True)


def build(recipe: DemoRecipe, out: Path, *, seed: int = 0, progress: bool = True) -> dict:
    """Builds the pair of ``recipe`` into the folder ``out``; returns the build summary."""
    import torch
    from tqdm.auto import tqdm

    from .agent_eval import evaluate_agent
    from .data import gold_turns
    from .models import build_model, student_from_teacher
    from .sft import train_sft
    from .tokenizer import encode_turn, train_tokenizer

    started = time.perf_counter()
    times = {}
    env = make_env(recipe, recipe.sft_tasks)
    try:
        tasks = env.tasks("train")[: recipe.sft_tasks]
        episodes = [gold_turns(env, t, history=recipe.history, env_name=recipe.env_name)
                    for t in tqdm(tasks, desc="gold episodes", disable=not progress, leave=False)]
    finally:
        env.close()
    turns = [turn for ep in episodes for turn in ep]
    if not turns:
        raise RuntimeError(f"{recipe.env_name}: no gold episodes to learn from")
    times["data_s"] = time.perf_counter() - started

    t0 = time.perf_counter()
    texts = [m["content"] for turn in turns for m in turn.messages] + [turn.response for turn in turns]
    tokenizer = train_tokenizer(texts, recipe.vocab_size, recipe.max_token_length)
    examples = [encode_turn(tokenizer, turn.messages, turn.response) for turn in turns]
    longest = max(len(p) + len(r) for p, r in examples)
    times["tokenizer_s"] = time.perf_counter() - t0
    _log(progress, f"{len(turns)} gold turns from {len(tasks)} tasks, vocabulary {len(tokenizer)}, "
                   f"longest example {longest} tokens")

    t0 = time.perf_counter()
    teacher = build_model(recipe.teacher, tokenizer, max_positions=max(2048, 2 * longest), seed=seed)
    teacher_losses = train_sft(teacher, examples, steps=recipe.teacher_steps, batch_size=recipe.batch_size,
                               lr=recipe.lr, pad_id=tokenizer.pad_token_id, seed=seed, progress=progress,
                               desc="teacher sft")
    times["teacher_sft_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    student = student_from_teacher(teacher, recipe.student, tokenizer, copy_layers=recipe.student_copy_layers,
                                   seed=seed + 1)
    student_losses = train_sft(student, examples, steps=recipe.student_steps, batch_size=recipe.batch_size,
                               lr=recipe.lr, pad_id=tokenizer.pad_token_id, seed=seed + 1, progress=progress,
                               desc="student sft") if recipe.student_steps else []
    times["student_sft_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evals = {}
    eval_env = make_env(recipe, recipe.eval_tasks)
    try:
        eval_tasks = eval_env.tasks(recipe.eval_split)[: recipe.eval_tasks]
    finally:
        eval_env.close()
    for role, model in (("teacher", teacher), ("student", student)):
        with torch.no_grad():
            evals[role] = evaluate_agent(model, tokenizer, lambda: make_env(recipe, recipe.eval_tasks), eval_tasks,
                                         max_turns=recipe.max_steps, history=recipe.history,
                                         temperature=recipe.eval_temperature, seed=seed)
        _log(progress, f"{role}: success {evals[role]['success']:.0%} on {len(eval_tasks)} "
                       f"{recipe.eval_split} tasks, {evals[role]['rounds']:.1f} rounds on average")
    times["eval_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - started

    tokenizer.save_pretrained(out / "tokenizer")
    teacher.save_pretrained(out / "teacher")
    student.save_pretrained(out / "student")
    summary = {
        "recipe": recipe.to_dict(), "seed": seed, "eval": evals, "times": times,
        "gold_turns": len(turns), "train_tasks": len(tasks), "vocab": len(tokenizer),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "teacher_final_loss": sum(teacher_losses[-10:]) / max(1, len(teacher_losses[-10:])),
        "student_final_loss": (sum(student_losses[-10:]) / len(student_losses[-10:])) if student_losses else None,
    }
    (out / cache.MARKER).write_text(json.dumps(summary, indent=2))
    return summary


def demo_folder(recipe: DemoRecipe, *, cache_dir=None, seed: int = 0) -> Path:
    """The cache folder of ``recipe`` built with ``seed``."""
    key = cache.fingerprint({**recipe.to_dict(), "seed": seed})
    return cache.cache_root(cache_dir) / f"{recipe.env_name}-{key}"


def prepare(recipe: DemoRecipe, *, cache_dir=None, seed: int = 0, progress: bool = True) -> Path:
    """The cache folder of ``recipe``, built first when it is not there yet."""
    folder = demo_folder(recipe, cache_dir=cache_dir, seed=seed)
    if cache.is_complete(folder):
        return folder
    with cache.build_lock(folder):
        if cache.is_complete(folder):  # another process built it while we waited
            return folder
        _log(progress, f"building the demo teacher and student for {recipe.env_name} in {folder} "
                       "(once; later runs load it)")
        with cache.atomic_folder(folder) as tmp:
            summary = build(recipe, tmp, seed=seed, progress=progress)
        _log(progress, f"built in {summary['times']['total_s']:.0f}s")
    return folder


def load_folder(folder: str | os.PathLike) -> DemoModels:
    """Loads a built demo folder."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    if not cache.is_complete(folder):
        raise FileNotFoundError(f"{folder} is not a complete demo build")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    teacher = LlamaForCausalLM.from_pretrained(folder / "teacher").eval()
    student = LlamaForCausalLM.from_pretrained(folder / "student").eval()
    return DemoModels(tokenizer, teacher, student)


def summary_of(folder: str | os.PathLike) -> dict:
    """The build summary (recipe, evaluation, times) stored in a demo folder."""
    return json.loads((Path(folder) / cache.MARKER).read_text())


def cached_summary(env_name: str = DEFAULT_ENV, *, cache_dir=None, seed: int = 0) -> dict | None:
    """The build summary of the shipped recipe of ``env_name`` when it is built, else None."""
    folder = demo_folder(get_recipe(env_name), cache_dir=cache_dir, seed=seed)
    return summary_of(folder) if cache.is_complete(folder) else None


def load_demo_models(env_name: str = DEFAULT_ENV, *, cache_dir=None, seed: int = 0, progress: bool = True,
                     recipe: DemoRecipe | None = None) -> DemoModels:
    """``(tokenizer, teacher, student)`` of the demo for ``env_name``, built on first use.

    ``recipe`` overrides the shipped recipe of ``env_name`` (the tests use a tiny one).
    """
    recipe = recipe or get_recipe(env_name)
    return load_folder(prepare(recipe, cache_dir=cache_dir, seed=seed, progress=progress))
