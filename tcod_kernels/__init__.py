"""tcod_kernels: fused teacher-student log-probs and KL from hidden states and lm_head weights."""

from tcod_kernels.api import available_backends, fused_kl, fused_logprobs

__all__ = ["fused_kl", "fused_logprobs", "available_backends"]
__version__ = "0.1.0"
