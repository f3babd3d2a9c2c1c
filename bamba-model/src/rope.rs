//! Partial rotary position embedding, NeoX "rotate_half" convention (not interleaved). Models
//! without positional encoding (Granite 4.0-H) have no [`Rope`] and pass no tables.
//!
//! The first `rotary_dim` dims of each q/k head rotate in pairs `(j, j + rotary_dim/2)` with
//! `inv_freq[j] = theta^(-2j/rotary_dim)`, rescaled by the config's `rope_type` (linear, dynamic NTK,
//! YaRN, Llama 3, LongRoPE: transformers' `ROPE_INIT_FUNCTIONS`); the remaining dims pass through.
//! This is the one table builder: every backend and the RoPE kernel read the tables made here.

use std::borrow::Cow;

use bamba_kernels::BambaOps;

use crate::config::RopeScaling;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

/// RoPE frequencies and the factor on cos/sin, as transformers derives them for each `rope_type`;
/// cos/sin tables are built for the positions needed, or once per cache for all of its positions
/// ([`RopeTables::positions`] then takes views) when they do not depend on the sequence's length.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Frequencies of a sequence that fits the pretraining context (all sequences unless
    /// [`Rope::depends_on_length`]).
    inv_freq: Vec<f32>,
    /// The factor on cos and sin (YaRN's and LongRoPE's attention factor; 1 otherwise).
    attention_scaling: f32,
    rotary_dim: usize,
    theta: f64,
    scaling: RopeScaling,
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
    /// Rotation of the first `rotary_dim` channels with base `theta`, no scaling.
    pub fn new(rotary_dim: usize, theta: f64) -> Self {
        Self::scaled(rotary_dim, theta, RopeScaling::None)
    }

    /// Rotation of the first `rotary_dim` channels with base `theta` and a context-extension scaling.
    pub fn scaled(rotary_dim: usize, theta: f64, scaling: RopeScaling) -> Self {
        let attention_scaling = match &scaling {
            RopeScaling::Yarn { attention_factor, .. } | RopeScaling::LongRope { attention_factor, .. } => {
                *attention_factor as f32
            }
            _ => 1.0,
        };
        let mut rope = Rope { inv_freq: Vec::new(), attention_scaling, rotary_dim, theta, scaling };
        rope.inv_freq = rope.frequencies(0);
        rope
    }

    /// The frequencies change with the length of the sequence (dynamic NTK, LongRoPE): tables cannot
    /// be made once per cache.
    pub fn depends_on_length(&self) -> bool {
        self.scaling.depends_on_length()
    }

    /// The default frequencies `theta^(-2j/dim)`, each formed as transformers does (`base ** (arange(0,
    /// dim, 2).float() / dim)` in f32, then its inverse).
    fn default_frequencies(&self, theta: f64) -> Vec<f64> {
        let dim = self.rotary_dim;
        (0..dim / 2).map(|j| 1.0 / (theta as f32).powf((2 * j) as f32 / dim as f32) as f64).collect()
    }

    /// The inverse frequencies for a sequence of `len` positions (`len` matters only where
    /// [`Self::depends_on_length`]).
    fn frequencies(&self, len: usize) -> Vec<f32> {
        let base = self.default_frequencies(self.theta);
        let dim = self.rotary_dim as f64;
        let freqs: Vec<f64> = match &self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Dynamic { factor, max_position_embeddings } => {
                let max = *max_position_embeddings as f64;
                let len = (len as f64).max(max);
                let theta = self.theta * (factor * len / max - (factor - 1.0)).powf(dim / (dim - 2.0));
                self.default_frequencies(theta)
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, truncate, .. } => {
                // the dim whose wavelength makes `rotations` turns over the original context
                let correction = |rotations: f64| {
                    dim * (*original_max_position_embeddings as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                base.iter()
                    .enumerate()
                    .map(|(j, &extrapolated)| {
                        let ramp = ((j as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        extrapolated / factor * (1.0 - keep) + extrapolated * keep
                    })
                    .collect()
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let original = *original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (original / low_freq_factor, original / high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, .. } => {
                let factors = if len > *original_max_position_embeddings { long_factor } else { short_factor };
                base.iter().zip(factors).map(|(f, ext)| f / ext).collect()
            }
        };
        freqs.into_iter().map(|f| f as f32).collect()
    }

    /// Tables for positions `start .. start + len`, shared by every row of a batch, of a sequence that
    /// ends at `start + len`.
    pub fn tables<B: Backend>(&self, start: usize, len: usize, device: &B::Device, dtype: DType) -> RopeTables<B> {
        self.tables_at(&[(start..start + len).collect()], &[start + len], device, dtype)
    }

    /// Tables for explicit positions, one list per row (all of equal length), row `r` belonging to a
    /// sequence of `lengths[r]` positions (what dynamic NTK and LongRoPE choose their frequencies by,
    /// as transformers does from the positions of one forward). The angle is formed in f32 like
    /// transformers (`position.float() * inv_freq`), then cos/sin are taken, scaled by the attention
    /// factor and cast to `dtype`.
    ///
    /// # Shapes
    /// - returns `cos`, `sin`: `[rows, 1, len, rotary_dim]`
    pub fn tables_at<B: Backend>(
        &self,
        positions: &[Vec<usize>],
        lengths: &[usize],
        device: &B::Device,
        dtype: DType,
    ) -> RopeTables<B> {
        let half = self.rotary_dim / 2;
        let (rows, len) = (positions.len(), positions.first().map_or(0, Vec::len));
        let mut cos = Vec::with_capacity(rows * len * self.rotary_dim);
        let mut sin = Vec::with_capacity(rows * len * self.rotary_dim);
        let scale = self.attention_scaling;
        for (row, &length) in positions.iter().zip(lengths) {
            let inv_freq: Cow<[f32]> = match self.depends_on_length() {
                true => Cow::Owned(self.frequencies(length)),
                false => Cow::Borrowed(&self.inv_freq),
            };
            for &pos in row {
                // emb = cat(freqs, freqs)
                for _ in 0..2 {
                    for &f in &inv_freq[..half] {
                        let angle = pos as f32 * f;
                        cos.push(angle.cos() * scale);
                        sin.push(angle.sin() * scale);
                    }
                }
            }
        }
        let shape = [rows, 1, len, self.rotary_dim];
        let make = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), (device, DType::F32)).cast(dtype);
        RopeTables { cos: make(cos), sin: make(sin), rotary_dim: self.rotary_dim }
    }
}
