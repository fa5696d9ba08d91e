"""``python -m tcod.demo [--env NAME] [--cache-dir DIR] [--seed N]``: build (or find) the demo pair.

Prints the build summary: the teacher's and the student's success rate on the recipe's
evaluation split, the model sizes and how long each build stage took.
"""

from __future__ import annotations

import argparse
import json

from .pipeline import DEFAULT_ENV, prepare, summary_of
from .recipe import RECIPES, get_recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcod.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=DEFAULT_ENV, choices=sorted(RECIPES))
    parser.add_argument("--cache-dir", default=None, help="default: $TCOD_CACHE/demo or ~/.cache/tcod/demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = prepare(get_recipe(args.env), cache_dir=args.cache_dir, seed=args.seed)
    summary = summary_of(folder)
    print(json.dumps({"folder": str(folder), "eval": summary["eval"], "times": summary["times"],
                      "teacher_params": summary["teacher_params"], "student_params": summary["student_params"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
