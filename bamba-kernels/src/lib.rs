//! Hot operations of the Bamba model behind one Burn backend-extension trait.
//!
//! [`BambaOps`] is the only door the model uses for its hot ops (the Mamba2 SSD chunked scan, its
//! single-token decode step, the causal depthwise conv, RMSNorm, the linear layers' matmul, decode
//! attention over the KV cache, and the routed experts of a MoE feed-forward). Each method's default
//! body is the plain tensor-op reference in [`reference`](mod@reference), which runs on every backend (ndarray in CI). GPU backends override a method with a
//! CubeCL kernel; tests compare the override against the reference on the same device.
//!
//! The trait and all its impls live in this crate because of the orphan rule: `NdArray`,
//! `CubeBackend` and `Fusion` are foreign types.

#![warn(missing_docs)]

pub mod reference;
pub mod shapes;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

pub use reference::conv::ConvOutput;
pub use reference::mamba_step::{MambaStepConfig, MambaStepOutput, MambaStepWeights};
pub use reference::moe::ExpertActivation;
pub use reference::ssd::{SsdConfig, SsdInputs, SsdOutput};

/// Device memory held by an allocator, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceMemory {
    /// Taken by live buffers.
    pub in_use: u64,
    /// Taken from the device by the allocator's pools, free slices included.
    pub reserved: u64,
}

/// The backend-extension trait of the Bamba hot ops.
///
/// Default methods are the tensor-op references; a backend with a kernel overrides them.
pub trait BambaOps: Backend {
    /// Mamba2 SSD chunked scan with softplus/dt_bias/clamp fused, from an optional initial state.
    ///
    /// # Shapes
    /// - inputs: see [`SsdInputs`]
    /// - output `y`: `[batch, len, heads, head_dim]` in x's dtype (f32 math rounded once, as mamba_ssm
    ///   writes it); `final_state`: `[batch, heads, head_dim, d_state]` f32
    fn ssd_chunk_scan(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        reference::ssd::ssd_chunk_scan(inputs, config)
    }

    /// One decode step of the SSM: `S ← exp(dt·A)·S + dt·x⊗B`, `y = S·C + D·x`, for a single position
    /// (`len == 1`) continuing from `inputs.initial_state`.
    ///
    /// # Shapes
    /// - inputs as [`SsdInputs`] with `len == 1`; outputs as [`Self::ssd_chunk_scan`], but `y` in f32
    fn ssd_decode_step(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        reference::ssd::ssd_recurrent(inputs, config)
    }

    /// A Mamba2 mixer's decode step between its projections (one token per sequence, continuing a
    /// state): conv window shift, conv + bias + SiLU, SSD state update, `y = S·C + D·x`, gated
    /// RMSNorm with z. GPU backends fuse it (a decode step is launch-bound).
    ///
    /// # Shapes
    /// - see [`reference::mamba_step::mamba_decode_step`]
    fn mamba_decode_step(
        zxbcdt: Tensor<Self, 2>,
        weights: MambaStepWeights<Self>,
        window: Tensor<Self, 3>,
        state: Tensor<Self, 4>,
        config: MambaStepConfig,
    ) -> MambaStepOutput<Self> {
        reference::mamba_step::mamba_decode_step(zxbcdt, weights, window, state, config)
    }

    /// Causal depthwise conv1d + bias + SiLU, continuing from an optional window of earlier inputs.
    ///
    /// # Shapes
    /// - `x`: `[batch, len, channels]`, `weight`: `[channels, kernel]`, `bias`: `[channels]`
    /// - `window`: `[batch, channels, kernel - 1]`, the last pre-conv inputs, oldest first (zeros if `None`)
    /// - output `y`: `[batch, len, channels]` in `x`'s dtype; `window`: the new last `kernel - 1` inputs
    fn causal_conv1d_silu(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        window: Option<Tensor<Self, 3>>,
    ) -> ConvOutput<Self> {
        reference::conv::causal_conv1d_silu(x, weight, bias, window)
    }

