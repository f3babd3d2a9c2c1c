//! CubeCL kernels (CUDA and wgpu from one source) and the `BambaOps` impls that call them: directly
//! on `CubeBackend`, and through a registered custom operation on the `Fusion` wrapper that burn's
//! `fusion` feature puts around it (an impl on `CubeBackend` alone would not reach `burn::backend::Cuda`).

mod attention_softmax;
mod conv;
#[cfg(feature = "cuda")]
pub mod cublaslt;
mod decode_attention;
mod flash_attention;
mod fragments;
mod gemv;
#[cfg(feature = "cuda")]
mod legacy_stream;
mod mamba_step;
mod math;
pub mod matmul;
mod persistent;
mod rms_norm;
mod rope;
mod ssd_chunked;
mod ssd_scan;
mod ssd_step;
mod swiglu;
#[cfg(feature = "cuda")]
pub mod upload;

use core::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, NoOp};
use burn_ir::{CustomOpIr, HandleContainer, InitOperationIr, OperationIr, OperationOutput, TensorIr};

use crate::{
    BambaOps, ConvOutput, MambaStepConfig, MambaStepOutput, MambaStepWeights, SsdConfig, SsdInputs, SsdOutput,
};

pub use gemv::MAX_GEMV_ROWS;

/// The GPU backends without Burn's fusion wrapper: every op is its own launch, with no fusion stream
/// in between (fewer host steps per op, more launches). `bamba --backend cuda-unfused` / `wgpu-unfused`.
pub mod unfused {
    /// CUDA, unfused (`burn::backend::Cuda` without `Fusion`).
    #[cfg(feature = "cuda")]
    pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
    /// wgpu, unfused (`burn::backend::Wgpu` without `Fusion`).
    #[cfg(feature = "wgpu")]
    pub type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
}
pub use flash_attention::{runs as flash_attentions_run, set_enabled as use_flash_attention};
pub use ssd_chunked::scans_run as tensor_core_scans_run;
pub use ssd_scan::MAX_STATE_PER_LANE;
pub use ssd_step::LANES;

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The largest `d_state` the scan kernels hold in registers; larger states run the reference.
pub const MAX_KERNEL_D_STATE: usize = MAX_STATE_PER_LANE * LANES;

/// The SSD inputs as the kernels take them, in order x, dt, A_log, B, C, D, dt_bias, state: x/dt/B/C in
/// x's dtype, the per-head vectors and the state in f32, the state materialized (zeros when absent).
fn ssd_kernel_inputs<B: Backend>(inputs: SsdInputs<B>) -> [FloatTensor<B>; 8] {
    let [batch, _, heads, head_dim] = inputs.x.dims();
    let d_state = inputs.b.dims()[3];
    let dtype = inputs.x.dtype();
    let state = match inputs.initial_state {
        Some(s) => s.cast(DType::F32),
        None => Tensor::zeros([batch, heads, head_dim, d_state], (&inputs.x.device(), DType::F32)),
    };
    [
        prim(inputs.x),
        prim(inputs.dt.cast(dtype)),
        prim(inputs.a_log.cast(DType::F32)),
        prim(inputs.b.cast(dtype)),
        prim(inputs.c.cast(dtype)),
        prim(inputs.d.cast(DType::F32)),
        prim(inputs.dt_bias.cast(DType::F32)),
        prim(state),
    ]
}

/// The conv inputs as the kernel takes them, in order x, weight, bias, window, all in x's dtype, bias
/// and window materialized (zeros when absent), and whether there was a bias.
fn conv_kernel_inputs<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    window: Option<Tensor<B, 3>>,
) -> ([FloatTensor<B>; 4], bool) {
    let [batch, _, channels] = x.dims();
    let kernel = weight.dims()[1];
    let (dtype, device) = (x.dtype(), x.device());
    let has_bias = bias.is_some();
    let bias = bias.map(|b| b.cast(dtype)).unwrap_or_else(|| Tensor::zeros([channels], (&device, dtype)));
    let window = match window {
        Some(w) => w.cast(dtype),
        None => Tensor::zeros([batch, channels, kernel - 1], (&device, dtype)),
    };
    ([prim(x), prim(weight.cast(dtype)), prim(bias), prim(window)], has_bias)
}

