"""The CUDA extension (csrc/, tcod_kernels/cuda.py).

Without a GPU: the sources compile (nvcc for sm_80/sm_90, the torch bindings against the
installed torch headers), the epilogue math passes its host test, the Python fakes agree with
the C++ op schemas, the tiling heuristic keeps its promises, and the backend reports itself
unavailable with a clear reason. On a CUDA machine (``-m gpu``): the ops against the naive
reference with small tiles forced, so that multi-chunk and multi-tile sweeps are exercised.
"""

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcod_kernels import available_backends, cuda, fused_kl, fused_logprobs, packing, reference

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compile_csrc.sh"


def _nvcc():
    if shutil.which("nvcc"):
        return shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME")
    return os.path.join(home, "bin", "nvcc") if home and os.path.exists(os.path.join(home, "bin", "nvcc")) else None


def _run_script(mode, timeout):
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), mode], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"compile_csrc.sh {mode} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# --------------------------------------------------------------------------- compile checks


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler (g++)")
def test_epilogue_math_host_test():
    assert "all checks passed" in _run_script("host", timeout=300)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler (g++)")
def test_torch_bindings_compile_against_torch_headers():
    out = _run_script("cpp", timeout=900)
    assert out.count("-fsyntax-only") == len(list((ROOT / "csrc").glob("*.cpp")))


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_cuda_sources_compile_for_sm80_and_sm90():
    out = _run_script("cu", timeout=900)
    assert out.count("[sm_80, sm_90]") == len(list((ROOT / "csrc").glob("*.cu")))


def _ninja():
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None or not _ninja(), reason="needs g++ and ninja to build torch extensions")
def test_sweeps_on_cpu_with_emulated_kernels():
    """The real C++ sweeps + cuda.py autograd, kernels emulated on the host (about a minute of CPU to build)."""
    proc = subprocess.run([sys.executable, str(ROOT / "csrc" / "tests" / "host_emulation_check.py")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-6000:]}"
    assert "all sweeps match the reference" in proc.stdout


# --------------------------------------------------------------------------- availability


def test_cuda_backend_is_not_available_on_cpu():
    assert "cuda" not in available_backends("cpu")
    ok, reason = cuda.availability("cpu")
    assert not ok and "CUDA devices only" in reason


def test_cuda_backend_on_cpu_tensors_raises_a_clear_error(kl_problem):
    p = kl_problem()
    with pytest.raises(ValueError, match=r"backend='cuda' is not available on cpu.*CUDA devices only"):
        fused_kl(**p, backend="cuda")
    hidden, weight = torch.randn(3, 4), torch.randn(7, 4)
    with pytest.raises(ValueError, match=r"backend='cuda'"):
        fused_logprobs(hidden, weight, torch.tensor([0, 1, 2]), backend="cuda")


def test_importing_the_backend_is_cheap():
    code = "import sys, tcod_kernels.cuda; print('torch.utils.cpp_extension' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given where torch has no CUDA device")
def test_no_cuda_device_reason():
    ok, reason = cuda.availability("cuda")
    assert not ok and "CUDA device" in reason


def test_sources_are_found_for_the_jit_build():
    src = cuda.source_dir()
    assert src is not None and (src / "register.cpp").is_file()
    assert sorted(p.name for p in src.glob("*.cu")) == ["packing.cu", "softmax_epilogue.cu"]


# --------------------------------------------------------------------------- op schemas vs fakes


def _schemas():
    """name -> schema string, read from the TORCH_LIBRARY block of csrc/register.cpp."""
    text = (ROOT / "csrc" / "register.cpp").read_text()
    block = text[text.index("TORCH_LIBRARY(tcod_kernels"):text.index("TORCH_LIBRARY_IMPL")]
    out = {}
    for call in re.findall(r"m\.def\((.*?)\);", block, flags=re.S):
        schema = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call))
        out[schema[:schema.index("(")]] = schema
    return out


def _arg_names(schema):
    args = schema[schema.index("(") + 1:schema.index(") ->")]
    return [a.strip().split()[-1] for a in args.split(",")]


def test_every_op_has_a_fake_with_the_schema_arguments():
    schemas = _schemas()
    assert set(schemas) == set(cuda.FAKES)
    for name, schema in schemas.items():
        assert list(inspect.signature(cuda.FAKES[name]).parameters) == _arg_names(schema), name


@pytest.fixture(scope="module")
def test_ops():
    """The extension's schemas defined under a test namespace, with cuda.py's fakes."""
    ns = "tcod_kernels_schema_test"
    lib = torch.library.Library(ns, "DEF")
    for schema in _schemas().values():
        lib.define(schema)
    cuda.register_fakes(ns)
    yield getattr(torch.ops, ns)
    lib._destroy()