    /// RMSNorm with f32 statistics over `groups` slices of the last dim, optionally of `x · silu(gate)`
    /// (Mamba2's gated norm); see [`reference::norm::rms_norm`] for the exact rounding.
    ///
    /// # Shapes
    /// - `x`: `[rows, width]` (any float dtype), `gate`: `[rows, width]`, `weight`: `[width]` →
    ///   `[rows, width]` in the weight's dtype
    fn rms_norm(
        x: Tensor<Self, 2>,
        gate: Option<Tensor<Self, 2>>,
        weight: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 2> {
        reference::norm::rms_norm(x, gate, weight, groups, eps)
    }

    /// `y = x · Wᵀ` for a weight kept in the checkpoint's `[out, in]` layout (a linear layer without
    /// its bias). Backends with a memory-bound GEMV kernel use it when `x` has few rows (decode).
    ///
    /// # Shapes
    /// - `x`: `[rows, in]`, `weight`: `[out, in]` → `[rows, out]` in `x`'s dtype
    fn linear_no_bias(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::linear::linear_no_bias(x, weight)
    }

    /// SwiGLU's first half: `silu(x · Gᵀ) · (x · Uᵀ)`, each product rounded to `x`'s dtype first (as
    /// [`Self::linear_no_bias`] stores it). Backends with a GEMV kernel do it in one pass at decode.
    ///
    /// # Shapes
    /// - `x`: `[rows, in]`, `gate`, `up`: `[out, in]` → `[rows, out]` in `x`'s dtype
    fn swiglu_linear(x: Tensor<Self, 2>, gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::linear::swiglu_linear::<Self>(x, gate, up)
    }

    /// `x · Wᵀ + residual`: an output projection and the residual add after it. Backends with a GEMV
    /// kernel fuse the add at decode.
    ///
    /// # Shapes
    /// - `x`: `[rows, in]`, `weight`: `[out, in]`, `residual`: `[rows, out]` → `[rows, out]` in `x`'s dtype
    fn linear_residual(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, residual: Tensor<Self, 2>) -> Tensor<Self, 2> {
        reference::linear::linear_residual(x, weight, residual)
    }

    /// A decoder layer's pre-norm (plain RMSNorm, one group) and the projection after it. GPU backends
    /// apply the norm inside the GEMV at decode (one launch instead of two).
    ///
    /// # Shapes
    /// - `x`: `[rows, in]`, `norm_weight`: `[in]`, `weight`: `[out, in]` → `[rows, out]` in the weights' dtype
    fn rms_norm_linear(
        x: Tensor<Self, 2>,
        norm_weight: Tensor<Self, 1>,
        eps: f64,
        weight: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        reference::linear::rms_norm_linear::<Self>(x, norm_weight, eps, weight)
    }

    /// The MLP's pre-norm and SwiGLU's gate·up ([`Self::swiglu_linear`] of the normalized x), one launch
    /// at decode on GPU backends.
    ///
    /// # Shapes
    /// - `x`: `[rows, in]`, `norm_weight`: `[in]`, `gate`, `up`: `[out, in]` → `[rows, out]`
    fn rms_norm_swiglu(
        x: Tensor<Self, 2>,
        norm_weight: Tensor<Self, 1>,
        eps: f64,
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        reference::linear::rms_norm_swiglu::<Self>(x, norm_weight, eps, gate, up)
    }

    /// Causal grouped-query attention over a chunk of queries (prefill); see
    /// [`reference::attention::causal_attention`]. GPU backends choose how its two products run.
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, q_len, head_dim]`, `k`, `v`: `[batch, kv_heads, k_len, head_dim]` → like `q`
    /// - `mask`: `[batch or 1, 1, q_len, k_len]`, `true` = masked (causality included when given)
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        query_offset: usize,
        mask: Option<Tensor<Self, 4, Bool>>,
    ) -> Tensor<Self, 4> {
        reference::attention::causal_attention(q, k, v, query_offset, mask)
    }

    /// Decode attention: one new query per sequence against the first `keys` slots of a
    /// preallocated KV cache (GQA: query head `h` reads KV head `h / (heads / kv_heads)`), row `b`
    /// from slot `key_start[b]` on (its left padding excluded). See
    /// [`reference::attention::decode_attention`].
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, 1, head_dim]`, `k`, `v`: `[batch, kv_heads, capacity, head_dim]`, one dtype
    /// - `key_start`: `[batch]` f32 whole numbers → `[batch, heads, 1, head_dim]` in `q`'s dtype
    fn decode_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_start: Tensor<Self, 1>,
        keys: usize,
    ) -> Tensor<Self, 4> {
        reference::attention::decode_attention(q, k, v, key_start, keys)
    }

    /// The routed experts of a mixture-of-experts feed-forward: each token's `k` chosen experts'
    /// outputs (SwiGLU or relu², per `activation`), weighted and summed; see
    /// [`reference::moe::moe_experts`].
    ///
    /// # Shapes
    /// - `x`: `[rows, hidden]`, `weights`: `[rows, k]` (any float dtype), `experts`: `[rows, k]` (ids)
    /// - `gate_up`: `[experts, 2·width, hidden]` (relu²: `[experts, width, hidden]`), `down`:
    ///   `[experts, hidden, width]` → `[rows, hidden]`
    fn moe_experts(
        x: Tensor<Self, 2>,
        weights: Tensor<Self, 2>,
        experts: Tensor<Self, 2, Int>,
        gate_up: Tensor<Self, 3>,
        down: Tensor<Self, 3>,
        activation: ExpertActivation,
    ) -> Tensor<Self, 2> {
        reference::moe::moe_experts(x, weights, experts, gate_up, down, activation)
    }

    /// A router's pick: the `k` largest values of each row of `logits`, largest first (the lower
    /// column first among equal values), and their columns; with `softmax`, the picked values
    /// replaced by their softmax. See [`reference::moe::top_k`].
    ///
    /// # Shapes
    /// - `logits`: `[rows, columns]` (any float dtype) with `1 ≤ k ≤ columns` → `[rows, k]` f32 and
    ///   `[rows, k]` ids
    fn top_k(logits: Tensor<Self, 2>, k: usize, softmax: bool) -> (Tensor<Self, 2>, Tensor<Self, 2, Int>) {
        reference::moe::top_k(logits, k, softmax)
    }

    /// Rotary position embedding of the first `rotary_dim` dims of every head (partial RoPE, NeoX
    /// `rotate_half`); see [`reference::rope::rope`] for the rounding.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, len, head_dim]` (a strided head view is fine); `cos`, `sin`: `[1 or batch,
    ///   1, len, rotary_dim]` in x's dtype → `[batch, heads, len, head_dim]`
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>, rotary_dim: usize) -> Tensor<Self, 4> {
        reference::rope::rope(x, cos, sin, rotary_dim)
    }

    /// Runs `work` with the device's new buffers allocated in its persistent mode: each buffer has
    /// exactly its size and, once freed, is reused by the next allocation of that size, instead of
    /// being a slice of a shared page. For the weights (never freed) and for decode steps (the same
    /// sizes every step): CubeCL's paged allocator merges and scans a page's slices on every
    /// allocation, which was most of a decode step's host time (H200 host profile). Calls may
    /// nest. The default (ndarray) runs `work`.
    fn with_persistent_allocations<T>(device: &Self::Device, work: impl FnOnce() -> T) -> T {
        let _ = device;
        work()
    }

    /// What the device allocator of the calling thread holds, where the backend can tell (CubeCL: the
    /// pools of this thread's stream; `None` on ndarray).
    fn device_memory(device: &Self::Device) -> Option<DeviceMemory> {
        let _ = device;
        None
    }

    /// A tensor made from host bytes, for weights: `fill(offset, out)` writes bytes
    /// `offset..offset + out.len()` of its contents (native-endian `dtype` elements, row-major) into
    /// `out`. It is called for whole-element ranges, possibly more than once for the same bytes (CUDA
    /// asks for pieces in order, then for the whole tensor again if its pinned upload fails), so it
    /// must not depend on call order. The default fills one host buffer and calls `from_data`; CUDA
    /// streams the pieces through pinned buffers.
    ///
    /// # Shapes
    /// - `shape` → a tensor of `shape` and `dtype`
    fn upload_weight<const D: usize>(
        shape: [usize; D],
        dtype: DType,
        fill: &mut dyn FnMut(usize, &mut [u8]),
        device: &Self::Device,
    ) -> Tensor<Self, D> {
        upload_through_host(shape, dtype, fill, device)
    }
}

/// [`BambaOps::upload_weight`] through one host buffer and Burn's `from_data`.
pub fn upload_through_host<B: Backend, const D: usize>(
    shape: [usize; D],
    dtype: DType,
    fill: &mut dyn FnMut(usize, &mut [u8]),
    device: &B::Device,
) -> Tensor<B, D> {
    let mut bytes = vec![0u8; shape.iter().product::<usize>() * dtype.size()];
    fill(0, &mut bytes);
    Tensor::from_data(TensorData::from_bytes_vec(bytes, shape, dtype), (device, dtype))
}

#[cfg(feature = "ndarray")]
pub mod cpu;

#[cfg(feature = "cubecl")]
pub mod cube;
