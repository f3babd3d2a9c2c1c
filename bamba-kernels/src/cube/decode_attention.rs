//! Decode attention over a preallocated KV cache, flash-decoding style: one new query per sequence,
//! grouped-query heads, in two launches.
//!
//! 1. **Split**: the filled keys of every (sequence, KV head) are cut into splits; a *group* of
//!    `group` lanes owns one split and walks its keys one row at a time, each lane holding a slice of
//!    `head_dim` as wide vectors, so a group reads a K or V row as one coalesced run. The `rep` query
//!    heads that share the KV head are scored together: every K and V row is read once for all of
//!    them. The dot products end in a butterfly of `log2(group)` shuffles inside the group; softmax is
//!    online (running max and sum in f32). Each split writes its partial output and its (max, sum).
//! 2. **Combine**: one cube per (sequence, query head) rescales the partials to the global max and
//!    sums them, its units sharing the splits.
//!
//! Only the filled keys are read (the grid follows `keys`; the launch shape changes per step, the
//! compiled kernel does not), unlike Burn's matmul path, which reads the whole capacity to keep its
//! shapes fixed. Every lane of a cube runs the same number of iterations: keys outside a split's
//! valid range are loaded from an in-bounds row and scored as `-1e30`, so the shuffles never diverge.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Units per cube of the split kernel.
const CUBE_UNITS: usize = 128;
/// Units per cube of the combine kernel (a power of two: its max is a tree over them).
const COMBINE_UNITS: usize = 256;
/// Keys a group loads before using them (loads in flight per lane).
const UNROLL: usize = 4;
/// Upper bound on the number of splits of one launch: enough groups to fill an H200 many times
/// over, while the partials (`rep · head_dim` f32 per split) stay small next to the keys read.
const TARGET_SPLITS: usize = 8192;
/// The fewest keys a split gets, so that writing its partial costs little next to reading its keys.
const MIN_SPLIT_KEYS: usize = 16;
/// Score of a key outside the valid range; finite so that an all-masked split computes no NaN
/// (its max stays at this value and the combine weighs it `exp(-1e30 - max) = 0`).
const MASKED: f32 = -1e30;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn split_kernel<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    key_start: &Tensor<f32>,
    partial: &mut Tensor<Vector<f32, N>>,
    stats: &mut Tensor<f32>,
    keys: u32,
    split_keys: u32,
    scale: f32,
    #[comptime] rep: usize,
    #[comptime] group: usize,
    #[comptime] levels: usize,
    #[comptime] per_lane: usize,
    #[comptime] unroll: usize,
    #[define(F)] _dtype: StorageType,
) {
    let batch = k.shape(0);
    let kv_heads = k.shape(1);
    let capacity = k.shape(2);
    let row_vectors = group * per_lane;
    let splits = (keys as usize).div_ceil(split_keys as usize);
    let total = batch * kv_heads * splits;
    let unit = UNIT_POS as usize;
    let lane = unit % group;
    let split_id = CUBE_POS_X as usize * (CUBE_UNITS / group) + unit / group;
    // Groups past the last split compute on split `total - 1` and write nothing.
    let active = split_id < total;
    let id = min(split_id, total - 1);
    let (bh, split) = (id / splits, id % splits);
    let b = bh / kv_heads;
    let first = split * split_keys as usize;
    let lo = max(u32::cast_from(key_start[b]) as usize, first);
    let hi = min(keys as usize, first + split_keys as usize);

    let mut qv = Array::<Vector<f32, N>>::new(rep * per_lane);
    let mut acc = Array::<Vector<f32, N>>::new(rep * per_lane);
    let mut run_max = Array::<f32>::new(rep);
    let mut run_sum = Array::<f32>::new(rep);
    #[unroll]
    for r in 0..rep {
        // Query head (KV head h) · rep + r reads KV head h.
        let q_row = (bh * rep + r) * row_vectors;
        #[unroll]
        for i in 0..per_lane {
            qv[r * per_lane + i] = Vector::<f32, N>::cast_from(q[q_row + lane + i * group]) * Vector::new(scale);
            acc[r * per_lane + i] = Vector::new(0.0f32);
        }
        run_max[r] = MASKED;
        run_sum[r] = 0.0f32;
    }

    // Rows as loaded (16-bit stays 16-bit in registers until used: fewer registers, more groups per SM).
    let mut kv = Array::<Vector<F, N>>::new(unroll * per_lane);
    let mut vv = Array::<Vector<F, N>>::new(unroll * per_lane);
    let mut score = Array::<f32>::new(unroll * rep);
    let mut t = 0usize;
    while t < split_keys as usize {
        // All loads first: unroll rows of K and V in flight per lane.
        #[unroll]
        for u in 0..unroll {
            let key = first + t + u;
            let row = (bh * capacity + min(key, capacity - 1)) * row_vectors;
            #[unroll]
            for i in 0..per_lane {
                kv[u * per_lane + i] = k[row + lane + i * group];
                vv[u * per_lane + i] = v[row + lane + i * group];
            }
        }
        #[unroll]
        for u in 0..unroll {
            let key = first + t + u;
            #[unroll]
            for r in 0..rep {
                let mut dot = 0.0f32;
                #[unroll]
                for i in 0..per_lane {
                    let prod = qv[r * per_lane + i] * Vector::<f32, N>::cast_from(kv[u * per_lane + i]);
                    #[unroll]
                    for e in 0..N::value() {
                        dot += prod[e];
                    }
                }
                // Butterfly over the group's lanes (aligned, so it never crosses groups).
                let mut mask = 1u32;
                #[unroll]
                for _ in 0..levels {
                    dot += plane_shuffle_xor(dot, mask);
                    mask *= 2;
                }
                score[u * rep + r] = select(key >= lo && key < hi, dot, MASKED);
            }
        }
        #[unroll]
        for r in 0..rep {
            let mut new_max = run_max[r];
            #[unroll]
            for u in 0..unroll {
                new_max = max(new_max, score[u * rep + r]);
            }
            let correction = f32::exp(run_max[r] - new_max);
            run_sum[r] *= correction;
            #[unroll]
            for i in 0..per_lane {
                acc[r * per_lane + i] *= Vector::new(correction);
            }
            #[unroll]
            for u in 0..unroll {
                let p = f32::exp(score[u * rep + r] - new_max);
                run_sum[r] += p;
                #[unroll]
                for i in 0..per_lane {
                    acc[r * per_lane + i] += Vector::<f32, N>::cast_from(vv[u * per_lane + i]) * Vector::new(p);
                }
            }
            run_max[r] = new_max;
        }
        t += unroll;
    }

    if active {
        #[unroll]
        for r in 0..rep {
            let slot = id * rep + r;
            #[unroll]
            for i in 0..per_lane {
                partial[slot * row_vectors + lane + i * group] = acc[r * per_lane + i];
            }
            if lane == 0 {
                stats[slot * 2] = run_max[r];
                stats[slot * 2 + 1] = run_sum[r];
            }
        }
    }
}