def test_fakes_give_the_output_shapes_and_dtypes(test_ops):
    from torch._subclasses.fake_tensor import FakeTensorMode

    n, hs, ht, vs, vt = 5, 8, 12, 37, 40
    with FakeTensorMode():
        sh, sw, sb = torch.empty(n, hs, dtype=torch.bfloat16), torch.empty(vs, hs, dtype=torch.bfloat16), torch.empty(vs)
        th, tw = torch.empty(n, ht, dtype=torch.bfloat16), torch.empty(vt, ht, dtype=torch.bfloat16)
        loss, stats, dsh, dsw, dsb = test_ops.kl_forward(sh, sw, sb, th, tw, None, 2, 0.5, 1.0, 37, [True, True, True], 4, 16)
        assert (loss.shape, loss.dtype, stats.shape) == ((n,), torch.float32, (3, n))
        assert (dsh.shape, dsh.dtype, dsw.shape, dsb.shape, dsb.dtype) == ((n, hs), torch.bfloat16, (vs, hs), (vs,), torch.float32)
        _, _, dsh, dsw, dsb = test_ops.kl_forward(sh, sw, None, th, tw, None, 0, 0.5, 1.0, 37, [False, True, True], 4, 16)
        assert dsh.numel() == 0 and dsw.shape == (vs, hs) and dsb.numel() == 0
        grads = test_ops.kl_backward(torch.empty(n), sh, sw, sb, th, tw, None, stats, 1, 0.5, 1.0, 37, [True, False, True], 4, 16)
        assert [tuple(g.shape) for g in grads] == [(n, hs), (0,), (vs,)]
        targets = torch.empty(n, dtype=torch.long)
        outs = test_ops.logprobs_forward(sh, sw, sb, targets, 1.0, 4, 16)
        assert all(o.shape == (n,) and o.dtype == torch.float32 for o in outs)
        grads = test_ops.logprobs_backward(outs[0], None, sh, sw, sb, targets, outs[2], outs[1], 1.0, [True, True, False], 4, 16)
        assert [tuple(g.shape) for g in grads] == [(n, hs), (vs, hs), (0,)]
        mask = test_ops.window_mask(torch.empty(9, dtype=torch.bool), torch.empty(9, dtype=torch.int32),
                                    torch.empty(9, dtype=torch.int32), torch.empty(3, dtype=torch.long),
                                    torch.empty(3, dtype=torch.long))
        assert mask.shape == (9,) and mask.dtype == torch.bool
        sums = test_ops.segment_sum(torch.empty(9, dtype=torch.float64), torch.empty(9, dtype=torch.long), 4)
        assert sums.shape == (4,) and sums.dtype == torch.float64


# --------------------------------------------------------------------------- tiling


@pytest.fixture
def no_tile_env(monkeypatch):
    for name in ("TCOD_CUDA_TILE_MB", "TCOD_CUDA_CHUNK_ROWS", "TCOD_CUDA_VOCAB_TILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("rows,vocab,per_elem,budget", [
    (100, 1000, 10, 1 << 20),         # everything in one tile
    (16384, 151936, 10, 1 << 30),     # Qwen vocabulary: full-vocab tiles
    (16384, 151936, 10, 64 << 20),    # small budget: vocab tiles
    (7, 3_000_000, 8, 1 << 20),       # huge vocabulary, few rows
])
def test_tile_geometry_respects_the_budget(no_tile_env, rows, vocab, per_elem, budget):
    chunk, tile = cuda.tile_geometry(rows, vocab, per_elem, budget)
    assert 1 <= chunk <= rows and 1 <= tile <= vocab
    elems = budget // per_elem
    assert chunk * tile <= max(elems, 16 * 128)
    if rows * vocab <= elems:
        assert (chunk, tile) == (rows, vocab)
    elif elems // vocab >= 256:
        assert tile == vocab and chunk >= 256 - 15


def test_tile_geometry_env_overrides(no_tile_env):
    no_tile_env.setenv("TCOD_CUDA_CHUNK_ROWS", "33")
    no_tile_env.setenv("TCOD_CUDA_VOCAB_TILE", "1000")
    assert cuda.tile_geometry(10_000, 50_000, 10) == (33, 1000)
    no_tile_env.setenv("TCOD_CUDA_CHUNK_ROWS", "0")
    with pytest.raises(ValueError, match="TCOD_CUDA_CHUNK_ROWS"):
        cuda.tile_geometry(10, 10, 10)


# --------------------------------------------------------------------------- setup.py


