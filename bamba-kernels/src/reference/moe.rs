//! Routed experts of a mixture-of-experts feed-forward (Granite 4.0-H's SwiGLU experts, Nemotron-H's
//! relu² ones), as Burn tensor ops, in two
//! forms: [`moe_experts`] groups tokens per expert on the host, runs each expert on its own tokens
//! and adds the weighted outputs back in expert order (transformers' `index_add_` loop);
//! [`moe_experts_gathered`] copies each (token, slot)'s expert weights into one batch on the device
//! and never reads the routing back, for the few rows of a decode step on a GPU, where a host round
//! trip per layer costs more than the copy.

use burn::tensor::activation::silu;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

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
    fn rows_per_width(self) -> usize {
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

/// The sizes both forms read off their arguments.
struct Sizes {
    rows: usize,
    hidden: usize,
    experts: usize,
    width: usize,
    k: usize,
}

impl Sizes {
    fn of<B: BambaOps>(
        x: &Tensor<B, 2>,
        experts: &Tensor<B, 2, Int>,
        gate_up: &Tensor<B, 3>,
        activation: ExpertActivation,
    ) -> Self {
        let ([rows, hidden], [count, projected, _]) = (x.dims(), gate_up.dims());
        Sizes { rows, hidden, experts: count, width: projected / activation.rows_per_width(), k: experts.dims()[1] }
    }
}

/// `out[t] = Σ_j weights[t, j] · down[e] · act(gate_up[e] · x[t])` with `e = experts[t, j]` and `act`
/// the [`ExpertActivation`] (SwiGLU: `silu(g) · u` of the two halves; relu²): each expert over the
/// tokens routed to it, its products the backend's
/// [`BambaOps::linear_no_bias`], the weighting and the sum in `x`'s dtype. Reads the routing to the
/// host (one sync per call). Expert ids must be below `gate_up`'s first dim.
///
/// # Shapes
/// - `x`: `[rows, hidden]`; `weights`: `[rows, k]` in x's dtype; `experts`: `[rows, k]`
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
    let Sizes { rows, hidden, experts: count, width, k } = Sizes::of(&x, &experts, &gate_up, activation);
    let projected_width = activation.rows_per_width() * width;
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

/// Up to this many (token, slot) pairs, GPU backends run [`moe_experts_gathered`]: it moves each picked
/// expert's weights three times (read, write, read) but needs no host round trip, which at a decode
/// step's few rows is the larger cost. Above it the copies would outgrow the weights themselves.
pub const GATHERED_PAIRS: usize = 32;

/// [`moe_experts`] without reading the routing back: the picked experts' weights are gathered on the
/// device into `[rows · k, …]` batches and multiplied by each token in one batched product per
/// projection; the `k` weighted outputs of a token are summed in slot order. Same arguments and result
/// (up to the order of that sum).
///
/// # Shapes
/// - as [`moe_experts`]
pub fn moe_experts_gathered<B: BambaOps>(
    x: Tensor<B, 2>,
    weights: Tensor<B, 2>,
    experts: Tensor<B, 2, Int>,
    gate_up: Tensor<B, 3>,
    down: Tensor<B, 3>,
    activation: ExpertActivation,
) -> Tensor<B, 2> {
    let Sizes { rows, hidden, width, k, .. } = Sizes::of(&x, &experts, &gate_up, activation);
    let pairs = rows * k;
    let ids = experts.reshape([pairs]);
    let projected_width = activation.rows_per_width() * width;
    // Each pair's expert weights as stored (`[out, in]`), times the token as a column: no transposed
    // weight views. (Burn 0.21's fusion backend computed the relu² experts wrong on wgpu when both
    // gathered weights were multiplied through `swap_dims` views.)
    let gate_up = gate_up.select(0, ids.clone()); // [pairs, 2·width or width, hidden]
    let down = down.select(0, ids); // [pairs, hidden, width]
    let xs = x.unsqueeze_dim::<3>(1).expand([rows, k, hidden]).reshape([pairs, hidden, 1]);
    let projected = gate_up.matmul(xs).reshape([pairs, 1, projected_width]);
    let act = activation.apply(projected, width).reshape([pairs, width, 1]);
    let y = down.matmul(act).reshape([rows, k, hidden]);
    // Expanded before the product, as in `moe_experts`.
    let scale = weights.reshape([rows, k, 1]).expand([rows, k, hidden]);
    (y * scale).sum_dim(1).reshape([rows, hidden])
}

/// The GPU backends' choice between the two forms: [`moe_experts_gathered`] up to [`GATHERED_PAIRS`]
/// (token, slot) pairs, else [`moe_experts`].
///
/// # Shapes
/// - as [`moe_experts`]
pub fn moe_experts_on_device<B: BambaOps>(
    x: Tensor<B, 2>,
    weights: Tensor<B, 2>,
    experts: Tensor<B, 2, Int>,
    gate_up: Tensor<B, 3>,
    down: Tensor<B, 3>,
    activation: ExpertActivation,
) -> Tensor<B, 2> {
    let [rows, k] = experts.dims();
    if rows * k <= GATHERED_PAIRS {
        moe_experts_gathered(x, weights, experts, gate_up, down, activation)
    } else {
        moe_experts(x, weights, experts, gate_up, down, activation)
    }
}
