//! Zamba2's shared blocks: a few attention + MLP blocks whose weights the `hybrid` layers share.
//! Use `u` runs block `u % count` on `concat(h, embeddings)` with its own low-rank adapters on q, k,
//! v and the MLP's gate|up, then its own linear; the result joins the layer's Mamba2 input.
//!
//! The checkpoint holds each block once, under its first use
//! (`model.layers.{first}.shared_transformer.*`, the adapters of all its uses in lists indexed by
//! use); a use's linear is `model.layers.{layer}.linear`.

use bamba_kernels::BambaOps;
use burn::tensor::Tensor;

use crate::attention::{query_scale, Attention, QkvAdapters};
use crate::cache::KvCache;
use crate::config::{BambaConfig, LayerKind, SharedBlocks};
use crate::linear::{Linear, Lora};
use crate::loader::{LoadError, WeightReader};
use crate::mlp::{GateUpAdapter, Mlp};
use crate::names::TensorNames;
use crate::norm::RmsNorm;
use crate::padding::ChunkMasks;
use crate::rope::RopeTables;

/// One shared block's weights (held once; each use clones the handles, not the data).
#[derive(Debug, Clone)]
pub struct SharedBlock<B: BambaOps> {
    /// Pre-norm over `concat(h, embeddings)` (`2 · hidden` wide).
    pub norm: RmsNorm<B>,
    /// Attention from `2 · hidden` channels back to `hidden`, no residual.
    pub attention: Attention<B>,
    /// Pre-norm of the MLP.
    pub ff_norm: RmsNorm<B>,
    /// The MLP, no residual.
    pub mlp: Mlp<B>,
    /// Where the block is stored: `model.layers.{first use}.shared_transformer`.
    prefix: String,
}

/// The shared-block layers, in order: `(layer index, use index)`.
fn uses(c: &BambaConfig) -> impl Iterator<Item = (usize, usize)> + '_ {
    c.layer_kinds.iter().enumerate().filter(|(_, &k)| k == LayerKind::Shared).map(|(layer, _)| layer).zip(0..)
}

impl<B: BambaOps> SharedBlock<B> {
    /// Reads every block the config's layers use (`num_mem_blocks`, or fewer when there are fewer
    /// uses). A copy of a block stored under a later use is ignored, as transformers' tying does.
    pub fn load_all(w: &mut WeightReader<'_, B>, c: &BambaConfig) -> Result<Vec<Self>, LoadError> {
        let Some(shared) = c.shared_blocks else { return Ok(vec![]) };
        let names = TensorNames::of(c.architecture);
        for (layer, _) in uses(c).skip(shared.count) {
            w.skip_prefix(&format!("{}.{layer}.shared_transformer.", names.layers));
        }
        uses(c)
            .take(shared.count)
            .map(|(layer, _)| {
                let prefix = format!("{}.{layer}.shared_transformer", names.layers);
                let norm = |w: &mut WeightReader<'_, B>, name: &str, size| {
                    RmsNorm::load(w, &format!("{prefix}.{name}.weight"), size, c.rms_norm_eps, c.norm_weight_f32)
                };
                Ok(SharedBlock {
                    norm: norm(w, names.input_norm, c.attention_input())?,
                    attention: Attention::load(w, &format!("{prefix}.{}", names.attention), c)?,
                    ff_norm: norm(w, names.feed_forward_norm, c.hidden_size)?,
                    mlp: Mlp::load(w, &prefix, names.mlp, c.intermediate_size, c)?,
                    prefix,
                })
            })
            .collect()
    }
}

/// One use of a shared block: the block's weights, this use's adapters and linear.
#[derive(Debug, Clone)]
pub struct SharedUse<B: BambaOps> {
    /// The block, with this use's adapters set on its attention and MLP.
    pub block: SharedBlock<B>,
    /// `[hidden] → [hidden]`, after the block.
    pub linear: Linear<B>,
}

impl<B: BambaOps> SharedUse<B> {
    /// Reads the adapters and linear of layer `layer` (a shared-block layer) onto its block.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        blocks: &[SharedBlock<B>],
        layer: usize,
        c: &BambaConfig,
        shared: SharedBlocks,
    ) -> Result<Self, LoadError> {
        let index = uses(c).find(|&(l, _)| l == layer).map(|(_, u)| u).expect("a shared-block layer");
        let mut block = blocks[index % shared.count].clone();
        let (wide, rank, width) = (c.attention_input(), shared.adapter_rank, c.intermediate_size);
        let p = &block.prefix;
        if shared.attention_adapters {
            let lora = |w: &mut WeightReader<'_, B>, name: &str, scale| {
                Lora::load(w, &format!("{p}.self_attn.linear_{name}_adapter_list.{index}"), [wide, rank, wide], scale)
            };
            block.attention.adapters =
                Some(QkvAdapters { q: lora(w, "q", query_scale(c))?, k: lora(w, "k", 1.0)?, v: lora(w, "v", 1.0)? });
        }
        // The adapter's `up` is `[2·width, rank]`: the gate's rows above up's, as in gate_up_proj.
        let name = format!("{p}.feed_forward.gate_up_proj_adapter_list.{index}");
        let down = Linear::load(w, &format!("{name}.0"), c.hidden_size, rank, false)?;
        let up = format!("{name}.1.weight");
        block.mlp.adapter = Some(GateUpAdapter {
            down,
            gate: Linear::load_rows(w, &up, [2 * width, rank], 0, width)?,
            up: Linear::load_rows(w, &up, [2 * width, rank], width, width)?,
        });
        let names = TensorNames::of(c.architecture);
        let (h, linear) = (c.hidden_size, format!("{}.{layer}.linear", names.layers));
        Ok(SharedUse { block, linear: Linear::load(w, &linear, h, h, false)? })
    }

    /// The block's contribution to the Mamba input: `linear(mlp(attention(concat(h, embeddings))))`,
    /// each with its pre-norm, no residuals.
    ///
    /// # Shapes
    /// - `h`, `embeddings`: `[batch, len, hidden]` → `[batch, len, hidden]`
    pub fn forward(
        &self,
        h: Tensor<B, 3>,
        embeddings: Tensor<B, 3>,
        tables: Option<&RopeTables<B>>,
        masks: &ChunkMasks<B>,
        kv: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let b = &self.block;
        let wide = Tensor::cat(vec![h, embeddings], 2);
        let attended = b.attention.forward(b.norm.forward(wide), tables, masks, kv, None);
        self.linear.forward(b.mlp.forward(&b.ff_norm, attended, None))
    }
}
