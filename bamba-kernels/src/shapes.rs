//! The operands' shape contracts of the [`BambaOps`](crate::BambaOps) ops that run CubeCL kernels, checked
//! where a kernel takes them. A kernel indexes its buffers from the shapes it is given, so operands that
//! disagree would read past a buffer (undefined behaviour on CUDA) or return garbage; a check turns that
//! into a [`ShapeError`] naming the op and the operands, which the GPU impls raise as a panic with its
//! message (the trait's ops return tensors, and a wrong shape is a caller's bug, as in Burn's own ops).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::{ExpertActivation, MambaStepConfig, MambaStepWeights, SsdInputs};

/// Operands of one op whose shapes do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {problem}")]
pub struct ShapeError {
    /// The op, as the trait names it.
    pub op: &'static str,
    /// Which operands disagree, with their shapes.
    pub problem: String,
}

/// Raises a [`ShapeError`] as a panic with its message.
pub fn assert_ok(checked: Result<(), ShapeError>) {
    if let Err(e) = checked {
        panic!("{e}");
    }
}

/// Checks one op's operands: `expect(cond, || "what is wrong")` per rule.
struct Op(&'static str);

impl Op {
    fn expect(&self, holds: bool, problem: impl FnOnce() -> String) -> Result<(), ShapeError> {
        if holds {
            Ok(())
        } else {
            Err(ShapeError { op: self.0, problem: problem() })
        }
    }
}

/// [`SsdInputs`]: x `[batch, len, heads, head_dim]`, dt `[batch, len, heads]`, B and C `[batch, len, groups,
/// d_state]` with `groups` dividing `heads`, the per-head vectors `[heads]`, the state `[batch, heads,
/// head_dim, d_state]`; a decode step (`step`) has `len == 1`.
pub fn ssd<B: Backend>(inputs: &SsdInputs<B>, step: bool) -> Result<(), ShapeError> {
    let op = Op(if step { "ssd_decode_step" } else { "ssd_chunk_scan" });
    let x = inputs.x.dims();
    let [batch, len, heads, head_dim] = x;
    let (b, c) = (inputs.b.dims(), inputs.c.dims());
    let [_, _, groups, d_state] = b;
    op.expect(!step || len == 1, || format!("a decode step takes one position, x is {x:?}"))?;
    op.expect(inputs.dt.dims() == [batch, len, heads], || format!("dt is {:?}, x {x:?}", inputs.dt.dims()))?;
    op.expect(b[..2] == x[..2] && c == b, || format!("B is {b:?}, C {c:?}, x {x:?}"))?;
    op.expect(groups > 0 && heads.is_multiple_of(groups), || format!("{groups} groups do not divide {heads} heads"))?;
    for (name, v) in [("A_log", &inputs.a_log), ("D", &inputs.d), ("dt_bias", &inputs.dt_bias)] {
        op.expect(v.dims() == [heads], || format!("{name} is {:?}, not [{heads}]", v.dims()))?;
    }
    if let Some(state) = &inputs.initial_state {
        let want = [batch, heads, head_dim, d_state];
        op.expect(state.dims() == want, || format!("the state is {:?}, not {want:?}", state.dims()))?;
    }
    Ok(())
}

/// The causal conv: x `[batch, len, channels]`, weight `[channels, kernel]` with `kernel ≥ 1`, bias
/// `[channels]`, window `[batch, channels, kernel - 1]`.
pub fn conv<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    window: Option<&Tensor<B, 3>>,
) -> Result<(), ShapeError> {
    conv_dims(Op("causal_conv1d_silu"), x.dims(), weight.dims(), bias.map(|b| b.dims()), window.map(|w| w.dims()))
}

fn conv_dims(
    op: Op,
    x: [usize; 3],
    weight: [usize; 2],
    bias: Option<[usize; 1]>,
    window: Option<[usize; 3]>,
) -> Result<(), ShapeError> {
    let [batch, _, channels] = x;
    op.expect(weight[0] == channels && weight[1] >= 1, || format!("the conv weight is {weight:?}, x {x:?}"))?;
    if let Some(bias) = bias {
        op.expect(bias == [channels], || format!("the conv bias is {bias:?}, not [{channels}]"))?;
    }
    if let Some(window) = window {
        let want = [batch, channels, weight[1] - 1];
        op.expect(window == want, || format!("the window is {window:?}, not {want:?}"))?;
    }
    Ok(())
}

