//! The hybrid cache, kept outside the model: per Mamba mixer a conv window and an SSM state, per
//! attention a preallocated KV cache (a Falcon-H1 layer holds both), and one position counter for
//! the whole stack.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use thiserror::Error;

use crate::config::{BambaConfig, LayerKind};
use crate::mamba2::MambaState;
use crate::padding::LeftPadding;
use crate::rope::RopeTables;

mod rows;

pub(crate) use rows::row_index;
mod snapshot;

pub use snapshot::{KvSpan, RowState};

/// Errors using a cache.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CacheError {
    #[error(
        "the cache holds {capacity} positions; {needed} are needed (prompt + new tokens). Ask for a larger capacity"
    )]
    Full { needed: usize, capacity: usize },
    #[error("the cache was made for batch {cache}, the input has batch {input}")]
    Batch { cache: usize, input: usize },
    #[error("backend {backend} cannot store the SSM state in {dtype}")]
    StateDtype { dtype: String, backend: String },
    #[error("left padding is set before the first token, for every row (batch {batch}, got {rows} rows)")]
    Padding { batch: usize, rows: usize },
}

/// Keys and values of one attention layer, preallocated to the cache capacity.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// `[batch, kv_heads, capacity, head_dim]`, rotated keys.
    pub(crate) k: Tensor<B, 4>,
    /// `[batch, kv_heads, capacity, head_dim]`.
    pub(crate) v: Tensor<B, 4>,
    /// Filled positions.
    pub(crate) len: usize,
}

impl<B: Backend> KvCache<B> {
    fn new(batch: usize, kv_heads: usize, capacity: usize, head_dim: usize, device: &B::Device, dtype: DType) -> Self {
        let shape = [batch, kv_heads, capacity, head_dim];
        KvCache { k: Tensor::zeros(shape, (device, dtype)), v: Tensor::zeros(shape, (device, dtype)), len: 0 }
    }

    /// Writes `k`, `v` at the next positions (in place: the cache holds the only handle) and returns
    /// views of everything cached so far.
    ///
    /// # Shapes
    /// - `k`, `v`: `[batch, kv_heads, len, head_dim]` → two `[batch, kv_heads, filled, head_dim]`
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.write(k, v);
        self.filled()
    }

    /// Writes one position like [`KvCache::append`] but returns the whole preallocated buffers
    /// `[batch, kv_heads, capacity, head_dim]` and the filled length: decode attends over a shape that
    /// does not change from step to step (Burn tunes and compiles its matmul per shape).
    pub fn append_whole(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>, usize) {
        self.write(k, v);
        (self.k.clone(), self.v.clone(), self.len)
    }

    /// Writes `k`, `v` at the next positions, in place (the cache holds the only handle).
    fn write(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let [b, h, len, d] = k.dims();
        let (start, end) = (self.len, self.len + len);
        self.k.inplace(|t| t.slice_assign([0..b, 0..h, start..end, 0..d], k));
        self.v.inplace(|t| t.slice_assign([0..b, 0..h, start..end, 0..d], v));
        self.len = end;
    }

    /// Views of the filled part: `[batch, kv_heads, len, head_dim]` keys and values.
    pub fn filled(&self) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (self.k.clone().narrow(2, 0, self.len), self.v.clone().narrow(2, 0, self.len))
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The cache of one layer: what its mixers keep (nothing in a feed-forward layer).
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// The Mamba mixer's slot, `None` in a layer without one; the slot is `None` until the first
    /// token (a zero state).
    pub mamba: Option<Option<MambaState<B>>>,
    /// The attention's keys and values, `None` in a layer without attention.
    pub kv: Option<KvCache<B>>,
}

impl<B: Backend> LayerCache<B> {
    /// The Mamba state, if the layer has a Mamba mixer that has run.
    pub fn mamba_state(&self) -> Option<&MambaState<B>> {
        self.mamba.as_ref().and_then(Option::as_ref)
    }
}

/// The cache of the whole model for a batch of sequences.
#[derive(Debug, Clone)]
///
/// Its fields move together (the position, every layer's length, the padding), so they change only
/// through the model's forwards and the methods here; read them with the accessors.
pub struct HybridCache<B: Backend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    /// Positions already consumed (the next token's position).
    pub(crate) position: usize,
    pub(crate) capacity: usize,
    pub(crate) batch: usize,
    /// Storage dtype of the SSM state between steps (the math is f32 either way).
    pub(crate) state_dtype: DType,
    /// Leading pad tokens of each row (all zero unless the batch was left-padded).
    pub(crate) padding: LeftPadding,
    /// What [`HybridCache::assume_filled`] needs to make zero Mamba states.
    zero_state: ZeroState<B>,
    /// RoPE's cos/sin for every position `0 .. capacity` (`[1, 1, capacity, rotary_dim]`), made on the
    /// device once by [`crate::BambaModel::new_cache`]: a step without padding takes a view of its
    /// positions instead of building and uploading its own tables (two uploads per decode step).
    pub(crate) rope_tables: Option<RopeTables<B>>,
    /// The slot the prefill now running through this cache ends at (0: none), set by
    /// [`HybridCache::set_prefill_end`].
    pub(crate) prefill_end: usize,
}

