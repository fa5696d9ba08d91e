"""Config: presets, dotted overrides with type checks, validation, --help."""

import subprocess
import sys

import pytest

from tcod import config as C


def test_defaults_are_the_papers_hyperparameters():
    cfg = C.Config().validate()
    assert cfg.model.student == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg.model.teacher == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.train.lr == 1e-6
    assert cfg.rollout.tasks_per_step == 16
    assert cfg.rollout.temperature == 1.0 and cfg.rollout.eval_temperature == 0.4
    assert cfg.curriculum.k_start == 1 and cfg.env.history == 2


@pytest.mark.parametrize("env,steps", [("alfworld", 30), ("webshop", 15), ("scienceworld", 30)])
@pytest.mark.parametrize("preset,method", [("opd", "opd"), ("tcod_f2b", "f2b"), ("tcod_b2f", "b2f")])
def test_shipped_presets(env, steps, preset, method):
    cfg = C.load_config(f"{env}_{preset}")
    assert cfg.env.name == env
    assert cfg.env.max_steps == steps
    assert cfg.curriculum.method == method
    assert cfg.train.lr == 1e-6
    assert cfg.model.student == "Qwen/Qwen2.5-1.5B-Instruct"


def test_overrides_parse_and_typecheck():
    cfg = C.load_config("alfworld_opd", ["train.lr=1e-5", "train.steps=7", "env.eval_splits=[dev, test]",
                                         "model.student=./my model", "loss.kind=full", "train.tensorboard=false"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7
    assert cfg.env.eval_splits == ["dev", "test"]
    assert cfg.model.student == "./my model"
    assert cfg.loss.kind == "full"
    assert cfg.train.tensorboard is False
    # a string key keeps the raw text even when YAML would read a number
    assert C.load_config("alfworld_opd", ["train.run_name=123"]).train.run_name == "123"


@pytest.mark.parametrize("override,exc,word", [
    ("train.steps=1.5", TypeError, "train.steps"),
    ("train.steps=abc", TypeError, "train.steps"),
    ("train.tensorboard=3", TypeError, "train.tensorboard"),
    ("train.nope=1", ValueError, "train.nope"),
    ("nosection.lr=1", ValueError, "nosection"),
    ("lr=1", ValueError, "lr"),
    ("train.lr", ValueError, "train.lr"),
    ("curriculum.method=zigzag", ValueError, "curriculum.method"),
    ("train.lr=-1.0", ValueError, "train.lr"),
    ("curriculum.eta=0", ValueError, "curriculum.eta"),
    ("loss.jsd_beta=1.0", ValueError, "loss.jsd_beta"),
    ("env.eval_splits=dev", TypeError, "env.eval_splits"),
])
def test_bad_overrides_name_the_key(override, exc, word):
    with pytest.raises(exc, match=word.replace(".", r"\.")):
        C.load_config("alfworld_opd", [override])


def test_remote_teacher_needs_url_and_sampled_loss():
    with pytest.raises(ValueError, match="teacher.url"):
        C.load_config("alfworld_opd", ["teacher.mode=remote"])
    with pytest.raises(ValueError, match="loss.kind"):
        C.load_config("alfworld_opd", ["teacher.mode=remote", "teacher.url=http://x", "loss.kind=full"])


def test_preset_from_path_and_unknown_name(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  steps: 3\ncurriculum:\n  method: b2f\n")
    cfg = C.load_config(str(p))
    assert cfg.train.steps == 3 and cfg.curriculum.method == "b2f"
    with pytest.raises(ValueError, match="no_such_preset"):
        C.load_config("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ValueError, match="train.stepz"):
        C.load_config(str(bad))


def test_roundtrip_through_dict():
    cfg = C.load_config("webshop_tcod_f2b", ["train.steps=9"])
    assert C.from_dict(cfg.to_dict()) == cfg


def test_help_lists_every_key_with_default():
    out = subprocess.run([sys.executable, "-m", "tcod.train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key, _, default, doc in C.iter_keys(C.Config()):
        assert key in out.stdout
        assert doc in out.stdout
    assert "train.lr (float) = 1e-06" in out.stdout