/// The fused Mamba step's inputs as the kernels take them, in order zxbcdt, conv weight, conv bias
/// (zeros when absent), window (all in zxbcdt's dtype), A_log, D, dt_bias (f32), state (in its own
/// dtype: the kernel keeps it), norm weight.
fn mamba_step_inputs<B: Backend>(
    zxbcdt: Tensor<B, 2>,
    weights: MambaStepWeights<B>,
    window: Tensor<B, 3>,
    state: Tensor<B, 4>,
) -> [FloatTensor<B>; 9] {
    let (dtype, device) = (zxbcdt.dtype(), zxbcdt.device());
    let channels = weights.conv_weight.dims()[0];
    let bias = weights.conv_bias.map(|b| b.cast(dtype)).unwrap_or_else(|| Tensor::zeros([channels], (&device, dtype)));
    [
        prim(zxbcdt),
        prim(weights.conv_weight.cast(dtype)),
        prim(bias),
        prim(window.cast(dtype)),
        prim(weights.a_log.cast(DType::F32)),
        prim(weights.d.cast(DType::F32)),
        prim(weights.dt_bias.cast(DType::F32)),
        prim(state),
        prim(weights.norm_weight),
    ]
}

/// Whether the fused Mamba step kernel takes this layer: a conv window to carry and a state that
/// fits the kernel's registers (else the composition of the other ops runs).
fn mamba_step_applies(weights: &MambaStepWeights<impl Backend>, config: &MambaStepConfig) -> bool {
    weights.conv_weight.dims()[1] >= 2 && config.d_state <= MAX_KERNEL_D_STATE
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> BambaOps for CubeBackend<R, F, I, BT> {
    fn mamba_decode_step(
        zxbcdt: Tensor<Self, 2>,
        weights: MambaStepWeights<Self>,
        window: Tensor<Self, 3>,
        state: Tensor<Self, 4>,
        config: MambaStepConfig,
    ) -> MambaStepOutput<Self> {
        if !mamba_step_applies(&weights, &config) {
            return crate::reference::mamba_step::mamba_decode_step(zxbcdt, weights, window, state, config);
        }
        let has_bias = weights.conv_bias.is_some();
        let [zxbcdt, weight, bias, window, a_log, d, dt_bias, state, norm_weight] =
            mamba_step_inputs(zxbcdt, weights, window, state);
        let step = mamba_step::launch(
            zxbcdt.clone(),
            weight,
            bias,
            has_bias,
            window,
            a_log,
            d,
            dt_bias,
            state,
            config.dt_limit,
        );
        // z is the first d_inner columns of zxbcdt: the norm reads it there, no slice.
        let y = rms_norm::launch(step.y, Some(zxbcdt), norm_weight, config.groups, config.norm_eps);
        MambaStepOutput { y: wrap(y), window: wrap(step.window), state: wrap(step.state) }
    }

    fn ssd_chunk_scan(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        if inputs.b.dims()[3] > MAX_KERNEL_D_STATE {
            return crate::reference::ssd::ssd_chunk_scan(inputs, config);
        }
        let [x, dt, a_log, b, c, d, dt_bias, state] = ssd_kernel_inputs(inputs);
        let chunk = config.chunk_size.max(1);
        let [_, _, _, head_dim] = x.meta.shape().dims::<4>();
        let d_state = b.meta.shape().dims::<4>()[3];
        let launch = if ssd_chunked::applies(&x.client, x.dtype, head_dim, d_state, chunk) {
            ssd_chunked::launch
        } else {
            ssd_scan::launch
        };
        let (y, state) = launch(x, dt, a_log, b, c, d, dt_bias, state, chunk, config.dt_limit);
        SsdOutput { y: wrap(y), final_state: wrap(state) }
    }

    fn ssd_decode_step(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        let [x, dt, a_log, b, c, d, dt_bias, state] = ssd_kernel_inputs(inputs);
        let (y, state) = ssd_step::launch(x, dt, a_log, b, c, d, dt_bias, state, config.dt_limit);
        SsdOutput { y: wrap(y), final_state: wrap(state) }
    }

    fn causal_conv1d_silu(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        window: Option<Tensor<Self, 3>>,
    ) -> ConvOutput<Self> {
        let ([x, weight, bias, window], has_bias) = conv_kernel_inputs(x, weight, bias, window);
        let (y, window) = conv::launch(x, weight, bias, has_bias, window);
        ConvOutput { y: wrap(y), window: wrap(window) }
    }

    fn linear_no_bias(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != weight.dtype() {
            return crate::reference::linear::linear_no_bias(x, weight);
        }
        if !gemv_applies::<R, _>(&x, &weight) {
            return wrap(matmul::launch(prim(x), prim(weight.transpose()), true));
        }
        wrap(gemv::launch(prim(x), prim(weight), gemv::Epilogue::None, None))
    }

    fn swiglu_linear(x: Tensor<Self, 2>, gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != gate.dtype() || up.dtype() != gate.dtype() {
            return crate::reference::linear::swiglu_linear(x, gate, up);
        }
        if gemv_applies::<R, _>(&x, &gate) {
            return wrap(gemv::launch(prim(x), prim(gate), gemv::Epilogue::SwiGlu(prim(up)), None));
        }
        // Two products, then silu(gate)·up in one launch.
        let (g, u) = (Self::linear_no_bias(x.clone(), gate), Self::linear_no_bias(x, up));
        wrap(swiglu::launch(prim(g), prim(u)))
    }

    fn linear_residual(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, residual: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != weight.dtype() || residual.dtype() != x.dtype() {
            return crate::reference::linear::linear_residual(x, weight, residual);
        }
        if gemv_applies::<R, _>(&x, &weight) {
            return wrap(gemv::launch(prim(x), prim(weight), gemv::Epilogue::Residual(prim(residual)), None));
        }
        // cuBLASLt adds the residual inside the product (no add launch).
        #[cfg(feature = "cuda")]
        {
            let (lhs, rhs, addend) = (prim(x.clone()), prim(weight.clone().transpose()), prim(residual.clone()));
            if let Some(y) = cublaslt::try_launch(&lhs, &rhs, Some(&addend)) {
                return wrap(y);
            }
        }
        crate::reference::linear::linear_residual(x, weight, residual)
    }

    fn rms_norm_linear(
        x: Tensor<Self, 2>,
        norm_weight: Tensor<Self, 1>,
        eps: f64,
        weight: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        if !gemv_applies::<R, _>(&x, &weight) || norm_weight.dtype() != x.dtype() {
            return crate::reference::linear::rms_norm_linear(x, norm_weight, eps, weight);
        }
        let norm = gemv::PreNorm { weight: prim(norm_weight), eps };
        wrap(gemv::launch(prim(x), prim(weight), gemv::Epilogue::None, Some(norm)))
    }

    fn rms_norm_swiglu(
        x: Tensor<Self, 2>,
        norm_weight: Tensor<Self, 1>,
        eps: f64,
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        if !gemv_applies::<R, _>(&x, &gate) || up.dtype() != gate.dtype() || norm_weight.dtype() != x.dtype() {
            return crate::reference::linear::rms_norm_swiglu(x, norm_weight, eps, gate, up);
        }
        let norm = gemv::PreNorm { weight: prim(norm_weight), eps };
        wrap(gemv::launch(prim(x), prim(gate), gemv::Epilogue::SwiGlu(prim(up)), Some(norm)))
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        query_offset: usize,
        mask: Option<Tensor<Self, 4, Bool>>,
    ) -> Tensor<Self, 4> {
        use crate::reference::attention::{causal_attention_in_query_blocks, masked_softmax, ScoreRows};
        if mask.is_none() && flash_attention::applies(&R::client(&q.device()), q.dtype(), q.dims()[3]) {
            // 16-bit on tensor cores: the scores stay on chip
            return wrap(flash_attention::launch(prim(q), prim(k), prim(v), query_offset));
        }
        let product = |a: Tensor<Self, 4>, b: Tensor<Self, 4>| wrap(matmul::launch(prim(a), prim(b), false));
        // The causal softmax is one kernel; an explicit mask (left padding) takes the tensor ops.
        let softmax = |scores: Tensor<Self, 4>, mask: Option<Tensor<Self, 4, Bool>>, layout: &ScoreRows| match mask {
            None => wrap(attention_softmax::launch(prim(scores), layout)),
            Some(mask) => masked_softmax(scores, Some(mask), layout),
        };
        let block = attention_softmax::query_block();
        causal_attention_in_query_blocks(q, k, v, query_offset, mask, block, product, softmax)
    }

    fn rms_norm(
        x: Tensor<Self, 2>,
        gate: Option<Tensor<Self, 2>>,
        weight: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 2> {
        let gate = gate.map(|g| prim(g.cast(weight.dtype())));
        wrap(rms_norm::launch(prim(x), gate, prim(weight), groups, eps))
    }

    fn decode_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_start: Tensor<Self, 1>,
        keys: usize,
    ) -> Tensor<Self, 4> {
        let key_start = prim(key_start.cast(DType::F32));
        wrap(decode_attention::launch(prim(q), prim(k), prim(v), key_start, keys))
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>, rotary_dim: usize) -> Tensor<Self, 4> {
        if !rope_applies(&x, &cos, &sin, rotary_dim) {
            return crate::reference::rope::rope(x, cos, sin, rotary_dim);
        }
        wrap(rope::launch(prim(x), prim(cos), prim(sin), rotary_dim))
    }

    fn with_persistent_allocations<T>(device: &Self::Device, work: impl FnOnce() -> T) -> T {
        persistent::allocations(R::client(device), work)
    }

    fn upload_weight<const D: usize>(
        shape: [usize; D],
        dtype: DType,
        fill: &mut dyn FnMut(usize, &mut [u8]),
        device: &Self::Device,
    ) -> Tensor<Self, D> {
        #[cfg(feature = "cuda")]
        if let Some(tensor) = upload::try_upload::<R>(shape.into(), dtype, fill, device) {
            return wrap(tensor);
        }
        crate::upload_through_host(shape, dtype, fill, device)
    }
}

/// Whether the GEMV kernel takes this product: few rows, one dtype (else the matmul path does:
/// Burn's matmul, or cuBLASLt on CUDA).
fn gemv_applies<R: CubeRuntime, B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> bool {
    let rows = x.dims()[0];
    // On CUDA the GEMV's steps slow down past 2 rows; there cuBLASLt takes what it can.
    #[cfg(feature = "cuda")]
    {
        let [cols, inner] = weight.dims();
        if rows >= cublaslt::gemv_rows_limit() && cublaslt::takes::<R>(rows, inner, cols) {
            return false;
        }
    }
    rows <= MAX_GEMV_ROWS && x.dtype() == weight.dtype()
}

/// Whether the RoPE kernel takes these operands: one dtype, an even `rotary_dim` within the head,
/// tables covering the positions (else the reference's broadcasting rules and errors apply), and
/// not turned off by `BAMBA_ROPE_KERNEL=0` (for same-call comparisons).
fn rope_applies<B: Backend>(x: &Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>, rotary_dim: usize) -> bool {
    let [batch, _, len, head_dim] = x.dims();
    let table_fits = |t: &Tensor<B, 4>| {
        let [rows, one, positions, width] = t.dims();
        (rows == 1 || rows == batch) && one == 1 && positions == len && width == rotary_dim && t.dtype() == x.dtype()
    };
    rotary_dim.is_multiple_of(2) && rotary_dim <= head_dim && table_fits(cos) && table_fits(sin) && rope::enabled()
}

/// Which `BambaOps` method a fused custom op runs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Scan(SsdConfig),
    Step(SsdConfig),
    Conv { has_bias: bool },
    Linear,
    SwiGlu,
    NormLinear { eps: f64 },
    NormSwiGlu { eps: f64 },
    Residual,
    Norm { gated: bool, groups: usize, eps: f64 },
    DecodeAttention { keys: usize },
    CausalAttention { query_offset: usize, masked: bool },
    MambaStep { has_bias: bool, config: MambaStepConfig },
    Rope { rotary_dim: usize },
}

