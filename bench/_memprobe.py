"""Peak extra resident memory of one fwd+bwd pass, measured in a fresh process.

``python bench/_memprobe.py KIND IMPL`` prints the peak RSS growth in bytes during one call,
after a warm-up call (so torch.compile's compilation is not counted): the kernel's peak RSS
counter (VmHWM) is reset through /proc/self/clear_refs just before the measured call.
"""

import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(kind: str, impl: str) -> None:
    from _cpu_cases import case

    run, inputs = case(kind, impl)
    run(inputs)  # warm-up: lazy imports, compilation, allocator pools
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    run(inputs)
    print((_status_kib("VmHWM") - base) * 1024)


if __name__ == "__main__":
    main(*sys.argv[1:3])
