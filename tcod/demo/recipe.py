"""What the demo builds, per environment: the game, the data, the model sizes and the training.

A :class:`DemoRecipe` is plain data; its fingerprint names the cache folder, so any change
here builds a fresh teacher/student pair. ``RECIPES`` holds the shipped recipes; the
embedded default preset (``tcod/configs/default.yaml``) uses the same environment options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Bump when the build procedure changes in a way the recipe fields do not show.
BUILD_VERSION = 1


@dataclass(frozen=True)
class ModelShape:
    """A small Llama: ``layers`` decoder layers of width ``hidden``."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 256


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines a demo teacher/student pair."""

    env_name: str
    env_options: dict = field(default_factory=dict)
    max_steps: int = 10           # turns per episode (evaluation and the default preset)
    history: int = 2              # observation/action pairs shown in each prompt
    sft_tasks: int = 300          # train-split tasks whose gold episodes the teacher learns from
    vocab_size: int = 2000
    max_token_length: int = 24   # longest token, in characters
    teacher: ModelShape = ModelShape()
    student: ModelShape = ModelShape(layers=1)
    teacher_steps: int = 400      # SFT mini-batches of the teacher
    student_copy_layers: int = 0  # teacher layers copied into the student (embeddings and norm always are)
    student_steps: int = 40       # SFT mini-batches of the student after the copy
    batch_size: int = 16
    lr: float = 3e-3
    eval_split: str = "dev"
    eval_tasks: int = 32
    eval_temperature: float = 0.4

    def to_dict(self) -> dict:
        return {"build_version": BUILD_VERSION, **dataclasses.asdict(self)}

    def replace(self, **changes) -> "DemoRecipe":
        return dataclasses.replace(self, **changes)


COIN_PARAMS = "numLocations=3,includeDoors=0,numDistractorItems=0"

RECIPES = {
    "textworld_express": DemoRecipe(
        env_name="textworld_express",
        env_options={"games": ["coin"], "game_params": {"coin": COIN_PARAMS}},
    ),
}


def get_recipe(env_name: str) -> DemoRecipe:
    """The shipped recipe of ``env_name``."""
    if env_name not in RECIPES:
        raise ValueError(f"no demo recipe for environment {env_name!r}; demo environments: {sorted(RECIPES)}")
    return RECIPES[env_name]