/// A `BambaOps` call recorded in the fusion stream; runs the inner backend's method when executed.
#[derive(Debug)]
struct CustomOp<B> {
    desc: CustomOpIr,
    kind: Kind,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + BambaOps> Operation<B::FusionRuntime> for CustomOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let inputs: Vec<FloatTensor<B>> = self.desc.inputs.iter().map(|t| handles.get_float_tensor::<B>(t)).collect();
        let mut inputs = inputs.into_iter();
        let mut next = || inputs.next().expect("input count fixed by the kind");
        let outputs: Vec<FloatTensor<B>> = match self.kind {
            Kind::Scan(config) | Kind::Step(config) => {
                let ssd = SsdInputs {
                    x: wrap(next()),
                    dt: wrap(next()),
                    a_log: wrap(next()),
                    b: wrap(next()),
                    c: wrap(next()),
                    d: wrap(next()),
                    dt_bias: wrap(next()),
                    initial_state: Some(wrap(next())),
                };
                let out = match self.kind {
                    Kind::Scan(_) => B::ssd_chunk_scan(ssd, config),
                    _ => B::ssd_decode_step(ssd, config),
                };
                vec![prim(out.y), prim(out.final_state)]
            }
            Kind::Conv { has_bias } => {
                let (x, weight, bias, window) = (wrap(next()), wrap(next()), wrap(next()), wrap(next()));
                let out = B::causal_conv1d_silu(x, weight, has_bias.then_some(bias), Some(window));
                vec![prim(out.y), prim(out.window)]
            }
            Kind::Linear => vec![prim(B::linear_no_bias(wrap(next()), wrap(next())))],
            Kind::SwiGlu => vec![prim(B::swiglu_linear(wrap(next()), wrap(next()), wrap(next())))],
            Kind::Residual => vec![prim(B::linear_residual(wrap(next()), wrap(next()), wrap(next())))],
            Kind::NormLinear { eps } => {
                let (x, norm_weight, weight) = (wrap(next()), wrap(next()), wrap(next()));
                vec![prim(B::rms_norm_linear(x, norm_weight, eps, weight))]
            }
            Kind::NormSwiGlu { eps } => {
                let (x, norm_weight, gate, up) = (wrap(next()), wrap(next()), wrap(next()), wrap(next()));
                vec![prim(B::rms_norm_swiglu(x, norm_weight, eps, gate, up))]
            }
            Kind::Norm { gated, groups, eps } => {
                let x = wrap(next());
                let gate = gated.then(|| wrap(next()));
                vec![prim(B::rms_norm(x, gate, wrap(next()), groups, eps))]
            }
            Kind::MambaStep { has_bias, config } => {
                let zxbcdt = wrap(next());
                let (conv_weight, bias, window) = (wrap(next()), wrap(next()), wrap(next()));
                let (a_log, d, dt_bias, state, norm_weight) =
                    (wrap(next()), wrap(next()), wrap(next()), wrap(next()), wrap(next()));
                let weights = MambaStepWeights {
                    conv_weight,
                    conv_bias: has_bias.then_some(bias),
                    a_log,
                    d,
                    dt_bias,
                    norm_weight,
                };
                let out = B::mamba_decode_step(zxbcdt, weights, window, state, config);
                vec![prim(out.y), prim(out.window), prim(out.state)]
            }
            Kind::DecodeAttention { keys } => {
                let (q, k, v, start) = (wrap(next()), wrap(next()), wrap(next()), wrap(next()));
                vec![prim(B::decode_attention(q, k, v, start, keys))]
            }
            Kind::Rope { rotary_dim } => {
                let (x, cos, sin) = (wrap(next()), wrap(next()), wrap(next()));
                vec![prim(B::rope(x, cos, sin, rotary_dim))]
            }
            Kind::CausalAttention { query_offset, masked } => {
                let (q, k, v) = (wrap(next()), wrap(next()), wrap(next()));
                let mask = masked.then(|| wrap::<B, 4>(next()).bool());
                vec![prim(B::causal_attention(q, k, v, query_offset, mask))]
            }
        };
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, tensor);
        }
    }
}

