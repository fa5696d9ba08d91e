"""Run a transformers causal LM over a :class:`~tcod_kernels.packing.PackedBatch`.

:func:`packed_hidden_states` returns the decoder's last hidden states (after the final norm:
exactly what ``lm_head`` consumes) without ever forming logits, so they go straight into
``fused_kl`` / ``fused_logprobs`` together with :func:`lm_head_params`::

    hidden = packed_hidden_states(model, batch)                  # [R, L, H]
    weight, bias = lm_head_params(model)
    logp = fused_logprobs(hidden, weight, batch.target_ids, bias=bias)

Sequences never see each other:

* flash-attention implementations (``config._attn_implementation`` containing "flash")
  get the rows flattened to one ``[1, R*L]`` row, the restarting ``position_ids`` and the
  varlen boundaries (``cu_seq_lens_q/k`` = ``batch.cu_seqlens``, ``max_length_q/k``), so
  attention runs per sequence (a row's trailing padding is one short run of its own) with
  no mask;
* every other implementation gets an explicit 4-D block-diagonal causal mask
  ``[R, 1, L, L]``, which transformers passes through unchanged: boolean (True = attend)
  for sdpa, additive (0 / the dtype's minimum) for eager and the rest. It costs
  ``R * L^2`` elements: prefer flash attention for long rows.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from tcod_kernels.api import fused_logprobs
from tcod_kernels.packing import PackedBatch

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _check(model, batch):
    if not isinstance(batch, PackedBatch):
        raise TypeError(f"batch must be a PackedBatch, got {type(batch).__name__}")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")


def decoder_of(model) -> torch.nn.Module:
    """The base decoder (e.g. ``LlamaModel``) of a causal LM, or the model itself if it is one."""
    if hasattr(model, "get_decoder"):
        dec = model.get_decoder()
        if dec is not None:
            return dec
    return getattr(model, "base_model", model)


def lm_head_params(model) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(weight [V, H], bias [V] or None)`` of the output embedding.

    Raises ``ValueError`` for models whose logits are not just ``hidden @ W.T + b``
    (soft-capping, logit scaling): the fused kernels would compute something else.
    """
    config = getattr(model, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"model config sets {name}={value}: its logits are not hidden @ lm_head.weight.T + bias")
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model has no output embedding (lm_head)")
    return head.weight, getattr(head, "bias", None)


def uses_varlen_attention(model) -> bool:
    """Whether the model's attention implementation takes varlen (cu_seqlens) kwargs."""
    impl = getattr(model.config, "_attn_implementation", None) or ""
    return "flash" in impl


def sliding_window_of(config) -> Optional[int]:
    """The attention window of a config whose layers (some or all) use sliding windows, else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if "sliding_attention" in layer_types else None
    return window if getattr(config, "use_sliding_window", True) else None


def block_causal_mask(batch: PackedBatch, dtype: torch.dtype) -> torch.Tensor:
    """``[R, 1, L, L]`` mask: query t sees key s iff s <= t in the same run.

    ``dtype=torch.bool``: True where allowed; a floating dtype: additive, 0 where allowed and
    the dtype's minimum elsewhere. Runs are the packed sequences and each row's trailing
    padding (a padding token sees only padding before it, so no query row is fully masked
    and softmax stays finite).
    """
    R, L = batch.shape
    run = (batch.position_ids == 0).cumsum(dim=1)  # run index within a row
    allowed = (run.unsqueeze(2) == run.unsqueeze(1)).unsqueeze(1)
    allowed &= torch.ones(L, L, dtype=torch.bool, device=batch.device).tril()
    if dtype == torch.bool:
        return allowed
    mask = torch.zeros(R, 1, L, L, dtype=dtype, device=batch.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def packed_hidden_states(model, batch: PackedBatch, *, varlen: Optional[bool] = None) -> torch.Tensor:
    """Last hidden states ``[R, L, H]`` of ``model`` over ``batch`` (post final norm, no logits).

    ``model`` is a causal LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ...) or its base
    decoder; ``batch`` must be on the model's device. Gradients flow as in a normal forward.
    ``varlen``: pass the varlen kwargs (True) or the 4-D block mask (False); ``None`` decides
    from the attention implementation (:func:`uses_varlen_attention`). Force True for a
    custom registered attention function that reads ``cu_seq_lens_q``.
    """
    _check(model, batch)
    if varlen is not None and not isinstance(varlen, bool):
        raise TypeError(f"varlen must be a bool or None, got {type(varlen).__name__}")
    decoder = decoder_of(model)
    R, L = batch.shape
    if uses_varlen_attention(model) if varlen is None else varlen:
        cu = batch.cu_seqlens.to(device=batch.device, dtype=torch.int32)
        out = decoder(
            input_ids=batch.input_ids.reshape(1, R * L),
            position_ids=batch.position_ids.reshape(1, R * L),
            use_cache=False,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=batch.max_seqlen,
            max_length_k=batch.max_seqlen,
        )
        return out.last_hidden_state.reshape(R, L, -1)
    window = sliding_window_of(model.config)
    if window is not None and window < batch.max_seqlen:
        raise ValueError(
            f"the model uses sliding-window attention (window {window}) and a packed sequence is longer "
            f"({batch.max_seqlen} tokens): the block mask does not model the window; use flash attention "
            "(varlen) or shorter sequences"
        )
    impl = getattr(model.config, "_attn_implementation", None)
    dtype = torch.bool if impl == "sdpa" else decoder.get_input_embeddings().weight.dtype
    mask = block_causal_mask(batch, dtype)
    out = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=mask, use_cache=False)
    return out.last_hidden_state


def packed_token_logprobs(model, batch: PackedBatch, *, temperature: float = 1.0, backend: str = "auto",
                          varlen: Optional[bool] = None) -> torch.Tensor:
    """float32 ``[R, L]``: log-prob of ``batch.target_ids[t]`` under ``model`` at position t.

    0 where ``target_ids`` is -100 (not trained). Logits are never formed: the hidden
    states go through ``fused_logprobs`` with the model's lm_head.
    """
    hidden = packed_hidden_states(model, batch, varlen=varlen)
    weight, bias = lm_head_params(model)
    return fused_logprobs(hidden, weight, batch.target_ids, bias=bias, temperature=temperature, backend=backend)
