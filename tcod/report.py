"""Reports of training runs: a markdown table, plots, and what the numbers say.

Reads run folders (``config.yaml`` + ``metrics.jsonl`` as :mod:`tcod.trainer` writes
them) and groups them by curriculum method. For each method: full-depth evaluation
success and rounds before training (the step-0 evaluation) and after (the last one),
and the final trajectory KL (``kl_traj`` averaged over the last ``tail`` steps), each
as a mean over seeds with its spread. A teacher row is added when its evaluation is
given. The verdict sentences are computed from these numbers: which method ends with
the lowest KL and the highest success, and whether the gaps exceed the seed-to-seed
spread (or, with one seed, the binomial standard error of a success rate).

``python -m tcod.report RUN_DIR [RUN_DIR ...] [--out DIR] [--teacher-eval JSON]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METRICS_FILE = "metrics.jsonl"
METHOD_ORDER = ("opd", "f2b", "b2f", "adaptive")
METHOD_LABEL = {"opd": "OPD", "f2b": "TCOD f2b", "b2f": "TCOD b2f", "adaptive": "TCOD adaptive"}


# --------------------------------------------------------------------------- reading


@dataclass
class Run:
    """One run folder's config and metrics records (ordered by step)."""

    path: Path
    method: str
    seed: int
    records: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def eval_split(self) -> str | None:
        """The first evaluation split present in the metrics (config order first)."""
        splits = list(self.config.get("env", {}).get("eval_splits", [])) + sorted(
            {k.split("/")[1] for r in self.records for k in r if k.startswith("eval/") and k.count("/") == 2})
        for split in splits:
            if any(f"eval/{split}/success" in r for r in self.records):
                return split
        return None

    def evals(self, split: str) -> list[dict]:
        """``[{"step", "success", "rounds", "episodes"}]`` of every evaluation of ``split``."""
        out = []
        for r in self.records:
            if r.get(f"eval/{split}/success") is not None:
                out.append({"step": r["step"], "success": r[f"eval/{split}/success"],
                            "rounds": r.get(f"eval/{split}/rounds"), "episodes": r.get(f"eval/{split}/episodes")})
        return out

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and values of ``key`` over the training records that have it."""
        pts = [(r["step"], r[key]) for r in self.records if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def turn_kl(self, steps: set[int]) -> dict[int, float]:
        """Mean ``kl_turn/<t>`` per turn index over the records of ``steps``."""
        sums: dict[int, list[float]] = {}
        for r in self.records:
            if r["step"] in steps:
                for k, v in r.items():
                    if k.startswith("kl_turn/") and v is not None:
                        sums.setdefault(int(k.split("/")[1]), []).append(v)
        return {t: sum(v) / len(v) for t, v in sorted(sums.items())}


def read_run(path: str | os.PathLike) -> Run:
    """A run folder: its ``config.yaml`` (method, seed) and ``metrics.jsonl``."""
    path = Path(path)
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} has no {METRICS_FILE}")
    config = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    records = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{metrics}:{n}: not JSON: {exc}") from exc
    records.sort(key=lambda r: r.get("step", 0))
    method = config.get("curriculum", {}).get("method", path.name)
    seed = int(config.get("train", {}).get("seed", 0))
    return Run(path, method, seed, records, config)


# --------------------------------------------------------------------------- numbers


@dataclass
class Stat:
    """Values over seeds: mean, sample standard deviation (0 for one value), count."""

    values: list

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def fmt(self, pct: bool = False, digits: int = 3) -> str:
        if not self.values:
            return "n/a"
        if pct:
            text = f"{100 * self.mean:.0f}%"
            return text + (f" ± {100 * self.std:.0f}" if self.n > 1 else "")
        text = f"{self.mean:.{digits}f}"
        return text + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")


def _stat(values) -> Stat:
    return Stat([v for v in values if v is not None])


@dataclass
class MethodSummary:
    """The table row of one method over its seeds."""

    method: str
    seeds: list
    split: str | None
    before_success: Stat
    before_rounds: Stat
    after_success: Stat
    after_rounds: Stat
    final_kl: Stat
    first_kl: Stat
    final_token_kl: Stat
    first_token_kl: Stat
    episodes: float | None
    final_depth: Stat
    max_turns: int | None


def summarize_method(method: str, runs: list[Run], tail: int = 3) -> MethodSummary:
    """Before/after evaluation and final trajectory KL of ``method`` over its runs."""
    split = next((r.eval_split() for r in runs if r.eval_split()), None)
    before_s, before_r, after_s, after_r, final_kl, first_kl, depth, episodes = [], [], [], [], [], [], [], []
    final_tok, first_tok = [], []
    for run in runs:
        evals = run.evals(split) if split else []
        start = [e for e in evals if e["step"] == 0]
        if start:
            before_s.append(start[0]["success"])
            before_r.append(start[0]["rounds"])
        if evals and evals[-1]["step"] > 0:
            after_s.append(evals[-1]["success"])
            after_r.append(evals[-1]["rounds"])
            episodes.append(evals[-1]["episodes"])
        _, kl = run.series("kl_traj")
        if kl:
            final_kl.append(sum(kl[-tail:]) / len(kl[-tail:]))
            first_kl.append(sum(kl[:tail]) / len(kl[:tail]))
        _, tok = run.series("kl_token")
        if tok:
            final_tok.append(sum(tok[-tail:]) / len(tok[-tail:]))
            first_tok.append(sum(tok[:tail]) / len(tok[:tail]))
        _, d = run.series("depth")
        if d:
            depth.append(d[-1])
    eps = [e for e in episodes if e]
    max_turns = runs[0].config.get("env", {}).get("max_steps")
    return MethodSummary(method, sorted(r.seed for r in runs), split, _stat(before_s), _stat(before_r),
                         _stat(after_s), _stat(after_r), _stat(final_kl), _stat(first_kl),
                         _stat(final_tok), _stat(first_tok),
                         min(eps) if eps else None, _stat(depth), max_turns)


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by method, in the order opd, f2b, b2f, adaptive, then any other."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    order = [m for m in METHOD_ORDER if m in groups] + sorted(m for m in groups if m not in METHOD_ORDER)
    return {m: groups[m] for m in order}


def _binomial_se(p: float, n: float | None) -> float | None:
    if not n:
        return None
    return math.sqrt(max(p * (1 - p), 0.25 / n) / n)  # floor: a 0% or 100% rate is not exact either


def verdict(rows: list[MethodSummary], teacher: dict | None = None, student: dict | None = None) -> list[str]:
    """Plain sentences stating what the numbers show, computed from them.

    ``student``: the untrained student's evaluation, the "before" of runs without a
    step-0 evaluation.
    """
    lines = []
    for r in rows:
        if r.first_token_kl.values and r.final_token_kl.values:
            a, b = r.first_token_kl.mean, r.final_token_kl.mean
            change = (b - a) / a if a else 0.0
            text = (f"{METHOD_LABEL.get(r.method, r.method)}: per-token KL to the teacher on the student's own "
                    f"rollouts went from {a:.3f} (first steps) to {b:.3f} (last steps), {change:+.0%}")
            if r.method != "opd":
                text += (" (a curriculum trains other turns at the start than at the end, so this change mixes "
                         "learning with the moving window; see the KL-by-turn plot).")
            else:
                text += (" (the student moved toward the teacher)." if change < -0.1 else
                         " (the student moved away from the teacher)." if change > 0.1 else " (little change).")
            lines.append(text)
    with_kl = [r for r in rows if r.final_kl.values]
    if len(with_kl) >= 2:
        ranked = sorted(with_kl, key=lambda r: r.final_kl.mean)
        best, second = ranked[0], ranked[1]
        gap = second.final_kl.mean - best.final_kl.mean
        noise = max(best.final_kl.std, second.final_kl.std)
        seeds = min(best.final_kl.n, second.final_kl.n)
        text = (f"Lowest final trajectory KL: {METHOD_LABEL.get(best.method, best.method)} "
                f"({best.final_kl.mean:.3f}), then {METHOD_LABEL.get(second.method, second.method)} "
                f"({second.final_kl.mean:.3f}); gap {gap:.3f}. ")
        if seeds < 2:
            text += "One seed per method: the seed-to-seed noise is unknown, so this ordering is not established."
        elif gap > 2 * noise:
            text += f"The gap is more than twice the seed spread (std {noise:.3f}): a clear difference at this budget."
        else:
            text += f"The gap is within twice the seed spread (std {noise:.3f}): not distinguishable from seed noise."
        lines.append(text)
        for r in with_kl:
            label = METHOD_LABEL.get(r.method, r.method)
            if r.method in ("f2b", "adaptive") and r.final_depth.values and (
                    r.max_turns is None or r.final_depth.mean < r.max_turns):
                lines.append(f"Note: {label} ends at depth {r.final_depth.fmt(digits=1)} of "
                             f"{r.max_turns or '?'} turns: its training KL covers only the turns it played, "
                             "so it is not directly comparable with OPD's full-depth KL.")
            elif r.method == "b2f" and r.final_depth.values and (
                    r.max_turns is None or r.final_depth.mean < r.max_turns - 1):
                lines.append(f"Note: {label} ends at stage {r.final_depth.fmt(digits=1)}: its training KL "
                             "covers only the turns after the expert-replayed prefix.")
    for r in rows:
        before = r.before_success
        if not before.values and student and student.get("success") is not None:
            before = Stat([student["success"]])
        if before.values and r.after_success.values:
            delta = r.after_success.mean - before.mean
            n = min(r.after_success.n, before.n)
            if n >= 2:
                noise = max(before.std, r.after_success.std)
                what = "seed spread"
            else:
                se = _binomial_se(r.after_success.mean, r.episodes)
                noise = math.sqrt(2) * se if se is not None else None
                what = f"sampling error of {int(r.episodes)} episodes" if r.episodes else "sampling error"
                if r.after_success.n >= 2 and (noise is None or r.after_success.std > noise):
                    noise, what = r.after_success.std, "seed spread"
            size = "within"
            if noise is not None and abs(delta) > 2 * noise:
                size = "beyond"
            word = "rose" if delta > 0 else "fell" if delta < 0 else "stayed"
            lines.append(f"{METHOD_LABEL.get(r.method, r.method)}: eval success {word} from "
                         f"{before.mean:.0%} to {r.after_success.mean:.0%} ({delta:+.0%}), "
                         f"{size} twice the {what}" + (f" (±{noise:.0%})." if noise is not None else "."))
    with_after = [r for r in rows if r.after_success.values]
    if len(with_after) >= 2:
        best = max(with_after, key=lambda r: r.after_success.mean)
        lines.append(f"Highest success after training: {METHOD_LABEL.get(best.method, best.method)} "
                     f"({best.after_success.mean:.0%}).")
    if teacher and teacher.get("success") is not None and with_after:
        best = max(r.after_success.mean for r in with_after)
        gap = teacher["success"] - best
        lines.append(f"The teacher succeeds on {teacher['success']:.0%}; the best student after training is "
                     f"{gap:.0%} " + ("below it." if gap > 0 else "at or above it."))
    if not lines:
        lines.append("Not enough data for a comparison (need evaluations or KL values from at least one run).")
    return lines


def table(rows: list[MethodSummary], teacher: dict | None = None, student: dict | None = None) -> str:
    """The markdown table: teacher, student before, each method after.

    ``student``: the untrained student's evaluation, used when the runs have no step-0
    evaluation (e.g. the demo build's own evaluation).
    """
    split = next((r.split for r in rows if r.split), "eval")
    head = (f"| model | seeds | {split} success | avg rounds | final trajectory KL | final token KL | "
            "first token KL |\n|---|---|---|---|---|---|---|")
    out = [head]
    if teacher:
        rounds = Stat([teacher["rounds"]]).fmt(digits=1) if teacher.get("rounds") is not None else "n/a"
        out.append(f"| teacher | - | {Stat([teacher['success']]).fmt(pct=True)} | {rounds} | - | - | - |")
    before = [r for r in rows if r.before_success.values]
    if before:
        # every method starts from the same student: pool the step-0 evaluations of all runs
        pooled_s = Stat([v for r in before for v in r.before_success.values])
        pooled_r = Stat([v for r in before for v in r.before_rounds.values])
        out.append(f"| student before | {len(pooled_s.values)} evals | {pooled_s.fmt(pct=True)} | "
                   f"{pooled_r.fmt(digits=1)} | - | - | - |")
    elif student:
        out.append(f"| student before (build eval) | - | {Stat([student['success']]).fmt(pct=True)} | "
                   f"{Stat([student['rounds']]).fmt(digits=1)} | - | - | - |")
    for r in rows:
        label = METHOD_LABEL.get(r.method, r.method)
        out.append(f"| student after {label} | {len(r.seeds)} | {r.after_success.fmt(pct=True)} | "
                   f"{r.after_rounds.fmt(digits=1)} | {r.final_kl.fmt()} | {r.final_token_kl.fmt()} | "
                   f"{r.first_token_kl.fmt()} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- plots


def _mean_curve(runs: list[Run], key: str):
    """Steps and per-step mean / min / max of ``key`` over runs (steps every run has)."""
    per = [dict(zip(*r.series(key))) for r in runs]
    steps = sorted(set.intersection(*(set(p) for p in per))) if per else []
    mean = [sum(p[s] for p in per) / len(per) for s in steps]
    lo = [min(p[s] for p in per) for s in steps]
    hi = [max(p[s] for p in per) for s in steps]
    return steps, mean, lo, hi


def plot(groups: dict[str, list[Run]], out: Path, teacher: dict | None = None,
         student: dict | None = None) -> list[Path]:
    """Writes the three PNG plots into ``out``; returns their paths.

    ``teacher`` / ``student``: evaluations drawn on the success plot as the teacher's
    level (dashed line) and the untrained student's (a point at step 0).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in groups.items():
        steps, mean, lo, hi = _mean_curve(runs, "kl_traj")
        if steps:
            line, = ax.plot(steps, mean, marker="o", ms=3, label=f"{METHOD_LABEL.get(method, method)} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("trajectory KL (student || teacher)")
    ax.set_title("Trajectory KL per step (band: min-max over seeds)")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "kl_vs_step.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for method, runs in groups.items():
        steps = sorted({r["step"] for run in runs for r in run.records if any(k.startswith("kl_turn/") for k in r)})
        if not steps:
            continue
        q = max(1, len(steps) // 4)
        for ax, chosen, title in ((axes[0], set(steps[:q]), "early"), (axes[1], set(steps[-q:]), "late")):
            per_run = [run.turn_kl(chosen) for run in runs]
            turns = sorted(set().union(*per_run))
            vals = [sum(p[t] for p in per_run if t in p) / sum(t in p for p in per_run) for t in turns]
            ax.plot(turns, vals, marker="o", ms=3, label=METHOD_LABEL.get(method, method))
            ax.set_title(f"KL by turn index, {title} steps ({min(chosen)}-{max(chosen)})")
            ax.set_xlabel("turn index")
    axes[0].set_ylabel("mean per-turn KL")
    axes[0].legend()
    fig.tight_layout()
    paths.append(out / "kl_by_turn.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, runs in groups.items():
        label = METHOD_LABEL.get(method, method)
        split = next((r.eval_split() for r in runs if r.eval_split()), None)
        color = None
        if split:
            steps, mean, lo, hi = _mean_curve(runs, f"eval/{split}/success")
            if steps:
                line, = ax.plot(steps, mean, marker="s", label=f"{label}: {split} eval (full depth)")
                color = line.get_color()
                if len(runs) > 1:
                    ax.fill_between(steps, lo, hi, color=color, alpha=0.2)
        steps, mean, _, _ = _mean_curve(runs, "success")
        if steps:
            ax.plot(steps, mean, ls=":", color=color, alpha=0.7, label=f"{label}: training rollouts")
    if teacher and teacher.get("success") is not None:
        ax.axhline(teacher["success"], ls="--", color="black", lw=1, label="teacher (eval)")
    if student and student.get("success") is not None:
        ax.plot([0], [student["success"]], marker="*", ms=10, ls="", color="black", label="student before (eval)")
    ax.set_xlabel("training step")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Success vs step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "success_vs_step.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- report


def build_report(run_dirs, out: str | os.PathLike | None = None, *, teacher: dict | None = None,
                 student: dict | None = None, title: str = "TCOD run report", notes: list[str] | None = None,
                 tail: int = 3) -> str:
    """Markdown report of ``run_dirs``; with ``out``, also writes ``report.md`` and the plots there.

    ``teacher`` / ``student``: evaluations (``{"success", "rounds", ...}``) of the teacher
    and of the untrained student; for ``demo:`` runs they default to the demo build's.
    """
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("build_report needs at least one run folder")
    demo = demo_evals(runs[0].config) or {}
    teacher = teacher or demo.get("teacher")
    student = student or demo.get("student")
    groups = group_runs(runs)
    rows = [summarize_method(m, rs, tail=tail) for m, rs in groups.items()]
    parts = [f"# {title}", ""]
    if notes:
        parts += [*notes, ""]
    parts += [table(rows, teacher, student), "",
              f"Success: full-depth evaluation on the {rows[0].split or 'eval'} split "
              "(before = step 0, after = last evaluation); ± is the standard deviation over seeds. "
              f"Trajectory KL: mean `kl_traj` (KL summed over a trajectory's trained turns) of the last {tail} "
              f"training steps; token KL: mean `kl_token` (per trained token) of the last/first {tail} steps. "
              "Under a curriculum the early steps train fewer turns, so compare trajectory KL across "
              "methods at full depth and token KL over time.", "",
              "## What this shows", ""]
    parts += [f"- {line}" for line in verdict(rows, teacher, student)]
    if out is not None:
        out = Path(out)
        paths = plot(groups, out, teacher, student)
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in paths]
    parts += ["", "## Runs", ""] + [f"- `{r.path}`: method {r.method}, seed {r.seed}, {len(r.records)} records"
                                    for r in runs]
    text = "\n".join(parts) + "\n"
    if out is not None:
        (Path(out) / "report.md").write_text(text)
    return text


def demo_evals(config: dict) -> dict | None:
    """``{"teacher": .., "student": ..}`` evaluations from the demo build, for ``demo:`` runs."""
    if config.get("model", {}).get("teacher") != "demo:teacher":
        return None
    from tcod.demo import RECIPES, cached_summary

    env_name = config.get("env", {}).get("name", "")
    summary = cached_summary(env_name) if env_name in RECIPES else None
    return summary["eval"] if summary else None


def summarize_run(run_dir: str | os.PathLike, teacher: dict | None = None) -> str:
    """The table and verdict of one run folder (printed at the end of ``python -m tcod.train``).

    Without ``teacher``, a ``demo:teacher`` run shows the teacher's (and, lacking a step-0
    evaluation, the untrained student's) evaluation from the demo build: same split, task
    count, turn limit and temperature as the default preset.
    """
    run = read_run(run_dir)
    demo = demo_evals(run.config) or {}
    teacher = teacher or demo.get("teacher")
    rows = [summarize_method(run.method, [run])]
    student = demo.get("student")
    return table(rows, teacher, student) + "\n\n" + "\n".join(f"- {line}" for line in verdict(rows, teacher, student))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcod.report", description="Report of TCOD run folders.")
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml + metrics.jsonl)")
    parser.add_argument("--out", default=None, help="write report.md and PNG plots here")
    parser.add_argument("--teacher-eval", default=None,
                        help='JSON file with the teacher\'s evaluation {"success": .., "rounds": ..}')
    args = parser.parse_args(argv)
    teacher = json.loads(Path(args.teacher_eval).read_text()) if args.teacher_eval else None
    try:
        print(build_report(args.runs, args.out, teacher=teacher), end="")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
