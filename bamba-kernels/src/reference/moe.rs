//! Routed experts of a mixture-of-experts feed-forward (Granite 4.0-H), as Burn tensor ops: tokens
//! are grouped per expert on the host, each expert runs on its own tokens only, and the weighted
//! outputs are added back in expert order (transformers' `index_add_` loop).

use burn::tensor::activation::silu;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::BambaOps;

/// `out[t] = Σ_j weights[t, j] · down[e] · (silu(g) · u)` with `[g | u] = gate_up[e] · x[t]` and
/// `e = experts[t, j]`: each expert's SwiGLU over the tokens routed to it, its products the backend's
/// [`BambaOps::linear_no_bias`], the weighting and the sum in `x`'s dtype. Reads the routing to the
/// host (one sync per call). Expert ids must be below `gate_up`'s first dim.
///
/// # Shapes
/// - `x`: `[rows, hidden]`; `weights`: `[rows, k]` in x's dtype; `experts`: `[rows, k]`
/// - `gate_up`: `[experts, 2·width, hidden]` (rows `[gate | up]`); `down`: `[experts, hidden, width]`
/// - returns `[rows, hidden]` in x's dtype
pub fn moe_experts<B: BambaOps>(
    x: Tensor<B, 2>,
    weights: Tensor<B, 2>,
    experts: Tensor<B, 2, Int>,
    gate_up: Tensor<B, 3>,
    down: Tensor<B, 3>,
) -> Tensor<B, 2> {
    let [rows, hidden] = x.dims();
    let [count, double_width, _] = gate_up.dims();
    let width = double_width / 2;
    let k = experts.dims()[1];
    let device = x.device();
    let routing: Vec<i64> = experts.into_data().convert::<i64>().to_vec().expect("int routing");
    // Per expert: the (token, slot) pairs routed to it, tokens ascending.
    let mut routed: Vec<Vec<(i64, i64)>> = vec![Vec::new(); count];
    for (flat, &e) in routing.iter().enumerate() {
        let e = usize::try_from(e).ok().filter(|&e| e < count).expect("expert id in range");
        routed[e].push(((flat / k) as i64, flat as i64));
    }
    let flat_weights = weights.reshape([rows * k]);
    let mut out = Tensor::<B, 2>::zeros([rows, hidden], (&device, x.dtype()));
    for (e, pairs) in routed.iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        let n = pairs.len();
        let index = |values: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(values, [n]), &device);
        let tokens = index(pairs.iter().map(|p| p.0).collect());
        let slots = index(pairs.iter().map(|p| p.1).collect());
        let gate_up_e = gate_up.clone().narrow(0, e, 1).reshape([double_width, hidden]);
        let down_e = down.clone().narrow(0, e, 1).reshape([hidden, width]);
        let projected = B::linear_no_bias(x.clone().select(0, tokens.clone()), gate_up_e);
        let act = silu(projected.clone().narrow(1, 0, width)) * projected.narrow(1, width, width);
        // Expanded to the full shape before the product: Burn 0.21's fusion backend mis-broadcasts
        // the `[n, 1]` result of a select inside a fused product (wrong values on wgpu).
        let scale = flat_weights.clone().select(0, slots).reshape([n, 1]).expand([n, hidden]);
        let y = B::linear_no_bias(act, down_e) * scale;
        out = out.select_assign(0, tokens, y, IndexingUpdateOp::Add);
    }
    out
}
