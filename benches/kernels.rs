//! Criterion benches of the Bamba kernels (SSD chunked scan, SSD decode step, the fused Mamba decode
//! step, causal conv, decode GEMV, the model's attention, and MoE routing and experts) on the backend the features pick
//! (cuda > wgpu > ndarray; the GPU ones unfused), each op timed as 20 back-to-back calls between two
//! device syncs on GPUs (as scripts/bench_torch.py times torch), one call per sync on the CPU.
//!
//! Shapes: `BAMBA_BENCH_SHAPES=bamba-9b` (default on GPUs: 128 heads × 64, d_state 128, one group,
//! chunk 256, conv 8448 channels) or `small` (default on CPU). `BAMBA_BENCH_DTYPE=bf16|f16|f32`
//! (default bf16 on CUDA, f32 elsewhere). The decode steps report bytes/s over the state they must read
//! and write (f32, and bf16 for the fused Mamba step on GPUs), to compare with the HBM bandwidth.
//!
//! `cargo bench --bench kernels [--features cuda] -- [filter]`

use std::time::Duration;

use bamba_kernels::reference;
use bamba_kernels::{BambaOps, MambaStepConfig, MambaStepWeights, SsdConfig, SsdInputs};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

// Without Burn's fusion wrapper, as `bamba bench --backend cuda-unfused` runs the model: the wrapper's
// per-op host work (~100 µs per fused Mamba step call on the H200) would otherwise be
// timed instead of the kernels at small batches.
#[cfg(feature = "cuda")]
type B = bamba_kernels::cube::unfused::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
type B = bamba_kernels::cube::unfused::Wgpu;
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
type B = burn::backend::NdArray<f32>;

type Device = burn::tensor::Device<B>;

const GPU: bool = cfg!(any(feature = "cuda", feature = "wgpu"));

struct Shapes {
    heads: usize,
    head_dim: usize,
    d_state: usize,
    chunk: usize,
    lens: Vec<usize>,
    reference_lens: Vec<usize>,
    batches: Vec<usize>,
    conv_channels: usize,
}

fn shapes() -> Shapes {
    let name = std::env::var("BAMBA_BENCH_SHAPES").unwrap_or_else(|_| if GPU { "bamba-9b" } else { "small" }.into());
    match name.as_str() {
        "bamba-9b" => Shapes {
            heads: 128,
            head_dim: 64,
            d_state: 128,
            chunk: 256,
            lens: vec![512, 2048, 8192, 32768],
            reference_lens: vec![512, 2048],
            batches: vec![1, 4, 16, 64, 256],
            conv_channels: 128 * 64 + 2 * 128,
        },
        _ => Shapes {
            heads: 8,
            head_dim: 16,
            d_state: 32,
            chunk: 64,
            lens: vec![64, 256],
            reference_lens: vec![64, 256],
            batches: vec![1, 8],
            conv_channels: 8 * 16 + 2 * 32,
        },
    }
}

fn dtype() -> DType {
    match std::env::var("BAMBA_BENCH_DTYPE").as_deref() {
        Ok("bf16") => DType::BF16,
        Ok("f16") => DType::F16,
        Ok("f32") => DType::F32,
        _ if cfg!(feature = "cuda") => DType::BF16,
        _ => DType::F32,
    }
}

fn random<const D: usize>(shape: [usize; D], lo: f64, hi: f64, dtype: DType, device: &Device) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Uniform(lo, hi), (device, DType::F32)).cast(dtype)
}

fn ssd_inputs(s: &Shapes, batch: usize, len: usize, with_state: bool, device: &Device) -> SsdInputs<B> {
    let (h, p, n, dt) = (s.heads, s.head_dim, s.d_state, dtype());
    SsdInputs {
        x: random([batch, len, h, p], -1.0, 1.0, dt, device),
        dt: random([batch, len, h], -3.0, 1.0, dt, device),
        a_log: random([h], -0.7, 1.8, DType::F32, device),
        b: random([batch, len, 1, n], -1.0, 1.0, dt, device),
        c: random([batch, len, 1, n], -1.0, 1.0, dt, device),
        d: random([h], -1.0, 1.0, DType::F32, device),
        dt_bias: random([h], -1.0, 0.5, DType::F32, device),
        initial_state: with_state.then(|| random([batch, h, p, n], -0.5, 0.5, DType::F32, device)),
    }
}

