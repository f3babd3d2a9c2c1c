//! `y = x · Wᵀ` on the CPU for a weight kept in the checkpoint's `[out, in]` layout, on every core of
//! rayon's pool, reading the weight in place.
//!
//! Burn's ndarray matmul copies a transposed (non-contiguous) operand into a new buffer on every call,
//! which for a linear layer is a copy of the whole weight per step; here the weight is read where it
//! lies. The outputs are split into blocks of weight rows, one rayon task each:
//! - up to [`DOT_MAX_ROWS`] rows of `x` (decode batches): each output is one dot product of a weight
//!   row with an `x` row, computed for three weight rows and four `x` rows at a time (twelve sums in
//!   registers, seven loads per twelve multiply-adds); the weight rows are read once from memory for
//!   all rows of `x`, and nothing is packed;
//! - more rows (prefill): one matrixmultiply GEMM per core, which packs both operands (its cost is
//!   amortized over many rows, not over a decode batch's few).

use rayon::prelude::*;

/// Rows of `x` up to which the dot-product path runs (decode batches). Past it matrixmultiply's packed
/// GEMM runs: it packs the whole weight once per product, a cost that more rows amortize.
pub const DOT_MAX_ROWS: usize = 64;

/// Bytes of weight rows per rayon task: a task's rows stay in a core's L2 cache (512 KiB or more on
/// current x86-64 and Arm cores) while every group of four `x` rows passes over them.
const TASK_WEIGHT_BYTES: usize = 256 << 10;

/// Tasks per thread at least, so that the cores finish together on narrow layers.
const TASKS_PER_THREAD: usize = 4;

/// `x · Wᵀ`.
///
/// # Shapes
/// - `x`: `[rows, inputs]` row-major, `weight`: `[outputs, inputs]` row-major → `[rows, outputs]` row-major
pub fn linear(x: &[f32], weight: &[f32], rows: usize, inputs: usize, outputs: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * inputs, "x is not [rows, inputs]");
    assert_eq!(weight.len(), outputs * inputs, "weight is not [outputs, inputs]");
    if rows <= DOT_MAX_ROWS {
        dot_products(x, weight, rows, inputs, outputs)
    } else {
        gemm(x, weight, rows, inputs, outputs)
    }
}

/// Few rows: `yᵀ` (`[outputs, rows]`, a task's outputs contiguous) from dot products, then `y`.
fn dot_products(x: &[f32], weight: &[f32], rows: usize, inputs: usize, outputs: usize) -> Vec<f32> {
    let mut transposed = vec![0f32; outputs * rows];
    if rows == 0 || outputs == 0 {
        return transposed;
    }
    // a multiple of the three weight rows `dot3x4` takes
    let fits_l2 = TASK_WEIGHT_BYTES / (inputs.max(1) * size_of::<f32>());
    let spread = outputs.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD);
    let per_task = fits_l2.min(spread).max(1).next_multiple_of(3);
    let x_row = |r: usize| &x[r * inputs..(r + 1) * inputs];
    let quads = rows / 4;
    transposed.par_chunks_mut(per_task * rows).enumerate().for_each(|(task, out)| {
        let first = task * per_task;
        let block = &weight[first * inputs..(first + out.len() / rows) * inputs];
        let triples = || block.chunks_exact(3 * inputs.max(1));
        // each group of four x rows (in L1) passes over the task's weight rows (in L2 after the first)
        for q in 0..quads {
            let x_quad = std::array::from_fn(|j| x_row(4 * q + j));
            for (w_rows, out_rows) in triples().zip(out.chunks_exact_mut(3 * rows)) {
                let w = std::array::from_fn(|i| &w_rows[i * inputs..(i + 1) * inputs]);
                for (i, row_sums) in dot3x4(w, x_quad).iter().enumerate() {
                    out_rows[i * rows + 4 * q..i * rows + 4 * q + 4].copy_from_slice(row_sums);
                }
            }
        }
        for (w_rows, out_rows) in triples().zip(out.chunks_exact_mut(3 * rows)) {
            for (w_row, out_row) in w_rows.chunks_exact(inputs.max(1)).zip(out_rows.chunks_exact_mut(rows)) {
                for (r, o) in out_row.iter_mut().enumerate().skip(4 * quads) {
                    *o = dot(w_row, x_row(r));
                }
            }
        }
        // the last one or two weight rows of the layer
        let done = block.len() / inputs.max(1) / 3 * 3;
        for (w_row, out_row) in block.chunks_exact(inputs.max(1)).skip(done).zip(out.chunks_exact_mut(rows).skip(done))
        {
            for (r, o) in out_row.iter_mut().enumerate() {
                *o = dot(w_row, x_row(r));
            }
        }
    });
    if rows == 1 {
        return transposed;
    }
    let mut y = vec![0f32; rows * outputs];
    for (o, column) in transposed.chunks_exact(rows).enumerate() {
        for (r, &v) in column.iter().enumerate() {
            y[r * outputs + o] = v;
        }
    }
    y
}

