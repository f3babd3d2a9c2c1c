//! RoPE settings of the attention layers: base, rotated fraction and the context-extension scaling,
//! read as transformers reads them.
//!
//! Two dialects: 5.x `rope_parameters` (`rope_type`, `rope_theta`, `partial_rotary_factor` and the
//! scaling keys in one object) and 4.x `rope_scaling` (the scaling keys, the kind under `type` or
//! `rope_type`) beside a top-level `rope_theta`. As in transformers, `rope_scaling` wins when both
//! are present, and a top-level `original_max_position_embeddings` wins over the object's.

use super::json::RopeParameters;
use super::ConfigError;

/// Rotary position embedding of the attention layers (NeoX `rotate_half` on the first
/// `partial_rotary_factor · head_dim` dims of each head).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// RoPE base frequency.
    pub theta: f64,
    /// Fraction of each head rotated (Bamba: 0.5).
    pub partial_rotary_factor: f64,
    /// How the frequencies are rescaled to extend the context.
    pub scaling: RopeScaling,
}

/// transformers' `rope_type`s: how the inverse frequencies (and a factor on cos/sin) are derived.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `default`: `theta^(-2j/dim)`.
    None,
    /// `linear`: every frequency divided by `factor` (position interpolation).
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// `dynamic`: NTK-aware base `theta · (factor·len/max − (factor−1))^(dim/(dim−2))` once a sequence
    /// is longer than `max_position_embeddings`, recomputed as it grows.
    Dynamic {
        /// NTK factor.
        factor: f64,
        /// Length up to which the frequencies are the default ones.
        max_position_embeddings: usize,
    },
    /// `yarn`: per-frequency blend of interpolation and extrapolation, cos/sin times `attention_factor`.
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// Pretraining context.
        original_max_position_embeddings: usize,
        /// Factor on cos and sin.
        attention_factor: f64,
        /// Rotations above which a frequency is extrapolated.
        beta_fast: f64,
        /// Rotations below which a frequency is interpolated.
        beta_slow: f64,
        /// Round the correction range outwards to whole dims.
        truncate: bool,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth band between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Pretraining context.
        original_max_position_embeddings: usize,
    },
    /// `longrope`: per-frequency divisors, `short_factor` while a sequence fits the pretraining
    /// context and `long_factor` past it; cos/sin times `attention_factor`.
    LongRope {
        /// Divisors for sequences of at most `original_max_position_embeddings`.
        short_factor: Vec<f64>,
        /// Divisors for longer sequences.
        long_factor: Vec<f64>,
        /// Pretraining context.
        original_max_position_embeddings: usize,
        /// Factor on cos and sin.
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// transformers' name of the kind (`rope_type`).
    pub fn rope_type(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::LongRope { .. } => "longrope",
        }
    }

    /// The frequencies depend on the length of the sequence being run (dynamic NTK, LongRoPE), not on
    /// the position alone.
    pub fn depends_on_length(&self) -> bool {
        matches!(self, RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. })
    }
}

impl RopeConfig {
    /// The longest sequence the scaling is made for: `max_position_embeddings`, or the pretraining
    /// context times the factor where that is more (a linear or dynamic factor on the base context,
    /// a YaRN factor on the original one).
    pub fn context_length(&self, max_position_embeddings: usize) -> usize {
        // at most the bound config.json's own sizes are held to
        let scaled = |base: usize, factor: f64| (base as f64 * factor).min((1u64 << 24) as f64) as usize;
        match &self.scaling {
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. } => {
                scaled(max_position_embeddings, *factor).max(max_position_embeddings)
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, .. } => {
                scaled(*original_max_position_embeddings, *factor).max(max_position_embeddings)
            }
            _ => max_position_embeddings,
        }
    }

    /// [`RopeScaling::depends_on_length`] of its scaling.
    pub fn depends_on_length(&self) -> bool {
        self.scaling.depends_on_length()
    }
}

/// What [`scaling`] needs besides the RoPE object.
pub(super) struct RopeContext {
    pub max_position_embeddings: usize,
    /// A top-level `original_max_position_embeddings` (Phi-3 style).
    pub original_max_position_embeddings: Option<usize>,
    pub rotary_dim: usize,
}