/// Calls of an op between two device syncs on GPUs (one on the CPU): 100. With 20, the sync's host
/// latency (~50 µs through Burn) still added ~2.5 µs to each call, 6% of a
/// 40 µs GEMV, which torch's CUDA events do not count.
const PER_SYNC: u32 = if GPU { 100 } else { 1 };

/// Times `op` as `PER_SYNC` back-to-back calls between two device syncs, per call, the way
/// scripts/bench_torch.py times torch (CUDA events around back-to-back calls): with a sync after
/// every call, the sync's host latency would count in each.
fn per_call<O>(bench: &mut criterion::Bencher, device: &Device, mut op: impl FnMut() -> O) {
    bench.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let _ = B::sync(device);
            let start = std::time::Instant::now();
            for _ in 0..PER_SYNC {
                std::hint::black_box(op());
            }
            let _ = B::sync(device);
            total += start.elapsed() / PER_SYNC;
        }
        total
    })
}

fn bench_scan(c: &mut Criterion) {
    let device = Default::default();
    let s = shapes();
    let config = SsdConfig { chunk_size: s.chunk, dt_limit: None };
    let mut group = c.benchmark_group("ssd_chunk_scan");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    for &len in &s.lens {
        let inputs = ssd_inputs(&s, 1, len, false, &device);
        group.throughput(Throughput::Elements(len as u64));
        group.bench_with_input(BenchmarkId::new("kernel", len), &inputs, |bench, inputs| {
            per_call(bench, &device, || B::ssd_chunk_scan(inputs.clone(), config))
        });
        if s.reference_lens.contains(&len) {
            group.bench_with_input(BenchmarkId::new("reference", len), &inputs, |bench, inputs| {
                per_call(bench, &device, || reference::ssd::ssd_chunk_scan(inputs.clone(), config))
            });
        }
    }
    group.finish();
}

fn bench_step(c: &mut Criterion) {
    let device = Default::default();
    let s = shapes();
    let config = SsdConfig { chunk_size: s.chunk, dt_limit: None };
    let mut group = c.benchmark_group("ssd_decode_step");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    for &batch in &s.batches {
        let inputs = ssd_inputs(&s, batch, 1, true, &device);
        // the state is read once and written once, f32
        group.throughput(Throughput::Bytes((2 * batch * s.heads * s.head_dim * s.d_state * 4) as u64));
        group.bench_with_input(BenchmarkId::new("kernel", batch), &inputs, |bench, inputs| {
            per_call(bench, &device, || B::ssd_decode_step(inputs.clone(), config))
        });
        group.bench_with_input(BenchmarkId::new("reference", batch), &inputs, |bench, inputs| {
            per_call(bench, &device, || reference::ssd::ssd_recurrent(inputs.clone(), config))
        });
    }
    group.finish();
}

