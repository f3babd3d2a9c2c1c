//! `BambaOps` on Burn's `Fusion` wrapper (what `burn::backend::Cuda` / `Wgpu` are): each op is
//! recorded as a custom operation on the fusion stream that runs the inner `CubeBackend` op when the
//! stream executes (an impl on `CubeBackend` alone would not reach `burn::backend::Cuda`).

use core::marker::PhantomData;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, DType, Element, Int, Tensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, NoOp};
use burn_ir::{CustomOpIr, HandleContainer, InitOperationIr, OperationIr, OperationOutput, TensorIr};

use crate::shapes::{self, assert_ok};
use crate::{
    BambaOps, ConvOutput, ExpertActivation, MambaStepConfig, MambaStepOutput, MambaStepWeights, SsdConfig, SsdInputs,
    SsdOutput,
};

use super::dispatch::*;
use super::{prim, wrap};

/// Which `BambaOps` method a fused custom op runs (`Experts` takes int expert ids, `TopK` returns
/// int ids: [`CustomOp::experts`], [`CustomOp::top_k`]).
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
    Experts { activation: ExpertActivation },
    TopK { k: usize, softmax: bool },
}

/// A `BambaOps` call recorded in the fusion stream; runs the inner backend's method when executed.
#[derive(Debug)]
struct CustomOp<B> {
    desc: CustomOpIr,
    kind: Kind,
    _backend: PhantomData<B>,
}

type Handles<B> = HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

impl<B: FusionBackend + BambaOps> CustomOp<B> {
    /// `moe_experts`, whose third input is an int tensor.
    fn experts(&self, handles: &mut Handles<B>, activation: ExpertActivation) {
        let [x, weights, ids, gate_up, down] = &self.desc.inputs[..] else { unreachable!("five inputs") };
        let (x, weights) = (wrap(handles.get_float_tensor::<B>(x)), wrap(handles.get_float_tensor::<B>(weights)));
        let ids = Tensor::from_primitive(handles.get_int_tensor::<B>(ids));
        let (gate_up, down) = (wrap(handles.get_float_tensor::<B>(gate_up)), wrap(handles.get_float_tensor::<B>(down)));
        let y = B::moe_experts(x, weights, ids, gate_up, down, activation);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, prim(y));
    }

    /// `top_k`, whose second output is an int tensor.
    fn top_k(&self, handles: &mut Handles<B>, k: usize, softmax: bool) {
        let logits = wrap(handles.get_float_tensor::<B>(&self.desc.inputs[0]));
        let (values, ids) = B::top_k(logits, k, softmax);
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, prim(values));
        handles.register_int_tensor::<B>(&self.desc.outputs[1].id, ids.into_primitive());
    }
}

impl<B: FusionBackend + BambaOps> Operation<B::FusionRuntime> for CustomOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        match self.kind {
            Kind::Experts { activation } => return self.experts(handles, activation),
            Kind::TopK { k, softmax } => return self.top_k(handles, k, softmax),
            _ => {}
        }
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
            Kind::Experts { .. } | Kind::TopK { .. } => unreachable!("int operands: run above"),
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
    assert_ok(shapes::ssd(&inputs, matches!(kind, Kind::Step(_))));
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
        if !mamba_step_operands(&zxbcdt, &weights, &window, &state, &config) {
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
        assert_ok(shapes::conv(&x, &weight, bias.as_ref(), window.as_ref()));
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
        if !linear_operands("linear_no_bias", &x, &[&weight], None, None) {
            return crate::reference::linear::linear_no_bias(x, weight);
        }
        let shape = vec![x.dims()[0], weight.dims()[0]];
        let dtype = x.dtype();
        let [y] = register::<B, 1>("bamba_linear", Kind::Linear, vec![prim(x), prim(weight)], [(shape, dtype)]);
        wrap(y)
    }

    fn swiglu_linear(x: Tensor<Self, 2>, gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if !linear_operands("swiglu_linear", &x, &[&gate, &up], None, None) {
            return crate::reference::linear::swiglu_linear(x, gate, up);
        }
        let out = (vec![x.dims()[0], gate.dims()[0]], x.dtype());
        let [y] = register::<B, 1>("bamba_swiglu", Kind::SwiGlu, vec![prim(x), prim(gate), prim(up)], [out]);
        wrap(y)
    }

    fn linear_residual(x: Tensor<Self, 2>, weight: Tensor<Self, 2>, residual: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if !linear_operands("linear_residual", &x, &[&weight], Some(&residual), None) {
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
        if !linear_operands("rms_norm_linear", &x, &[&weight], None, Some(&norm_weight)) {
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
        if !linear_operands("rms_norm_swiglu", &x, &[&gate, &up], None, Some(&norm_weight)) {
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
        assert_ok(shapes::rms_norm(&x, gate.as_ref(), &weight, groups));
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
        assert_ok(shapes::decode_attention(&q, &k, &v, &key_start, keys));
        let out = (q.dims().to_vec(), q.dtype());
        let inputs = vec![prim(q), prim(k), prim(v), prim(key_start.cast(DType::F32))];
        let [y] = register::<B, 1>("bamba_decode_attention", Kind::DecodeAttention { keys }, inputs, [out]);
        wrap(y)
    }

    fn moe_experts(
        x: Tensor<Self, 2>,
        weights: Tensor<Self, 2>,
        experts: Tensor<Self, 2, Int>,
        gate_up: Tensor<Self, 3>,
        down: Tensor<Self, 3>,
        activation: ExpertActivation,
    ) -> Tensor<Self, 2> {
        assert_ok(shapes::moe_experts(&x, &weights, &experts, &gate_up, &down, activation));
        if !experts_apply(&x, &weights, &experts, &gate_up, &down) {
            return crate::reference::moe::moe_experts(x, weights, experts, gate_up, down, activation);
        }
        let out = (x.dims().to_vec(), x.dtype());
        // A fusion tensor primitive is one type whatever its kind: the int ids travel with the floats.
        let ins = vec![prim(x), prim(weights), experts.into_primitive(), prim(gate_up), prim(down)];
        let [y] = register::<B, 1>("bamba_moe_experts", Kind::Experts { activation }, ins, [out]);
        wrap(y)
    }

    fn top_k(logits: Tensor<Self, 2>, k: usize, softmax: bool) -> (Tensor<Self, 2>, Tensor<Self, 2, Int>) {
        assert_ok(shapes::top_k(&logits, k));
        let shape = vec![logits.dims()[0], k];
        let outs = [(shape.clone(), DType::F32), (shape, <B::IntElem as Element>::dtype())];
        let ins = vec![prim(logits)];
        let [values, ids] = register::<B, 2>("bamba_top_k", Kind::TopK { k, softmax }, ins, outs);
        (wrap(values), Tensor::from_primitive(ids))
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
        assert_ok(shapes::attention("causal_attention", &q, &k, &v));
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

    fn device_memory(device: &Self::Device) -> Option<crate::DeviceMemory> {
        B::device_memory(device)
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
