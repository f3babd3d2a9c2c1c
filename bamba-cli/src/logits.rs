//! `bamba logits`: every position's logits for one prompt, written as a safetensors file.

use std::collections::HashMap;

use anyhow::{Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use safetensors::tensor::{Dtype, TensorView};

use crate::backend::{dispatch, BackendJob};
use crate::load::load_model;
use crate::LogitsArgs;

struct LogitsJob<'a>(&'a LogitsArgs);

impl BackendJob for LogitsJob<'_> {
    type Output = (Vec<f32>, [usize; 2]);
    fn run<B: BambaOps>(self, device: B::Device) -> Result<Self::Output> {
        let args = self.0;
        let precision = args.common.precision()?;
        let dir = args.common.model_dir()?;
        let (model, load_time) = load_model::<B>(&dir, &device, precision)?;
        eprintln!("loaded {} on {} as {precision} in {load_time:.2?}", dir.display(), B::name(&device));
        Ok(model.prompt_logits(&args.prompt_ids)?)
    }
}

pub fn run(args: &LogitsArgs) -> Result<()> {
    let (values, shape) = dispatch(args.common.backend()?, LogitsJob(args))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes)?;
    let tensors = HashMap::from([("logits".to_string(), view)]);
    safetensors::serialize_to_file(tensors, None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits {:?} to {}", shape, args.out.display());
    Ok(())
}
