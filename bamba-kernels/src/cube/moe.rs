//! Routed experts for decode steps and small batches: the router's top-k (with the softmax of the
//! picked logits when the router takes one), each picked expert's first product with its activation,
//! its second product, and the weighted sum of a token's `k` outputs — four launches per MoE layer
//! where the tensor ops took about fifty, and no host round trip.
//!
//! The two products are one kernel, [`expert_gemv_kernel`]: a cube is a block of `FEATURES` output
//! features of one expert, and its units list the (token, slot) pairs routed to that expert in shared
//! memory, together (`expert_pairs`). An expert no token picked costs that listing and no weight
//! reads, and a picked expert's rows are read once per `rows` of its pairs, so decode reads only the
//! chosen experts' weights. Within a cube the loads are the GEMV's (`gemv.rs`): a row of `LANES`
//! lanes per feature on consecutive 16-byte vectors, several loads in flight per lane, f32 sums (one
//! per pair, two with SwiGLU). Every unit of a cube reads the same list, so the data-dependent loop
//! around the lanes' sums is uniform across the cube.
//!
//! Rounding follows [`crate::reference::moe::moe_experts`]: each product rounded to the dtype, SwiGLU
//! as the GEMV's epilogue (`silu(g)` rounded, times `u`) or relu² of the rounded product, each output
//! times its weight rounded; a token's `k` weighted outputs are summed in f32 and rounded once (the
//! reference adds them in the dtype, in expert order).

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::gemv::vector_size;
use super::math::{inclusive_scan, row_max, row_sum, vector_sum, wrapped_cube, wrapped_cube_count};
use super::ssd_step::{rows_are_planes, LANES};
use crate::ExpertActivation;

/// Output features per cube (rows of `LANES` lanes).
const FEATURES: usize = 8;
/// The most weight vectors a lane loads before using them.
const MAX_UNROLL: usize = 8;
/// The most pairs one pass over an expert's weight rows serves (each lane keeps an f32 accumulator
/// per pair, two with SwiGLU).
const MAX_ROWS: usize = 8;
/// Up to this many (token, slot) pairs the kernels take the routed experts. Every cube reads all the
/// ids, and past this the host-grouped products of the reference (tensor-core matmuls, one host round
/// trip) cost less: prefill.
pub const MAX_KERNEL_PAIRS: usize = 1024;
/// Units per cube of the weighted sum.
const SUM_UNITS: usize = 256;

/// What the first product's rows become before they are stored (a comptime switch).
const PLAIN: u32 = 0;
const SWIGLU: u32 = 1;
const RELU2: u32 = 2;

/// `y[p, f] = act(W[e, f, :] · x[p / pairs_per_row, :])` for every pair `p` with `ids[p] == e`, the
/// cube's expert `e` (SwiGLU: rows `f` and `out + f`). Grid: (feature blocks, experts).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn expert_gemv_kernel<F: Float, I: Int, N: Size>(
    x: &Tensor<Vector<F, N>>,
    ids: &Tensor<I>,
    w: &Tensor<Vector<F, N>>,
    y: &mut Tensor<F>,
    pairs_per_row: u32,
    #[comptime] features: usize,
    #[comptime] unroll: usize,
    #[comptime] rows: usize,
    #[comptime] activation: u32,
    #[comptime] use_plane: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let expert = CUBE_POS_Y as usize;
    let feature = CUBE_POS_X as usize * features + UNIT_POS_Y as usize;
    let out_features = y.shape(1);
    let vectors = x.shape(1) / N::value();
    let first_row = expert * w.shape(1) + feature;
    let mut smem = SharedMemory::<f32>::new(LANES * features);
    let mut list = SharedMemory::<u32>::new(MAX_KERNEL_PAIRS);
    let total = expert_pairs(ids, expert, &mut list, features, use_plane);
    let mut start = 0usize;
    while start < total {
        pass::<F, N>(
            x,
            w,
            y,
            &list,
            start,
            usize::min(total - start, rows),
            first_row * vectors,
            (first_row + out_features) * vectors,
            feature,
            vectors,
            pairs_per_row as usize,
            &mut smem,
            unroll,
            rows,
            activation,
            use_plane,
        );
        start += rows;
    }
}