/// The fused Mamba decode step: zxbcdt `[batch, d_inner + conv_dim + heads]`, the conv's weight, bias and
/// window as [`conv`] for `conv_dim` channels, the per-head vectors `[heads]`, the norm weight `[d_inner]`,
/// the state `[batch, heads, head_dim, d_state]`, `groups` dividing `heads`.
pub fn mamba_step<B: Backend>(
    zxbcdt: &Tensor<B, 2>,
    weights: &MambaStepWeights<B>,
    window: &Tensor<B, 3>,
    state: &Tensor<B, 4>,
    config: &MambaStepConfig,
) -> Result<(), ShapeError> {
    let op = Op("mamba_decode_step");
    let (zxbcdt, state) = (zxbcdt.dims(), state.dims());
    let (batch, heads, conv_dim, d_inner) = (zxbcdt[0], config.heads, config.conv_dim(), config.d_inner());
    let groups = config.groups;
    op.expect(groups > 0 && heads.is_multiple_of(groups), || format!("{groups} groups do not divide {heads} heads"))?;
    let width = d_inner + conv_dim + heads;
    op.expect(zxbcdt[1] == width, || format!("zxbcdt is {zxbcdt:?}, not [{batch}, {width}] for {config:?}"))?;
    let bias = weights.conv_bias.as_ref().map(|b| b.dims());
    conv_dims(Op(op.0), [batch, 1, conv_dim], weights.conv_weight.dims(), bias, Some(window.dims()))?;
    for (name, v) in [("A_log", &weights.a_log), ("D", &weights.d), ("dt_bias", &weights.dt_bias)] {
        op.expect(v.dims() == [heads], || format!("{name} is {:?}, not [{heads}]", v.dims()))?;
    }
    let norm = weights.norm_weight.dims();
    op.expect(norm == [d_inner], || format!("the norm weight is {norm:?}, not [{d_inner}]"))?;
    let want = [batch, heads, config.head_dim, config.d_state];
    op.expect(state == want, || format!("the state is {state:?}, not {want:?}"))
}

/// A linear layer `op`: x `[rows, in]`, each weight `[out, in]` (gate and up alike), residual `[rows, out]`,
/// the pre-norm's weight `[in]`.
pub fn linear<B: Backend>(
    op: &'static str,
    x: &Tensor<B, 2>,
    weights: &[&Tensor<B, 2>],
    residual: Option<&Tensor<B, 2>>,
    norm_weight: Option<&Tensor<B, 1>>,
) -> Result<(), ShapeError> {
    let (op, x) = (Op(op), x.dims());
    let first = weights[0].dims();
    for weight in weights.iter().map(|w| w.dims()) {
        op.expect(weight[1] == x[1] && weight == first, || format!("weight is {weight:?}, x {x:?}"))?;
    }
    if let Some(residual) = residual.map(|r| r.dims()) {
        let want = [x[0], first[0]];
        op.expect(residual == want, || format!("the residual is {residual:?}, not {want:?}"))?;
    }
    if let Some(norm) = norm_weight.map(|n| n.dims()) {
        op.expect(norm == [x[1]], || format!("the norm weight is {norm:?}, not [{}]", x[1]))?;
    }
    Ok(())
}

/// RMSNorm: x `[rows, width]`, gate like x, weight `[width]`, `groups` dividing `width`.
pub fn rms_norm<B: Backend>(
    x: &Tensor<B, 2>,
    gate: Option<&Tensor<B, 2>>,
    weight: &Tensor<B, 1>,
    groups: usize,
) -> Result<(), ShapeError> {
    let (op, x, weight) = (Op("rms_norm"), x.dims(), weight.dims());
    op.expect(weight == [x[1]], || format!("weight is {weight:?}, x {x:?}"))?;
    if let Some(gate) = gate.map(|g| g.dims()) {
        op.expect(gate == x, || format!("the gate is {gate:?}, x {x:?}"))?;
    }
    op.expect(groups > 0 && x[1].is_multiple_of(groups), || format!("{groups} groups do not divide width {}", x[1]))
}

