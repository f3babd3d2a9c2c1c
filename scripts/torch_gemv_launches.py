"""cuBLAS's batch-1 GEMVs on the decode shapes of scripts/bench_torch.py, a few launches each, for
Nsight Compute to time kernel by kernel beside ours (scripts/h200_bench.sh gemv_s20): GPU time per
launch, without the launch gaps and host costs that timing back-to-back calls includes.

Usage: ncu --csv --page raw --metrics ... python3 scripts/torch_gemv_launches.py
"""

import torch

SHAPES = [(16768, 4096), (28672, 4096), (4096, 4096), (4096, 8192), (4096, 14336), (128256, 4096)]


def main():
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    for n_out, k in SHAPES:
        w = torch.randn(n_out, k, dtype=bf16, device=dev)
        x = torch.randn(1, k, dtype=bf16, device=dev)
        for _ in range(6):
            torch.matmul(x, w.t())
        torch.cuda.synchronize()
        del w


if __name__ == "__main__":
    main()
