"""Peak extra resident memory of one call, measured in a fresh process.

``python bench/_memprobe.py KIND IMPL`` prints the peak RSS growth in bytes of one fwd+bwd
pass of a CPU kernel case (bench/_cpu_cases.py). :func:`peak_rss_growth` is the measurement
itself, shared with the trainer benchmark: after a warm-up call (so lazy imports and
torch.compile's compilation are not counted) the kernel's peak RSS counter (VmHWM) is reset
through /proc/self/clear_refs, and the measured call's peak is read against the RSS before it.
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


def peak_rss_growth(run) -> int:
    """Bytes the resident set grows to, at its peak, during ``run()`` (after one warm-up call)."""
    run()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) * 1024


def main(kind: str, impl: str) -> None:
    from _cpu_cases import case

    run, inputs = case(kind, impl)
    print(peak_rss_growth(lambda: run(inputs)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