/// Lists in `list` the pairs routed to `expert`, in ascending order, and returns their count (the
/// same for every unit of the cube). Each of the cube's `lane_rows × LANES` units counts the matches
/// in its own run of at most `MAX_KERNEL_PAIRS / units` ids, a scan of the counts gives each run's
/// first slot, and the runs write their matches there: a few loads per unit where one unit's scan of
/// all the ids waited out a load per id. With planes (a row of lanes is one) the scan is a plane
/// prefix sum and one exchange of the `lane_rows` plane totals; an expert no token picked is then
/// left after that one barrier.
#[cube]
fn expert_pairs<I: Int>(
    ids: &Tensor<I>,
    expert: usize,
    list: &mut SharedMemory<u32>,
    #[comptime] lane_rows: usize,
    #[comptime] use_plane: bool,
) -> usize {
    let units = lane_rows * LANES;
    let unit = UNIT_POS as usize;
    let pairs = ids.len();
    let per_unit = pairs.div_ceil(units);
    let begin = usize::min(unit * per_unit, pairs);
    let end = usize::min(begin + per_unit, pairs);
    let mut mine = 0u32;
    for p in begin..end {
        if usize::cast_from(ids[p]) == expert {
            mine += 1;
        }
    }
    let mut first = 0u32;
    let mut total = 0u32;
    if use_plane {
        let mut totals = SharedMemory::<u32>::new(lane_rows);
        let inclusive = plane_inclusive_sum(mine);
        let row = UNIT_POS_Y as usize;
        if UNIT_POS_X as usize == LANES - 1 {
            totals[row] = inclusive;
        }
        sync_cube();
        #[unroll]
        for q in 0..lane_rows {
            let count = totals[q];
            if q < row {
                first += count;
            }
            total += count;
        }
        first += inclusive - mine;
    } else {
        let mut counts = SharedMemory::<u32>::new(units);
        counts[unit] = mine;
        inclusive_scan(&mut counts, unit, units);
        first = counts[unit] - mine;
        total = counts[units - 1];
    }
    if total > 0 {
        let mut at = usize::cast_from(first);
        for p in begin..end {
            if usize::cast_from(ids[p]) == expert {
                list[at] = u32::cast_from(p);
                at += 1;
            }
        }
        sync_cube();
    }
    usize::cast_from(total)
}

