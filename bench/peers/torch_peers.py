#!/usr/bin/env python3
"""PyTorch at attnkit's benchmark shapes, counted with attnkit's formulas.

Runs torch.nn.functional.scaled_dot_product_attention at every shape of
bench/bench_softmax.cpp (dense float32 / bfloat16 / float16, grouped-query decode) and
FlexAttention (compiled, with a BlockMask built from attnkit's patterns) at every shape of
bench/bench_sparse.cpp, and reports the figure attnkit reports for the same shape:

  dense    GFLOP/s = 4*B*Hq*N*N*D per call (half for causal) / time
  decode   GB/s    = K and V bytes, B*Hkv*Nk*(D+Dv)*4, per call / time
  sparse   GFLOP/s = 4*H*kept_pairs*D per call / time (only the pairs the pattern keeps),
           and sol_ratio = flex time / (dense SDPA time * fraction of pairs kept)

Each record's attnkit_name is the Google Benchmark name of the attnkit benchmark it
matches (join.py pairs them). Every sparse pattern is checked first: the mask's kept-pair
count against attnkit's formula (small shapes) and FlexAttention's output rows against
dense SDPA with the same boolean mask (every shape).

  python torch_peers.py --out torch.json            # everything (tens of minutes)
  python torch_peers.py --quick --out quick.json    # tiny shapes, 3 short repetitions
  python torch_peers.py --filter 'dense/f32/N:2048' --out f32.json
"""

import argparse
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# bench/bench_softmax.cpp: dense B = 1, 8 heads; decode 1 query, Hq 32 over Hkv 8, D 128,
# K/V replicated until the working set is at least 256 MiB (streamed from DRAM).
DENSE_B, DENSE_H = 1, 8
DEC_B, DEC_HQ, DEC_HKV, DEC_D = 1, 32, 8, 128
DECODE_STREAM_BYTES = 256 << 20
# bench/bench_sparse.cpp: 4 heads; dense reference timed on the first 1024 queries, scaled.
SPARSE_H = 4
SPARSE_DENSE_ROWS = 1024
# Patterns over at most this many tokens get the full-mask checks and an eager BlockMask.
SMALL_N = 4096

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")


# ---------------------------------------------------------------------------------------
# Timing


@dataclass
class Settings:
    reps: int
    warmup: int
    min_rep_s: float  # a repetition repeats the call until it lasts at least this long


@dataclass
class Timing:
    min_s: float
    median_s: float
    reps: int
    calls_per_rep: int


def time_calls(calls: list[Callable[[], object]], settings: Settings) -> list[Timing]:
    """Times each callable: warm-up, then `reps` repetitions that run the callables in turn
    (so that all of them see the same machine state), each repeated enough times to last
    min_rep_s. Returns the min and median time of one call, per callable."""
    per_rep = []
    for call in calls:
        for _ in range(settings.warmup):
            call()
        t0 = time.perf_counter()
        call()
        per_rep.append(max(1, math.ceil(settings.min_rep_s / (time.perf_counter() - t0))))
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(settings.reps):
        for call, count, out in zip(calls, per_rep, samples):
            t0 = time.perf_counter()
            for _ in range(count):
                call()
            out.append((time.perf_counter() - t0) / count)
    return [Timing(min(s), statistics.median(s), settings.reps, c) for s, c in zip(samples, per_rep)]


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def record(name: str, family: str, impl: str, shape: dict, metric: str, work: float, t: Timing) -> dict:
    """A result: `work` FLOPs (metric GFLOPs) or bytes (GBps) per call, attnkit's counting."""
    return {"attnkit_name": name, "family": family, "impl": impl, "shape": shape, "metric": metric,
            "work_per_call": work, "time_min_s": t.min_s, "time_median_s": t.median_s, "reps": t.reps,
            "calls_per_rep": t.calls_per_rep, "rate_median": work / t.median_s * 1e-9,
            "rate_best": work / t.min_s * 1e-9}


# ---------------------------------------------------------------------------------------
# Dense and decode (bench_softmax.cpp)


def attention_flops(b: int, h: int, nq: int, nk: int, d: int, causal: bool) -> float:
    f = 4.0 * b * h * nq * nk * d
    return f / 2 if causal else f


