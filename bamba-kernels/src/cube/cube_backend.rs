//! `BambaOps` on `CubeBackend` (CUDA and wgpu without Burn's fusion wrapper): each op launches its
//! CubeCL kernel where [`super::dispatch`] says it applies, else the tensor-op reference.

use burn::tensor::{Bool, DType, Int, Tensor};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::shapes::{self, assert_ok};
use crate::{
    BambaOps, ConvOutput, ExpertActivation, MambaStepConfig, MambaStepOutput, MambaStepWeights, SsdConfig, SsdInputs,
    SsdOutput,
};

use super::dispatch::*;
use super::*;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> BambaOps for CubeBackend<R, F, I, BT> {
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
        assert_ok(shapes::ssd(&inputs, false));
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
        assert_ok(shapes::ssd(&inputs, true));
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
        assert_ok(shapes::conv(&x, &weight, bias.as_ref(), window.as_ref()));
        let ([x, weight, bias, window], has_bias) = conv_kernel_inputs(x, weight, bias, window);
        let (y, window) = conv::launch(x, weight, bias, has_bias, window);
        ConvOutput { y: wrap(y), window: wrap(window) }
    }

    fn linear_no_bias(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if !linear_operands("linear_no_bias", &x, &[&weight], None, None) {
            return crate::reference::linear::linear_no_bias(x, weight);
        }
        if !gemv_applies::<R, _>(&x, &weight) {
            return wrap(matmul::launch(prim(x), prim(weight.transpose()), true));
        }
        wrap(gemv::launch(prim(x), prim(weight), gemv::Epilogue::None, None))
    }

    fn swiglu_linear(x: Tensor<Self, 2>, gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if !linear_operands("swiglu_linear", &x, &[&gate, &up], None, None) {
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
        if !linear_operands("linear_residual", &x, &[&weight], Some(&residual), None) {
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
        let operands = linear_operands("rms_norm_linear", &x, &[&weight], None, Some(&norm_weight));
        if !operands || !gemv_applies::<R, _>(&x, &weight) {
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
        let operands = linear_operands("rms_norm_swiglu", &x, &[&gate, &up], None, Some(&norm_weight));
        if !operands || !gemv_applies::<R, _>(&x, &gate) {
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
        assert_ok(shapes::attention("causal_attention", &q, &k, &v));
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
        causal_attention_in_query_blocks(q, k, v, query_offset, mask, attention_softmax::QUERY_BLOCK, product, softmax)
    }

    fn rms_norm(
        x: Tensor<Self, 2>,
        gate: Option<Tensor<Self, 2>>,
        weight: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Self, 2> {
        assert_ok(shapes::rms_norm(&x, gate.as_ref(), &weight, groups));
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
        assert_ok(shapes::decode_attention(&q, &k, &v, &key_start, keys));
        let key_start = prim(key_start.cast(DType::F32));
        wrap(decode_attention::launch(prim(q), prim(k), prim(v), key_start, keys))
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
        let ids = experts.into_primitive();
        wrap(moe::launch_experts(prim(x), prim(weights), ids, prim(gate_up), prim(down), activation))
    }

    fn top_k(logits: Tensor<Self, 2>, k: usize, softmax: bool) -> (Tensor<Self, 2>, Tensor<Self, 2, Int>) {
        assert_ok(shapes::top_k(&logits, k));
        let (values, ids) = moe::launch_top_k(prim(logits), k, softmax, I::dtype());
        (wrap(values), Tensor::from_primitive(ids))
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

    fn device_memory(device: &Self::Device) -> Option<crate::DeviceMemory> {
        let usage = R::client(device).memory_usage().ok()?;
        Some(crate::DeviceMemory { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved })
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
