"""Compile every Triton kernel variant and config for a GPU target, without a GPU.

    python -m tcod_kernels.triton.compile_check [--arch 90] [--dtype bf16] [--all-configs] [--only kl_grad]

triton ships ``ptxas``, so kernels compile down to cubin on a CPU-only machine. This catches
what the CPU interpreter cannot (types, ``tl.dot`` operand rules, shared memory per config)
and reports, per kernel and config: registers and stack bytes per thread (``cuobjdump
-res-usage``; stack > 0 means spills), dynamic shared memory, and whether the loads are
software-pipelined (``cp.async`` in the TTGIR). Integer sizes and strides get the
divisibility-by-16 hint a real launch gets for such values. Must run without
``TRITON_INTERPRET=1``. Exit status 1 when a compilation fails.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import tcod_kernels.triton  # noqa: F401  (imports the kernel modules)
from tcod_kernels.triton import _tiles

# the package re-exports the functions kl/logprobs under the modules' names
kl_module = sys.modules["tcod_kernels.triton.kl"]
lp_module = sys.modules["tcod_kernels.triton.logprobs"]


def _variants(dt: str):
    """(name, jit function, argument types, constexpr values, configs) for one input dtype."""
    p = "*" + dt
    prec = "ieee" if dt == "fp32" else "tf32"
    kl = dict(sh_ptr=p, sw_ptr=p, sb_ptr=p, th_ptr=p, tw_ptr=p, tb_ptr=p, n="i32", V="i32", Hs="i32", Ht="i32",
              stride_sh="i32", stride_sw="i32", stride_th="i32", stride_tw="i32", inv_t="fp32")
    kl_flags = dict(HAS_SB=True, HAS_TB=True, PREC_S=prec, PREC_T=prec)
    lp = dict(h_ptr=p, w_ptr=p, b_ptr=p, y_ptr="*i64", n="i32", V="i32", H="i32", stride_h="i32", stride_w="i32",
              inv_t="fp32")
    out = []
    for div in (0, 1, 2):
        out.append((f"kl_stats[div={div}]", kl_module._stats_kernel, dict(kl, out_ptr="*fp32", per_split="i32"),
                    dict(kl_flags, DIVERGENCE=div), _tiles.SWEEP_CONFIGS))
    out.append(("kl_jsd", kl_module._jsd_kernel,
                dict(kl, lse_s_ptr="*fp32", lse_t_ptr="*fp32", out_ptr="*fp32", per_split="i32", log_beta="fp32",
                     log_1mbeta="fp32"), kl_flags, _tiles.SWEEP_CONFIGS))
    for div in (0, 1, 2):
        for store in (True, False):
            out.append((f"kl_grad[div={div},store_dz={store}]", kl_module._grad_kernel,
                        dict(kl, lse_s_ptr="*fp32", lse_t_ptr="*fp32", kl_ptr="*fp32", g_ptr="*fp32", dz_ptr=p,
                             dsh_ptr="*fp32", dsw_ptr="*fp32", dsb_ptr="*fp32", log_beta="fp32", log_1mbeta="fp32"),
                        dict(kl_flags, DIVERGENCE=div, STORE_DZ=store), _tiles.GRAD_CONFIGS))
    out.append(("lp_stats", lp_module._stats_kernel, dict(lp, out_ptr="*fp32", per_split="i32"),
                dict(HAS_BIAS=True, ENTROPY=True, PREC=prec), _tiles.SWEEP_CONFIGS))
    for store in (True, False):
        out.append((f"lp_grad[store_dz={store}]", lp_module._grad_kernel,
                    dict(lp, lse_ptr="*fp32", ent_ptr="*fp32", g_lp_ptr="*fp32", g_ent_ptr="*fp32", dz_ptr=p,
                         dh_ptr="*fp32", dw_ptr="*fp32", db_ptr="*fp32"),
                    dict(HAS_BIAS=True, ENTROPY=True, STORE_DZ=store, PREC=prec), _tiles.GRAD_CONFIGS))
    return out


def compile_kernel(fn, types, constexprs, config, arch):
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    hinted = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
              if signature[name].startswith("*") or name.startswith("stride") or name in ("Hs", "Ht", "H")}
    src = ASTSource(fn=fn, signature=signature, constexprs={**constexprs, **config.kwargs}, attrs=hinted)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages))


def resource_usage(kernel) -> str:
    """``REG:.. STACK:..`` from cuobjdump (shipped with triton) on the kernel's cubin."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return f"regs={match.group(1)} stack={match.group(2)}" if match else "regs=?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100), 80 (A100)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--all-configs", action="store_true", help="every autotune config, not only the default")
    parser.add_argument("--only", default="", help="substring of the kernel names to compile")
    args = parser.parse_args(argv)
    if _tiles.INTERPRET:
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    failures = 0
    for name, fn, types, constexprs, configs in _variants(args.dtype):
        if args.only not in name:
            continue
        for config in configs if args.all_configs else configs[:1]:
            tag = (f"sm_{args.arch} {args.dtype} {name} {config.kwargs['BLOCK_N']}x{config.kwargs['BLOCK_V']}"
                   f"x{config.kwargs['BLOCK_K']} warps={config.num_warps} stages={config.num_stages}")
            try:
                kernel = compile_kernel(fn, types, constexprs, config, args.arch)
            except Exception as exc:  # report every failing variant, then fail
                failures += 1
                print(f"FAIL {tag}: {str(exc).strip().splitlines()[-1][:300]}", flush=True)
                continue
            pipelined = "async_copy_global_to_local" in kernel.asm["ttgir"]
            print(f"ok   {tag}: {resource_usage(kernel)} shared={kernel.metadata.shared} "
                  f"pipelined={pipelined}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
