"""Loading the student and teacher: any causal LM by name or path, or the local demo pair.

A model spec is a Hugging Face model name or local folder (``AutoModelForCausalLM``), or
``demo:student`` / ``demo:teacher`` for the small locally built pair of :mod:`tcod.demo`.
Teacher and student must share a tokenizer: :func:`check_same_tokenizer` compares both
vocabularies on their shared id range and returns the ``vocab_size`` the fused kernels
compare over (lm_head matrices are often padded: Qwen2.5-1.5B has 151936 rows, 7B 152064).
"""

from __future__ import annotations

from typing import Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEMO_PREFIX = "demo:"


def _torch_dtype(key: str, name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _load_demo(spec: str, env_name: Optional[str]):
    """``demo:student`` / ``demo:teacher`` -> (model, tokenizer) from :mod:`tcod.demo` (built once, cached)."""
    role = spec[len(DEMO_PREFIX):]
    if role not in ("student", "teacher"):
        raise ValueError(f"model spec {spec!r}: the demo provides demo:student and demo:teacher")
    from tcod.demo import (
        load_demo_models,  # local import: the demo pulls in its own builders
    )

    demo = load_demo_models(env_name) if env_name else load_demo_models()
    return getattr(demo, role), demo.tokenizer


def load_causal_lm(spec: str, *, dtype: str = "float32", attn_implementation: str = "sdpa",
                   trust_remote_code: bool = False, key: str = "model.student", env_name: Optional[str] = None):
    """``(model, tokenizer)`` for a spec (HF name/path or ``demo:...``), in ``dtype``, eval mode.

    ``env_name`` picks the demo pair's environment (default: the demo's own default).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{key} must be a model name, path or demo:student/demo:teacher, got {spec!r}")
    torch_dtype = _torch_dtype(f"{key} dtype", dtype)
    if spec.startswith(DEMO_PREFIX):
        model, tokenizer = _load_demo(spec, env_name)
        model = model.to(torch_dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            spec, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def check_same_tokenizer(student_tok, teacher_tok, student_rows: int, teacher_rows: int) -> int:
    """Refuses a pair whose tokenizers differ; returns the vocab size both lm_heads are compared on.

    The vocabularies (token string -> id) must agree on every id both define; the result is
    ``min(student_rows, teacher_rows)`` (lm_head rows, padding included), which must cover
    every real token id of the student's tokenizer.
    """
    s_vocab = {i: t for t, i in student_tok.get_vocab().items()}
    t_vocab = {i: t for t, i in teacher_tok.get_vocab().items()}
    shared = sorted(set(s_vocab) & set(t_vocab))
    diff = [i for i in shared if s_vocab[i] != t_vocab[i]]
    if diff:
        i = diff[0]
        raise ValueError(
            f"student and teacher tokenizers differ ({len(diff)} of {len(shared)} shared ids), "
            f"e.g. id {i}: student {s_vocab[i]!r} vs teacher {t_vocab[i]!r}; on-policy distillation needs one tokenizer"
        )
    vocab_size = min(student_rows, teacher_rows)
    if len(student_tok) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(student_tok)} tokens but the smaller lm_head has only {vocab_size} rows"
        )
    return vocab_size


def apply_lora(model, *, r: int, alpha: int, dropout: float, target_modules):
    """Wraps ``model`` with peft LoRA adapters (only the adapters train)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ValueError("model.lora_r > 0 needs peft (pip install 'tcod-kernels[lora]')") from exc
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_models(cfg, *, need_teacher: bool = True):
    """``(student, teacher or None, tokenizer, vocab_size)`` for a :class:`tcod.config.Config`.

    The student gets gradient checkpointing / LoRA as configured and is put in train mode;
    the teacher is frozen. With a remote teacher only the student is loaded.
    """
    m = cfg.model
    student, tokenizer = load_causal_lm(m.student, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                        trust_remote_code=m.trust_remote_code, key="model.student",
                                        env_name=cfg.env.name)
    teacher, vocab_size = None, student.get_output_embeddings().weight.shape[0]
    if need_teacher:
        teacher, t_tok = load_causal_lm(m.teacher, dtype=m.teacher_dtype, attn_implementation=m.attn_implementation,
                                        trust_remote_code=m.trust_remote_code, key="model.teacher",
                                        env_name=cfg.env.name)
        vocab_size = check_same_tokenizer(tokenizer, t_tok, student.get_output_embeddings().weight.shape[0],
                                          teacher.get_output_embeddings().weight.shape[0])
        teacher.requires_grad_(False)
    if m.gradient_checkpointing:
        if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.2x
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        student.config.use_cache = False
    if m.lora_r > 0:
        student = apply_lora(student, r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                             target_modules=m.lora_target_modules)
    student.train()
    return student, teacher, tokenizer, vocab_size
