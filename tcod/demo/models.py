"""The demo's small Llama models: a teacher trained from scratch and a smaller student.

Both use tied input/output embeddings. The student keeps the teacher's width, copies its
token embeddings and final norm and, optionally, its first ``copy_layers`` decoder layers
(layer dropping, as DistilBERT initializes its student); the other layers start random.
The demo copies no layer and trains the student only briefly: measured on the coin game,
a student holding the teacher's first layer already plays about as well as the teacher,
which would leave distillation nothing to show.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .recipe import ModelShape


def build_model(shape: ModelShape, tokenizer, *, max_positions: int = 2048, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialized small Llama sized by ``shape`` for ``tokenizer``'s vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def student_from_teacher(teacher: LlamaForCausalLM, shape: ModelShape, tokenizer, *, copy_layers: int = 0,
                         seed: int = 0) -> LlamaForCausalLM:
    """A ``shape.layers``-layer student holding the teacher's embeddings, norm and first ``copy_layers`` layers."""
    t_cfg = teacher.config
    if shape.hidden != t_cfg.hidden_size or shape.heads != t_cfg.num_attention_heads \
            or shape.intermediate != t_cfg.intermediate_size:
        raise ValueError("the student must share the teacher's width (hidden, heads, intermediate) to copy its layers")
    if not 1 <= shape.layers <= t_cfg.num_hidden_layers:
        raise ValueError(f"student layers must be in [1, {t_cfg.num_hidden_layers}], got {shape.layers}")
    if not 0 <= copy_layers <= shape.layers:
        raise ValueError(f"copy_layers must be in [0, {shape.layers}], got {copy_layers}")
    student = build_model(shape, tokenizer, max_positions=t_cfg.max_position_embeddings, seed=seed)
    with torch.no_grad():
        student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        student.model.norm.load_state_dict(teacher.model.norm.state_dict())
        for s_layer, t_layer in list(zip(student.model.layers, teacher.model.layers))[:copy_layers]:
            s_layer.load_state_dict(t_layer.state_dict())
    return student.eval()
