//! The Bamba family of Mamba2 and hybrid Mamba2/attention language models (Bamba, Granite 4.0,
//! Mamba2) on Burn, written once over `Backend`.
//!
//! Weights are plain tensors built by [`loader`] straight from a Hugging Face checkpoint (no
//! `Module` record machinery: this crate only runs inference). Hot ops go through
//! [`bamba_kernels::BambaOps`]. Module layout: one block kind per file.

#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod cache;
pub mod config;
pub mod engine;
pub mod files;
pub mod generate;
pub mod hub;
pub mod layer;
pub mod linear;
pub mod loader;
pub mod mamba2;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod names;
pub mod norm;
pub mod padding;
pub mod presets;
pub mod readback;
pub mod rope;
pub mod sampling;
pub mod shared;
pub mod sizes;
pub mod text_model;
pub mod tokenizer;

pub use backend::{BackendError, BackendKind};
pub use bamba_kernels;
pub use cache::{CacheError, HybridCache};
pub use config::{
    Architecture, BambaConfig, ConfigError, FeedForwardPlan, GatedNorm, LayerKind, MlpActivation, MoeConfig,
    ProjectionScales, RopeConfig, Router, SharedBlocks,
};
pub use generate::{FinishReason, GenerateError, GenerateParams, Generation, TokenStream};
pub use hub::{HubError, HubOptions};
pub use loader::{Checkpoint, LoadError, Precision};
pub use model::{BambaModel, InputError, PromptOutputs};
pub use padding::LeftPadding;
pub use readback::DeviceError;
pub use sampling::{Sampler, SamplingError, SamplingParams};
pub use sizes::{MemoryModel, ParameterCounts};
pub use text_model::{Logits, TextGeneration, TextModel, TextModelBuilder, TextModelError, TextOptions, TextPieces};
pub use tokenizer::{StopStrings, StoppingRows, StoppingText, TextStream, TextTokenizer, TokenizerError};
