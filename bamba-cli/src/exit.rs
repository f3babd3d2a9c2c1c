//! Exit codes by kind of failure, so that scripts can tell a bad command line from a bad checkpoint
//! from a failure while running: 0 success, 1 runtime (device, server, I/O while running), 2 usage
//! (unknown flags, bad option values: clap's code too), 3 input (checkpoint, config, tokenizer or
//! prompt files and prompts).

use bamba_model::{ConfigError, GenerateError, HubError, InputError, LoadError, SamplingError, TokenizerError};

/// A bad option value, found after parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An error for a bad option value (exit code 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

pub const RUNTIME: u8 = 1;
pub const USAGE: u8 = 2;
pub const INPUT: u8 = 3;

/// The exit code for `error`: the first cause in its chain that has a kind decides.
pub fn code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<UsageError>() || cause.is::<SamplingError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<GenerateError>() {
            return match e {
                GenerateError::Sampling(_) | GenerateError::PrefillChunk => USAGE,
                GenerateError::Input(_) => INPUT,
                GenerateError::Cache(_) | GenerateError::Samplers { .. } | GenerateError::Device(_) => RUNTIME,
            };
        }
        if let Some(e) = cause.downcast_ref::<HubError>() {
            return match e {
                HubError::Download { .. } => RUNTIME,
                _ => INPUT,
            };
        }
        if cause.is::<LoadError>()
            || cause.is::<ConfigError>()
            || cause.is::<TokenizerError>()
            || cause.is::<InputError>()
        {
            return INPUT;
        }
    }
    RUNTIME
}