def run_dense(name: str, dtype_tag: str, n: int, d: int, causal: bool, settings: Settings) -> list[dict]:
    dtype = DTYPES[dtype_tag]
    q, k, v = (randn(DENSE_B, DENSE_H, n, d, dtype=dtype, seed=s) for s in (1, 2, 3))
    [t] = time_calls([lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)], settings)
    shape = {"B": DENSE_B, "H": DENSE_H, "N": n, "D": d, "causal": causal, "dtype": dtype_tag}
    return [record(name, f"dense/{dtype_tag}", "sdpa", shape, "GFLOPs",
                   attention_flops(DENSE_B, DENSE_H, n, n, d, causal), t)]


def run_decode(name: str, nk: int, stream: bool, settings: Settings) -> list[dict]:
    """One query token per call, K/V cycling over replicas as in bench_softmax's decode_inputs.
    Two ways to call SDPA: enable_gqa=True (Hq query heads, the documented GQA API), and the
    query heads of each KV head packed as rows ([B, Hkv, Hq/Hkv, D] queries: K/V read once
    per KV head, as attnkit and the Eigen baseline do)."""
    kv_bytes = DEC_B * DEC_HKV * nk * (DEC_D + DEC_D) * 4
    replicas = max(1, -(-DECODE_STREAM_BYTES // kv_bytes)) if stream else 1
    q = randn(DEC_B, DEC_HQ, 1, DEC_D, seed=21)
    k = randn(DEC_B, DEC_HKV, nk, DEC_D, seed=22).expand(replicas, -1, -1, -1, -1).contiguous()
    v = randn(DEC_B, DEC_HKV, nk, DEC_D, seed=23).expand(replicas, -1, -1, -1, -1).contiguous()
    group = DEC_HQ // DEC_HKV
    q_packed = q.view(DEC_B, DEC_HKV, group, DEC_D)
    torch.testing.assert_close(F.scaled_dot_product_attention(q_packed, k[0], v[0]).view(q.shape),
                               F.scaled_dot_product_attention(q, k[0], v[0], enable_gqa=True))

    def stepper(query: torch.Tensor, **kwargs) -> Callable[[], torch.Tensor]:
        replica = 0

        def step() -> torch.Tensor:
            nonlocal replica
            replica = (replica + 1) % replicas
            return F.scaled_dot_product_attention(query, k[replica], v[replica], **kwargs)
        return step

    timings = time_calls([stepper(q, enable_gqa=True), stepper(q_packed)], settings)
    shape = {"B": DEC_B, "Hq": DEC_HQ, "Hkv": DEC_HKV, "Nk": nk, "D": DEC_D, "replicas": replicas}
    return [record(name, "decode/f32", impl, shape, "GBps", kv_bytes, t)
            for impl, t in zip(("sdpa_enable_gqa", "sdpa_packed_gqa"), timings)]


# ---------------------------------------------------------------------------------------
# Sparse patterns (include/attnkit/variants/*.hpp, spec/*.md): a FlexAttention mask_mod
# (written with tensor ops, so that it also evaluates on whole index grids) and attnkit's
# kept-pair count (bench_sparse.cpp's kept_pairs).

MaskMod = Callable[[object, object, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Neighborhood:
    """NATTEN's neighborhood attention, non-causal, stride 1: along each axis the query at
    x sees `kernel` keys of its dilation group, centred on x and shifted (not truncated)
    to stay inside the grid."""
    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def mask_mod(self) -> MaskMod:
        def admits(x, y, length, kernel, dilation):
            group, u = x % dilation, x // dilation
            group_length = (length - group + dilation - 1) // dilation
            start = torch.minimum(torch.clamp(u - kernel // 2, min=0), group_length - kernel)
            v = y // dilation
            return (y % dilation == group) & (v >= start) & (v < start + kernel)

        def keep(b, h, q_idx, kv_idx):
            kept, q, k = True, q_idx, kv_idx
            for a in reversed(range(len(self.shape))):  # row-major: last axis fastest
                kept = kept & admits(q % self.shape[a], k % self.shape[a], self.shape[a], self.kernel[a],
                                     self.dilation[a])
                q, k = q // self.shape[a], k // self.shape[a]
            return kept
        return keep

    def kept_pairs(self) -> int:
        return math.prod(length * kernel for length, kernel in zip(self.shape, self.kernel))


@dataclass(frozen=True)
class Power:
    """PowerAttention, causal, the paper's defaults (attnkit::power{}): key block bk is
    kept by query block bq when bk is a sink block or bq - bk < W or bq - bk is a power of 2."""
    n: int
    block_size: int = 256
    window_blocks: int = 5
    sink_blocks: int = 1

    def mask_mod(self) -> MaskMod:
        def keep(b, h, q_idx, kv_idx):
            delta = q_idx // self.block_size - kv_idx // self.block_size
            by_distance = (delta < self.window_blocks) | ((delta & (delta - 1)) == 0)
            return (kv_idx <= q_idx) & ((kv_idx < self.sink_blocks * self.block_size) | by_distance)
        return keep

    def kept_pairs(self) -> int:
        """bench_sparse's count: the first key of a block decides the block (causal: up to i)."""
        i = torch.arange(self.n)[:, None]
        first = torch.arange(0, self.n, self.block_size)[None, :]
        last = torch.clamp(first + self.block_size, max=self.n) - 1
        keys = torch.minimum(last, i) - first + 1
        return int(torch.where(self.mask_mod()(0, 0, i, first), keys, 0).sum())


@dataclass(frozen=True)
class Radial:
    """Radial attention, token mode, 1 sink frame, no global tokens: between frames at
    distance d (band r = floor(log2(max(d, 1)))) a query at position x keeps keys with
    |x - y| < s >> r, and the key at y = x when d is a multiple of ceil(2^r / s)."""
    frames: int
    tokens_per_frame: int
    sink_frames: int = 1

    @property
    def n(self) -> int:
        return self.frames * self.tokens_per_frame

    def band(self, d: int) -> int:
        return max(d, 1).bit_length() - 1

    def mask_mod(self) -> MaskMod:
        s = self.tokens_per_frame
        half_width = torch.tensor([s >> self.band(d) for d in range(self.frames)])
        diagonal = torch.tensor([d % -(-(1 << self.band(d)) // s) == 0 for d in range(self.frames)])
        sinks = min(self.sink_frames, self.frames)

        def keep(b, h, q_idx, kv_idx):
            i, x, j, y = q_idx // s, q_idx % s, kv_idx // s, kv_idx % s
            d = (i - j).abs()
            return (j < sinks) | ((x - y).abs() < half_width[d]) | ((x == y) & diagonal[d])
        return keep

    def kept_pairs(self) -> int:
        s = self.tokens_per_frame

        def band_pairs(half: int) -> int:
            return sum(min(s - 1, x + half) - max(0, x - half) + 1 for x in range(s))

        pairs = 0
        for i in range(self.frames):
            for j in range(self.frames):
                d = abs(i - j)
                r = self.band(d)
                if j < self.sink_frames or d <= 1:
                    pairs += s * s
                elif (1 << r) <= s:
                    pairs += band_pairs((s >> r) - 1)
                elif d % -(-(1 << r) // s) == 0:
                    pairs += s
        return pairs


@dataclass(frozen=True)
class CausalWindow:
    """bench_sparse's custom pattern: causal sliding window of `window` keys."""
    n: int
    window: int

    def mask_mod(self) -> MaskMod:
        def keep(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < self.window)
        return keep

    def kept_pairs(self) -> int:
        return sum(min(i + 1, self.window) for i in range(self.n))


def check_pattern(pattern, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
    """Asserts that FlexAttention computed attention under the pattern's mask: its output on
    the first and last 64 query rows and 128 random ones equals dense SDPA with the boolean
    mask (attention is row-independent); on small shapes, also that the mask keeps exactly
    attnkit's count of pairs."""
    n, keys = pattern.n, torch.arange(pattern.n)
    mask_mod = pattern.mask_mod()
    if n <= SMALL_N:
        kept, expected_kept = int(mask_mod(0, 0, keys[:, None], keys[None, :]).sum()), pattern.kept_pairs()
        if kept != expected_kept:
            raise AssertionError(f"{pattern}: the mask keeps {kept} pairs, attnkit counts {expected_kept}")
    sample = torch.randint(n, (128,), generator=torch.Generator().manual_seed(7))
    rows = torch.unique(torch.cat([keys[:64], keys[-64:], sample]))
    mask = mask_mod(0, 0, rows[:, None], keys[None, :])
    expected = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=mask)
    torch.testing.assert_close(out[:, :, rows], expected, atol=1e-4, rtol=1e-4)


@functools.lru_cache(maxsize=1)  # the cases of one pattern (D = 64, 128) come in a row
def block_mask_of(pattern):
    torch._dynamo.reset()  # fresh compile caches per pattern: ~20 shapes would hit dynamo's recompile limit
    # The eager builder materialises N x N index tensors (8 bytes each); the compiled one does not.
    build = create_block_mask if pattern.n <= SMALL_N else torch.compile(create_block_mask)
    return build(pattern.mask_mod(), None, None, pattern.n, pattern.n, device="cpu")


def run_sparse(name: str, pattern, d: int, settings: Settings) -> list[dict]:
    n = pattern.n
    block_mask = block_mask_of(pattern)
    q, k, v = (randn(1, SPARSE_H, n, d, seed=s) for s in (1, 2, 3))
    flex = torch.compile(flex_attention, fullgraph=True, dynamic=False)
    check_pattern(pattern, q, k, v, flex(q, k, v, block_mask=block_mask))
    rows = min(n, SPARSE_DENSE_ROWS)
    q_dense = q[:, :, :rows]
    t_flex, t_dense = time_calls([lambda: flex(q, k, v, block_mask=block_mask),
                                  lambda: F.scaled_dot_product_attention(q_dense, k, v)], settings)
    pairs = pattern.kept_pairs()
    kept = pairs / (n * n)
    dense_s = t_dense.median_s * n / rows  # the dense call over all N queries
    rec = record(name, "sparse", "flex_attention", {"pattern": repr(pattern), "H": SPARSE_H, "N": n, "D": d},
                 "GFLOPs", 4.0 * SPARSE_H * pairs * d, t_flex)
    rec.update(kept=kept, sol_ratio=t_flex.median_s / (dense_s * kept), block_mask_sparsity=block_mask.sparsity(),
               dense_reference={"impl": "sdpa", "rows": rows, "time_median_s": t_dense.median_s,
                                "GFLOPs": attention_flops(1, SPARSE_H, rows, n, d, False) / t_dense.median_s * 1e-9})
    return [rec]


# ---------------------------------------------------------------------------------------
# The benchmark list, in bench_softmax's and bench_sparse's names


@dataclass
class Case:
    name: str
    run: Callable[[Settings], list[dict]]


def dense_name(family: str, n: int, d: int, causal: bool, tiny: bool) -> str:
    return f"{family}{'/tiny' if tiny else ''}/N:{n}/D:{d}/causal:{int(causal)}/real_time"


def softmax_cases() -> list[Case]:
    def dense(tag, n, d, causal, tiny):
        name = dense_name(f"attnkit/dense/{tag}", n, d, causal, tiny)
        return Case(name, lambda s: run_dense(name, tag, n, d, causal, s))

    both = (False, True)
    cases = [dense("f32", n, d, causal, False) for n in (512, 2048, 8192) for d in (64, 128) for causal in both]
    cases += [dense("f32", 64, 16, causal, True) for causal in both]
    for tag in ("bf16", "f16"):
        for causal in both:
            cases += [dense(tag, 2048, 128, causal, False), dense(tag, 64, 16, causal, True)]
    for nk, tiny in ((4096, False), (32768, False), (256, True)):
        name = f"attnkit/decode/f32{'/tiny' if tiny else ''}/Nk:{nk}/Hq:32/Hkv:8/D:128/real_time"
        cases.append(Case(name, lambda s, name=name, nk=nk, tiny=tiny: run_decode(name, nk, not tiny, s)))
    return cases


def sparse_patterns() -> list[tuple[str, object]]:
    """(name without /D:..., pattern) for every shape of bench_sparse.cpp's register_all."""
    out = []
    for tiny in (False, True):
        t = "/tiny" if tiny else ""
        n1, k1 = (512, 33) if tiny else (16384, 512)
        out.append((f"neighborhood1d{t}/N:{n1}/kernel:{k1}", Neighborhood((n1,), (k1,), (1,))))
        side = 24 if tiny else 128
        for kernel in (13, 7):
            for dil in ((1,) if tiny else (1, 2)):
                out.append((f"neighborhood2d{t}/grid:{side}x{side}/kernel:{kernel}x{kernel}/dilation:{dil}",
                            Neighborhood((side, side), (kernel, kernel), (dil, dil))))
        grid = (4, 8, 8) if tiny else (16, 32, 32)
        out.append((f"neighborhood3d{t}/grid:{'x'.join(map(str, grid))}/kernel:3x7x7",
                    Neighborhood(grid, (3, 7, 7), (1, 1, 1))))
        for n in ((2048,) if tiny else (16384, 32768)):
            out.append((f"power{t}/N:{n}", Power(n)))
        for frames, per_frame in (((8, 64),) if tiny else ((16, 1024), (32, 1024))):
            out.append((f"radial{t}/N:{frames * per_frame}/frames:{frames}", Radial(frames, per_frame)))
        n, w = (1024, 128) if tiny else (16384, 1024)
        out.append((f"custom_window{t}/N:{n}/window:{w}", CausalWindow(n, w)))
    return out


def sparse_cases() -> list[Case]:
    cases = []
    for base, pattern in sparse_patterns():
        for d in ((64,) if "/tiny" in base else (64, 128)):
            name = f"{base}/D:{d}/manual_time"
            cases.append(Case(name, lambda s, name=name, p=pattern, d=d: run_sparse(name, p, d, s)))
    return cases


# ---------------------------------------------------------------------------------------
# Machine description, table, main


def cpu_description() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"cpu_model": model, "isa_flags": [f for f in ISA_FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def print_row(rec: dict) -> None:
    unit = "GFLOP/s" if rec["metric"] == "GFLOPs" else "GB/s"
    extra = f"  sol_ratio {rec['sol_ratio']:.2f}  kept {rec['kept']:.4f}" if "sol_ratio" in rec else ""
    print(f"{rec['attnkit_name']:<74} {rec['impl']:<16} {rec['time_median_s'] * 1e3:>11.4f} "
          f"{rec['time_min_s'] * 1e3:>11.4f} {rec['rate_median']:>9.1f} {unit}{extra}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all CPUs)")
    parser.add_argument("--out", help="JSON file to write (rewritten after every benchmark)")
    parser.add_argument("--filter", help="regular expression on the attnkit benchmark name (quick: default /tiny/)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 short repetitions: checks every path")
    parser.add_argument("--reps", type=int, help="timed repetitions (default 7, quick 3)")
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    args = parser.parse_args()

    settings = Settings(reps=args.reps or (3 if args.quick else 7), warmup=1 if args.quick else 2,
                        min_rep_s=0.01 if args.quick else 0.1)
    name_filter = re.compile(args.filter or ("/tiny/" if args.quick else ""))
    cases = [c for c in softmax_cases() + sparse_cases() if name_filter.search(c.name)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0

    torch.set_num_threads(args.threads)
    meta = {"torch_version": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), **cpu_description(),
            "loadavg_at_start": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick, "reps": settings.reps, "warmup": settings.warmup, "min_rep_s": settings.min_rep_s,
            "filter": name_filter.pattern}
    print(f"torch {meta['torch_version']}, {meta['threads']} threads, {meta['cpu_model']} "
          f"({', '.join(meta['isa_flags'])}), load average {meta['loadavg_at_start'][0]:.2f}")
    print(f"{'benchmark':<74} {'impl':<16} {'median ms':>11} {'min ms':>11} {'rate':>9}")
    records: list[dict] = []
    for case in cases:
        for rec in case.run(settings):
            records.append(rec)
            print_row(rec)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"meta": meta, "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
