//! The ndarray (CPU) backend: the tensor-op references, except where a step of plain Rust over the
//! arrays in place is much faster than a chain of Burn ops, each making a new array:
//! - the linear layers' products ([`linear`]), on every core of rayon's pool (the caller sizes the pool,
//!   e.g. `bamba --threads`), reading the weight where it lies;
//! - the SSD scan as its recurrence ([`scan`]), one task per (sequence, head);
//! - the causal conv ([`conv`]);
//! - SwiGLU's `silu(gate) · up` after its two products ([`swiglu`]);
//! - a Mamba layer's decode step between its projections ([`mamba_step`]).
//!
//! Each falls back to the reference for operands it does not take (f64, strided weights).

pub mod conv;
pub mod linear;
pub mod mamba_step;
pub mod scan;
pub mod swiglu;

use std::borrow::Cow;

use burn::backend::ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use ndarray::{ArcArray, IxDyn};

use crate::reference::mamba_step::{MambaStepConfig, MambaStepOutput, MambaStepWeights};
use crate::{BambaOps, ConvOutput, SsdConfig, SsdInputs, SsdOutput};

impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> BambaOps for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn linear_no_bias(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let [rows, inputs] = x.dims();
        let [outputs, weight_inputs] = weight.dims();
        assert_eq!(
            inputs, weight_inputs,
            "linear_no_bias: x is [{rows}, {inputs}], weight [{outputs}, {weight_inputs}]"
        );
        let (Some(xs), Some(ws)) = (f32_array(&x), f32_array(&weight)) else {
            return crate::reference::linear::linear_no_bias(x, weight);
        };
        // A strided weight would be copied on every call: the reference handles that rare case.
        let Some(w) = ws.as_slice() else {
            return crate::reference::linear::linear_no_bias(x, weight);
        };
        f32_tensor(linear::linear(&contiguous(&xs), w, rows, inputs, outputs), [rows, outputs])
    }

    fn swiglu_linear(x: Tensor<Self, 2>, gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        let (gate, up) = (Self::linear_no_bias(x.clone(), gate), Self::linear_no_bias(x, up));
        let (Some(g), Some(u)) = (f32_array(&gate), f32_array(&up)) else {
            return burn::tensor::activation::silu(gate) * up;
        };
        f32_tensor(swiglu::silu_times(&contiguous(&g), &contiguous(&u)), gate.dims())
    }

    fn ssd_chunk_scan(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        recurrent_scan(inputs, config).unwrap_or_else(|inputs| crate::reference::ssd::ssd_chunk_scan(inputs, config))
    }

    fn ssd_decode_step(inputs: SsdInputs<Self>, config: SsdConfig) -> SsdOutput<Self> {
        recurrent_scan(inputs, config).unwrap_or_else(|inputs| crate::reference::ssd::ssd_recurrent(inputs, config))
    }

    fn causal_conv1d_silu(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        window: Option<Tensor<Self, 3>>,
    ) -> ConvOutput<Self> {
        let [batch, len, channels] = x.dims();
        let [_, kernel] = weight.dims();
        let arrays = (f32_array(&x), f32_array(&weight), bias.as_ref().map(f32_array), window.as_ref().map(f32_array));
        let (Some(xs), Some(ws), None | Some(Some(_)), None | Some(Some(_))) = arrays else {
            return crate::reference::conv::causal_conv1d_silu(x, weight, bias, window);
        };
        let (bias, window) = (arrays.2.flatten(), arrays.3.flatten());
        let (bias, window) = (bias.as_ref().map(contiguous), window.as_ref().map(contiguous));
        let (y, next) =
            conv::conv(&contiguous(&xs), &contiguous(&ws), bias.as_deref(), window.as_deref(), batch, len, channels);
        ConvOutput { y: f32_tensor(y, [batch, len, channels]), window: f32_tensor(next, [batch, channels, kernel - 1]) }
    }

    fn mamba_decode_step(
        zxbcdt: Tensor<Self, 2>,
        weights: MambaStepWeights<Self>,
        window: Tensor<Self, 3>,
        state: Tensor<Self, 4>,
        config: MambaStepConfig,
    ) -> MambaStepOutput<Self> {
        let arrays = (
            f32_array(&zxbcdt),
            f32_array(&weights.conv_weight),
            weights.conv_bias.as_ref().map(f32_array),
            f32_array(&weights.a_log),
            f32_array(&weights.d),
            f32_array(&weights.dt_bias),
            f32_array(&weights.norm_weight),
            f32_array(&window),
            f32_array(&state),
        );
        let (
            Some(zxbcdt_a),
            Some(conv_w),
            bias,
            Some(a_log),
            Some(d),
            Some(dt_bias),
            Some(norm_w),
            Some(window_a),
            Some(state_a),
        ) = arrays
        else {
            return crate::reference::mamba_step::mamba_decode_step(zxbcdt, weights, window, state, config);
        };
        let bias = match bias {
            None => None,
            Some(Some(bias)) => Some(bias),
            Some(None) => {
                return crate::reference::mamba_step::mamba_decode_step(zxbcdt, weights, window, state, config)
            }
        };
        let bias = bias.as_ref().map(contiguous);
        let [batch, _] = zxbcdt.dims();
        let window_dims = window.dims();
        let state_dims = state.dims();
        let (conv_w, a_log, d, dt_bias, norm_w) =
            (contiguous(&conv_w), contiguous(&a_log), contiguous(&d), contiguous(&dt_bias), contiguous(&norm_w));
        let step_weights = mamba_step::StepWeights {
            conv_weight: &conv_w,
            conv_bias: bias.as_deref(),
            a_log: &a_log,
            d: &d,
            dt_bias: &dt_bias,
            norm_weight: &norm_w,
        };
        let out = mamba_step::step(
            &contiguous(&zxbcdt_a),
            &step_weights,
            &contiguous(&window_a),
            &contiguous(&state_a),
            batch,
            &config,
        );
        MambaStepOutput {
            y: f32_tensor(out.y, [batch, config.d_inner()]),
            window: f32_tensor(out.window, window_dims),
            state: f32_tensor(out.state, state_dims),
        }
    }
}