/// Records `kind` on the fusion stream with `inputs`, returning `N` outputs of the given shapes and dtypes.
fn register<B: FusionBackend + BambaOps, const N: usize>(
    name: &'static str,
    kind: Kind,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    outputs: [(Vec<usize>, DType); N],
) -> [FloatTensor<Fusion<B>>; N] {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape.into(), dtype))
        .collect();
    let ins: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &ins, &outs);
    let op = CustomOp::<B> { desc: desc.clone(), kind, _backend: PhantomData };
    let result = client.register(streams, OperationIr::Custom(desc), op);
    result.try_into().unwrap_or_else(|_| unreachable!("N outputs registered"))
}

fn ssd_on_fusion<B: FusionBackend + BambaOps>(
    inputs: SsdInputs<Fusion<B>>,
    kind: Kind,
    name: &'static str,
) -> SsdOutput<Fusion<B>> {
    let [batch, len, heads, head_dim] = inputs.x.dims();
    let state_shape = vec![batch, heads, head_dim, inputs.b.dims()[3]];
    // the scan's y is in x's dtype, the step's in f32 (`BambaOps`)
    let y_dtype = if matches!(kind, Kind::Scan(_)) { inputs.x.dtype() } else { DType::F32 };
    let ins = ssd_kernel_inputs(inputs).to_vec();
    let outs = [(vec![batch, len, heads, head_dim], y_dtype), (state_shape, DType::F32)];
    let [y, state] = register::<B, 2>(name, kind, ins, outs);
    SsdOutput { y: wrap(y), final_state: wrap(state) }
}