#[cube(launch_unchecked)]
fn combine_kernel<F: Float, N: Size>(
    partial: &Tensor<Vector<f32, N>>,
    stats: &Tensor<f32>,
    out: &mut Tensor<Vector<F, N>>,
    splits: u32,
    #[comptime] rep: usize,
    #[define(F)] _dtype: StorageType,
) {
    // One cube per (sequence, query head). Its units share the head's splits: with one unit per
    // output vector walking all of them in turn, the combine's loads would wait on one another,
    // split after split, and the combine would slow down the more splits a launch had.
    let query_head = CUBE_POS_X as usize;
    let row_vectors = out.shape(out.rank() - 1) / N::value();
    let (bh, r) = (query_head / rep, query_head % rep);
    let splits = splits as usize;
    let unit = UNIT_POS as usize;
    let first_slot = bh * splits * rep + r;
    // 1. The global max: every unit over a stride of the splits, then a tree in shared memory.
    let mut red = SharedMemory::<f32>::new(COMBINE_UNITS);
    // (split 0 always exists)
    let mut most = stats[first_slot * 2];
    let mut s = unit;
    while s < splits {
        most = max(most, stats[(first_slot + s * rep) * 2]);
        s += COMBINE_UNITS;
    }
    red[unit] = most;
    sync_cube();
    // (COMBINE_UNITS read as CUBE_DIM: a loop variable cannot start from a compile-time constant)
    let mut half = CUBE_DIM as usize / 2;
    while half > 0 {
        if unit < half {
            red[unit] = max(red[unit], red[unit + half]);
        }
        sync_cube();
        half /= 2;
    }
    let global = red[0];
    // 2. The weighted sums: `cols` output vectors at a time, each summed over the splits by `ways`
    //    units (split `way`, `way + ways`, ...), whose partial sums then meet in shared memory.
    let cols = min(row_vectors, COMBINE_UNITS);
    let ways = COMBINE_UNITS / cols;
    let (way, col) = (unit / cols, unit % cols);
    let mut sums = SharedMemory::<Vector<f32, N>>::new(COMBINE_UNITS);
    let mut totals = SharedMemory::<f32>::new(COMBINE_UNITS);
    let mut j0 = 0usize;
    while j0 < row_vectors {
        let j = j0 + col;
        let mut total = 0.0f32;
        let mut acc = Vector::<f32, N>::new(0.0f32);
        if way < ways && j < row_vectors {
            let mut s = way;
            while s < splits {
                let slot = first_slot + s * rep;
                let weight = f32::exp(stats[slot * 2] - global);
                total += stats[slot * 2 + 1] * weight;
                acc += partial[slot * row_vectors + j] * Vector::new(weight);
                s += ways;
            }
        }
        sums[unit] = acc;
        totals[unit] = total;
        sync_cube();
        if way == 0 && j < row_vectors {
            for w in 1..ways {
                acc += sums[w * cols + col];
                total += totals[w * cols + col];
            }
            out[query_head * row_vectors + j] = Vector::<F, N>::cast_from(acc / Vector::new(total));
        }
        sync_cube();
        j0 += cols;
    }
}

