"""Trainer configuration: dataclasses, YAML presets and ``key=value`` overrides.

A config is a :class:`Config` of sections (``model``, ``teacher``, ``env``, ``rollout``,
``curriculum``, ``loss``, ``train``). Every field carries a one-line doc in its metadata, so
``python -m tcod.train --help`` can list every key with its default.

Defaults are the paper's hyperparameters (arXiv 2604.24005, ALFWorld setting). Presets are
YAML files shipped in ``tcod/configs/`` (``alfworld_opd``, ``webshop_tcod_f2b``, ...); a
preset only lists the keys it changes. Overrides use dotted keys (``train.lr=1e-5``); the
value is parsed as YAML and type-checked against the field.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List

import yaml


def _f(default, doc: str):
    """A dataclass field with a doc string (and a fresh copy of mutable defaults)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


DTYPES = ("float32", "bfloat16", "float16")
METHODS = ("opd", "f2b", "b2f", "adaptive")
LOSS_KINDS = ("sampled", "full")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean")
DIVERGENCES = ("forward", "reverse", "jsd")
SCHEDULES = ("constant", "linear", "cosine")
TEACHER_MODES = ("local", "remote")
ENGINES = ("hf", "vllm")


@dataclass
class ModelConfig:
    student: str = _f("Qwen/Qwen2.5-1.5B-Instruct", "student: HF name or local path, or demo:student")
    teacher: str = _f("Qwen/Qwen2.5-7B-Instruct", "teacher: HF name or local path, or demo:teacher (local teacher mode)")
    dtype: str = _f("float32", "student parameter dtype (float32 master weights + train.mixed_precision is the safe choice at lr 1e-6)")
    teacher_dtype: str = _f("bfloat16", "teacher parameter dtype: float32 | bfloat16 | float16")
    attn_implementation: str = _f("sdpa", "attention implementation passed to from_pretrained (sdpa, eager, flash_attention_2)")
    gradient_checkpointing: bool = _f(False, "recompute student activations in the backward pass")
    lora_r: int = _f(0, "LoRA rank for the student (0 = full fine-tuning; needs peft)")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_target_modules: List[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "modules LoRA adapts")
    trust_remote_code: bool = _f(False, "allow model code from the model folder")


@dataclass
class TeacherConfig:
    mode: str = _f("local", "local: co-located model scored from hidden states | remote: OpenAI-compatible server")
    url: str = _f("", "remote mode: base URL of the server, e.g. http://127.0.0.1:8000/v1")
    model_name: str = _f("", "remote mode: model name sent to the server (default: model.teacher)")
    timeout_s: float = _f(120.0, "remote mode: HTTP timeout in seconds")


@dataclass
class EnvConfig:
    name: str = _f("alfworld", "environment: alfworld | webshop | scienceworld | textworld_express")
    options: Dict[str, Any] = _f({}, "keyword options passed to tcod.envs.make")
    train_split: str = _f("train", "split the training tasks are drawn from")
    eval_splits: List[str] = _f(["dev"], "splits evaluated at full depth")
    max_steps: int = _f(30, "maximum environment steps (turns) per episode")
    history: int = _f(2, "rollout.context=window: observation/action pairs repeated in each prompt")


@dataclass
class RolloutConfig:
    engine: str = _f("hf", "generation engine: hf (own KV-cache sampling loop) | vllm")
    context: str = _f("window", "window: a fresh prompt per turn with the last env.history pairs (the paper) | chat: one conversation, new user turns appended as template deltas")
    system_prompt: str = _f("", "system message of every prompt (empty: none)")
    tasks_per_step: int = _f(16, "tasks (trajectories) rolled out per training step, over all processes")
    num_envs: int = _f(16, "environments played in parallel per process")
    temperature: float = _f(1.0, "rollout sampling temperature")
    top_p: float = _f(1.0, "rollout nucleus sampling (1.0 = off)")
    max_turn_tokens: int = _f(512, "maximum tokens the student generates per turn")
    max_context_tokens: int = _f(16384, "a trajectory stops when its context would exceed this")
    eval_temperature: float = _f(0.4, "evaluation sampling temperature")


