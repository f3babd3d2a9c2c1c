//! Generate for several prompts in one batch, with seeded sampling, and print each text.
//!
//! ```text
//! cargo run --release --example batch -- [MODEL]
//! ```

use bamba::model::{HubOptions, SamplingParams, TextModel, TextOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/bamba-cli/assets/tiny-bamba").into());
    let model = TextModel::builder(model).hub(HubOptions::from_env()).load()?;

    let prompts = ["Phileas Fogg", "The steamer", "Passepartout said"];
    let sampling = SamplingParams { temperature: 0.8, top_p: Some(0.95), seed: 42, ..SamplingParams::default() };
    let options = TextOptions::default().max_new_tokens(32).sampling(sampling);
    // One left-padded batch: each row gives what it would alone.
    for (prompt, out) in prompts.iter().zip(model.generate_batch(&prompts, &options)?) {
        println!("{prompt}{} [{} tokens, {:?}]", out.text, out.ids.len(), out.finish);
    }
    Ok(())
}
