#!/usr/bin/env python3
"""Same-run comparison for the kernel benches: mamba_ssm's Triton SSD chain
(`mamba_chunk_scan_combined`) and Triton decode step (`selective_state_update`) at Bamba-9B shapes, plus
the device-to-device copy bandwidth torch reaches (the HBM yardstick for the decode step).

Shapes match `benches/kernels.rs` with BAMBA_BENCH_SHAPES=bamba-9b: 128 heads x 64, d_state 128, one group,
chunk 256, bf16 x/dt/B/C, f32 A/D/dt_bias, softplus on, f32 state for the decode step.

Usage: python3 scripts/bench_mamba_ssm.py MAMBA_SSM_SRC_DIR   (the dir holding the `mamba_ssm` package
from the mamba-ssm sdist; only its Triton files are imported, no compiled extension is needed)
"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402
from mamba_ssm.ops.triton.selective_state_update import selective_state_update  # noqa: E402

H, P, N, CHUNK = 128, 64, 128, 256
dev = "cuda"


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


records = []
src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
dst = torch.empty_like(src)
t = timed(lambda: dst.copy_(src))
records.append({"op": "torch_copy", "bytes": 2 << 30, "seconds": t, "gb_per_s": 2 * (1 << 30) / t / 1e9})
del src, dst

for L in [512, 2048, 8192, 32768]:
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(1, L, H, P, device=dev, generator=g).mul(2).sub(1).bfloat16()
    dt = torch.rand(1, L, H, device=dev, generator=g).mul(4).sub(3).bfloat16()
    A = -torch.exp(torch.rand(H, device=dev, generator=g) * 2.5 - 0.7)
    B = torch.rand(1, L, 1, N, device=dev, generator=g).mul(2).sub(1).bfloat16()
    C = torch.rand(1, L, 1, N, device=dev, generator=g).mul(2).sub(1).bfloat16()
    D = torch.rand(H, device=dev, generator=g)
    dt_bias = torch.rand(H, device=dev, generator=g) - 1
    fn = lambda: mamba_chunk_scan_combined(x, dt, A, B, C, CHUNK, D=D, dt_bias=dt_bias, dt_softplus=True,
                                           return_final_states=True)
    t = timed(fn)
    records.append({"op": "mamba_chunk_scan_combined", "len": L, "seconds": t, "tokens_per_s": L / t})

for batch in [1, 4, 16, 64, 256]:
    state = torch.rand(batch, H, P, N, device=dev) - 0.5
    x = torch.rand(batch, H, P, device=dev).bfloat16()
    dt = torch.rand(batch, H, P, device=dev).bfloat16()  # mamba2 ties dt over P via strides; same bytes
    A = -torch.rand(H, P, N, device=dev)
    B = torch.rand(batch, 1, N, device=dev).bfloat16()
    C = torch.rand(batch, 1, N, device=dev).bfloat16()
    D = torch.rand(H, P, device=dev)
    dt_bias = torch.rand(H, P, device=dev)
    # mamba2 calls it with A, D, dt_bias, dt broadcast over (P, N) by stride 0
    A = A[:, :1, :1].expand(H, P, N)
    D = D[:, :1].expand(H, P)
    dt_bias = dt_bias[:, :1].expand(H, P)
    dt = dt[:, :, :1].expand(batch, H, P)
    fn = lambda: selective_state_update(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    t = timed(fn, reps=50)
    moved = 2 * state.numel() * 4
    records.append({"op": "selective_state_update", "batch": batch, "seconds": t, "state_bytes_moved": moved,
                    "gb_per_s": moved / t / 1e9})

for r in records:
    print(json.dumps(r))
