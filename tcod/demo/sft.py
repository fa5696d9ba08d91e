"""Supervised fine-tuning of a causal LM on (prompt ids, reply ids) examples.

The loss is the next-token cross-entropy on the reply tokens only (the prompt is context);
the output layer is applied only at the positions that predict a reply token, which on
short replies after long prompts saves most of its cost.
AdamW with a linear warmup and a cosine decay; random mini-batches drawn with a seeded
generator, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside replies)."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (prompt, reply) in enumerate(examples):
        seq = prompt + reply
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(prompt):len(seq)] = torch.tensor(reply)
    return ids, mask, labels


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def reply_loss(model, ids, mask, labels):
    """Mean cross-entropy of the reply tokens, from the last hidden states at their positions."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def train_sft(model, examples, *, steps: int, batch_size: int, lr: float, pad_id: int,
              warmup: int = 20, seed: int = 0, progress: bool = True, desc: str = "sft") -> list[float]:
    """Trains ``model`` in place for ``steps`` mini-batches; returns the loss of each step."""
    if not examples:
        raise ValueError("train_sft needs at least one example")
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, min(warmup, steps))
        batch = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        ids, mask, labels = collate(batch, pad_id)
        loss = reply_loss(model, ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
