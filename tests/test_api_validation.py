"""Every bad input raises ValueError/TypeError naming the argument, before any compute."""

import pytest
import torch

import tcod_kernels.api as api
from conftest import make_kl_problem
from tcod_kernels import available_backends, fused_kl, fused_logprobs


@pytest.fixture
def p():
    return make_kl_problem(lead=(2, 3), hs=4, ht=6, vs=10)


@pytest.fixture(autouse=True)
def no_kernel_runs(monkeypatch):
    """Any backend call during a validation test is a failure: checks come first."""
    def boom(*a, **k):
        raise AssertionError("a kernel ran before the inputs were validated")

    import tcod_kernels.torch_backend as tb
    monkeypatch.setattr(tb, "kl", boom)
    monkeypatch.setattr(tb, "logprobs", boom)


def _with(p, **changes):
    q = dict(p)
    q.update(changes)
    return q


KL_CASES = [
    # (description, changes to inputs, extra kwargs, exception, words in the message)
    ("hidden is not a tensor", dict(student_hidden=[[1.0] * 4]), {}, TypeError, "student_hidden"),
    ("integer hidden", dict(student_hidden=torch.ones(2, 3, 4, dtype=torch.int64)), {}, TypeError, "student_hidden"),
    ("integer teacher hidden", dict(teacher_hidden=torch.ones(2, 3, 6, dtype=torch.int32)), {}, TypeError, "teacher_hidden"),
    ("weight not 2-D", dict(student_weight=torch.randn(10, 4, 1)), {}, ValueError, "student_weight"),
    ("width mismatch", dict(student_weight=torch.randn(10, 5)), {}, ValueError, "student_hidden width"),
    ("teacher width mismatch", dict(teacher_weight=torch.randn(10, 7)), {}, ValueError, "teacher_hidden width"),
    ("leading dims differ", dict(teacher_hidden=torch.randn(3, 2, 6)), {}, ValueError, "teacher_hidden leading shape"),
    ("hidden/weight dtype differ", dict(student_weight=torch.randn(10, 4, dtype=torch.float64)), {}, TypeError, "student_hidden dtype"),
    ("bias wrong shape", dict(student_bias=torch.randn(9)), {}, ValueError, "student_bias"),
    ("teacher bias wrong shape", dict(teacher_bias=torch.randn(10, 1)), {}, ValueError, "teacher_bias"),
    ("vocab differs without vocab_size", dict(teacher_weight=torch.randn(12, 6)), {}, ValueError, "vocab_size"),
    ("vocab_size too large", {}, dict(vocab_size=11), ValueError, "vocab_size"),
    ("vocab_size zero", {}, dict(vocab_size=0), ValueError, "vocab_size"),
    ("vocab_size float", {}, dict(vocab_size=5.0), TypeError, "vocab_size"),
    ("unknown divergence", {}, dict(divergence="kl"), ValueError, "divergence"),
    ("beta zero", {}, dict(divergence="jsd", beta=0.0), ValueError, "beta"),
    ("beta one", {}, dict(divergence="jsd", beta=1.0), ValueError, "beta"),
    ("beta string", {}, dict(divergence="jsd", beta="0.5"), TypeError, "beta"),
    ("temperature zero", {}, dict(temperature=0.0), ValueError, "temperature"),
    ("temperature negative", {}, dict(temperature=-1.0), ValueError, "temperature"),
    ("temperature inf", {}, dict(temperature=float("inf")), ValueError, "temperature"),
    ("temperature tensor", {}, dict(temperature=torch.tensor(1.0)), TypeError, "temperature"),
    ("unknown reduction", {}, dict(reduction="avg"), ValueError, "reduction"),
    ("unknown backend", {}, dict(backend="jax"), ValueError, "backend"),
    ("mask wrong shape", {}, dict(mask=torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask"),
    ("mask wrong dtype", {}, dict(mask=torch.ones(2, 3)), TypeError, "mask"),
    ("mask not a tensor", {}, dict(mask=[[True] * 3] * 2), TypeError, "mask"),
    ("tensors on different devices", dict(student_hidden=torch.randn(2, 3, 4, device="meta")), {}, ValueError, "student_hidden is on meta"),
]


@pytest.mark.parametrize("desc,changes,kwargs,exc,words", KL_CASES, ids=[c[0] for c in KL_CASES])
def test_fused_kl_rejects(p, desc, changes, kwargs, exc, words):
    with pytest.raises(exc, match=words):
        fused_kl(**_with(p, **changes), **kwargs)


def test_cuda_backend_on_cpu_is_a_clear_error(p):
    with pytest.raises(ValueError, match="backend='cuda' is not available on cpu"):
        fused_kl(**p, backend="cuda")


LP_CASES = [
    ("targets not integer", dict(targets=torch.zeros(2, 3)), TypeError, "targets"),
    ("targets not a tensor", dict(targets=[[0, 1, 2]] * 2), TypeError, "targets"),
    ("targets wrong shape", dict(targets=torch.zeros(3, 2, dtype=torch.long)), ValueError, "targets shape"),
    ("target too large", dict(targets=torch.tensor([[0, 1, 10], [0, 0, 0]])), ValueError, r"targets must be in \[0, 10\)"),
    ("target negative", dict(targets=torch.tensor([[0, -1, 2], [0, 0, 0]])), ValueError, "targets must be in"),
    ("integer hidden", dict(hidden=torch.ones(2, 3, 4, dtype=torch.long)), TypeError, "hidden"),
    ("width mismatch", dict(weight=torch.randn(10, 5)), ValueError, "hidden width"),
    ("bias wrong shape", dict(bias=torch.randn(3)), ValueError, "bias"),
    ("temperature zero", dict(temperature=0), ValueError, "temperature"),
    ("return_entropy not bool", dict(return_entropy=1), TypeError, "return_entropy"),
    ("unknown backend", dict(backend="tpu"), ValueError, "backend"),
]


@pytest.mark.parametrize("desc,changes,exc,words", LP_CASES, ids=[c[0] for c in LP_CASES])
def test_fused_logprobs_rejects(desc, changes, exc, words):
    args = dict(hidden=torch.randn(2, 3, 4), weight=torch.randn(10, 4), targets=torch.zeros(2, 3, dtype=torch.long))
    args.update(changes)
    with pytest.raises(exc, match=words):
        fused_logprobs(**args)


def test_available_backends_on_cpu_lists_torch_first():
    names = available_backends("cpu")
    assert names[0] == "torch"
    assert "cuda" not in names
    assert api._resolve_backend("auto", torch.device("cpu")) == "torch"