/// One pass over the cube's weight rows for the `count` pairs `list[start..start + count]` (at most
/// `rows`): their products, activation and stores. Rows past `count` repeat the first pair's x
/// (computed and dropped: no branch in the loads). Each lane sums its products in one f32 per pair
/// (two with SwiGLU), not a vector of them, so eight pairs fit in registers beside the loads.
#[cube]
#[allow(clippy::too_many_arguments)]
fn pass<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    y: &mut Tensor<F>,
    list: &SharedMemory<u32>,
    start: usize,
    count: usize,
    gate_base: usize,
    up_base: usize,
    feature: usize,
    vectors: usize,
    pairs_per_row: usize,
    smem: &mut SharedMemory<f32>,
    #[comptime] unroll: usize,
    #[comptime] rows: usize,
    #[comptime] activation: u32,
    #[comptime] use_plane: bool,
) {
    let lane = UNIT_POS_X as usize;
    let out_features = y.shape(1);
    let mut x_base = Array::<usize>::new(rows);
    let mut acc = Array::<f32>::new(rows);
    // With SwiGLU, the up rows' dot products.
    let mut acc_up = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        let mut pair = usize::cast_from(list[start]);
        if r < count {
            pair = usize::cast_from(list[start + r]);
        }
        x_base[r] = pair / pairs_per_row * vectors;
        acc[r] = 0.0f32;
        acc_up[r] = 0.0f32;
    }
    if feature < out_features {
        let mut wv = Array::<Vector<F, N>>::new(unroll);
        let mut uv = Array::<Vector<F, N>>::new(unroll);
        let mut i = lane;
        while i + (unroll - 1) * LANES < vectors {
            #[unroll]
            for u in 0..unroll {
                wv[u] = w[gate_base + i + u * LANES];
                if activation == SWIGLU {
                    uv[u] = w[up_base + i + u * LANES];
                }
            }
            #[unroll]
            for u in 0..unroll {
                let wf = Vector::<f32, N>::cast_from(wv[u]);
                #[unroll]
                for r in 0..rows {
                    let xf = Vector::<f32, N>::cast_from(x[x_base[r] + i + u * LANES]);
                    acc[r] += vector_sum(wf * xf);
                    if activation == SWIGLU {
                        acc_up[r] += vector_sum(Vector::<f32, N>::cast_from(uv[u]) * xf);
                    }
                }
            }
            i += unroll * LANES;
        }
        while i < vectors {
            let wf = Vector::<f32, N>::cast_from(w[gate_base + i]);
            #[unroll]
            for r in 0..rows {
                let xf = Vector::<f32, N>::cast_from(x[x_base[r] + i]);
                acc[r] += vector_sum(wf * xf);
                if activation == SWIGLU {
                    acc_up[r] += vector_sum(Vector::<f32, N>::cast_from(w[up_base + i]) * xf);
                }
            }
            i += LANES;
        }
    }
    #[unroll]
    for r in 0..rows {
        if r < count {
            let total = row_sum(acc[r], smem, LANES, use_plane);
            let mut out = f32::cast_from(F::cast_from(total));
            if activation == SWIGLU {
                let up = f32::cast_from(F::cast_from(row_sum(acc_up[r], smem, LANES, use_plane)));
                let gate = f32::cast_from(F::cast_from(out / (1.0f32 + f32::exp(-out))));
                out = gate * up;
            }
            if activation == RELU2 {
                let positive = f32::max(out, 0.0f32);
                out = positive * positive;
            }
            if lane == 0 && feature < out_features {
                let pair = usize::cast_from(list[start + r]);
                y[pair * out_features + feature] = F::cast_from(out);
            }
        }
    }
}

/// `out[t, h] = Σ_j round(y[t·k + j, h] · round(weights[t, j]))`, the weights rounded to y's dtype,
/// the sum in f32, rounded once.
#[cube(launch_unchecked)]
fn weighted_sum_kernel<F: Float, W: Float>(
    y: &Tensor<F>,
    weights: &Tensor<W>,
    out: &mut Tensor<F>,
    #[comptime] k: usize,
    #[define(F, W)] _dtypes: [StorageType; 2],
) {
    let i = wrapped_cube() * SUM_UNITS + UNIT_POS_X as usize;
    let hidden = out.shape(1);
    if i < out.len() {
        let token = i / hidden;
        let h = i - token * hidden;
        let mut sum = 0.0f32;
        #[unroll]
        for j in 0..k {
            let pair = token * k + j;
            let weight = f32::cast_from(F::cast_from(weights[pair]));
            let weighted = f32::cast_from(y[pair * hidden + h]) * weight;
            sum += f32::cast_from(F::cast_from(weighted));
        }
        out[i] = F::cast_from(sum);
    }
}