/// The shapes, dtype and device of a Mamba layer's state for this cache.
#[derive(Debug, Clone)]
struct ZeroState<B: Backend> {
    /// `[batch, conv_dim, d_conv - 1]`, in `dtype`.
    window: [usize; 3],
    /// `[batch, heads, head_dim, d_state]`, in the cache's `state_dtype`.
    ssm: [usize; 4],
    dtype: DType,
    device: B::Device,
}

impl<B: Backend> HybridCache<B> {
    /// A cache for `batch` sequences of up to `capacity` positions; KV in `dtype`, SSM state kept in
    /// `state_dtype` (f32 unless memory traffic matters more than the last bits).
    pub fn new(
        config: &BambaConfig,
        batch: usize,
        capacity: usize,
        device: &B::Device,
        dtype: DType,
        state_dtype: DType,
    ) -> Result<Self, CacheError> {
        if !B::supports_dtype(device, state_dtype) {
            return Err(CacheError::StateDtype {
                dtype: format!("{state_dtype:?}").to_lowercase(),
                backend: B::name(device),
            });
        }
        let layers = config
            .layer_kinds
            .iter()
            .map(|kind: &LayerKind| LayerCache {
                mamba: kind.has_mamba().then_some(None),
                kv: kind
                    .has_attention()
                    .then(|| KvCache::new(batch, config.num_kv_heads, capacity, config.head_dim, device, dtype)),
            })
            .collect();
        let zero_state = ZeroState {
            window: [batch, config.conv_dim(), config.mamba_d_conv - 1],
            ssm: [batch, config.mamba_n_heads, config.mamba_d_head, config.mamba_d_state],
            dtype,
            device: device.clone(),
        };
        Ok(HybridCache {
            layers,
            position: 0,
            capacity,
            batch,
            state_dtype,
            padding: LeftPadding { pads: vec![0; batch] },
            zero_state,
            rope_tables: None,
            prefill_end: 0,
        })
    }

    /// Marks a prompt that runs through this cache in several chunks as ending at slot `end`: RoPE
    /// whose frequencies depend on the sequence's length (dynamic NTK, LongRoPE) then uses the whole
    /// prompt's length for every chunk, as one forward over the prompt does in transformers. Later
    /// forwards past `end` (decode steps) use their own length.
    pub fn set_prefill_end(&mut self, end: usize) {
        self.prefill_end = end;
    }

    /// The device the cache lives on.
    pub fn device(&self) -> &B::Device {
        &self.zero_state.device
    }

    /// Each layer's cache, in layer order.
    pub fn layers(&self) -> &[LayerCache<B>] {
        &self.layers
    }

    /// Positions already consumed by every row (the next token's position, padding included).
    pub fn position(&self) -> usize {
        self.position
    }

    /// The most positions a row can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows (sequences) in the cache.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Storage dtype of the SSM state between steps.
    pub fn state_dtype(&self) -> DType {
        self.state_dtype
    }

    /// Leading pad tokens of each row.
    pub fn padding(&self) -> &LeftPadding {
        &self.padding
    }

    /// Checks that `len` more positions fit, for a batch of `batch`.
    pub fn check(&self, batch: usize, len: usize) -> Result<(), CacheError> {
        if batch != self.batch {
            return Err(CacheError::Batch { cache: self.batch, input: batch });
        }
        let needed = self.position + len;
        if needed > self.capacity {
            return Err(CacheError::Full { needed, capacity: self.capacity });
        }
        Ok(())
    }

    /// Declares that row `r` starts with `padding.pads[r]` pad tokens. Only before the first token.
    pub fn set_padding(&mut self, padding: LeftPadding) -> Result<(), CacheError> {
        if self.position != 0 || padding.pads.len() != self.batch {
            return Err(CacheError::Padding { batch: self.batch, rows: padding.pads.len() });
        }
        self.padding = padding;
        Ok(())
    }

    /// Declares the first `context` positions of every row consumed without computing them, so that
    /// decode can be timed at a given context without its prefill (`bamba bench`'s `tg N @ dD`): KV
    /// caches count them as filled (their contents stay as they are, zeros in a fresh cache), and
    /// Mamba layers without a state get a zero one, as every layer has one after a prefill (else the
    /// first step would take the chunked path). Decode then runs and reads exactly what it would
    /// after a real prefill; its outputs mean nothing.
    pub fn assume_filled(&mut self, context: usize) -> Result<(), CacheError> {
        self.check(self.batch, context)?;
        self.position = context;
        let z = &self.zero_state;
        for layer in &mut self.layers {
            if let Some(kv) = &mut layer.kv {
                kv.len = context;
            }
            if let Some(state @ None) = &mut layer.mamba {
                *state = Some(MambaState {
                    conv_window: Tensor::zeros(z.window, (&z.device, z.dtype)),
                    ssm: Tensor::zeros(z.ssm, (&z.device, self.state_dtype)),
                });
            }
        }
        Ok(())
    }

    /// Forgets every sequence: states to zero, KV caches empty (buffers kept), no padding.
    pub fn reset(&mut self) {
        self.position = 0;
        self.prefill_end = 0;
        self.padding = LeftPadding { pads: vec![0; self.batch] };
        for layer in &mut self.layers {
            if let Some(state) = &mut layer.mamba {
                *state = None;
            }
            if let Some(kv) = &mut layer.kv {
                kv.len = 0;
            }
        }
    }
}
