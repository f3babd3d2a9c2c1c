//! The logits of a prompt: the five likeliest next tokens after it.
//!
//! ```text
//! cargo run --release --example logits -- [MODEL] [PROMPT]
//! ```

use bamba::model::{HubOptions, TextModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model =
        args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/bamba-cli/assets/tiny-bamba").into());
    let prompt = args.next().unwrap_or_else(|| "Around the world in eighty".into());
    let model = TextModel::builder(model).hub(HubOptions::from_env()).load()?;

    let ids = model.encode(&prompt)?;
    let logits = model.logits(&ids)?; // one row per position, `vocab` long, in one buffer
    let last = logits.last().expect("a non-empty prompt");
    let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f32 = last.iter().map(|l| (l - max).exp()).sum();
    let mut ranked: Vec<(usize, f32)> = last.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("{prompt:?} ({} tokens) is followed by:", ids.len());
    for (id, logit) in ranked.into_iter().take(5) {
        let p = (logit - max).exp() / total;
        println!("  {:>6.2}%  {:?} (id {id})", 100.0 * p, model.decode(&[id as u32])?);
    }
    Ok(())
}