impl<B: FusionBackend + BambaOps> BambaOps for Fusion<B> {
    fn mamba_decode_step(
        zxbcdt: Tensor<Self, 2>,
        weights: MambaStepWeights<Self>,
        window: Tensor<Self, 3>,
        state: Tensor<Self, 4>,
        config: MambaStepConfig,
    ) -> MambaStepOutput<Self> {
        if !mamba_step_applies(&weights, &config) {
            return crate::reference::mamba_step::mamba_decode_step(zxbcdt, weights, window, state, config);
        }
        let batch = zxbcdt.dims()[0];
        let (dtype, out_dtype) = (zxbcdt.dtype(), weights.norm_weight.dtype());
        let has_bias = weights.conv_bias.is_some();
        let window_shape = window.dims().to_vec();
        let state_dtype = state.dtype();
        let state_shape = vec![batch, config.heads, config.head_dim, config.d_state];
        let ins = mamba_step_inputs(zxbcdt, weights, window, state).to_vec();
        let outs = [(vec![batch, config.d_inner()], out_dtype), (window_shape, dtype), (state_shape, state_dtype)];
        let [y, window, state] = register::<B, 3>("bamba_mamba_step", Kind::MambaStep { has_bias, config }, ins, outs);
        MambaStepOutput { y: wrap(y), window: wrap(window), state: wrap(state) }
    }