/// The output buffer shared by the GEMM tasks, each of which writes only its own columns.
#[derive(Clone, Copy)]
struct Columns(*mut f32);
// SAFETY: tasks write disjoint column ranges of one buffer that outlives them.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

/// Many rows: one matrixmultiply GEMM per core on its block of weight rows, written straight into its
/// columns of `y`. One block per core, not many small ones: each GEMM packs all of `x` again.
fn gemm(x: &[f32], weight: &[f32], rows: usize, inputs: usize, outputs: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * outputs];
    if outputs == 0 {
        return y;
    }
    let per_task = outputs.div_ceil(rayon::current_num_threads());
    let out = Columns(y.as_mut_ptr());
    (0..outputs.div_ceil(per_task)).into_par_iter().for_each(|task| {
        let first = task * per_task;
        let count = per_task.min(outputs - first);
        let out = out;
        // y[:, first..first + count] = x · W[first..first + count]ᵀ
        // SAFETY: x is [rows, inputs] and W's block [count, inputs], both row-major and in bounds (asserted
        // by `linear`); the output is rows × count elements at row stride `outputs` from column `first`,
        // inside `y`, and no other task writes these columns.
        unsafe {
            matrixmultiply::sgemm(
                rows,
                inputs,
                count,
                1.0,
                x.as_ptr(),
                inputs as isize,
                1,
                weight.as_ptr().add(first * inputs),
                1,
                inputs as isize,
                0.0,
                out.0.add(first),
                outputs as isize,
                1,
            );
        }
    });
    y
}

/// `Σ a[i]·b[i]` in f32 over 16 running sums, with FMA where the processor has it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the processor supports AVX2 and FMA (checked at run time).
            return unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_portable(a, b)
}

/// The twelve dot products of three weight rows with four `x` rows: `sums[i][j] = w[i] · x[j]`,
/// each element loaded once for the products it takes part in (decode batches are compute-bound
/// once the weight rows are in L1).
fn dot3x4(w: [&[f32]; 3], x: [&[f32]; 4]) -> [[f32; 4]; 3] {
    let n = w[0].len();
    assert!(w.iter().all(|r| r.len() == n) && x.iter().all(|r| r.len() == n), "dot3x4: rows of different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the processor supports AVX2 and FMA (checked at run time); lengths asserted above.
            return unsafe { dot3x4_avx2_fma(w, x) };
        }
    }
    dot3x4_portable(w, x)
}

/// Eight lanes of a sum added pairwise (the order the AVX2 path adds them in).
fn lane_total(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// [`dot3x4`] on AVX2 registers: twelve accumulators, three weight loads and four `x` loads per eight
/// elements (sixteen registers in all), then each sum's lanes and the tail.
///
/// # Safety
/// The processor must support AVX2 and FMA, and all seven rows must have one length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot3x4_avx2_fma(w: [&[f32]; 3], x: [&[f32]; 4]) -> [[f32; 4]; 3] {
    use std::arch::x86_64::*;
    let n = w[0].len();
    let blocks = n / 8;
    let mut sums = [[_mm256_setzero_ps(); 4]; 3];
    for b in 0..blocks {
        // SAFETY: b·8 + 8 ≤ n for every row (the caller's contract).
        let wv: [__m256; 3] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(w[i].as_ptr().add(b * 8)) });
        for j in 0..4 {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(x[j].as_ptr().add(b * 8)) };
            for i in 0..3 {
                sums[i][j] = _mm256_fmadd_ps(wv[i], xv, sums[i][j]);
            }
        }
    }
    let mut totals = [[0f32; 4]; 3];
    for i in 0..3 {
        for j in 0..4 {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums[i][j]) };
            let mut total = lane_total(lanes);
            for k in blocks * 8..n {
                total = w[i][k].mul_add(x[j][k], total);
            }
            totals[i][j] = total;
        }
    }
    totals
}

