//! Routed experts of a mixture-of-experts feed-forward (Granite 4.0-H's SwiGLU experts, Nemotron-H's
//! relu² ones) and the router's top-k, as Burn tensor ops. [`moe_experts`] groups tokens per expert
//! on the host, runs each expert on its own tokens and adds the weighted outputs back in expert order
//! (transformers' `index_add_` loop); [`top_k`] picks on the device.

use burn::tensor::activation::silu;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::BambaOps;

/// What an expert computes between its two products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertActivation {
    /// `silu(g) · u` with `[g | u]` the first product's two halves (Granite): its weight is
    /// `[experts, 2·width, hidden]`.
    SwiGlu,
    /// `relu(u)²` (Nemotron-H): the first weight is `[experts, width, hidden]`.
    Relu2,
}

impl ExpertActivation {
    /// Rows of the first product per unit of width.
    pub(crate) fn rows_per_width(self) -> usize {
        match self {
            ExpertActivation::SwiGlu => 2,
            ExpertActivation::Relu2 => 1,
        }
    }

    /// The activation of the first product's output, its last dim `rows_per_width · width` wide.
    ///
    /// # Shapes
    /// - `projected`: `[..., rows_per_width · width]` → `[..., width]`
    pub fn apply<B: BambaOps, const D: usize>(self, projected: Tensor<B, D>, width: usize) -> Tensor<B, D> {
        match self {
            ExpertActivation::SwiGlu => {
                silu(projected.clone().narrow(D - 1, 0, width)) * projected.narrow(D - 1, width, width)
            }
            ExpertActivation::Relu2 => {
                let r = projected.clamp_min(0.0);
                r.clone() * r
            }
        }
    }
}

/// `out[t] = Σ_j weights[t, j] · down[e] · act(gate_up[e] · x[t])` with `e = experts[t, j]` and `act`
/// the [`ExpertActivation`] (SwiGLU: `silu(g) · u` of the two halves; relu²): each expert over the
/// tokens routed to it, its products the backend's
/// [`BambaOps::linear_no_bias`], the weighting and the sum in `x`'s dtype. Reads the routing to the
/// host (one sync per call). Expert ids must be below `gate_up`'s first dim.
///
/// # Shapes
/// - `x`: `[rows, hidden]`; `weights`: `[rows, k]` in any float dtype (rounded to x's); `experts`: `[rows, k]`
/// - `gate_up`: `[experts, 2·width, hidden]` (rows `[gate | up]`; relu²: `[experts, width, hidden]`);
///   `down`: `[experts, hidden, width]`
/// - returns `[rows, hidden]` in x's dtype
pub fn moe_experts<B: BambaOps>(
    x: Tensor<B, 2>,
    weights: Tensor<B, 2>,
    experts: Tensor<B, 2, Int>,
    gate_up: Tensor<B, 3>,
    down: Tensor<B, 3>,
    activation: ExpertActivation,
) -> Tensor<B, 2> {
    let ([rows, hidden], [count, projected_width, _], k) = (x.dims(), gate_up.dims(), experts.dims()[1]);
    let width = projected_width / activation.rows_per_width();
    let device = x.device();
    let routing: Vec<i64> = experts.into_data().convert::<i64>().to_vec().expect("int routing");
    // Per expert: the (token, slot) pairs routed to it, tokens ascending.
    let mut routed: Vec<Vec<(i64, i64)>> = vec![Vec::new(); count];
    for (flat, &e) in routing.iter().enumerate() {
        let e = usize::try_from(e).ok().filter(|&e| e < count).expect("expert id in range");
        routed[e].push(((flat / k) as i64, flat as i64));
    }
    let flat_weights = weights.cast(x.dtype()).reshape([rows * k]);
    let mut out = Tensor::<B, 2>::zeros([rows, hidden], (&device, x.dtype()));
    for (e, pairs) in routed.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        let n = pairs.len();
        let index = |values: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(values, [n]), &device);
        let tokens = index(pairs.iter().map(|p| p.0).collect());
        let slots = index(pairs.iter().map(|p| p.1).collect());
        let gate_up_e = gate_up.clone().narrow(0, e, 1).reshape([projected_width, hidden]);
        let down_e = down.clone().narrow(0, e, 1).reshape([hidden, width]);
        let projected = B::linear_no_bias(x.clone().select(0, tokens.clone()), gate_up_e);
        let act = activation.apply(projected, width);
        // Expanded to the full shape before the product: Burn 0.21's fusion backend mis-broadcasts
        // the `[n, 1]` result of a select inside a fused product (wrong values on wgpu).
        let scale = flat_weights.clone().select(0, slots).reshape([n, 1]).expand([n, hidden]);
        let y = B::linear_no_bias(act, down_e) * scale;
        out = out.select_assign(0, tokens, y, IndexingUpdateOp::Add);
    }
    out
}

/// The `k` largest values of each row, largest first (the lower column first among equal values),
/// and their columns, by `k` rounds of argmax and masking: all device ops. With `softmax`, the picked
/// values are replaced by their softmax (Granite's router). Burn 0.21's `topk` sorts, and its GPU
/// backends sort by reading the tensor back to the host, a round trip per MoE layer; `k` is at most a
/// few tens here.
///
/// # Shapes
/// - `logits`: `[rows, columns]` in any float dtype → `[rows, k]` f32 and `[rows, k]` column ids
pub fn top_k<B: BambaOps>(logits: Tensor<B, 2>, k: usize, softmax: bool) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let [rows, columns] = logits.dims();
    let logits = logits.cast(DType::F32);
    let all =
        Tensor::<B, 1, Int>::arange(0..columns as i64, &logits.device()).reshape([1, columns]).expand([rows, columns]);
    let mut rest = logits;
    let (mut values, mut ids) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for _ in 0..k {
        let id = rest.clone().argmax(1); // [rows, 1], the first of equal maxima
        values.push(rest.clone().gather(1, id.clone()));
        rest = rest.mask_fill(all.clone().equal(id.clone().expand([rows, columns])), f32::NEG_INFINITY);
        ids.push(id);
    }
    let values = Tensor::cat(values, 1);
    (if softmax { burn::tensor::activation::softmax(values, 1) } else { values }, Tensor::cat(ids, 1))
}