    fn ssd_chunk_scan(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        ssd_on_fusion(inputs, Kind::Scan(config), "bamba_ssd_chunk_scan")
    }

    fn ssd_decode_step(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        ssd_on_fusion(inputs, Kind::Step(config), "bamba_ssd_decode_step")
    }

    fn causal_conv1d_silu(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        window: Option<Tensor<Self, 3>>,
    ) -> ConvOutput<Self> {
        let [batch, len, channels] = x.dims();
        let (kernel, dtype) = (weight.dims()[1], x.dtype());
        let (ins, has_bias) = conv_kernel_inputs(x, weight, bias, window);
        let outs = [(vec![batch, len, channels], dtype), (vec![batch, channels, kernel - 1], dtype)];
        let [y, window] = register::<B, 2>("bamba_causal_conv1d_silu", Kind::Conv { has_bias }, ins.to_vec(), outs);
        ConvOutput { y: wrap(y), window: wrap(window) }
    }

    // The linear layers are one custom op at any row count: the inner backend picks its GEMV or a
    // matmul whose autotuning it controls (`matmul.rs`); Burn's fused matmul would tune every shape.
    fn linear_no_bias(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != weight.dtype() {
            return crate::reference::linear::linear_no_bias(x, weight);
        }
        let shape = vec![x.dims()[0], weight.dims()[0]];
        let dtype = x.dtype();
        let [y] = register::<B, 1>("bamba_linear", Kind::Linear, vec![prim(x), prim(weight)], [(shape, dtype)]);
        wrap(y)
    }

    fn swiglu_linear(x: Tensor<Self, 2>, gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != gate.dtype() || up.dtype() != gate.dtype() {
            return crate::reference::linear::swiglu_linear(x, gate, up);
        }
        let out = (vec![x.dims()[0], gate.dims()[0]], x.dtype());
        let [y] = register::<B, 1>("bamba_swiglu", Kind::SwiGlu, vec![prim(x), prim(gate), prim(up)], [out]);
        wrap(y)
    }

    fn linear_residual(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, residual: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if x.dtype() != weight.dtype() || residual.dtype() != x.dtype() {
            return crate::reference::linear::linear_residual(x, weight, residual);
        }
        let out = (vec![x.dims()[0], weight.dims()[0]], x.dtype());
        let ins = vec![prim(x), prim(weight), prim(residual)];
        let [y] = register::<B, 1>("bamba_linear_residual", Kind::Residual, ins, [out]);
        wrap(y)
    }

