#!/usr/bin/env python3
"""Time against N, log-log, from a bench_linear JSON run: linear attention (causal and not),
kernelized attention with relative positions (elu+1), and dense flash attention measured in
the same run (its time is ours times the `speedup` counter), one panel per head dimension.

  build/bench/bench_linear --benchmark_filter=-tiny --benchmark_out=run.json --benchmark_out_format=json
  python3 bench/plot_scaling.py run.json docs/gallery/linear_scaling.png   # needs matplotlib
"""
import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [  # (name prefix in the benchmark, label, style)
    ("linear/causal", "linear, causal (elu+1)", "o-"),
    ("linear/full", "linear, non-causal (elu+1)", "s-"),
    ("rpe/elu", "kernelized RPE via FFT (elu+1)", "^-"),
]


def main(path, out):
    runs = json.load(open(path))["benchmarks"]
    points = {}  # (series, d) -> [(n, ms, dense_ms)]
    for r in runs:
        m = re.match(r"(linear/causal|linear/full|rpe/elu)/D:(\d+)/N:(\d+)/", r["name"])
        if not m:
            continue
        ms = r["real_time"] if r["time_unit"] == "ms" else r["real_time"] * 1e-6
        points.setdefault((m.group(1), int(m.group(2))), []).append((int(m.group(3)), ms, ms * r["speedup"]))
    dims = sorted({d for _, d in points})
    fig, axes = plt.subplots(1, len(dims), figsize=(6 * len(dims), 4.5), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for prefix, label, style in SERIES:
            p = sorted(points.get((prefix, d), []))
            if p:
                ax.loglog([x[0] for x in p], [x[1] for x in p], style, label=label)
        for prefix, label in (("linear/causal", "dense flash, causal"), ("linear/full", "dense flash, non-causal")):
            p = sorted(points.get((prefix, d), []))
            if p:
                ax.loglog([x[0] for x in p], [x[2] for x in p], "--", color="gray" if "non" in label else "black",
                          label=label)
        ax.set_title(f"D = Dv = {d}, 4 heads")
        ax.set_xlabel("N (queries = keys)")
        ax.set_ylabel("time (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    context = json.load(open(path)).get("context", {})
    fig.suptitle(f"attnkit bench_linear, {context.get('host_name', '')}, {context.get('date', '')[:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
