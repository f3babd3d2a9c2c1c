//! One decoder layer: `x + mixer(norm(x))`, then `x + mlp(norm(x)) [+ moe(norm(x))]`. The mixer is
//! Mamba2 or attention, fixed per layer by the config's layer plan; every layer has both norms and the
//! MLP, and the experts when the config has them. Residual multipliers are folded into each
//! sub-block's output projection.

use bamba_kernels::BambaOps;
use burn::tensor::Tensor;

use crate::attention::Attention;
use crate::cache::LayerCache;
use crate::config::{Architecture, BambaConfig, LayerKind};
use crate::loader::{LoadError, WeightReader};
use crate::mamba2::Mamba2Mixer;
use crate::mlp::Mlp;
use crate::moe::Moe;
use crate::norm::RmsNorm;
use crate::padding::ChunkMasks;
use crate::rope::RopeTables;

/// The sequence mixer of a layer.
#[derive(Debug, Clone)]
pub enum Mixer<B: BambaOps> {
    Mamba(Mamba2Mixer<B>),
    Attention(Attention<B>),
}

#[derive(Debug, Clone)]
pub struct DecoderLayer<B: BambaOps> {
    pub input_layernorm: RmsNorm<B>,
    pub mixer: Mixer<B>,
    /// The feed-forward's pre-norm (Bamba's `pre_ff_layernorm`, Granite's `post_attention_layernorm`).
    pub pre_ff_layernorm: RmsNorm<B>,
    pub feed_forward: Mlp<B>,
    pub experts: Option<Moe<B>>,
}

impl<B: BambaOps> DecoderLayer<B> {
    /// Reads `model.layers.{index}.*`.
    pub fn load(w: &mut WeightReader<'_, B>, index: usize, c: &BambaConfig) -> Result<Self, LoadError> {
        let p = format!("model.layers.{index}");
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let ff_norm = match c.architecture {
            Architecture::Bamba => "pre_ff_layernorm",
            Architecture::GraniteMoeHybrid => "post_attention_layernorm",
        };
        let mixer = match c.layer_kinds[index] {
            LayerKind::Mamba => Mixer::Mamba(Mamba2Mixer::load(w, &format!("{p}.mamba"), c)?),
            LayerKind::Attention => Mixer::Attention(Attention::load(w, &format!("{p}.self_attn"), c)?),
        };
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm.weight"), h, eps)?,
            mixer,
            pre_ff_layernorm: RmsNorm::load(w, &format!("{p}.{ff_norm}.weight"), h, eps)?,
            feed_forward: Mlp::load(w, &p, c)?,
            experts: c.moe.map(|m| Moe::load(w, &format!("{p}.block_sparse_moe"), c, m)).transpose()?,
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
        let x = match (&self.mixer, cache) {
            (Mixer::Mamba(m), None) => m.forward(norm, x, None, tokens).0,
            (Mixer::Mamba(m), Some(LayerCache::Mamba(slot))) => {
                let (out, state) = m.forward(norm, x, slot.take(), tokens);
                *slot = Some(state);
                out
            }
            (Mixer::Attention(a), None) => a.forward(norm.forward(x.clone()), tables, masks, None, x),
            (Mixer::Attention(a), Some(LayerCache::Attention(kv))) => {
                a.forward(norm.forward(x.clone()), tables, masks, Some(kv), x)
            }
            _ => unreachable!("the cache is built from the same layer plan as the model"),
        };
        let norm = &self.pre_ff_layernorm;
        let residual = match &self.experts {
            Some(experts) => x.clone() + experts.forward(norm.forward(x.clone())),
            None => x.clone(),
        };
        self.feed_forward.forward(norm, x, residual)
    }
}
