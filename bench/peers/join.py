#!/usr/bin/env python3
"""Joins attnkit's Google Benchmark JSON with torch_peers.py's JSON into Markdown tables.

  python join.py --torch torch.json softmax.json sparse.json

The attnkit files come from `bench_softmax --benchmark_format=json --benchmark_out=FILE`
(bench_sparse likewise); a benchmark run several times (--benchmark_repetitions, or in
several files) counts by its median. One table per family (dense float32, bfloat16,
float16, decode, sparse): the shape, attnkit's figure (GFLOP/s, or GB/s for decode), each
PyTorch implementation's median figure and the ratio attnkit / PyTorch; for sparse shapes
also both speed-of-light ratios (sparse time / (dense time * fraction kept), each library
against its own dense attention). Only shapes present in both inputs are listed.
"""

import argparse
import json
import statistics
import sys

FAMILIES = {
    "dense/f32": "Dense attention, float32",
    "dense/bf16": "Dense attention, bfloat16 inputs (attnkit writes float, PyTorch bfloat16)",
    "dense/f16": "Dense attention, float16 inputs (attnkit writes float, PyTorch float16)",
    "decode/f32": "Decode: 1 query, Hq 32 over Hkv 8, D 128, float K/V (streamed from memory, tiny: in cache)",
    "sparse": "Sparse patterns: GFLOP/s over kept pairs (attnkit: flash engine; PyTorch: FlexAttention)",
}
IMPLS = {"sdpa": "SDPA", "sdpa_enable_gqa": "SDPA enable_gqa", "sdpa_packed_gqa": "SDPA packed GQA",
         "flex_attention": "FlexAttention"}
UNITS = {"GFLOPs": "GFLOP/s", "GBps": "GB/s"}


def load_attnkit(paths: list[str]) -> tuple[dict[str, dict], list[dict]]:
    """Counters per run name (each the median over that benchmark's runs), and each file's context."""
    runs: dict[str, list[dict]] = {}
    medians: dict[str, dict] = {}
    contexts = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        contexts.append(data.get("context", {}))
        for bench in data["benchmarks"]:
            if bench.get("error_occurred"):
                continue
            name = bench.get("run_name", bench["name"])
            if bench.get("run_type") == "aggregate":
                if bench.get("aggregate_name") == "median":
                    medians[name] = bench
            else:
                runs.setdefault(name, []).append(bench)
    joined = dict(medians)
    for name, entries in runs.items():
        if name not in joined:
            numeric = [k for k, v in entries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            joined[name] = {k: statistics.median(e[k] for e in entries if k in e) for k in numeric}
    return joined, contexts


def load_torch(paths: list[str]) -> tuple[dict, list[dict]]:
    """The first file's metadata and every record (a later one replaces an earlier one of the
    same benchmark and implementation)."""
    meta, records = {}, {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = meta or data["meta"]
        for rec in data["records"]:
            records[(rec["attnkit_name"], rec["impl"])] = rec
    return meta, list(records.values())


def shape_label(name: str, family: str) -> str:
    for suffix in ("/real_time", "/manual_time"):
        name = name.removesuffix(suffix)
    return name.removeprefix(f"attnkit/{family}/")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def family_table(family: str, records: list[dict], attnkit: dict[str, dict]) -> str | None:
    impls = list(dict.fromkeys(r["impl"] for r in records))
    by_name: dict[str, dict[str, dict]] = {}
    for rec in records:
        by_name.setdefault(rec["attnkit_name"], {})[rec["impl"]] = rec
    metric = records[0]["metric"]
    unit = UNITS[metric]
    sparse = family == "sparse"
    header = ["shape"] + (["kept"] if sparse else []) + [f"attnkit {unit}"]
    for impl in impls:
        header += [f"{IMPLS.get(impl, impl)} {unit}", f"attnkit / {IMPLS.get(impl, impl)}"]
    if sparse:
        header += ["attnkit sol_ratio", "PyTorch sol_ratio"]
    rows = []
    for name, per_impl in by_name.items():
        ours = attnkit.get(name)
        if ours is None or metric not in ours:
            continue
        first = next(iter(per_impl.values()))
        if sparse and "kept" in ours and abs(ours["kept"] - first["kept"]) > 1e-9:
            print(f"warning: {name}: attnkit keeps {ours['kept']:.6f} of the pairs, the PyTorch mask "
                  f"{first['kept']:.6f}", file=sys.stderr)
        row = [shape_label(name, family)] + ([f"{first['kept']:.4f}"] if sparse else []) + [f"{ours[metric]:.1f}"]
        for impl in impls:
            rec = per_impl.get(impl)
            row += [f"{rec['rate_median']:.1f}", f"{ours[metric] / rec['rate_median']:.2f}"] if rec else ["—", "—"]
        if sparse:
            row += [f"{ours['sol_ratio']:.2f}" if "sol_ratio" in ours else "—", f"{first['sol_ratio']:.2f}"]
        rows.append(row)
    if not rows:
        return None
    return f"### {FAMILIES.get(family, family)}\n\n{markdown_table(header, rows)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", action="append", required=True, help="torch_peers.py JSON (repeatable)")
    parser.add_argument("attnkit", nargs="+", help="Google Benchmark JSON files of bench_softmax / bench_sparse")
    args = parser.parse_args()

    attnkit, contexts = load_attnkit(args.attnkit)
    meta, records = load_torch(args.torch)
    print(f"PyTorch {meta['torch_version']}, {meta['threads']} threads, {meta['cpu_model']}, {meta['date']}, "
          f"load average {meta['loadavg_at_start'][0]:.2f} at start")
    for ctx in contexts:
        load = ctx.get("load_avg") or [float("nan")]
        print(f"attnkit {ctx.get('executable', '?')}, {ctx.get('num_cpus', '?')} CPUs, {ctx.get('date', '?')}, "
              f"load average {load[0]:.2f}")
    families = list(dict.fromkeys(list(FAMILIES) + [r["family"] for r in records]))
    tables = []
    for family in families:
        members = [r for r in records if r["family"] == family]
        table = family_table(family, members, attnkit) if members else None
        if table:
            tables.append(table)
    print("\n" + "\n\n".join(tables) if tables else "\nNo benchmark is in both the attnkit and the PyTorch files.")
    unmatched = len({r["attnkit_name"] for r in records if r["attnkit_name"] not in attnkit})
    if unmatched:
        print(f"\n({unmatched} PyTorch shapes have no attnkit result in the given files.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