/// The scan of f32 operands as [`scan::scan`]; other dtypes give the inputs back.
#[allow(clippy::result_large_err)]
fn recurrent_scan<B: Backend<FloatTensorPrimitive = NdArrayTensor>>(
    inputs: SsdInputs<B>,
    config: SsdConfig,
) -> Result<SsdOutput<B>, SsdInputs<B>> {
    let [batch, len, heads, head_dim] = inputs.x.dims();
    let [_, _, groups, d_state] = inputs.b.dims();
    let arrays = [&inputs.x, &inputs.b, &inputs.c].map(f32_array);
    let vectors = [&inputs.a_log, &inputs.d, &inputs.dt_bias].map(f32_array);
    let dt = f32_array(&inputs.dt);
    let state = inputs.initial_state.as_ref().map(f32_array);
    let ([Some(x), Some(b), Some(c)], [Some(a_log), Some(d), Some(dt_bias)], Some(dt), None | Some(Some(_))) =
        (arrays, vectors, dt, &state)
    else {
        return Err(inputs);
    };
    let state = state.flatten();
    let state = state.as_ref().map(contiguous);
    let (x, b, c, a_log, d, dt_bias, dt) = (
        contiguous(&x),
        contiguous(&b),
        contiguous(&c),
        contiguous(&a_log),
        contiguous(&d),
        contiguous(&dt_bias),
        contiguous(&dt),
    );
    let scan_inputs = scan::ScanInputs {
        x: &x,
        dt: &dt,
        a_log: &a_log,
        d: &d,
        dt_bias: &dt_bias,
        b: &b,
        c: &c,
        initial_state: state.as_deref(),
    };
    let shape = scan::ScanShape { batch, len, heads, head_dim, groups, d_state };
    let (y, final_state) = scan::scan(&scan_inputs, shape, config.dt_limit);
    Ok(SsdOutput {
        y: f32_tensor(y, [batch, len, heads, head_dim]),
        final_state: f32_tensor(final_state, [batch, heads, head_dim, d_state]),
    })
}