/// Each row's `k` largest values, largest first, and their columns (the lower column first among
/// equal values, as `argmax` picks); with `softmax`, the picked values replaced by their softmax.
/// One row of `LANES` lanes per cube: round `j` takes the best value ordered after round `j - 1`'s
/// pick (by value descending, then column ascending), so no column is masked or picked twice.
#[cube(launch_unchecked)]
fn top_k_kernel<F: Float, I: Int>(
    logits: &Tensor<F>,
    values: &mut Tensor<f32>,
    columns: &mut Tensor<I>,
    infinity: f32,
    #[comptime] k: usize,
    #[comptime] softmax: bool,
    #[comptime] use_plane: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let row = wrapped_cube();
    let experts = logits.shape(1);
    if row < logits.shape(0) {
        let lane = UNIT_POS_X as usize;
        let mut smem = SharedMemory::<f32>::new(LANES);
        let last = f32::cast_from(experts);
        let mut picked = Array::<f32>::new(k);
        let mut picked_at = Array::<f32>::new(k);
        // Everything (but NaN) orders after (+inf, column -1).
        let mut prev = infinity;
        let mut prev_at = f32::new(-1.0);
        #[unroll]
        for j in 0..k {
            let mut best = -infinity;
            let mut best_at = last;
            let mut c = lane;
            while c < experts {
                let v = f32::cast_from(logits[row * experts + c]);
                let at = f32::cast_from(c);
                let after = v < prev || (v == prev && at > prev_at);
                if after && (v > best || (v == best && at < best_at)) {
                    best = v;
                    best_at = at;
                }
                c += LANES;
            }
            let top = row_max(best, &mut smem, LANES, use_plane);
            let mut candidate = -last;
            if best == top {
                candidate = -best_at;
            }
            // A row of NaNs leaves no candidate: the last column stands in (ids stay in range).
            let at = f32::min(-row_max(candidate, &mut smem, LANES, use_plane), last - 1.0f32);
            picked[j] = top;
            picked_at[j] = at;
            prev = top;
            prev_at = at;
        }
        if softmax {
            // `picked[0]` is the largest, which `softmax` subtracts.
            let top = picked[0];
            let mut total = 0.0f32;
            #[unroll]
            for j in 0..k {
                picked[j] = f32::exp(picked[j] - top);
                total += picked[j];
            }
            #[unroll]
            for j in 0..k {
                picked[j] = picked[j] / total;
            }
        }
        if lane == 0 {
            #[unroll]
            for j in 0..k {
                values[row * k + j] = picked[j];
                columns[row * k + j] = I::cast_from(picked_at[j]);
            }
        }
    }
}

