//! One decoder layer, one or two residual sub-blocks as the config's layer plan says:
//! `x + mixer(norm(x))` with the mixer Mamba2 or attention, then (where the config has one)
//! `x + mlp(norm(x)) [+ moe(norm(x))]`; or the feed-forward sub-block alone (Nemotron-H's MLP and
//! MoE layers). Residual multipliers are folded into each sub-block's output projection. With an f32
//! residual stream (Mamba2) `x` is f32 and each sub-block reads it rounded to the compute dtype.

use bamba_kernels::BambaOps;
use burn::tensor::Tensor;

use crate::attention::Attention;
use crate::cache::LayerCache;
use crate::config::{BambaConfig, LayerKind};
use crate::loader::{LoadError, WeightReader};
use crate::mamba2::Mamba2Mixer;
use crate::mlp::Mlp;
use crate::moe::Moe;
use crate::names::TensorNames;
use crate::norm::RmsNorm;
use crate::padding::ChunkMasks;
use crate::rope::RopeTables;

/// The sequence mixer of a layer.
#[derive(Debug, Clone)]
pub enum Mixer<B: BambaOps> {
    /// A Mamba2 mixer.
    Mamba(Mamba2Mixer<B>),
    /// Self-attention.
    Attention(Attention<B>),
}

/// A layer's feed-forward sub-block: the dense MLP, and the routed experts beside it if any.
#[derive(Debug, Clone)]
pub struct FeedForward<B: BambaOps> {
    /// Its pre-norm (Bamba's `pre_ff_layernorm`, Granite's `post_attention_layernorm`, the layer's
    /// one `norm` in a Nemotron-H MLP or MoE layer).
    pub norm: RmsNorm<B>,
    /// The dense MLP (Granite's and Nemotron's shared expert beside routed ones).
    pub mlp: Mlp<B>,
    /// Routed experts added to the MLP's output.
    pub experts: Option<Moe<B>>,
}

/// A layer's mixer sub-block.
#[derive(Debug, Clone)]
pub struct MixerBlock<B: BambaOps> {
    /// The mixer's pre-norm.
    pub norm: RmsNorm<B>,
    /// Mamba2 or attention.
    pub mixer: Mixer<B>,
}

#[derive(Debug, Clone)]
/// One decoder layer: a mixer sub-block, a feed-forward sub-block, or both in that order.
pub struct DecoderLayer<B: BambaOps> {
    /// Pre-norm, mixer, residual (`None` in a feed-forward layer).
    pub mixer: Option<MixerBlock<B>>,
    /// Pre-norm, feed-forward, residual (`None` in a Mamba2 or Nemotron-H mixer layer).
    pub feed_forward: Option<FeedForward<B>>,
}

impl<B: BambaOps> DecoderLayer<B> {
    /// Reads layer `index` (`model.layers.{index}.*`, or the family's spelling of it).
    pub fn load(w: &mut WeightReader<'_, B>, index: usize, c: &BambaConfig) -> Result<Self, LoadError> {
        let names = TensorNames::of(c.architecture);
        let p = format!("{}.{index}", names.layers);
        let kind = c.layer_kinds[index];
        let norm = |w: &mut WeightReader<'_, B>, name: &str| {
            RmsNorm::load(w, &format!("{p}.{name}.weight"), c.hidden_size, c.rms_norm_eps, c.norm_weight_f32)
        };
        let mixer = match kind {
            LayerKind::Mamba => Some(Mixer::Mamba(Mamba2Mixer::load(w, &format!("{p}.{}", names.mamba), c)?)),
            LayerKind::Attention => Some(Mixer::Attention(Attention::load(w, &format!("{p}.{}", names.attention), c)?)),
            LayerKind::Mlp | LayerKind::Moe => None,
        };
        let mixer = match mixer {
            Some(mixer) => Some(MixerBlock { norm: norm(w, names.input_norm)?, mixer }),
            None => None,
        };
        let feed_forward = match c.feed_forward(kind) {
            Some(plan) => {
                // A feed-forward layer's one norm is its input norm.
                let norm_name = if kind.is_mixer() { names.feed_forward_norm } else { names.input_norm };
                let mlp_names = if kind == LayerKind::Moe { names.moe_shared_mlp } else { names.mlp };
                Some(FeedForward {
                    norm: norm(w, norm_name)?,
                    mlp: Mlp::load(w, &p, mlp_names, plan.width, c)?,
                    experts: plan.experts.map(|m| Moe::load(w, &p, names.moe, c, m)).transpose()?,
                })
            }
            None => None,
        };
        Ok(DecoderLayer { mixer, feed_forward })
    }

    /// Forward over positions covered by `tables`, continuing from (and updating) `cache` when given;
    /// `masks` carry left padding.
    ///
    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → same
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        tables: Option<&RopeTables<B>>,
        masks: &ChunkMasks<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        // The residual adds happen inside the mixer's and the MLP's output projections.
        // The Mamba mixer and the MLP apply their pre-norm in their first projection (fused at decode);
        // attention's three projections share one.
        let tokens = masks.tokens.as_ref();
        let x = match (&self.mixer, cache) {
            (None, _) => x,
            (Some(MixerBlock { norm, mixer }), cache) => {
                let input = compute_dtype(norm);
                match (mixer, cache) {
                    (Mixer::Mamba(m), None) => m.forward(norm, input(&x), x, None, tokens).0,
                    (Mixer::Mamba(m), Some(LayerCache::Mamba(slot))) => {
                        let (out, state) = m.forward(norm, input(&x), x, slot.take(), tokens);
                        *slot = Some(state);
                        out
                    }
                    (Mixer::Attention(a), None) => a.forward(norm.forward(input(&x)), tables, masks, None, x),
                    (Mixer::Attention(a), Some(LayerCache::Attention(kv))) => {
                        a.forward(norm.forward(input(&x)), tables, masks, Some(kv), x)
                    }
                    _ => unreachable!("the cache is built from the same layer plan as the model"),
                }
            }
        };
        let Some(ff) = &self.feed_forward else { return x };
        let input = compute_dtype(&ff.norm);
        // With experts, the normalized rows feed the router and the experts, and the MLP normalizes
        // again inside its fused norm + SwiGLU kernel: one launch at decode, cheaper than an unfused
        // gate and up on the rows normalized here.
        let residual = match &ff.experts {
            Some(experts) => x.clone() + experts.forward(ff.norm.forward(input(&x))),
            None => x.clone(),
        };
        ff.mlp.forward(&ff.norm, input(&x), residual)
    }
}

/// The stream as a sub-block reads it: in the compute dtype (the norm's), whatever the stream's; an
/// f32 stream stays f32 in the adds.
fn compute_dtype<B: BambaOps>(norm: &RmsNorm<B>) -> impl Fn(&Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = norm.weight.dtype();
    move |x: &Tensor<B, 3>| if x.dtype() == dtype { x.clone() } else { x.clone().cast(dtype) }
}
