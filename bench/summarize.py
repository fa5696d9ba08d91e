"""pytest-benchmark JSON -> markdown tables, one per benchmark group, with ratios.

``python bench/summarize.py FILE.json [FILE.json ...] [--header TEXT_FILE]``

Each group (one shape) lists its implementations fastest first: mean time (min in brackets),
the ratio to the group's baseline (the implementation named "naive" or "materialized": logits
materialized) and to the fastest, and every ``extra_info``
field the benchmarks recorded (peak memory, FLOP/s, device).
"""

from __future__ import annotations

import argparse
import json


BASELINES = ("naive", "materialized")


def _impl(bench: dict) -> str:
    return str((bench.get("params") or {}).get("impl", bench["name"]))


def summarize(paths, header: str = "") -> str:
    groups: dict = {}
    machine = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machine = machine or data.get("machine_info", {})
        for bench in data.get("benchmarks", []):
            groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    lines = []
    if header:
        lines += ["```", header.strip(), "```", ""]
    cpu = machine.get("cpu", {}).get("brand_raw", "")
    if machine:
        lines += [f"machine: {machine.get('node', '?')}, {cpu}, python {machine.get('python_version', '?')}", ""]
    for group in sorted(groups):
        benches = sorted(groups[group], key=lambda b: b["stats"]["mean"])
        fastest = benches[0]["stats"]["mean"]
        naive = next((b["stats"]["mean"] for b in benches if _impl(b) in BASELINES), None)
        extra_keys = sorted({k for b in benches for k in b.get("extra_info", {})})
        lines += [f"## {group}", ""]
        head = ["implementation", "ms", "vs baseline", "vs fastest"] + extra_keys
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in benches:
            s, e = b["stats"], b.get("extra_info", {})
            row = [_impl(b), f"{s['mean'] * 1e3:.1f} ({s['min'] * 1e3:.1f})",
                   f"{s['mean'] / naive:.2f}x" if naive else "",
                   f"{s['mean'] / fastest:.2f}x"] + [str(e.get(k, "")) for k in extra_keys]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) if groups else "no benchmark results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pytest-benchmark JSON files")
    parser.add_argument("--header", default="", help="a text file printed first (machine facts)")
    args = parser.parse_args(argv)
    header = open(args.header).read() if args.header else ""
    print(summarize(args.files, header))


if __name__ == "__main__":
    main()