def _load_setup_module():
    spec = importlib.util.spec_from_file_location("tcod_setup_under_test", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": setup() does not run
    return module


def test_setup_build_plan(monkeypatch):
    setup_py = _load_setup_module()
    monkeypatch.setenv("TCOD_BUILD_CUDA", "0")
    assert setup_py._cuda_build_plan() == (False, "TCOD_BUILD_CUDA=0")
    monkeypatch.setenv("TCOD_BUILD_CUDA", "1")
    assert setup_py._cuda_build_plan() == (True, "")
    monkeypatch.delenv("TCOD_BUILD_CUDA")
    build, reason = setup_py._cuda_build_plan()
    if torch.version.cuda is None:
        assert not build and "no CUDA" in reason


# --------------------------------------------------------------------------- GPU


gpu = pytest.mark.skipif(not (torch.cuda.is_available() and cuda.availability("cuda")[0]),
                         reason="needs a CUDA device and the tcod_kernels CUDA extension")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_extension_loads_where_it_can_be_built():
    """On a CUDA machine the extension must load (prebuilt, or JIT where nvcc exists): a
    failed build would otherwise only show up as GPU tests quietly skipping the backend."""
    if cuda._prebuilt_library() is None and (torch.version.cuda is None or cuda._find_nvcc() is None):
        pytest.skip("no prebuilt tcod_kernels._C and no nvcc for the JIT build")
    ok, reason = cuda.availability("cuda")
    assert ok, reason
    assert "cuda" in available_backends("cuda")


@pytest.fixture
def small_tiles(monkeypatch):
    """Forces several row chunks and ragged vocab tiles."""
    monkeypatch.setenv("TCOD_CUDA_CHUNK_ROWS", "48")
    monkeypatch.setenv("TCOD_CUDA_VOCAB_TILE", "1000")


def _close(ours, ref, tol):
    scale = max(1.0, float(ref.detach().float().abs().max()))
    torch.testing.assert_close(ours.detach().float(), ref.detach().float(), rtol=tol, atol=tol * scale)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kl_with_small_tiles(small_tiles, divergence, reduction, dtype):
    from conftest import make_kl_problem, student_params

    p = {k: (v.cuda().detach().requires_grad_(v.requires_grad) if v is not None else None)
         for k, v in make_kl_problem(lead=(3, 100), hs=64, ht=96, vs=5003, vt=5100, dtype=dtype, bias=True).items()}
    mask = torch.rand(3, 100, device="cuda") > 0.2
    kw = dict(divergence=divergence, beta=0.3, temperature=1.7, vocab_size=4999, mask=mask, reduction=reduction)
    ours = fused_kl(**p, backend="cuda", **kw)
    ref = reference.fused_kl(**p, **kw)
    tol, grad_tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-4, 2e-2)
    _close(ours, ref, tol)
    params = student_params(p)
    g = torch.randn(ref.shape, device="cuda")
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        assert a.dtype == b.dtype
        _close(a, b, grad_tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_logprobs_with_small_tiles(small_tiles, dtype):
    gen = torch.Generator(device="cuda").manual_seed(3)
    n, v, h = 250, 4097, 64
    hidden = (torch.randn(n, h, generator=gen, device="cuda") * 2).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen, device="cuda") / 8).to(dtype).requires_grad_()
    bias = torch.randn(v, generator=gen, device="cuda").to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen, device="cuda")
    targets[::5] = -100
    targets[1] = v - 1
    kw = dict(bias=bias, temperature=0.7, return_entropy=True)
    ours = fused_logprobs(hidden, weight, targets, backend="cuda", **kw)
    ref = reference.fused_logprobs(hidden, weight, targets, **kw)
    tol, grad_tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-4, 2e-2)
    for a, b in zip(ours, ref):
        _close(a, b, tol)
    ups = [torch.randn(n, device="cuda") for _ in ref]
    for a, b in zip(torch.autograd.grad(ours, (hidden, weight, bias), ups),
                    torch.autograd.grad(ref, (hidden, weight, bias), ups)):
        _close(a, b, grad_tol)


@pytest.mark.gpu
@gpu
def test_gpu_packing_ops_match_torch():
    gen = torch.Generator(device="cuda").manual_seed(4)
    T, S = 5000, 7
    loss_mask = torch.rand(T, generator=gen, device="cuda") > 0.3
    seq_ids = torch.randint(-1, S, (T,), generator=gen, device="cuda", dtype=torch.int32)
    turn_ids = torch.randint(0, 9, (T,), generator=gen, device="cuda", dtype=torch.int32)
    lo = torch.randint(0, 4, (S,), generator=gen, device="cuda")
    hi = lo + torch.randint(0, 5, (S,), generator=gen, device="cuda")
    assert torch.equal(cuda.window_mask(loss_mask, turn_ids, seq_ids, lo, hi),
                       packing._window_mask_torch(loss_mask, turn_ids, seq_ids, lo, hi))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        values = torch.randn(T, generator=gen, device="cuda").to(dtype)
        ids = torch.randint(-1, 11, (T,), generator=gen, device="cuda")
        ours, ref = cuda.segment_sum(values, ids, 11), packing._segment_sum_torch(values, ids, 11)
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_kl_under_torch_compile():
    from conftest import make_kl_problem

    p = {k: (v.cuda() if v is not None else None) for k, v in make_kl_problem(lead=(64,), vs=300).items()}

    def loss_fn(sh):
        return fused_kl(**{**p, "student_hidden": sh}, backend="cuda", reduction="sum")

    sh = p["student_hidden"].detach().requires_grad_()
    eager = loss_fn(sh)
    compiled = torch.compile(loss_fn)(sh)
    _close(compiled, eager, 1e-5)
    (g_eager,) = torch.autograd.grad(eager, sh)
    (g_compiled,) = torch.autograd.grad(compiled, sh)
    _close(g_compiled, g_eager, 1e-5)
