//! Partial rotary position embedding, NeoX "rotate_half" convention (not interleaved). Models
//! without positional encoding (Granite 4.0-H) have no [`Rope`] and pass no tables.
//!
//! The first `rotary_dim` dims of each q/k head rotate in pairs `(j, j + rotary_dim/2)` with
//! `inv_freq[j] = theta^(-2j/rotary_dim)`; the remaining dims pass through.

use bamba_kernels::BambaOps;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// RoPE frequencies; cos/sin tables are built for the positions needed, or once per cache for all of
/// its positions ([`RopeTables::positions`] then takes views).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    rotary_dim: usize,
}

/// cos and sin for a run of positions.
///
/// # Shapes
/// - `cos`, `sin`: `[1 or batch, 1, len, rotary_dim]`, the model dtype
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// cos of every position and frequency, `[1, 1, positions, rotary_dim]`.
    pub cos: Tensor<B, 4>,
    /// sin, like `cos`.
    pub sin: Tensor<B, 4>,
    /// Rotated channels of each head.
    pub rotary_dim: usize,
}

impl<B: Backend> RopeTables<B> {
    /// Views of positions `start .. start + len` of tables made for positions `0 ..` (no copy).
    pub fn positions(&self, start: usize, len: usize) -> RopeTables<B> {
        RopeTables {
            cos: self.cos.clone().narrow(2, start, len),
            sin: self.sin.clone().narrow(2, start, len),
            rotary_dim: self.rotary_dim,
        }
    }

    /// Rotates the first `rotary_dim` dims of every head ([`BambaOps::rope`]: one kernel on GPUs).
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, len, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: BambaOps,
    {
        B::rope(x, self.cos.clone(), self.sin.clone(), self.rotary_dim)
    }
}

impl Rope {
    /// Rotation of the first `rotary_dim` channels with base `theta`.
    pub fn new(rotary_dim: usize, theta: f64) -> Self {
        let inv_freq =
            (0..rotary_dim / 2).map(|j| (1.0 / theta.powf((2 * j) as f64 / rotary_dim as f64)) as f32).collect();
        Rope { inv_freq, rotary_dim }
    }

    /// Tables for positions `start .. start + len`, shared by every row of a batch.
    pub fn tables<B: Backend>(&self, start: usize, len: usize, device: &B::Device, dtype: DType) -> RopeTables<B> {
        self.tables_at(&[(start..start + len).collect()], device, dtype)
    }

    /// Tables for explicit positions, one list per row (all of equal length). The angle is formed in
    /// f32 like transformers (`position.float() * inv_freq`), then cos/sin are taken and cast to `dtype`.
    ///
    /// # Shapes
    /// - returns `cos`, `sin`: `[rows, 1, len, rotary_dim]`
    pub fn tables_at<B: Backend>(&self, positions: &[Vec<usize>], device: &B::Device, dtype: DType) -> RopeTables<B> {
        let half = self.rotary_dim / 2;
        let (rows, len) = (positions.len(), positions.first().map_or(0, Vec::len));
        let mut cos = Vec::with_capacity(rows * len * self.rotary_dim);
        let mut sin = Vec::with_capacity(rows * len * self.rotary_dim);
        for &pos in positions.iter().flatten() {
            // emb = cat(freqs, freqs)
            for _ in 0..2 {
                for j in 0..half {
                    let angle = pos as f32 * self.inv_freq[j];
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [rows, 1, len, self.rotary_dim];
        let make = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), (device, DType::F32)).cast(dtype);
        RopeTables { cos: make(cos), sin: make(sin), rotary_dim: self.rotary_dim }
    }
}