/// The Mamba2 decode step between the projections (`BambaOps::mamba_decode_step`: conv + window
/// shift + SSD update + gated norm) against the composition of the unfused ops it replaces.
fn bench_mamba_step(c: &mut Criterion) {
    let device = Default::default();
    let s = shapes();
    let dt = dtype();
    let config = MambaStepConfig {
        heads: s.heads,
        head_dim: s.head_dim,
        groups: 1,
        d_state: s.d_state,
        norm_eps: 1e-5,
        dt_limit: None,
    };
    let (d_inner, conv_dim) = (config.d_inner(), config.conv_dim());
    let weights = MambaStepWeights {
        conv_weight: random([conv_dim, 4], -0.5, 0.5, dt, &device),
        conv_bias: Some(random([conv_dim], -0.1, 0.1, dt, &device)),
        a_log: random([s.heads], 0.0, 2.7, DType::F32, &device),
        d: random([s.heads], 0.5, 1.5, DType::F32, &device),
        dt_bias: random([s.heads], -4.6, -2.2, DType::F32, &device),
        norm_weight: random([d_inner], 0.5, 1.5, dt, &device),
    };
    let mut group = c.benchmark_group("mamba_decode_step");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    // The state in f32, and on GPUs also in bf16 (`--state-dtype bf16`, as vLLM keeps it in the model dtype).
    let state_dtypes: &[DType] = if GPU { &[DType::F32, DType::BF16] } else { &[DType::F32] };
    for &batch in &s.batches {
        let zxbcdt = random([batch, d_inner + conv_dim + s.heads], -1.0, 1.0, dt, &device);
        let window = random([batch, conv_dim, 3], -1.0, 1.0, dt, &device);
        for &state_dtype in state_dtypes {
            let state = random([batch, s.heads, s.head_dim, s.d_state], -0.5, 0.5, state_dtype, &device);
            // the state is read once and written once
            let state_bytes = batch * s.heads * s.head_dim * s.d_state * state_dtype.size();
            group.throughput(Throughput::Bytes(2 * state_bytes as u64));
            // The composition with the f32 state only (it is the reference, not a contender).
            for fused in [true, false].into_iter().filter(|&f| f || state_dtype == DType::F32) {
                let name = match (fused, state_dtype) {
                    (false, _) => "composition",
                    (true, DType::F32) => "fused",
                    (true, _) => "fused_bf16_state",
                };
                group.bench_function(BenchmarkId::new(name, batch), |bench| {
                    per_call(bench, &device, || {
                        let (z, w, win, st) = (zxbcdt.clone(), weights.clone(), window.clone(), state.clone());
                        if fused {
                            B::mamba_decode_step(z, w, win, st, config)
                        } else {
                            reference::mamba_step::mamba_decode_step::<B>(z, w, win, st, config)
                        }
                    })
                });
            }
        }
    }
    group.finish();
}

fn bench_conv(c: &mut Criterion) {
    let device = Default::default();
    let s = shapes();
    let channels = s.conv_channels;
    let mut group = c.benchmark_group("causal_conv1d_silu");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    for &len in &s.lens[..2] {
        let x = random([1, len, channels], -1.0, 1.0, dtype(), &device);
        let w = random([channels, 4], -1.0, 1.0, dtype(), &device);
        let bias = random([channels], -0.5, 0.5, dtype(), &device);
        group.throughput(Throughput::Bytes((2 * len * channels * dtype().size()) as u64));
        group.bench_function(BenchmarkId::new("kernel", len), |bench| {
            per_call(bench, &device, || B::causal_conv1d_silu(x.clone(), w.clone(), Some(bias.clone()), None))
        });
        group.bench_function(BenchmarkId::new("reference", len), |bench| {
            per_call(bench, &device, || {
                reference::conv::causal_conv1d_silu(x.clone(), w.clone(), Some(bias.clone()), None)
            })
        });
    }
    group.finish();
}

/// `x · Wᵀ` on the decode linear shapes of Bamba-9B / Llama-8B (`[m, k] × [n, k]ᵀ`, weights larger than
/// L2 so they stream from HBM): the GEMV kernel for m ≤ 8, Burn's matmul or cuBLASLt above.
fn bench_linear(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("linear_no_bias");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let shapes: &[(usize, usize)] = if GPU {
        &[(16768, 4096), (28672, 4096), (4096, 4096), (4096, 8192), (4096, 14336), (128256, 4096)]
    } else {
        &[(512, 256)]
    };
    for &(n, k) in shapes {
        let w = random([n, k], -0.05, 0.05, dtype(), &device);
        // Prefill GEMMs too on the in_proj shape, to compare with cuBLAS (scripts/bench_torch.py).
        let rows: &[usize] = if GPU && n == 16768 { &[1, 4, 16, 64, 512, 2048, 8192] } else { &[1, 4, 16, 64] };
        for &m in rows {
            let x = random([m, k], -1.0, 1.0, dtype(), &device);
            group.throughput(Throughput::Bytes(((n * k + m * k + m * n) * dtype().size()) as u64));
            group.bench_function(BenchmarkId::new(format!("n{n}_k{k}"), m), |bench| {
                per_call(bench, &device, || B::linear_no_bias(x.clone(), w.clone()))
            });
        }
    }
    group.finish();
}

