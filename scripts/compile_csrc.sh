#!/usr/bin/env bash
# Compile-checks the CUDA extension's sources without a GPU; exits non-zero on any error.
#
#   scripts/compile_csrc.sh [cu|cpp|host|all]     (default: all)
#
#   cu    every csrc/*.cu with nvcc -c for sm_80 and sm_90 (one nvcc call per source), with
#         the flags torch.utils.cpp_extension adds; needs only the CUDA toolkit.
#   cpp   every csrc/*.cpp (the torch bindings) with the host compiler, -fsyntax-only,
#         against the installed torch's headers; a CPU-only torch is enough.
#   host  builds and runs csrc/tests/host_math_test.cpp (the epilogue math vs float64).
#
# Environment: NVCC (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc), CXX (default g++),
# PYTHON (default python3), CSRC_ARCHS (default "80 90").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CSRC="$ROOT/csrc"
MODE="${1:-all}"
CXX="${CXX:-g++}"
PYTHON="${PYTHON:-python3}"
ARCHS="${CSRC_ARCHS:-80 90}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

find_nvcc() {
  if [[ -n "${NVCC:-}" ]]; then echo "$NVCC"; return; fi
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
  if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then echo "$CUDA_HOME/bin/nvcc"; return; fi
  return 1
}

check_cu() {
  local nvcc
  nvcc="$(find_nvcc)" || { echo "compile_csrc: nvcc not found" >&2; return 2; }
  local gencode=()
  for a in $ARCHS; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
  for src in "$CSRC"/*.cu; do
    echo "nvcc $(basename "$src") [sm_${ARCHS// /, sm_}]"
    "$nvcc" -std=c++17 -O2 -c "$src" -o "$OUT/$(basename "$src").o" "${gencode[@]}" \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
      -Xcompiler -Wall -Werror all-warnings
  done
}

check_cpp() {
  local inc std
  inc="$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))')"
  # torch >= 2.10 headers need C++20; older ones build as C++17 (as torch's own extensions do).
  std="$("$PYTHON" -c 'import torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 10) else "c++17")')"
  local flags=(-std="$std" -fsyntax-only -Wall -Werror -Wno-error=deprecated-declarations)
  for d in $inc; do flags+=(-isystem "$d"); done
  for src in "$CSRC"/*.cpp; do
    echo "$CXX -fsyntax-only $(basename "$src") [$std, torch headers]"
    "$CXX" "${flags[@]}" "$src"
  done
}

check_host() {
  echo "$CXX host_math_test.cpp && run"
  "$CXX" -std=c++17 -O1 -Wall -Werror -o "$OUT/host_math_test" "$CSRC/tests/host_math_test.cpp"
  "$OUT/host_math_test"
}

case "$MODE" in
  cu) check_cu ;;
  cpp) check_cpp ;;
  host) check_host ;;
  all) check_host; check_cpp; check_cu ;;
  *) echo "usage: $0 [cu|cpp|host|all]" >&2; exit 2 ;;
esac
echo "compile_csrc: $MODE OK"