@dataclass
class CurriculumConfig:
    method: str = _f("f2b", "opd | f2b | b2f | adaptive")
    eta: int = _f(4, "training steps per curriculum stage")
    k_start: int = _f(1, "f2b/adaptive: turns the student plays at step 0")
    adaptive_tol: float = _f(0.05, "adaptive: grow depth when the frontier-turn KL EMA moves less than this (relative) per step")
    adaptive_ema: float = _f(0.8, "adaptive: EMA factor of the frontier-turn KL")
    adaptive_min_steps: int = _f(2, "adaptive: minimum steps at a depth before it may grow")


@dataclass
class LossConfig:
    kind: str = _f("sampled", "sampled: paper's sampled-token OPD (PPO-clipped) | full: full-vocabulary KL")
    kl_coef: float = _f(1.0, "sampled: advantage = kl_coef * (teacher_logprob - student_logprob)")
    clip_low: float = _f(0.2, "sampled: PPO ratio clip below 1 - clip_low")
    clip_high: float = _f(0.2, "sampled: PPO ratio clip above 1 + clip_high")
    ratio_base: str = _f("sampler", "sampled: PPO ratio against the sampler's log-probs (sampler) or the trainer's before the update (trainer)")
    tis_cap: float = _f(0.0, "sampled, ratio_base=trainer: truncated importance sampling cap on exp(trainer_lp - sampler_lp) (0 = off)")
    aggregation: str = _f("token-mean", "token-mean | seq-mean-token-mean")
    divergence: str = _f("reverse", "full: forward | reverse | jsd")
    jsd_beta: float = _f(0.5, "full: JSD mixture weight")
    temperature: float = _f(1.0, "logit temperature used to score student and teacher")
    backend: str = _f("auto", "tcod_kernels backend: auto | torch | triton | cuda")