/// Makes the processor treat subnormal f32 inputs and results as zero on the calling thread (x86-64's
/// FTZ and DAZ flags; other targets: nothing). Arithmetic on subnormals takes a slow microcode path:
/// a Mamba state or a segment decay that decays towards zero passes through them, which slowed CPU
/// decode and prefill of a random-weight checkpoint by ~15% (values below 1.2e-38 become 0, far
/// under any parity tolerance). Call it on every thread that runs the model, e.g. from rayon's
/// `start_handler`; it is the caller's choice, never made behind its back.
pub fn flush_subnormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: setting MXCSR's FTZ (bit 15) and DAZ (bit 6) changes only how subnormals are rounded.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// The array behind an f32 tensor (shared, not copied), `None` for other dtypes.
fn f32_array<B: Backend<FloatTensorPrimitive = NdArrayTensor>, const D: usize>(
    tensor: &Tensor<B, D>,
) -> Option<ArcArray<f32, IxDyn>> {
    match tensor.clone().into_primitive().tensor() {
        NdArrayTensor::F32(storage) => Some(storage.into_shared()),
        _ => None,
    }
}

/// The elements in row-major order: the array's own memory when it is laid out so, else a copy.
fn contiguous(array: &ArcArray<f32, IxDyn>) -> Cow<'_, [f32]> {
    match array.as_slice() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(array.iter().copied().collect()),
    }
}

