"""Shared test helpers: the repo root on sys.path, and small random KL problems."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Without a GPU, Triton kernels run under the interpreter. transformers imports triton, so the
# variable must be set before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use tiny shapes, where intra-op threads only add contention (subprocess tests
# set OMP_NUM_THREADS=1 for the same reason).
torch.set_num_threads(1)


def make_kl_problem(lead=(2, 5), hs=8, ht=12, vs=37, vt=None, dtype=torch.float32, bias=False, scale=1.0, seed=0):
    """Random student/teacher hidden states and lm_head weights with a gradient on the student."""
    gen = torch.Generator().manual_seed(seed)
    vt = vs if vt is None else vt

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    sh = rnd(*lead, hs).requires_grad_()
    sw = (rnd(vs, hs) / hs**0.5).requires_grad_()
    th = rnd(*lead, ht)
    tw = rnd(vt, ht) / ht**0.5
    sb = rnd(vs).requires_grad_() if bias else None
    tb = rnd(vt) if bias else None
    return dict(student_hidden=sh, student_weight=sw, teacher_hidden=th, teacher_weight=tw,
                student_bias=sb, teacher_bias=tb)


def student_params(problem):
    return [t for t in (problem["student_hidden"], problem["student_weight"], problem["student_bias"]) if t is not None]


@pytest.fixture
def kl_problem():
    return make_kl_problem