/// Lanes per key row: the widest power of two up to 16 that divides `head_dim` and fits in a plane
/// (1, no shuffles, when the device has no plane operations).
fn group_size<R: CubeRuntime>(client: &ComputeClient<R>, head_dim: usize) -> usize {
    let hw = &client.properties().hardware;
    let planes = client.features().plane.contains(cubecl::features::Plane::Ops);
    let widest = if planes { (hw.plane_size_min as usize).min(16) } else { 1 };
    (0..=4).map(|p| 1usize << p).filter(|&g| g <= widest && head_dim.is_multiple_of(g)).max().unwrap_or(1)
}

/// # Shapes
/// - `q`: `[batch, heads, 1, head_dim]`, `k`, `v`: `[batch, kv_heads, capacity, head_dim]`, one float
///   dtype; `key_start`: `[batch]` f32; `keys ≤ capacity`
/// - returns `[batch, heads, 1, head_dim]` in q's dtype, contiguous
pub fn launch<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    key_start: CubeTensor<R>,
    keys: usize,
) -> CubeTensor<R> {
    let (q, k, v, key_start) = (into_contiguous(q), into_contiguous(k), into_contiguous(v), into_contiguous(key_start));
    let client = q.client.clone();
    let [batch, heads, _, head_dim] = q.meta.shape().dims::<4>();
    let kv_heads = k.meta.shape().dims::<4>()[1];
    let rep = heads / kv_heads;
    let dtype = q.dtype;
    let group = group_size(&client, head_dim);
    let per_group = head_dim / group;
    let vector = client
        .io_optimized_vector_sizes(dtype.size())
        .filter(|&n| n * dtype.size() <= 16 && per_group % n == 0)
        .max()
        .unwrap_or(1);
    let per_lane = per_group / vector;
    // Splits of a multiple of `unroll` keys: about `target` in all, at least MIN_SPLIT_KEYS each.
    let (target, unroll) = (TARGET_SPLITS, UNROLL);
    let work = batch * kv_heads * keys;
    let split_keys = work.div_ceil(target).max(MIN_SPLIT_KEYS).min(keys.max(1)).next_multiple_of(unroll);
    let splits = keys.div_ceil(split_keys);
    let slots = batch * kv_heads * splits * rep;
    let device = q.device.clone();
    let partial = empty_device_contiguous_dtype(client.clone(), device.clone(), [slots, head_dim].into(), DType::F32);
    let stats = empty_device_contiguous_dtype(client.clone(), device.clone(), [slots, 2].into(), DType::F32);
    let out = empty_device_contiguous_dtype(client.clone(), device, q.meta.shape().clone(), dtype);
    let cubes = (batch * kv_heads * splits).div_ceil(CUBE_UNITS / group);
    let scale = (head_dim as f32).powf(-0.5);
    // SAFETY: all tensors are contiguous with head_dim a multiple of group · vector; K/V rows are
    // clamped below capacity; split ids are clamped below the split count and only active groups
    // write; the combine reads the `splits` partials of its head that the split kernel wrote.
    unsafe {
        split_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_1d(CUBE_UNITS as u32),
            vector,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            key_start.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            keys as u32,
            split_keys as u32,
            scale,
            rep,
            group,
            group.trailing_zeros() as usize,
            per_lane,
            unroll,
            dtype.into(),
        );
        combine_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static((batch * heads) as u32, 1, 1),
            CubeDim::new_1d(COMBINE_UNITS as u32),
            vector,
            partial.into_tensor_arg(),
            stats.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            splits as u32,
            rep,
            dtype.into(),
        );
    }
    out
}