/// Attention `op`: q `[batch, heads, q_len, head_dim]`, k and v `[batch, kv_heads, keys, head_dim]` with
/// `kv_heads` dividing `heads`.
pub fn attention<B: Backend>(
    op: &'static str,
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> Result<(), ShapeError> {
    let (op, q, k, v) = (Op(op), q.dims(), k.dims(), v.dims());
    op.expect(k == v, || format!("k is {k:?}, v {v:?}"))?;
    op.expect(k[0] == q[0] && k[3] == q[3], || format!("k is {k:?}, q {q:?}"))?;
    op.expect(k[1] > 0 && q[1].is_multiple_of(k[1]), || format!("{} kv heads do not divide {} heads", k[1], q[1]))
}

/// Decode attention: as [`attention`] with one query position, `keys` within the cache's capacity and
/// `key_start` `[batch]`.
pub fn decode_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    key_start: &Tensor<B, 1>,
    keys: usize,
) -> Result<(), ShapeError> {
    let op = Op("decode_attention");
    attention(op.0, q, k, v)?;
    let (q, capacity, key_start) = (q.dims(), k.dims()[2], key_start.dims());
    op.expect(q[2] == 1, || format!("q is {q:?}: one position per sequence"))?;
    op.expect(keys <= capacity, || format!("{keys} keys past the cache's capacity {capacity}"))?;
    op.expect(key_start == [q[0]], || format!("key_start is {key_start:?}, not [{}]", q[0]))
}

/// Routed experts: x `[rows, hidden]`, the routing weights and expert ids `[rows, k]`, `gate_up`
/// `[experts, 2·width, hidden]` (relu²: `[experts, width, hidden]`), `down` `[experts, hidden, width]`.
pub fn moe_experts<B: Backend>(
    x: &Tensor<B, 2>,
    weights: &Tensor<B, 2>,
    experts: &Tensor<B, 2, Int>,
    gate_up: &Tensor<B, 3>,
    down: &Tensor<B, 3>,
    activation: ExpertActivation,
) -> Result<(), ShapeError> {
    let op = Op("moe_experts");
    let ([rows, hidden], routing, ids) = (x.dims(), weights.dims(), experts.dims());
    let (gate_up, down) = (gate_up.dims(), down.dims());
    op.expect(routing == ids && ids[0] == rows, || {
        format!("weights are {routing:?}, ids {ids:?}, x [{rows}, {hidden}]")
    })?;
    let width = down[2];
    let want = [down[0], activation.rows_per_width() * width, hidden];
    op.expect(down[1] == hidden && gate_up == want, || {
        format!("gate_up is {gate_up:?}, down {down:?}, hidden {hidden}")
    })
}

