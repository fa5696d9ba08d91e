"""The embedded demo: a small teacher and student built locally, offline, in minutes.

``load_demo_models(env_name)`` returns ``(tokenizer, teacher, student)`` (also as the
attributes of a :class:`DemoModels`): a byte-level BPE tokenizer trained on the
environment's own text, a small Llama teacher trained from scratch on the environment's
gold trajectories in the shared prompt format, and a smaller (one-layer) student that
starts from the teacher's embeddings and is trained only briefly, so it plays far worse.
The pair is built once and cached under ``~/.cache/tcod/demo`` (or ``$TCOD_CACHE/demo``). ``python -m tcod.demo`` builds it and prints its evaluation.
"""

from .pipeline import DemoModels, cached_summary, load_demo_models, prepare, summary_of
from .recipe import RECIPES, DemoRecipe, ModelShape, get_recipe

__all__ = ["DemoModels", "DemoRecipe", "ModelShape", "RECIPES", "cached_summary", "get_recipe", "load_demo_models",
           "prepare", "summary_of"]
