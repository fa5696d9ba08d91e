"""Packed forward passes of tiny random transformers models equal their unpacked runs.

The oracle is each trajectory run alone through the model's own full forward (logits
included), log-softmaxed in float64. Weights are initialized large enough that attention
across a sequence boundary would change the results (checked by a negative control).
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # transformers imports triton: keep its kernels on the CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import (  # noqa: E402
    AttentionInterface, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from tcod_kernels.hf import (  # noqa: E402
    block_causal_mask, lm_head_params, packed_hidden_states, packed_token_logprobs)
from tcod_kernels.packing import Trajectory, pack  # noqa: E402

VARLEN_CALLS = []


def _varlen_reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A registered attention that, like flash varlen, only sees the run boundaries.

    Without varlen kwargs (an unpacked reference run) the whole row is one causal run.
    """
    assert attention_mask is None and query.shape[0] == 1
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32)
    else:
        assert torch.equal(cu, kwargs["cu_seq_lens_k"]) and cu.dtype == torch.int32
        VARLEN_CALLS.append((cu.tolist(), kwargs["max_length_q"]))
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.empty_like(query)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        out[:, :, a:b] = F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("tcod_test_varlen", _varlen_reference_attention)

COMMON = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3)


def tiny_model(kind: str, attn: str):
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**COMMON))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True))
    model.set_attn_implementation(attn)
    return model.eval()


def trajectories():
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(1, 101, (n,), generator=g).tolist()

    out = []
    for n_turns in (3, 1, 2, 4):
        chunks = []
        for k in range(n_turns):
            chunks.append(("prompt" if k == 0 else "observation", ids(3 + k), k))
            chunks.append(("assistant", ids(2 + (k % 2)), k))
        out.append(Trajectory.from_chunks(chunks))
    return out


def unpacked_logprobs(model, tr):
    """float64 log-prob of every next token of one trajectory, run alone."""
    with torch.no_grad():
        logits = model(input_ids=tr.token_ids[None]).logits[0].double()
    return logits[:-1].log_softmax(-1).gather(1, tr.token_ids[1:, None]).squeeze(1)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn, varlen", [("eager", None), ("sdpa", None), ("tcod_test_varlen", True)])
def test_packed_logprobs_equal_unpacked(kind, attn, varlen):
    model = tiny_model(kind, attn)
    trajs = trajectories()
    batch = pack(trajs, max_tokens=40)  # several rows, with padding
    assert batch.shape[0] > 1 and (batch.seq_ids < 0).any()
    VARLEN_CALLS.clear()
    with torch.no_grad():
        logp = packed_token_logprobs(model, batch, backend="torch", varlen=varlen)
        hidden = packed_hidden_states(model, batch, varlen=varlen)
    if attn == "tcod_test_varlen":
        assert VARLEN_CALLS and VARLEN_CALLS[0] == (batch.cu_seqlens.tolist(), batch.max_seqlen)
    weight, bias = lm_head_params(model)
    for i, tr in enumerate(trajs):
        ref = unpacked_logprobs(model, tr)
        mask = batch.unpack(batch.loss_mask)[i][:-1]
        got = batch.unpack(logp)[i][:-1]
        torch.testing.assert_close(got[mask].double(), ref[mask], rtol=1e-4, atol=1e-4)
        assert (got[~mask] == 0).all()
        # every position, trained or not: the hidden states give the unpacked next-token log-probs
        h = batch.unpack(hidden)[i][:-1].double()
        full = (h @ weight.double().T + (0 if bias is None else bias.double())).log_softmax(-1)
        torch.testing.assert_close(full.gather(1, tr.token_ids[1:, None]).squeeze(1), ref, rtol=1e-4, atol=1e-4)


def test_negative_control_plain_causal_row_leaks():
    """Without the block mask, later sequences of a row see earlier ones: results differ."""
    model = tiny_model("llama", "eager")
    trajs = trajectories()
    batch = pack(trajs, max_tokens=40)
    with torch.no_grad():
        plain = model.model(input_ids=batch.input_ids, use_cache=False).last_hidden_state
    weight, _ = lm_head_params(model)
    worst = 0.0
    for i, tr in enumerate(trajs):
        if int(batch.seq_offsets[i]) == 0:
            continue
        ref = unpacked_logprobs(model, tr)
        h = batch.unpack(plain)[i][:-1].double()
        got = (h @ weight.double().T).log_softmax(-1).gather(1, tr.token_ids[1:, None]).squeeze(1)
        worst = max(worst, float((got - ref).abs().max().detach()))
    assert worst > 1e-2


def test_packed_gradients_equal_unpacked():
    model = tiny_model("qwen2", "sdpa")
    trajs = trajectories()
    batch = pack(trajs, max_tokens=40)
    packed_token_logprobs(model, batch, backend="torch").sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for tr in trajs:
        logits = model(input_ids=tr.token_ids[None]).logits[0]
        trained, _ = tr.token_roles()
        lp = logits[:-1].float().log_softmax(-1).gather(1, tr.token_ids[1:, None]).squeeze(1)
        lp[trained[1:]].sum().backward()
    for (name, p), g in zip(model.named_parameters(), packed_grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_block_causal_mask_hand_example():
    a = Trajectory.from_chunks([("prompt", [1], 0), ("assistant", [2], 0)])
    b = Trajectory.from_chunks([("prompt", [3], 0)])
    batch = pack([a, b], max_tokens=4, pad_to_multiple_of=4)  # row: a a b pad
    allowed = block_causal_mask(batch, torch.float32)[0, 0] == 0
    assert allowed.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    additive = block_causal_mask(batch, torch.bfloat16)
    assert additive.dtype == torch.bfloat16 and (additive[0, 0][~allowed] == torch.finfo(torch.bfloat16).min).all()
    assert torch.equal(block_causal_mask(batch, torch.bool)[0, 0], allowed)


def test_bad_arguments():
    model = tiny_model("llama", "eager")
    batch = pack(trajectories(), max_tokens=40)
    with pytest.raises(TypeError, match="batch"):
        packed_hidden_states(model, batch.input_ids)
    with pytest.raises(TypeError, match="model"):
        packed_hidden_states(object(), batch)
    with pytest.raises(TypeError, match="varlen"):
        packed_hidden_states(model, batch, varlen="yes")
    model.config.sliding_window = 4  # Llama has no layer_types: a window applies to every layer
    with pytest.raises(ValueError, match="sliding-window"):
        packed_hidden_states(model, batch)
    model.config.sliding_window = None
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        lm_head_params(model)