/// Top-k of router logits: `1 ≤ k ≤ columns`.
pub fn top_k<B: Backend>(logits: &Tensor<B, 2>, k: usize) -> Result<(), ShapeError> {
    let columns = logits.dims()[1];
    Op("top_k").expect((1..=columns).contains(&k), || format!("k = {k} of {columns} columns"))
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn zeros<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::zeros(shape, &Default::default())
    }

    fn ssd_inputs(heads: usize, groups: usize) -> SsdInputs<B> {
        SsdInputs {
            x: zeros([2, 3, heads, 4]),
            dt: zeros([2, 3, heads]),
            a_log: zeros([heads]),
            b: zeros([2, 3, groups, 8]),
            c: zeros([2, 3, groups, 8]),
            d: zeros([heads]),
            dt_bias: zeros([heads]),
            initial_state: Some(zeros([2, heads, 4, 8])),
        }
    }

    #[test]
    fn ssd_operands_that_fit_pass_and_each_misfit_is_named() {
        assert_eq!(ssd(&ssd_inputs(4, 2), false), Ok(()));
        let err = |inputs: SsdInputs<B>, step| ssd(&inputs, step).unwrap_err().to_string();
        assert!(err(ssd_inputs(4, 3), false).contains("3 groups do not divide 4 heads"));
        assert!(err(ssd_inputs(4, 2), true).starts_with("ssd_decode_step: a decode step takes one position"));
        let mut short_c = ssd_inputs(4, 2);
        short_c.c = zeros([2, 3, 2, 7]);
        assert!(err(short_c, false).contains("C [2, 3, 2, 7]"));
        let mut state = ssd_inputs(4, 2);
        state.initial_state = Some(zeros([2, 4, 4, 16]));
        assert!(err(state, false).contains("the state is [2, 4, 4, 16], not [2, 4, 4, 8]"));
        let mut dt_bias = ssd_inputs(4, 2);
        dt_bias.dt_bias = zeros([5]);
        assert!(err(dt_bias, false).contains("dt_bias is [5], not [4]"));
    }

    #[test]
    fn mamba_step_checks_the_projection_width_and_every_weight() {
        let config = MambaStepConfig { heads: 4, head_dim: 2, groups: 1, d_state: 8, norm_eps: 1e-6, dt_limit: None };
        let (d_inner, conv_dim) = (config.d_inner(), config.conv_dim());
        let weights = MambaStepWeights::<B> {
            conv_weight: zeros([conv_dim, 4]),
            conv_bias: Some(zeros([conv_dim])),
            a_log: zeros([4]),
            d: zeros([4]),
            dt_bias: zeros([4]),
            norm_weight: zeros([d_inner]),
        };
        let width = d_inner + conv_dim + 4;
        let (zxbcdt, window, state) = (zeros([3, width]), zeros([3, conv_dim, 3]), zeros([3, 4, 2, 8]));
        assert_eq!(mamba_step(&zxbcdt, &weights, &window, &state, &config), Ok(()));
        let message = |r: Result<(), ShapeError>| r.unwrap_err().to_string();
        assert!(message(mamba_step(&zeros([3, width - 1]), &weights, &window, &state, &config)).contains("zxbcdt is"));
        let short_window = zeros([3, conv_dim, 2]);
        assert!(message(mamba_step(&zxbcdt, &weights, &short_window, &state, &config)).contains("the window is"));
        let other_batch = zeros([2, 4, 2, 8]);
        assert!(message(mamba_step(&zxbcdt, &weights, &window, &other_batch, &config)).contains("the state is"));
        let bad_norm = MambaStepWeights { norm_weight: zeros([d_inner + 1]), ..weights };
        assert!(message(mamba_step(&zxbcdt, &bad_norm, &window, &state, &config)).contains("norm weight"));
    }

    #[test]
    fn products_norms_convs_and_attention() {
        let (x, w) = (zeros([3, 8]), zeros([5, 8]));
        assert_eq!(linear("linear_no_bias", &x, &[&w], None, None), Ok(()));
        assert!(linear("linear_no_bias", &x, &[&zeros([5, 7])], None, None).is_err());
        assert!(linear("swiglu_linear", &x, &[&w, &zeros([6, 8])], None, None).is_err());
        assert!(linear("linear_residual", &x, &[&w], Some(&zeros([3, 4])), None).is_err());
        assert!(linear("rms_norm_linear", &x, &[&w], None, Some(&zeros([7]))).is_err());
        assert_eq!(rms_norm(&x, Some(&zeros([3, 8])), &zeros([8]), 2), Ok(()));
        assert!(rms_norm(&x, None, &zeros([8]), 3).is_err());
        assert!(rms_norm(&x, Some(&zeros([3, 4])), &zeros([8]), 1).is_err());
        let (conv_x, conv_w) = (zeros([2, 5, 6]), zeros([6, 4]));
        assert_eq!(conv(&conv_x, &conv_w, Some(&zeros([6])), Some(&zeros([2, 6, 3]))), Ok(()));
        assert!(conv(&conv_x, &conv_w, None, Some(&zeros([2, 6, 4]))).is_err());
        assert!(conv(&conv_x, &zeros([7, 4]), None, None).is_err());
        let (q, kv) = (zeros([2, 8, 1, 16]), zeros([2, 2, 32, 16]));
        assert_eq!(decode_attention(&q, &kv, &kv, &zeros([2]), 20), Ok(()));
        let past = decode_attention(&q, &kv, &kv, &zeros([2]), 33).unwrap_err();
        assert_eq!(past.to_string(), "decode_attention: 33 keys past the cache's capacity 32");
        let q4 = zeros([2, 8, 4, 16]);
        assert!(attention("causal_attention", &q4, &zeros([2, 3, 4, 16]), &zeros([2, 3, 4, 16])).is_err());
        assert!(attention("causal_attention", &q4, &zeros([2, 2, 4, 16]), &zeros([2, 2, 5, 16])).is_err());
    }
}
