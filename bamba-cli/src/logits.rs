//! `bamba logits`: every position's logits for one prompt, written as a safetensors file; with
//! `--hidden-states` also the hidden state after every layer.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use safetensors::tensor::{Dtype, TensorView};

use crate::backend::{dispatch, BackendJob};
use crate::load::load_model;
use crate::LogitsArgs;

/// Named f32 tensors: values and shape.
type Outputs = Vec<(String, Vec<f32>, Vec<usize>)>;

struct LogitsJob<'a>(&'a LogitsArgs);

impl BackendJob for LogitsJob<'_> {
    type Output = Outputs;
    fn run<B: BambaOps>(self, device: B::Device) -> Result<Self::Output> {
        let args = self.0;
        let precision = args.common.precision()?;
        let dir = args.common.model_dir()?;
        let (model, load_time) = load_model::<B>(&dir, &device, precision)?;
        eprintln!("loaded {} on {} as {precision} in {load_time:.2?}", dir.display(), B::name(&device));
        // one pass for both (the hidden states are read back after each layer)
        let run = model.prompt_outputs(&args.prompt_ids, args.hidden_states)?;
        let mut outputs = vec![("logits".to_string(), run.logits, run.shape.to_vec())];
        let shape = vec![args.prompt_ids.len(), model.config.hidden_size];
        for (i, state) in run.hidden_states.into_iter().enumerate() {
            outputs.push((format!("hidden.{i}"), state, shape.clone()));
        }
        Ok(outputs)
    }
}

pub fn run(args: &LogitsArgs) -> Result<()> {
    let outputs = dispatch(args.common.backend()?, LogitsJob(args))?;
    let bytes: Vec<Vec<u8>> =
        outputs.iter().map(|(_, values, _)| values.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut tensors = HashMap::new();
    for ((name, _, shape), bytes) in outputs.iter().zip(&bytes) {
        tensors.insert(name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?);
    }
    safetensors::serialize_to_file(tensors, None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} to {}",
        outputs.iter().map(|(n, _, s)| format!("{n} {s:?}")).collect::<Vec<_>>().join(", "),
        args.out.display()
    );
    Ok(())
}