/// Attention as the model runs it on Llama/Bamba heads (32 query, 8 KV, 128 wide), the shapes
/// scripts/bench_torch.py gives SDPA: causal prefill (`BambaOps::causal_attention`: matmul, f32 softmax, matmul,
/// GQA folded into the query rows) and single-token decode over a full KV cache
/// (`BambaOps::decode_attention`: the split/combine kernel on GPUs), with the tensor-op reference
/// beside the kernel at two sizes.
fn bench_attention(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("attention");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let (prefill, decode): (&[usize], &[(usize, usize)]) =
        if GPU { (&[512, 4096], &[(1, 4096), (16, 8192), (64, 8192), (64, 32768)]) } else { (&[64], &[(2, 64)]) };
    for &len in prefill {
        let q = random([1, 32, len, 128], -1.0, 1.0, dtype(), &device);
        let k = random([1, 8, len, 128], -1.0, 1.0, dtype(), &device);
        let v = random([1, 8, len, 128], -1.0, 1.0, dtype(), &device);
        group.throughput(Throughput::Elements((2 * 32 * 128 * len * len) as u64)); // causal FLOPs
        group.bench_function(BenchmarkId::new("prefill", len), |bench| {
            per_call(bench, &device, || B::causal_attention(q.clone(), k.clone(), v.clone(), 0, None))
        });
    }
    for &(batch, context) in decode {
        let q = random([batch, 32, 1, 128], -1.0, 1.0, dtype(), &device);
        let k = random([batch, 8, context, 128], -1.0, 1.0, dtype(), &device);
        let v = random([batch, 8, context, 128], -1.0, 1.0, dtype(), &device);
        let start = Tensor::<B, 1>::zeros([batch], (&device, DType::F32));
        group.throughput(Throughput::Bytes((2 * batch * 8 * context * 128 * dtype().size()) as u64));
        group.bench_function(BenchmarkId::new(format!("decode_b{batch}"), context), |bench| {
            per_call(bench, &device, || B::decode_attention(q.clone(), k.clone(), v.clone(), start.clone(), context))
        });
        if !GPU || matches!((batch, context), (1, 4096) | (64, 8192)) {
            group.bench_function(BenchmarkId::new(format!("decode_reference_b{batch}"), context), |bench| {
                per_call(bench, &device, || {
                    reference::attention::decode_attention(q.clone(), k.clone(), v.clone(), start.clone(), context)
                })
            });
        }
    }
    group.finish();
}

/// A MoE layer's routed experts on Granite 4.0-H Tiny's shapes (64 experts of SwiGLU width 512 on
/// hidden 1536, 6 picked per token; `[64, 1024, 1536]` and `[64, 1536, 512]` weights, 302 MB in bf16,
/// past L2): the router's pick (`BambaOps::top_k`) and the experts (`BambaOps::moe_experts`) at
/// decode batches, with the bytes of the experts the tokens picked as the throughput.
fn bench_moe(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("moe");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    let (experts, width, hidden, k) = if GPU { (64, 512, 1536, 6) } else { (8, 32, 64, 2) };
    let gate_up = random([experts, 2 * width, hidden], -0.05, 0.05, dtype(), &device);
    let down = random([experts, hidden, width], -0.05, 0.05, dtype(), &device);
    let batches: &[usize] = if GPU { &[1, 8, 64, 160] } else { &[1, 8] };
    for &rows in batches {
        let logits = random([rows, experts], -1.0, 1.0, dtype(), &device);
        let (weights, ids) = B::top_k(logits.clone(), k, true);
        let picked = ids.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap();
        let distinct = picked.iter().collect::<std::collections::BTreeSet<_>>().len();
        let x = random([rows, hidden], -1.0, 1.0, dtype(), &device);
        group.throughput(Throughput::Bytes((distinct * 3 * width * hidden * dtype().size()) as u64));
        group.bench_function(BenchmarkId::new("experts", rows), |bench| {
            per_call(bench, &device, || {
                B::moe_experts(
                    x.clone(),
                    weights.clone(),
                    ids.clone(),
                    gate_up.clone(),
                    down.clone(),
                    bamba_kernels::ExpertActivation::SwiGlu,
                )
            })
        });
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new("top_k", rows), |bench| {
            per_call(bench, &device, || B::top_k(logits.clone(), k, true))
        });
    }
    group.finish();
}

criterion_group! {
    name = kernels;
    config = Criterion::default();
    targets = bench_scan, bench_step, bench_mamba_step, bench_conv, bench_linear, bench_attention, bench_moe
}
criterion_main!(kernels);
