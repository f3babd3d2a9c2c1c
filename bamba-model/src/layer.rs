//! One decoder layer, one or two residual sub-blocks as the config's layer plan says:
//! `x + mixer(norm(x))` with the mixer Mamba2 or attention, then (where the config has one)
//! `x + mlp(norm(x)) [+ moe(norm(x))]`; or the feed-forward sub-block alone (Nemotron-H's MLP and
//! MoE layers). Residual multipliers are folded into each sub-block's output projection. With an f32
//! residual stream (Mamba2) `x` is f32 and each sub-block reads it rounded to the compute dtype.
//! Falcon-H1's mixer is Mamba2 and attention side by side; a Zamba2 shared-block layer is
//! `x + mamba(norm(x + shared(x, embeddings)))`.

use bamba_kernels::BambaOps;
use burn::tensor::Tensor;

use crate::attention::Attention;
use crate::cache::LayerCache;
use crate::config::{BambaConfig, LayerKind};
use crate::loader::{LoadError, WeightReader};
use crate::mamba2::{Mamba2Mixer, MambaState};
use crate::mlp::Mlp;
use crate::moe::Moe;
use crate::names::TensorNames;
use crate::norm::RmsNorm;
use crate::padding::ChunkMasks;
use crate::rope::RopeTables;
use crate::shared::{SharedBlock, SharedUse};

/// The sequence mixer of a layer.
#[derive(Debug, Clone)]
pub enum Mixer<B: BambaOps> {
    /// A Mamba2 mixer.
    Mamba(Mamba2Mixer<B>),
    /// Self-attention.
    Attention(Attention<B>),
    /// Both on the same normalized input, their outputs added (Falcon-H1).
    Parallel(Mamba2Mixer<B>, Attention<B>),
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
    /// The shared block whose output joins the mixer's input (Zamba2's `hybrid` layers).
    pub shared: Option<SharedUse<B>>,
}

impl<B: BambaOps> DecoderLayer<B> {
    /// Reads layer `index` (`model.layers.{index}.*`, or the family's spelling of it); a shared-block
    /// layer takes its block from `blocks`.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        index: usize,
        c: &BambaConfig,
        blocks: &[SharedBlock<B>],
    ) -> Result<Self, LoadError> {
        let names = TensorNames::of(c.architecture);
        let kind = c.layer_kinds[index];
        let shared = match (kind, c.shared_blocks) {
            (LayerKind::Shared, Some(config)) => Some(SharedUse::load(w, blocks, index, c, config)?),
            _ => None,
        };
        // A shared-block layer's Mamba sub-block is its `mamba_decoder`.
        let p = match kind {
            LayerKind::Shared => format!("{}.{index}.mamba_decoder", names.layers),
            _ => format!("{}.{index}", names.layers),
        };
        let norm = |w: &mut WeightReader<'_, B>, name: &str| {
            RmsNorm::load(w, &format!("{p}.{name}.weight"), c.hidden_size, c.rms_norm_eps, c.norm_weight_f32)
        };
        let mamba = |w: &mut WeightReader<'_, B>| Mamba2Mixer::load(w, &format!("{p}.{}", names.mamba), c);
        let attention = |w: &mut WeightReader<'_, B>| Attention::load(w, &format!("{p}.{}", names.attention), c);
        let mixer = match kind {
            LayerKind::Mamba | LayerKind::Shared => Some(Mixer::Mamba(mamba(w)?)),
            LayerKind::Attention => Some(Mixer::Attention(attention(w)?)),
            LayerKind::Parallel => Some(Mixer::Parallel(mamba(w)?, attention(w)?)),
            LayerKind::Mlp | LayerKind::Moe => None,
        }
        .map(|mixer| norm(w, names.input_norm).map(|norm| MixerBlock { norm, mixer }))
        .transpose()?;
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
        Ok(DecoderLayer { mixer, feed_forward, shared })
    }

    /// Forward over positions covered by `tables`, continuing from (and updating) `cache` when given;
    /// `masks` carry left padding; `embeddings` are the model's input embeddings (read by shared
    /// blocks).
    ///
    /// # Shapes
    /// - `x`, `embeddings`: `[batch, len, hidden]` → same
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        embeddings: &Tensor<B, 3>,
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
                let (slot, kv) = match cache {
                    Some(LayerCache { mamba, kv }) => (mamba.as_mut(), kv.as_mut()),
                    None => (None, None),
                };
                // Runs the Mamba mixer on `norm(source)` with `x` as its residual, keeping its state
                // in the cache's slot if there is one.
                let mamba = |m: &Mamba2Mixer<B>,
                             source: Tensor<B, 3>,
                             x: Tensor<B, 3>,
                             slot: Option<&mut Option<MambaState<B>>>| {
                    let source = input(&source);
                    match slot {
                        Some(slot) => {
                            let (out, state) = m.forward(norm, source, x, slot.take(), tokens);
                            *slot = Some(state);
                            out
                        }
                        None => m.forward(norm, source, x, None, tokens).0,
                    }
                };
                match (mixer, &self.shared) {
                    (Mixer::Mamba(m), None) => mamba(m, x.clone(), x, slot),
                    (Mixer::Mamba(m), Some(shared)) => {
                        let t = shared.forward(input(&x), embeddings.clone(), tables, masks, kv);
                        mamba(m, x.clone() + t, x, slot)
                    }
                    (Mixer::Attention(a), _) => a.forward(norm.forward(input(&x)), tables, masks, kv, Some(x)),
                    // `x + mamba(norm(x)) + attention(norm(x))`: the attention adds its output to
                    // the Mamba mixer's sum.
                    (Mixer::Parallel(m, a), _) => {
                        let normed = norm.forward(input(&x));
                        a.forward(normed, tables, masks, kv, Some(mamba(m, x.clone(), x, slot)))
                    }
                }
            }
        };
        let Some(ff) = &self.feed_forward else { return x };
        let input = compute_dtype(&ff.norm);
        let Some(experts) = &ff.experts else { return ff.mlp.forward(&ff.norm, input(&x), Some(x)) };
        // The normalized rows feed the router and the experts; an MLP whose kernel fuses the norm
        // (SwiGLU) normalizes again inside it, one launch at decode, cheaper than an unfused gate
        // and up on these rows; relu² takes these rows.
        let normed = ff.norm.forward(input(&x));
        let residual = x.clone() + experts.forward(normed.clone());
        if ff.mlp.fuses_norm(&ff.norm) {
            ff.mlp.forward(&ff.norm, input(&x), Some(residual))
        } else {
            ff.mlp.forward_on_normed(normed, Some(residual))
        }
    }
}

/// The stream as a sub-block reads it: in the compute dtype (the norm's), whatever the stream's; an
/// f32 stream stays f32 in the adds.
fn compute_dtype<B: BambaOps>(norm: &RmsNorm<B>) -> impl Fn(&Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = norm.weight.dtype();
    move |x: &Tensor<B, 3>| if x.dtype() == dtype { x.clone() } else { x.clone().cast(dtype) }
}
