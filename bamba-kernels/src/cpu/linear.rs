//! `y = x · Wᵀ` on the CPU for a weight kept in the checkpoint's `[out, in]` layout, on every core of
//! rayon's pool, reading the weight in place.
//!
//! Burn's ndarray matmul copies a transposed (non-contiguous) operand into a new buffer on every call,
//! which for a linear layer is a copy of the whole weight per step; here the weight is read where it
//! lies. The outputs are split into blocks of weight rows, one rayon task each:
//! - few rows of `x` (decode): each output is one dot product of a weight row with an `x` row, the
//!   weight row read once from memory for all rows of `x` (it stays in L1 between them);
//! - more rows (prefill, large decode batches): one matrixmultiply GEMM per core.

use rayon::prelude::*;

/// Rows of `x` up to which the dot-product path runs (small decode batches). Past it matrixmultiply's
/// packed GEMM is as fast: it packs the whole weight once per product, which many rows amortize, while
/// the dot products reread x rows that no longer fit in L1 (on a 2-core x86-64 machine, a 116M-parameter
/// Bamba shape: 4 rows 52 against 85 ms per step, 16 rows 160–170 against 157).
pub const DOT_MAX_ROWS: usize = 8;

/// Weight rows per rayon task: enough work per task (`64 · in` multiply-adds) to amortize the
/// scheduling, small enough that every core gets several tasks on a 768-wide layer.
const ROWS_PER_TASK: usize = 64;

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
    let per_task = ROWS_PER_TASK.max(outputs.div_ceil(rayon::current_num_threads() * 8));
    transposed.par_chunks_mut(per_task * rows).enumerate().for_each(|(task, out)| {
        let first = task * per_task;
        let block = &weight[first * inputs..(first + out.len() / rows) * inputs];
        for (w_row, out_row) in block.chunks_exact(inputs.max(1)).zip(out.chunks_exact_mut(rows)) {
            let mut quads = out_row.chunks_exact_mut(4);
            for (r, o) in quads.by_ref().enumerate() {
                let x_rows = std::array::from_fn(|i| &x[(4 * r + i) * inputs..(4 * r + i + 1) * inputs]);
                o.copy_from_slice(&dot4(w_row, x_rows));
            }
            let done = rows - quads.into_remainder().len();
            for (r, o) in out_row.iter_mut().enumerate().skip(done) {
                *o = dot(w_row, &x[r * inputs..(r + 1) * inputs]);
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

/// Four dot products of `w` with four rows, each element of `w` loaded once for all four (decode
/// batches are compute-bound once the weight row is in L1).
fn dot4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the processor supports AVX2 and FMA (checked at run time).
            return unsafe { dot4_avx2_fma(w, x) };
        }
    }
    dot4_portable(w, x)
}

/// The sums of [`dot4`]: 8 lanes per row (one AVX register each), pairwise reduction, then the tail.
macro_rules! dot4_body {
    ($w:expr, $x:expr, $fma:expr) => {{
        const LANES: usize = 8;
        let (w, x) = ($w, $x);
        let n = w.len();
        let blocks = n / LANES;
        let mut sums = [[0f32; LANES]; 4];
        for blk in 0..blocks {
            let base = blk * LANES;
            let wv = &w[base..base + LANES];
            for r in 0..4 {
                let xv = &x[r][base..base + LANES];
                for l in 0..LANES {
                    sums[r][l] = $fma(wv[l], xv[l], sums[r][l]);
                }
            }
        }
        let mut totals = [0f32; 4];
        for r in 0..4 {
            let mut width = LANES / 2;
            while width > 0 {
                for l in 0..width {
                    sums[r][l] += sums[r][l + width];
                }
                width /= 2;
            }
            let mut total = sums[r][0];
            for i in blocks * LANES..n {
                total = $fma(w[i], x[r][i], total);
            }
            totals[r] = total;
        }
        totals
    }};
}

/// [`dot4`] on AVX2 registers: one load of `w` per 8 elements for four FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2_fma(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = w.len();
    assert!(x.iter().all(|r| r.len() == n), "dot4: rows of different lengths");
    // Two accumulators per row (16 elements a step): eight independent FMA chains hide the FMA latency.
    let blocks = n / 16;
    let mut sums = [_mm256_setzero_ps(); 4];
    let mut more = [_mm256_setzero_ps(); 4];
    for b in 0..blocks {
        // SAFETY: b·16 + 16 ≤ n for `w` and every row (asserted above).
        let (w0, w1) =
            unsafe { (_mm256_loadu_ps(w.as_ptr().add(b * 16)), _mm256_loadu_ps(w.as_ptr().add(b * 16 + 8))) };
        for r in 0..4 {
            let (x0, x1) =
                unsafe { (_mm256_loadu_ps(x[r].as_ptr().add(b * 16)), _mm256_loadu_ps(x[r].as_ptr().add(b * 16 + 8))) };
            sums[r] = _mm256_fmadd_ps(w0, x0, sums[r]);
            more[r] = _mm256_fmadd_ps(w1, x1, more[r]);
        }
    }
    for r in 0..4 {
        sums[r] = _mm256_add_ps(sums[r], more[r]);
    }
    let blocks = blocks * 2;
    let mut totals = [0f32; 4];
    for r in 0..4 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums[r]) };
        let mut total =
            ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
        for i in blocks * 8..n {
            total = w[i].mul_add(x[r][i], total);
        }
        totals[r] = total;
    }
    totals
}

fn dot4_portable(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    dot4_body!(w, x, |a: f32, b: f32, s: f32| a * b + s)
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
        let rows = [values(1001, 5), values(1001, 6), values(1001, 7), values(1001, 8)];
        let fast = dot4(&a, std::array::from_fn(|r| rows[r].as_slice()));
        let portable = dot4_portable(&a, std::array::from_fn(|r| rows[r].as_slice()));
        for r in 0..4 {
            assert!((fast[r] - portable[r]).abs() < 1e-4 && (fast[r] - dot(&a, &rows[r])).abs() < 1e-4);
        }
    }
}