    fn rms_norm_linear(
        x: Tensor<Self, 2>,
        norm_weight: Tensor<Self, 1>,
        eps: f64,
        weight: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        if x.dtype() != weight.dtype() || norm_weight.dtype() != x.dtype() {
            return crate::reference::linear::rms_norm_linear(x, norm_weight, eps, weight);
        }
        let out = (vec![x.dims()[0], weight.dims()[0]], x.dtype());
        let ins = vec![prim(x), prim(norm_weight), prim(weight)];
        let [y] = register::<B, 1>("bamba_rms_norm_linear", Kind::NormLinear { eps }, ins, [out]);
        wrap(y)
    }

    fn rms_norm_swiglu(
        x: Tensor<Self, 2>,
        norm_weight: Tensor<Self, 1>,
        eps: f64,
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        if x.dtype() != gate.dtype() || up.dtype() != gate.dtype() || norm_weight.dtype() != x.dtype() {
            return crate::reference::linear::rms_norm_swiglu(x, norm_weight, eps, gate, up);
        }
        let out = (vec![x.dims()[0], gate.dims()[0]], x.dtype());
        let ins = vec![prim(x), prim(norm_weight), prim(gate), prim(up)];
        let [y] = register::<B, 1>("bamba_rms_norm_swiglu", Kind::NormSwiGlu { eps }, ins, [out]);
        wrap(y)
    }

    fn rms_norm(
        x: Tensor<Self, 2>,
        gate: Option<Tensor<Self, 2>>,
        weight: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 2> {
        let out = (x.dims().to_vec(), weight.dtype());
        let kind = Kind::Norm { gated: gate.is_some(), groups, eps };
        // Inputs x, [gate,] weight: each tensor once.
        let mut inputs = vec![prim(x)];
        inputs.extend(gate.map(|g| prim(g.cast(weight.dtype()))));
        inputs.push(prim(weight));
        let [y] = register::<B, 1>("bamba_rms_norm", kind, inputs, [out]);
        wrap(y)
    }

    fn decode_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_start: Tensor<Self, 1>,
        keys: usize,
    ) -> Tensor<Self, 4> {
        let out = (q.dims().to_vec(), q.dtype());
        let inputs = vec![prim(q), prim(k), prim(v), prim(key_start.cast(DType::F32))];
        let [y] = register::<B, 1>("bamba_decode_attention", Kind::DecodeAttention { keys }, inputs, [out]);
        wrap(y)
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>, rotary_dim: usize) -> Tensor<Self, 4> {
        if !rope_applies(&x, &cos, &sin, rotary_dim) {
            return crate::reference::rope::rope(x, cos, sin, rotary_dim);
        }
        let out = (x.dims().to_vec(), x.dtype());
        let [y] = register::<B, 1>("bamba_rope", Kind::Rope { rotary_dim }, vec![prim(x), prim(cos), prim(sin)], [out]);
        wrap(y)
    }

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        query_offset: usize,
        mask: Option<Tensor<Self, 4, Bool>>,
    ) -> Tensor<Self, 4> {
        let out = (q.dims().to_vec(), q.dtype());
        let kind = Kind::CausalAttention { query_offset, masked: mask.is_some() };
        let mut inputs = vec![prim(q), prim(k), prim(v)];
        // Custom ops take float tensors: the mask travels as 0/1 and is turned back into bools.
        inputs.extend(mask.map(|m| prim(m.float())));
        let [y] = register::<B, 1>("bamba_causal_attention", kind, inputs, [out]);
        wrap(y)
    }

    // Allocations happen when the fusion stream executes: those inside `work` get the mode.
    fn with_persistent_allocations<T>(device: &Self::Device, work: impl FnOnce() -> T) -> T {
        B::with_persistent_allocations(device, work)
    }

    // The inner backend's tensor, registered with the fusion client as Burn's own `from_data` does.
    fn upload_weight<const D: usize>(
        shape: [usize; D],
        dtype: DType,
        fill: &mut dyn FnMut(usize, &mut [u8]),
        device: &Self::Device,
    ) -> Tensor<Self, D> {
        let handle = B::float_tensor_handle(prim(B::upload_weight(shape, dtype, fill, device)));
        let client = burn_fusion::get_client::<B>(device);
        let init = InitOperationIr::create(shape.into(), dtype, || client.register_tensor_handle(handle));
        wrap(client.register(OperationStreams::default(), OperationIr::Init(init), NoOp::<B>::new()).output())
    }
}