/// The `rope_type` and its parameters, checked.
pub(super) fn scaling(p: &RopeParameters, cx: &RopeContext) -> Result<RopeScaling, ConfigError> {
    let kind = p.rope_type.as_deref().or(p.kind.as_deref()).unwrap_or("default");
    let bad = |problem: String| ConfigError::RopeParameter { rope_type: kind.to_string(), problem };
    let positive = |name: &str, value: Option<f64>| match value {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => Err(bad(format!("{name} must be a positive finite number, got {v}"))),
        None => Err(bad(format!("{name} is required"))),
    };
    let original = || {
        let original = cx.original_max_position_embeddings.or(p.original_max_position_embeddings);
        match original.unwrap_or(cx.max_position_embeddings) {
            0 => Err(bad("original_max_position_embeddings must be positive".into())),
            n => Ok(n),
        }
    };
    // The ratio transformers falls back on when `factor` is absent.
    let implicit_factor = |original: usize| cx.max_position_embeddings as f64 / original as f64;
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: positive("factor", p.factor)? },
        "dynamic" => {
            if cx.rotary_dim <= 2 {
                return Err(bad(format!("needs more than 2 rotated dims, got {}", cx.rotary_dim)));
            }
            RopeScaling::Dynamic {
                factor: positive("factor", p.factor)?,
                max_position_embeddings: cx.max_position_embeddings,
            }
        }
        "yarn" => {
            let original = original()?;
            let factor = positive("factor", p.factor.or(Some(implicit_factor(original))))?;
            let attention_factor = match (p.attention_factor, p.mscale, p.mscale_all_dim) {
                (Some(a), ..) => positive("attention_factor", Some(a))?,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => positive(
                    "attention_factor (from mscale / mscale_all_dim)",
                    Some(yarn_mscale(factor, m) / yarn_mscale(factor, all)),
                )?,
                _ => positive("attention_factor (from factor)", Some(yarn_mscale(factor, 1.0)))?,
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                attention_factor,
                // transformers: `beta_fast or 32`, `beta_slow or 1` (0 counts as absent)
                beta_fast: p.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: p.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0),
                truncate: p.truncate.unwrap_or(true),
            }
        }
        "llama3" => {
            let low_freq_factor = positive("low_freq_factor", p.low_freq_factor)?;
            let high_freq_factor = positive("high_freq_factor", p.high_freq_factor)?;
            if low_freq_factor == high_freq_factor {
                return Err(bad("low_freq_factor and high_freq_factor must differ".into()));
            }
            RopeScaling::Llama3 {
                factor: positive("factor", p.factor)?,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original()?,
            }
        }
        "longrope" => {
            let original = original()?;
            let factors = |name: &str, list: &Option<Vec<f64>>| -> Result<Vec<f64>, ConfigError> {
                let list = list.as_ref().ok_or_else(|| bad(format!("{name} is required")))?;
                if list.len() != cx.rotary_dim / 2 {
                    return Err(bad(format!(
                        "{name} has {} entries; the rotated half of a head has {} frequencies",
                        list.len(),
                        cx.rotary_dim / 2
                    )));
                }
                for &v in list {
                    positive(name, Some(v))?;
                }
                Ok(list.clone())
            };
            let factor = positive("factor", p.factor.or(Some(implicit_factor(original))))?;
            let attention_factor = match p.attention_factor {
                Some(a) => positive("attention_factor", Some(a))?,
                None if factor <= 1.0 => 1.0,
                None => positive(
                    "attention_factor (from factor and original_max_position_embeddings)",
                    Some((1.0 + factor.ln() / (original as f64).ln()).sqrt()),
                )?,
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor", &p.short_factor)?,
                long_factor: factors("long_factor", &p.long_factor)?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        other => return Err(ConfigError::RopeType(other.to_string())),
    })
}

/// YaRN's `0.1 · mscale · ln(scale) + 1` (1 when not scaling up).
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}
