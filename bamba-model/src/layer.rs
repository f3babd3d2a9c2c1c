//! One decoder layer: `x + mixer(norm(x))`, then (unless the config has none) `x + mlp(norm(x))
//! [+ moe(norm(x))]`. The mixer is Mamba2 or attention, fixed per layer by the config's layer plan.
//! Residual multipliers are folded into each sub-block's output projection. With an f32 residual
//! stream (Mamba2) `x` is f32 and each sub-block reads it rounded to the compute dtype.

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
    /// Its pre-norm (Bamba's `pre_ff_layernorm`, Granite's `post_attention_layernorm`).
    pub norm: RmsNorm<B>,
    /// The dense SwiGLU MLP.
    pub mlp: Mlp<B>,
    /// Routed experts added to the MLP's output (Granite MoE).
    pub experts: Option<Moe<B>>,
}

#[derive(Debug, Clone)]
/// One decoder layer: pre-norm, mixer, residual; then optionally pre-norm, feed-forward, residual.
pub struct DecoderLayer<B: BambaOps> {
    /// The mixer's pre-norm.
    pub input_layernorm: RmsNorm<B>,
    /// Mamba2 or attention.
    pub mixer: Mixer<B>,
    /// The feed-forward sub-block (`None` for Mamba2).
    pub feed_forward: Option<FeedForward<B>>,
}

impl<B: BambaOps> DecoderLayer<B> {
    /// Reads layer `index` (`model.layers.{index}.*`, or the family's spelling of it).
    pub fn load(w: &mut WeightReader<'_, B>, index: usize, c: &BambaConfig) -> Result<Self, LoadError> {
        let names = TensorNames::of(c.architecture);
        let p = format!("{}.{index}", names.layers);
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let mixer = match c.layer_kinds[index] {
            LayerKind::Mamba => Mixer::Mamba(Mamba2Mixer::load(w, &format!("{p}.{}", names.mamba), c)?),
            LayerKind::Attention => Mixer::Attention(Attention::load(w, &format!("{p}.self_attn"), c)?),
        };
        let feed_forward = if c.mlp {
            Some(FeedForward {
                norm: RmsNorm::load(w, &format!("{p}.{}.weight", names.feed_forward_norm), h, eps)?,
                mlp: Mlp::load(w, &p, names.mlp, c)?,
                experts: c.moe.map(|m| Moe::load(w, &format!("{p}.block_sparse_moe"), c, m)).transpose()?,
            })
        } else {
            None
        };
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(w, &format!("{p}.{}.weight", names.input_norm), h, eps)?,
            mixer,
            feed_forward,
        })
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
        let norm = &self.input_layernorm;
        let tokens = masks.tokens.as_ref();
        // The sub-blocks read the stream in the compute dtype; an f32 stream stays f32 in the adds.
        let dtype = norm.weight.dtype();
        let input = |x: &Tensor<B, 3>| if x.dtype() == dtype { x.clone() } else { x.clone().cast(dtype) };
        let x = match (&self.mixer, cache) {
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
        };
        let Some(ff) = &self.feed_forward else { return x };
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