/// A row-major f32 tensor of `shape` over `values`.
fn f32_tensor<B: Backend<FloatTensorPrimitive = NdArrayTensor>, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
) -> Tensor<B, D> {
    let array = ArcArray::from_shape_vec(IxDyn(&shape), values).expect("the values fill the shape");
    Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(array)))
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    type B = NdArray<f32>;

    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        <B as Backend>::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &Default::default())
    }

    fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// The one-pass step against the composition of reference ops it replaces, over odd shapes:
    /// batches of 1 and 3, one and two groups, kernels of 2 and 4 taps, with and without bias and clamp.
    #[test]
    fn mamba_step_matches_the_reference() {
        let cases = [
            (1, 4, 8, 1, 16, 4, true, None),
            (3, 6, 5, 2, 12, 2, false, Some((0.01, 0.5))),
            (2, 2, 3, 2, 7, 4, true, Some((0.0, f32::INFINITY))),
        ];
        for (seed, &(batch, heads, head_dim, groups, d_state, kernel, bias, dt_limit)) in cases.iter().enumerate() {
            let config = MambaStepConfig { heads, head_dim, groups, d_state, norm_eps: 1e-5, dt_limit };
            let (d_inner, conv_dim) = (config.d_inner(), config.conv_dim());
            let seed = 10 * seed as u64;
            let weights = MambaStepWeights::<B> {
                conv_weight: random([conv_dim, kernel], seed),
                conv_bias: bias.then(|| random([conv_dim], seed + 1)),
                a_log: random([heads], seed + 2),
                d: random([heads], seed + 3),
                dt_bias: random([heads], seed + 4),
                norm_weight: random([d_inner], seed + 5),
            };
            let zxbcdt = random([batch, d_inner + conv_dim + heads], seed + 6);
            let window = random([batch, conv_dim, kernel - 1], seed + 7);
            let state = random([batch, heads, head_dim, d_state], seed + 8);
            let want = crate::reference::mamba_step::mamba_decode_step::<B>(
                zxbcdt.clone(),
                weights.clone(),
                window.clone(),
                state.clone(),
                config,
            );
            let got = <B as BambaOps>::mamba_decode_step(zxbcdt, weights, window, state, config);
            // f32 sums of at most 16 terms in another order, and a norm over them: a few ulps.
            assert!(max_diff(got.y, want.y) < 1e-5, "y, case {seed}");
            assert_eq!(max_diff(got.window, want.window), 0.0, "window, case {seed}");
            assert!(max_diff(got.state, want.state) < 1e-5, "state, case {seed}");
        }
    }

    /// The recurrent scan against the reference chunked scan (what the other backends are tested
    /// against) over odd shapes: lengths around the chunk, one and two groups, batches of 1 and 3,
    /// with and without an initial state and a dt clamp.
    #[test]
    fn scan_matches_the_reference() {
        let cases = [
            (1, 1, 4, 8, 1, 16, false, None),
            (3, 17, 4, 6, 2, 12, true, Some((0.01, 0.8))),
            (2, 37, 6, 5, 3, 7, true, None),
        ];
        for (i, &(batch, len, heads, head_dim, groups, d_state, initial, dt_limit)) in cases.iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            // Drawn once: the backend's random generator is shared by the tests running beside this one.
            let inputs = SsdInputs::<B> {
                x: random([batch, len, heads, head_dim], seed),
                dt: random([batch, len, heads], seed + 1),
                a_log: random([heads], seed + 2),
                b: random([batch, len, groups, d_state], seed + 3),
                c: random([batch, len, groups, d_state], seed + 4),
                d: random([heads], seed + 5),
                dt_bias: random([heads], seed + 6),
                initial_state: initial.then(|| random([batch, heads, head_dim, d_state], seed + 7)),
            };
            let config = SsdConfig { chunk_size: 8, dt_limit };
            let want = crate::reference::ssd::ssd_chunk_scan(inputs.clone(), config);
            let got = <B as BambaOps>::ssd_chunk_scan(inputs, config);
            let scale = want.y.clone().abs().max().into_scalar().max(1.0);
            // The chunked form and the recurrence differ by f32 rounding: sums of at most ~40 terms.
            assert!(max_diff(got.y, want.y) < 2e-5 * scale, "y, case {i}");
            assert!(max_diff(got.final_state, want.final_state) < 2e-5 * scale, "state, case {i}");
        }
    }

    /// The conv against the reference: with and without a window and a bias, kernels of 2 and 4 taps.
    #[test]
    fn conv_matches_the_reference() {
        for (i, &(batch, len, channels, kernel, bias, window)) in
            [(1, 1, 5, 4, true, true), (3, 9, 7, 4, false, true), (2, 6, 3, 2, true, false)].iter().enumerate()
        {
            let seed = 200 + 10 * i as u64;
            let x = random([batch, len, channels], seed);
            let weight = random([channels, kernel], seed + 1);
            let bias = bias.then(|| random([channels], seed + 2));
            let window = window.then(|| random([batch, channels, kernel - 1], seed + 3));
            let want =
                crate::reference::conv::causal_conv1d_silu(x.clone(), weight.clone(), bias.clone(), window.clone());
            let got = <B as BambaOps>::causal_conv1d_silu(x, weight, bias, window);
            assert!(max_diff(got.y, want.y) < 1e-6, "y, case {i}");
            assert_eq!(max_diff(got.window, want.window), 0.0, "window, case {i}");
        }
    }

    /// SwiGLU against the reference (two products, then Burn's silu and product), from one row to
    /// more elements than a rayon task takes.
    #[test]
    fn swiglu_matches_the_reference() {
        for (rows, seed) in [(1, 400), (9, 401), (700, 402)] {
            let (x, gate, up) = (random([rows, 40], seed), random([48, 40], seed + 1), random([48, 40], seed + 2));
            let want = crate::reference::linear::swiglu_linear::<B>(x.clone(), gate.clone(), up.clone());
            let got = <B as BambaOps>::swiglu_linear(x, gate, up);
            // the same products; exp and the quotient in another form: a few ulps
            assert!(max_diff(got, want) < 1e-5, "{rows} rows");
        }
    }

    /// The product against Burn's matmul through the trait, at decode (1 row) and prefill (9 rows) sizes.
    #[test]
    fn linear_matches_burn_matmul() {
        for (rows, seed) in [(1, 1), (3, 2), (9, 3)] {
            let (x, w) = (random([rows, 70], seed), random([33, 70], seed + 100));
            let want = x.clone().matmul(w.clone().transpose());
            assert!(max_diff(<B as BambaOps>::linear_no_bias(x, w), want) < 1e-5);
        }
    }
}