/// # Shapes
/// - `x`: `[rows, hidden]`, `weights`: `[rows, k]` in any float dtype, `ids`: `[rows, k]` expert ids in an
///   int dtype (ids out of range match no cube: their outputs are unset)
/// - `gate_up`: `[experts, 2·width, hidden]` (relu²: `[experts, width, hidden]`), `down`:
///   `[experts, hidden, width]`, in x's dtype
/// - returns `[rows, hidden]` in x's dtype, contiguous
pub fn launch_experts<R: CubeRuntime>(
    x: CubeTensor<R>,
    weights: CubeTensor<R>,
    ids: CubeTensor<R>,
    gate_up: CubeTensor<R>,
    down: CubeTensor<R>,
    activation: ExpertActivation,
) -> CubeTensor<R> {
    let (x, weights, ids) = (into_contiguous(x), into_contiguous(weights), into_contiguous(ids));
    let weights_dtype = weights.dtype;
    let (gate_up, down) = (into_contiguous(gate_up), into_contiguous(down));
    let client = x.client.clone();
    let [rows, hidden] = x.meta.shape().dims::<2>();
    let k = ids.meta.shape().dims::<2>()[1];
    let [experts, projected, _] = gate_up.meta.shape().dims::<3>();
    let width = down.meta.shape().dims::<3>()[2];
    let dtype = x.dtype;
    let pairs = rows * k;
    // the kernel lists an expert's pairs in shared memory of this size
    assert!(pairs <= MAX_KERNEL_PAIRS, "moe_experts kernels take at most {MAX_KERNEL_PAIRS} pairs, got {pairs}");
    let empty =
        |shape: [usize; 2]| empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape.into(), dtype);
    let (act, out) = (empty([pairs, width]), empty([pairs, hidden]));
    let summed = empty([rows, hidden]);
    if pairs == 0 || hidden == 0 {
        return summed;
    }
    // A token's k experts are distinct, so one token's pairs never share a pass.
    let pass_rows = rows.clamp(1, MAX_ROWS);
    let use_plane = rows_are_planes(&client);
    let first = match activation {
        ExpertActivation::SwiGlu => SWIGLU,
        ExpertActivation::Relu2 => RELU2,
    };
    debug_assert_eq!(projected, if first == SWIGLU { 2 * width } else { width });
    let product =
        |input: &CubeTensor<R>, weight: &CubeTensor<R>, output: &CubeTensor<R>, per_row: usize, activation: u32| {
            let [_, out_features] = output.meta.shape().dims::<2>();
            let inner = input.meta.shape().dims::<2>()[1];
            let vector = vector_size(&client, dtype.size(), inner);
            let unroll = (inner / vector / LANES).clamp(1, MAX_UNROLL);
            let count = CubeCount::Static(out_features.div_ceil(FEATURES) as u32, experts as u32, 1);
            // SAFETY: x/act, the weights and the output are contiguous with `inner` a multiple of the
            // vector size. A pair's input row is below `rows` (pair / per_row) or `pairs` (the pair), each
            // read below `inner`; weight rows `e · projected + f` (and `+ out_features` with SwiGLU,
            // where projected = 2 · out_features) for f < out_features are within the expert; outputs
            // are written at a pair below `pairs` and a feature below `out_features`.
            unsafe {
                expert_gemv_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    CubeDim::new_2d(LANES as u32, FEATURES as u32),
                    vector,
                    input.clone().into_tensor_arg(),
                    ids.clone().into_tensor_arg(),
                    weight.clone().into_tensor_arg(),
                    output.clone().into_tensor_arg(),
                    per_row as u32,
                    FEATURES,
                    unroll,
                    pass_rows,
                    activation,
                    use_plane,
                    [dtype.into(), ids.dtype.into()],
                );
            }
        };
    product(&x, &gate_up, &act, k, first);
    product(&act, &down, &out, 1, PLAIN);
    let elements = rows * hidden;
    // SAFETY: `out` is `[pairs, hidden]`, `weights` `[rows, k]` and `summed` `[rows, hidden]`, all
    // contiguous; units touch element `i < rows · hidden`, reading pairs `token · k + j < pairs`.
    unsafe {
        weighted_sum_kernel::launch_unchecked::<R>(
            &client,
            wrapped_cube_count(elements.div_ceil(SUM_UNITS)),
            CubeDim::new_1d(SUM_UNITS as u32),
            out.into_tensor_arg(),
            weights.into_tensor_arg(),
            summed.clone().into_tensor_arg(),
            k,
            [dtype.into(), weights_dtype.into()],
        );
    }
    summed
}

/// # Shapes
/// - `logits`: `[rows, columns]` in a float dtype with `1 ≤ k ≤ columns`
/// - returns `[rows, k]` f32 values and `[rows, k]` column ids in `int_dtype`, contiguous
pub fn launch_top_k<R: CubeRuntime>(
    logits: CubeTensor<R>,
    k: usize,
    softmax: bool,
    int_dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let logits = into_contiguous(logits);
    let (client, dtype) = (logits.client.clone(), logits.dtype);
    let [rows, columns] = logits.meta.shape().dims::<2>();
    assert!((1..=columns).contains(&k), "top_k: k = {k} of {columns} columns");
    let empty = |dtype| empty_device_contiguous_dtype(client.clone(), logits.device.clone(), [rows, k].into(), dtype);
    let (values, ids) = (empty(DType::F32), empty(int_dtype));
    if rows == 0 {
        return (values, ids);
    }
    // SAFETY: logits are contiguous `[rows, columns]`, read at `row · columns + c` for `row < rows`,
    // `c < columns`; values and ids are contiguous `[rows, k]`, written at `row · k + j`, `j < k`.
    unsafe {
        top_k_kernel::launch_unchecked::<R>(
            &client,
            wrapped_cube_count(rows),
            CubeDim::new_1d(LANES as u32),
            logits.into_tensor_arg(),
            values.clone().into_tensor_arg(),
            ids.clone().into_tensor_arg(),
            f32::INFINITY,
            k,
            softmax,
            rows_are_planes(&client),
            [dtype.into(), int_dtype.into()],
        );
    }
    (values, ids)
}
