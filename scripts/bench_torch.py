"""Same-run torch references on the GPU for `bamba bench` and the kernel benches (benches/results/README.md).

Prints one JSON record per line: device-to-device copy bandwidth (the roofline's measured bandwidth),
cuBLAS GEMV / skinny GEMM on the decode shapes, cuBLAS GEMM on the prefill shapes, SDPA prefill and decode
attention with GQA. Timing: CUDA events around `iters` back-to-back calls after warm-up, median of 5 such
groups; inputs larger than L2 so weights stream from HBM.

Usage: python3 scripts/bench_torch.py > torch.jsonl
"""

import json
import statistics

import torch
import torch.nn.functional as F


def timed(fn, iters=20, groups=5):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(groups):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(times)


def emit(**record):
    print(json.dumps(record), flush=True)


def main():
    dev = torch.device("cuda")
    bf16 = torch.bfloat16
    emit(what="device", name=torch.cuda.get_device_name(), torch=torch.__version__)

    n = 1 << 29  # 1 GiB of bf16
    a, b = torch.empty(n, dtype=bf16, device=dev), torch.empty(n, dtype=bf16, device=dev)
    t = timed(lambda: b.copy_(a), iters=10)
    copy_gbs = 2 * a.numel() * 2 / t / 1e9
    emit(what="copy", bytes=2 * n * 2, seconds=t, gb_per_s=copy_gbs)
    del a, b

    # Decode linear layers: x [m, k] times W [n, k] transposed (weights stay [out, in]).
    for n_out, k in [(16768, 4096), (28672, 4096), (4096, 4096), (4096, 8192), (4096, 14336), (128256, 4096)]:
        w = torch.randn(n_out, k, dtype=bf16, device=dev)
        for m in [1, 4, 16, 64]:
            x = torch.randn(m, k, dtype=bf16, device=dev)
            t = timed(lambda: torch.matmul(x, w.t()))
            moved = w.numel() * 2 + (m * k + m * n_out) * 2
            emit(what="gemv", m=m, n=n_out, k=k, seconds=t, gb_per_s=moved / t / 1e9,
                 fraction_of_copy=moved / t / 1e9 / copy_gbs)
        del w

    # Prefill GEMMs: [m, 4096] x [16768, 4096]^T.
    w = torch.randn(16768, 4096, dtype=bf16, device=dev)
    for m in [512, 2048, 4096, 8192]:
        x = torch.randn(m, 4096, dtype=bf16, device=dev)
        t = timed(lambda: torch.matmul(x, w.t()), iters=10)
        emit(what="gemm", m=m, n=16768, k=4096, seconds=t, tflop_per_s=2 * m * 16768 * 4096 / t / 1e12)
    del w

    # Attention, Llama/Bamba shapes: 32 query heads, 8 KV heads, head_dim 128.
    for length in [512, 4096]:
        q = torch.randn(1, 32, length, 128, dtype=bf16, device=dev)
        k = torch.randn(1, 8, length, 128, dtype=bf16, device=dev)
        v = torch.randn_like(k)
        t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), iters=10)
        flops = 2 * 2 * 32 * 128 * length * length / 2
        emit(what="sdpa_prefill", length=length, seconds=t, tflop_per_s=flops / t / 1e12)
    for batch, context in [(1, 4096), (16, 8192), (64, 8192)]:
        q = torch.randn(batch, 32, 1, 128, dtype=bf16, device=dev)
        k = torch.randn(batch, 8, context, 128, dtype=bf16, device=dev)
        v = torch.randn_like(k)
        t = timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), iters=10)
        moved = 2 * k.numel() * 2
        emit(what="sdpa_decode", batch=batch, context=context, seconds=t, gb_per_s=moved / t / 1e9,
             fraction_of_copy=moved / t / 1e9 / copy_gbs)


if __name__ == "__main__":
    main()