fn dot3x4_portable(w: [&[f32]; 3], x: [&[f32]; 4]) -> [[f32; 4]; 3] {
    let n = w[0].len();
    let blocks = n / 8;
    let mut sums = [[[0f32; 8]; 4]; 3];
    for b in 0..blocks {
        for i in 0..3 {
            let wv = &w[i][b * 8..b * 8 + 8];
            for j in 0..4 {
                let xv = &x[j][b * 8..b * 8 + 8];
                for l in 0..8 {
                    sums[i][j][l] += wv[l] * xv[l];
                }
            }
        }
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|j| (blocks * 8..n).fold(lane_total(sums[i][j]), |t, k| t + w[i][k] * x[j][k]))
    })
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// The sums of [`dot`]: 16 lanes (two AVX registers, four SSE ones) so the additions of one lane do not
/// wait on each other, then a pairwise reduction and the tail.
macro_rules! dot_body {
    ($a:expr, $b:expr, $fma:expr) => {{
        const LANES: usize = 16;
        let (a, b) = ($a, $b);
        let mut sums = [0f32; LANES];
        let (a_blocks, b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (a_tail, b_tail) = (a_blocks.remainder(), b_blocks.remainder());
        for (x, y) in a_blocks.zip(b_blocks) {
            for l in 0..LANES {
                sums[l] = $fma(x[l], y[l], sums[l]);
            }
        }
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                sums[l] += sums[l + width];
            }
            width /= 2;
        }
        let mut total = sums[0];
        for (x, y) in a_tail.iter().zip(b_tail) {
            total = $fma(*x, *y, total);
        }
        total
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b, |x: f32, y: f32, s: f32| x.mul_add(y, s))
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b, |x: f32, y: f32, s: f32| x * y + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in f64, the reference the f32 paths are held to.
    fn reference(x: &[f32], w: &[f32], rows: usize, inputs: usize, outputs: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * outputs];
        for r in 0..rows {
            for o in 0..outputs {
                y[r * outputs + o] = (0..inputs).map(|i| x[r * inputs + i] as f64 * w[o * inputs + i] as f64).sum();
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_f64_on_odd_shapes() {
        for &(rows, inputs, outputs) in &[
            (1, 1, 1),
            (1, 17, 3),
            (2, 768, 130),
            (4, 33, 1000),
            (5, 64, 65),
            (9, 100, 7),
            (40, 70, 130),
            // triples of weight rows, quads of x rows, tasks ending on one or two weight rows
            (7, 37, 200),
            (16, 768, 67),
            (64, 19, 134),
            (65, 40, 10),
            (4, 0, 5),
            (0, 8, 8),
            (3, 8, 0),
        ] {
            let (x, w) = (values(rows * inputs, 1), values(outputs * inputs, 2));
            let got = linear(&x, &w, rows, inputs, outputs);
            let want = reference(&x, &w, rows, inputs, outputs);
            for (g, w) in got.iter().zip(&want) {
                // f32 sums of `inputs` products of magnitude ≤ 1: a few ulps per addition.
                assert!((*g as f64 - w).abs() <= 1e-6 * inputs as f64 + 1e-6, "{rows}x{inputs}x{outputs}: {g} vs {w}");
            }
            assert_eq!(got.len(), want.len());
        }
    }

    #[test]
    fn dot_paths_agree() {
        let (a, b) = (values(1001, 3), values(1001, 4));
        assert!((dot(&a, &b) - dot_portable(&a, &b)).abs() < 1e-4);
        let w = [values(1001, 5), values(1001, 6), values(1001, 7)];
        let x = [values(1001, 8), values(1001, 9), values(1001, 10), values(1001, 11)];
        let (w, x) = (std::array::from_fn(|i| w[i].as_slice()), std::array::from_fn(|j| x[j].as_slice()));
        let (fast, portable) = (dot3x4(w, x), dot3x4_portable(w, x));
        for i in 0..3 {
            for j in 0..4 {
                let one = dot(w[i], x[j]);
                assert!((fast[i][j] - portable[i][j]).abs() < 1e-4 && (fast[i][j] - one).abs() < 1e-4);
            }
        }
    }
}
