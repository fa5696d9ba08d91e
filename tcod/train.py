"""``python -m tcod.train [--config NAME|PATH] [key=value ...] [--resume auto]``.

Loads a preset (default: ``default``, the small local demo), applies ``key=value``
overrides (dotted keys, see ``--help`` for every key), and trains into one run folder
``<train.output_dir>/<train.run_name>`` holding ``config.yaml``, ``metrics.jsonl``,
``checkpoints/`` and the final model. ``--resume auto`` continues from the folder's latest
checkpoint (or starts fresh when there is none). Launch with ``accelerate launch -m
tcod.train ...`` (or ``torchrun``) for several GPUs.
"""

from __future__ import annotations

import argparse
import os
import sys

from tcod.checkpoint import latest
from tcod.config import describe, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcod.train",
        description="Temporal-curriculum on-policy distillation (TCOD) of a student LLM agent.",
        epilog="config keys (set with key=value):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="default", help="preset name (e.g. alfworld_tcod_f2b) or YAML path")
    parser.add_argument("--resume", choices=("auto", "never"), default="never",
                        help="auto: continue from the run folder's latest checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-5")
    return parser


def run_dir_of(cfg) -> str:
    name = cfg.train.run_name or f"{cfg.env.name}_{cfg.curriculum.method}"
    return os.path.join(cfg.train.output_dir, name)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = run_dir_of(cfg)
    if args.resume != "auto" and latest(run_dir) is not None:
        print(f"error: {run_dir} already holds checkpoints; pass --resume auto to continue it "
              f"or set train.run_name to start another run", file=sys.stderr)
        return 2
    from tcod.trainer import Trainer  # heavy imports after the argument checks

    trainer = Trainer(cfg, run_dir, resume=args.resume == "auto")
    try:
        trainer.train()
    finally:
        trainer.close()
    if trainer.acc.is_main_process:
        from tcod.report import summarize_run

        print(summarize_run(run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
