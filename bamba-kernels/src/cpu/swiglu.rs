//! SwiGLU's activation on the CPU: `silu(gate) · up` in one pass over the two products, on rayon's
//! pool, where the reference's tensor ops (sigmoid through exp, then two products) each make a fresh
//! array on one thread.

use rayon::prelude::*;

use super::conv::silu;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// # Shapes
/// - `gate`, `up`: the same length → that length
pub fn silu_times(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(out, (gate, up))| {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = silu(g) * u;
        }
    });
    out
}
