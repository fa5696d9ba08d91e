"""``python -m tcod.compare``: opd, f2b and b2f on one preset and the same seeds, one report.

Each (method, seed) is one ``python -m tcod.train`` run in its own process (fresh
simulators and memory each time) into ``<runs-dir>/<method>_s<seed>`` (checkpoints and
models stay out of the report folder); the teacher is
evaluated once on the same split, tasks and temperature as the students; then
:func:`tcod.report.build_report` writes ``<out>/report.md`` and the plots.

    python -m tcod.compare [--config default] [--seeds 0 1] [--steps N] [--out docs/compare]
                           [--runs-dir runs/compare] [--methods opd f2b b2f] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tcod.config import load_config
from tcod.report import METRICS_FILE, build_report

METHODS = ("opd", "f2b", "b2f")


def train_command(config: str, method: str, seed: int, runs_dir: Path, steps: int | None, overrides) -> list[str]:
    """The ``python -m tcod.train`` command line of one run."""
    cmd = [sys.executable, "-m", "tcod.train", "--config", config, *overrides,
           f"curriculum.method={method}", f"train.seed={seed}", f"train.output_dir={runs_dir}",
           f"train.run_name={method}_s{seed}"]
    if steps is not None:
        cmd.append(f"train.steps={steps}")
    return cmd


def teacher_eval(cfg) -> dict:
    """The teacher's full-depth evaluation on the first eval split, as the trainer evaluates a student."""
    import torch

    import tcod.envs
    from tcod.evaluate import evaluate
    from tcod.models import load_causal_lm
    from tcod.rollout import RolloutRunner

    model, tokenizer = load_causal_lm(cfg.model.teacher, dtype="float32", key="model.teacher")
    if torch.cuda.is_available():
        model = model.cuda()
    options = dict(cfg.env.options)
    options.setdefault("max_steps", cfg.env.max_steps)
    envs = [tcod.envs.make(cfg.env.name, **options) for _ in range(cfg.rollout.num_envs)]
    try:
        split = cfg.env.eval_splits[0]
        tasks = envs[0].tasks(split)
        if cfg.train.eval_tasks:
            tasks = tasks[: cfg.train.eval_tasks]
        r = cfg.rollout
        runner = RolloutRunner(model, tokenizer, context=r.context, history=cfg.env.history,
                               max_turn_tokens=r.max_turn_tokens, max_context_tokens=r.max_context_tokens,
                               temperature=r.eval_temperature, top_p=r.top_p, system_prompt=r.system_prompt or None)
        with torch.no_grad():
            res = evaluate(runner, envs, tasks, max_turns=cfg.env.max_steps, seed=cfg.train.seed, step=0)
        return {"split": split, **res}
    finally:
        for env in envs:
            env.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcod.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset name or YAML path (default: default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=["opd", "f2b", "b2f", "adaptive"])
    parser.add_argument("--out", default="docs/compare", help="report folder: report.md, plots, teacher_eval.json")
    parser.add_argument("--runs-dir", default="runs/compare", help="where the run folders go")
    parser.add_argument("--no-teacher-eval", action="store_true", help="skip evaluating the teacher")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_dirs, timings = [], {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = runs_dir / f"{method}_s{seed}"
            if (run_dir / METRICS_FILE).exists():
                print(f"[compare] {run_dir} exists; delete it to rerun", file=sys.stderr)
                return 2
            cmd = train_command(args.config, method, seed, runs_dir, args.steps, args.overrides)
            print(f"[compare] {method} seed {seed}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            timings[f"{method}_s{seed}"] = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"[compare] {method} seed {seed} failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            run_dirs.append(run_dir)

    teacher = None
    if not args.no_teacher_eval:
        teacher = teacher_eval(cfg)
        (out / "teacher_eval.json").write_text(json.dumps(teacher, indent=2))
    total = time.perf_counter() - started
    command = "python -m tcod.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = [f"Command: `{command.strip()}`.",
             f"Preset `{args.config}`" + (f" with {' '.join(args.overrides)}" if args.overrides else "")
             + f"; env {cfg.env.name} {json.dumps(cfg.env.options)}; student `{cfg.model.student}`, "
             f"teacher `{cfg.model.teacher}`; {args.steps or cfg.train.steps} steps x "
             f"{cfg.rollout.tasks_per_step} tasks per step; seeds {args.seeds}.",
             f"Wall time: {total:.0f}s in all (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")."]
    text = build_report(run_dirs, out, teacher=teacher, title="OPD vs TCOD (f2b, b2f)", notes=notes)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
