//! Device helpers shared by the kernels: dt discretization, a sum or maximum across the lanes of a
//! row, the sum of a vector's elements, and the cube grid that wraps past wgpu's per-dimension limit.

use cubecl::prelude::*;

/// Cubes along x before a grid wraps to y (wgpu's limit per dimension).
const MAX_CUBES_X: usize = 65_535;

/// A grid of `cubes` cubes, wrapped to a second dimension past [`MAX_CUBES_X`]; kernels launched on
/// it number their cube with [`wrapped_cube`] (cubes past `cubes` in the last row must check bounds).
pub fn wrapped_cube_count(cubes: usize) -> CubeCount {
    CubeCount::Static(cubes.min(MAX_CUBES_X) as u32, cubes.div_ceil(MAX_CUBES_X) as u32, 1)
}

/// This cube's index in a grid made by [`wrapped_cube_count`].
#[cube]
pub fn wrapped_cube() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// `clamp(softplus(raw + bias), lo, hi)` in f32, softplus in the overflow-free form of the reference.
#[cube]
pub fn discretize_dt(raw: f32, bias: f32, lo: f32, hi: f32, #[comptime] has_limit: bool) -> f32 {
    let v = raw + bias;
    let mut dt = f32::max(v, 0.0f32) + f32::log1p(f32::exp(-f32::abs(v)));
    if has_limit {
        dt = f32::min(f32::max(dt, lo), hi);
    }
    dt
}

/// Sum of `part` over every unit of a `lanes × rows` cube, returned to every unit: a [`row_sum`] per
/// row of lanes, then across the rows through shared memory. Every unit must call it (it
/// synchronizes the cube, and again before returning so that it can be called in a loop).
#[cube]
pub fn cube_sum(
    part: f32,
    smem: &mut SharedMemory<f32>,
    partials: &mut SharedMemory<f32>,
    #[comptime] lanes: usize,
    #[comptime] rows: usize,
    #[comptime] use_plane: bool,
) -> f32 {
    let row_total = row_sum(part, smem, lanes, use_plane);
    if UNIT_POS_X == 0 {
        partials[UNIT_POS_Y as usize] = row_total;
    }
    sync_cube();
    let mut total = 0.0f32;
    #[unroll]
    for r in 0..rows {
        total += partials[r];
    }
    sync_cube();
    total
}

/// Sum of `part` over the `lanes` units of row `UNIT_POS_Y` (the cube is `lanes × rows`), returned
/// to every lane. With `use_plane`, a row is exactly one plane and the plane sum does it; otherwise
/// a shared-memory tree. Every unit of the cube must call it (it synchronizes the cube).
#[cube]
pub fn row_sum(part: f32, smem: &mut SharedMemory<f32>, #[comptime] lanes: usize, #[comptime] use_plane: bool) -> f32 {
    row_reduce(part, smem, lanes, use_plane, false)
}

/// [`row_sum`] with the maximum instead of the sum.
#[cube]
pub fn row_max(part: f32, smem: &mut SharedMemory<f32>, #[comptime] lanes: usize, #[comptime] use_plane: bool) -> f32 {
    row_reduce(part, smem, lanes, use_plane, true)
}

/// Turns `scan[0..units]` into its inclusive prefix sums in place, once every unit `unit < units` of
/// the cube has written its own `scan[unit]` (Hillis–Steele: one step per power of two, two barriers
/// each). Every unit of the cube calls it.
#[cube]
pub fn inclusive_scan<T: Numeric>(scan: &mut SharedMemory<T>, unit: usize, #[comptime] units: usize) {
    sync_cube();
    // (a runtime counter: a variable initialised from a comptime value could not be mutated)
    let mut offset = 1usize;
    while offset < units {
        let mut add = T::from_int(0);
        if unit >= offset {
            add = scan[unit - offset];
        }
        sync_cube();
        scan[unit] += add;
        sync_cube();
        offset *= 2;
    }
}

#[cube]
#[allow(unused_assignments)]
fn row_reduce(
    part: f32,
    smem: &mut SharedMemory<f32>,
    #[comptime] lanes: usize,
    #[comptime] use_plane: bool,
    #[comptime] max: bool,
) -> f32 {
    let mut total = 0.0f32;
    if use_plane {
        if max {
            total = plane_max(part);
        } else {
            total = plane_sum(part);
        }
    } else {
        let lane = UNIT_POS_X as usize;
        let base = UNIT_POS_Y as usize * lanes;
        smem[base + lane] = part;
        sync_cube();
        // (a runtime counter: a variable initialised from a comptime value could not be mutated)
        let mut stride = 1usize;
        while stride < lanes {
            if lane % (2 * stride) == 0 {
                let (a, b) = (smem[base + lane], smem[base + lane + stride]);
                if max {
                    smem[base + lane] = f32::max(a, b);
                } else {
                    smem[base + lane] = a + b;
                }
            }
            sync_cube();
            stride *= 2;
        }
        total = smem[base];
        sync_cube();
    }
    total
}

/// The sum of a vector's elements.
#[cube]
pub fn vector_sum<N: Size>(v: Vector<f32, N>) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for e in 0..N::value() {
        sum += v[e];
    }
    sum
}
