"""Teacher scoring of the student's tokens.

* :class:`LocalTeacher`: a co-located model. It returns its last hidden states over a
  packed batch (for the full-vocabulary KL) or the log-probs of the sampled tokens, both
  through :mod:`tcod_kernels` -- the ``[tokens x vocab]`` logits never exist.
* :class:`RemoteTeacher`: an OpenAI-compatible completions server (vLLM, SGLang, ...) that
  returns prompt log-probs (``echo=true, logprobs=0, max_tokens=1``, prompt given as token
  ids). Sampled-token mode only: a server returns no distributions. Plain ``urllib``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import List, Sequence

import torch

from tcod_kernels import fused_logprobs
from tcod_kernels.hf import lm_head_params, packed_hidden_states
from tcod_kernels.packing import PackedBatch, Trajectory


class LocalTeacher:
    """A frozen causal LM on the trainer's device."""

    def __init__(self, model, *, temperature: float = 1.0, backend: str = "auto"):
        self.model = model
        self.temperature = temperature
        self.backend = backend

    @torch.no_grad()
    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        """Last hidden states ``[R, L, Ht]`` (no grad, no logits)."""
        return packed_hidden_states(self.model, batch)

    def lm_head(self):
        return lm_head_params(self.model)

    @torch.no_grad()
    def token_logprobs(self, batch: PackedBatch, targets: torch.Tensor, trajectories=None) -> torch.Tensor:
        """float32 ``[R, L]``: the teacher's log-prob of ``targets`` (-100: 0)."""
        weight, bias = self.lm_head()
        hidden = self.hidden_states(batch)
        return fused_logprobs(hidden.to(weight.dtype), weight, targets, bias=bias,
                              temperature=self.temperature, backend=self.backend)


class RemoteTeacher:
    """Prompt log-probs from an OpenAI-compatible ``/completions`` endpoint."""

    def __init__(self, url: str, model_name: str, *, timeout_s: float = 120.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"teacher.url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/") + "/completions"
        self.model_name = model_name
        self.timeout_s = timeout_s

    def sequence_logprobs(self, sequences: Sequence[Sequence[int]]) -> List[List[float]]:
        """Per sequence, ``lp[j]`` = log p(token j+1 | tokens <= j): ``len(seq) - 1`` values each.

        One request for all sequences (the prompt is a list of token-id lists).
        """
        prompts = [[int(t) for t in seq] for seq in sequences]
        body = {"model": self.model_name, "prompt": prompts, "max_tokens": 1, "echo": True, "logprobs": 0,
                "temperature": 1.0}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.URLError as exc:
            raise RuntimeError(f"teacher server {self.url} failed: {exc}") from exc
        try:
            choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
            lps = [c["logprobs"]["token_logprobs"] for c in choices]
        except (KeyError, TypeError) as exc:
            raise RuntimeError(f"teacher server {self.url} returned no prompt log-probs: {str(payload)[:200]}") from exc
        if len(lps) != len(prompts):
            raise RuntimeError(f"teacher server returned {len(lps)} choices for {len(prompts)} prompts")
        out = []
        for prompt, lp in zip(prompts, lps):
            if len(lp) < len(prompt):
                raise RuntimeError(f"teacher server returned {len(lp)} log-probs for a {len(prompt)}-token prompt")
            out.append([float(x) for x in lp[1:len(prompt)]])
        return out

    @torch.no_grad()
    def token_logprobs(self, batch: PackedBatch, targets: torch.Tensor, trajectories: Sequence[Trajectory]) -> torch.Tensor:
        """float32 ``[R, L]`` aligned like ``targets`` (0 where ``targets`` is -100)."""
        out = torch.zeros(batch.shape, dtype=torch.float32)
        scored = self.sequence_logprobs([tr.token_ids.tolist() for tr in trajectories])
        for i, lps in enumerate(scored):
            r, o = int(batch.seq_rows[i]), int(batch.seq_offsets[i])
            out[r, o:o + len(lps)] = torch.tensor(lps, dtype=torch.float32)
        out = out.to(targets.device)
        return out.masked_fill(targets == -100, 0.0)