@dataclass
class TrainConfig:
    steps: int = _f(100, "training steps")
    lr: float = _f(1e-6, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: List[float] = _f([0.9, 0.999], "AdamW betas")
    warmup_steps: int = _f(0, "linear warmup steps")
    schedule: str = _f("constant", "learning-rate schedule after warmup: constant | linear | cosine")
    grad_clip: float = _f(1.0, "gradient norm clip (0 = off)")
    mini_batches: int = _f(1, "optimizer updates per rollout batch (PPO-style mini-batches)")
    micro_batch_tokens: int = _f(8192, "tokens per packed micro-batch row")
    seed: int = _f(0, "random seed (tasks, sampling, init)")
    eval_every: int = _f(20, "evaluate every N steps (0 = only at the end)")
    eval_at_start: bool = _f(True, "also evaluate the untrained student at step 0 (logged as step 0)")
    eval_tasks: int = _f(32, "tasks per evaluation split (0 = all)")
    save_every: int = _f(20, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _f(2, "checkpoints kept on disk")
    output_dir: str = _f("runs", "folder that holds run folders")
    run_name: str = _f("", "run folder name (default: <env>_<method>)")
    tensorboard: bool = _f(True, "also log to TensorBoard when it is installed")
    wandb: bool = _f(False, "also log to Weights & Biases")
    wandb_project: str = _f("tcod", "wandb project")
    mixed_precision: str = _f("auto", "autocast of the student forward and rollouts: auto (bf16 on a GPU that has it, else no) | no | bf16 | fp16")
    device: str = _f("auto", "auto | cpu | cuda (accelerate picks the rank's device)")
    progress: bool = _f(True, "tqdm progress bars")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Checks choices and ranges; raises ValueError naming the key."""
        _choice("model.dtype", self.model.dtype, DTYPES)
        _choice("model.teacher_dtype", self.model.teacher_dtype, DTYPES)
        _choice("teacher.mode", self.teacher.mode, TEACHER_MODES)
        if self.teacher.mode == "remote" and not self.teacher.url:
            raise ValueError("teacher.url is required when teacher.mode=remote")
        if self.teacher.mode == "remote" and self.loss.kind == "full":
            raise ValueError("loss.kind=full needs teacher.mode=local (a remote teacher returns sampled-token log-probs only)")
        _choice("rollout.engine", self.rollout.engine, ENGINES)
        _choice("rollout.context", self.rollout.context, ("window", "chat"))
        _choice("curriculum.method", self.curriculum.method, METHODS)
        _choice("loss.kind", self.loss.kind, LOSS_KINDS)
        _choice("loss.aggregation", self.loss.aggregation, AGGREGATIONS)
        _choice("loss.ratio_base", self.loss.ratio_base, ("sampler", "trainer"))
        if self.loss.tis_cap and self.loss.ratio_base != "trainer":
            raise ValueError("loss.tis_cap needs loss.ratio_base=trainer")
        _choice("loss.divergence", self.loss.divergence, DIVERGENCES)
        _choice("train.schedule", self.train.schedule, SCHEDULES)
        _choice("train.mixed_precision", self.train.mixed_precision, ("auto", "no", "bf16", "fp16"))
        _choice("train.device", self.train.device, ("auto", "cpu", "cuda"))
        for key in ("env.max_steps", "rollout.tasks_per_step", "rollout.num_envs", "rollout.max_turn_tokens",
                    "rollout.max_context_tokens", "curriculum.eta", "curriculum.k_start", "train.steps",
                    "train.mini_batches", "train.micro_batch_tokens", "curriculum.adaptive_min_steps"):
            _positive(key, get_key(self, key))
        for key in ("env.history", "model.lora_r", "train.warmup_steps", "train.eval_every", "train.eval_tasks",
                    "train.save_every", "train.keep_checkpoints", "loss.tis_cap", "train.weight_decay",
                    "train.grad_clip", "loss.clip_low", "loss.clip_high", "curriculum.adaptive_tol"):
            if get_key(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {get_key(self, key)}")
        for key in ("rollout.temperature", "rollout.eval_temperature", "loss.temperature", "train.lr", "loss.kl_coef"):
            if not get_key(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {get_key(self, key)}")
        if not 0 < self.rollout.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {self.rollout.top_p}")
        if not 0 < self.loss.jsd_beta < 1:
            raise ValueError(f"loss.jsd_beta must be in (0, 1), got {self.loss.jsd_beta}")
        if not 0 <= self.curriculum.adaptive_ema < 1:
            raise ValueError(f"curriculum.adaptive_ema must be in [0, 1), got {self.curriculum.adaptive_ema}")
        if len(self.train.betas) != 2 or not all(0 <= b < 1 for b in self.train.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.train.betas}")
        if self.rollout.max_turn_tokens >= self.rollout.max_context_tokens:
            raise ValueError("rollout.max_turn_tokens must be smaller than rollout.max_context_tokens")
        return self


def _choice(key, value, choices):
    if value not in choices:
        raise ValueError(f"{key} must be one of {choices}, got {value!r}")


def _positive(key, value):
    if value < 1:
        raise ValueError(f"{key} must be >= 1, got {value}")


# --------------------------------------------------------------------------- keys


def _sections(cfg: Config):
    return [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]


def iter_keys(cfg: Config):
    """Yields (dotted key, type, current value, doc) for every setting."""
    for sec_name, sec in _sections(cfg):
        hints = typing.get_type_hints(type(sec))
        for f in dataclasses.fields(sec):
            yield f"{sec_name}.{f.name}", hints[f.name], getattr(sec, f.name), f.metadata.get("doc", "")


def _split(cfg: Config, key: str):
    if not isinstance(key, str) or key.count(".") != 1:
        raise ValueError(f"config key {key!r} must look like section.name (e.g. train.lr)")
    sec_name, name = key.split(".")
    sections = dict(_sections(cfg))
    if sec_name not in sections:
        raise ValueError(f"unknown config section {sec_name!r} in key {key!r}; sections: {sorted(sections)}")
    sec = sections[sec_name]
    names = [f.name for f in dataclasses.fields(sec)]
    if name not in names:
        raise ValueError(f"unknown config key {key!r}; {sec_name} has: {names}")
    return sec, name, typing.get_type_hints(type(sec))[name]


def get_key(cfg: Config, key: str):
    sec, name, _ = _split(cfg, key)
    return getattr(sec, name)


def _coerce(key: str, typ, value):
    """Type-checks ``value`` against the annotation ``typ``; returns the stored value."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise TypeError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(typ)
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise TypeError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"{key}: unsupported type {typ}")  # pragma: no cover - all fields use the types above


def set_key(cfg: Config, key: str, value) -> None:
    """Sets one dotted key after type-checking the value."""
    sec, name, typ = _split(cfg, key)
    setattr(sec, name, _coerce(key, typ, value))


def parse_override(text: str):
    """``"train.lr=1e-5"`` -> ``("train.lr", 1e-05)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    if value is None:
        value = raw
    return key, value


def apply_overrides(cfg: Config, overrides) -> Config:
    """Applies ``key=value`` strings; a plain-text value for a string key is kept verbatim."""
    for text in overrides:
        key, value = parse_override(text)
        _, _, typ = _split(cfg, key)
        if typ is str and not isinstance(value, str):
            value = text.split("=", 1)[1]
        if typ is float and isinstance(value, str):  # YAML reads 1e-6 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        set_key(cfg, key, value)
    return cfg


def apply_mapping(cfg: Config, data: dict, source: str = "config") -> Config:
    """Applies a nested ``{section: {name: value}}`` mapping (a parsed YAML preset)."""
    if not isinstance(data, dict):
        raise TypeError(f"{source} must be a mapping of sections, got {type(data).__name__}")
    for sec_name, values in data.items():
        if not isinstance(values, dict):
            raise TypeError(f"{source}: section {sec_name!r} must be a mapping, got {type(values).__name__}")
        for name, value in values.items():
            key = f"{sec_name}.{name}"
            _, _, typ = _split(cfg, key)
            if typ is float and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
            set_key(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------- presets


def preset_names() -> List[str]:
    """Names of the presets shipped in ``tcod/configs``."""
    folder = resources.files("tcod") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_preset(name_or_path: str) -> dict:
    """Parsed YAML of a preset name (``alfworld_tcod_f2b``) or a file path."""
    if os.path.isfile(name_or_path):
        with open(name_or_path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    res = resources.files("tcod") / "configs" / f"{name_or_path}.yaml"
    if not res.is_file():
        raise ValueError(
            f"--config {name_or_path!r} is neither a file nor a preset; presets: {preset_names()}"
        )
    return yaml.safe_load(res.read_text(encoding="utf-8")) or {}


def load_config(name_or_path: str = "default", overrides=()) -> Config:
    """Defaults, then the preset (name or path), then ``key=value`` overrides; validated."""
    cfg = Config()
    apply_mapping(cfg, read_preset(name_or_path), source=name_or_path)
    apply_overrides(cfg, overrides)
    return cfg.validate()


def from_dict(data: dict) -> Config:
    """Rebuilds a Config from :meth:`Config.to_dict` output (a run folder's config.yaml)."""
    return apply_mapping(Config(), data).validate()


def describe() -> str:
    """Every key with its type, default and doc, one per line (for --help)."""
    lines = []
    for key, typ, default, doc in iter_keys(Config()):
        tname = getattr(typ, "__name__", None) or str(typ).replace("typing.", "")
        lines.append(f"  {key} ({tname}) = {default!r}\n      {doc}")
    return "\n".join(lines)
