//! Load a checkpoint and stream generated text to stdout as it is produced.
//!
//! ```text
//! cargo run --release --example stream -- [MODEL] [PROMPT]
//! ```
//! MODEL is a checkpoint directory or a Hugging Face repo id (from the local cache, or downloaded);
//! default: the tiny model in `bamba-cli/assets/tiny-bamba`.

use std::io::Write;

use bamba::model::{HubOptions, TextModel, TextOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model =
        args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/bamba-cli/assets/tiny-bamba").into());
    let prompt = args.next().unwrap_or_else(|| "Phileas Fogg".into());

    // Hugging Face's environment (HF_HUB_CACHE, HF_HUB_OFFLINE, ...) decides where repo ids are found.
    let model = TextModel::builder(model).hub(HubOptions::from_env()).load()?;
    eprintln!("loaded {} on {} in {}", model.dir().display(), model.backend(), model.precision());

    let options = TextOptions::default().max_new_tokens(48).stop(["\n\n"]);
    print!("{prompt}");
    for piece in model.stream(&prompt, &options)? {
        print!("{}", piece?);
        std::io::stdout().flush()?;
    }
    println!();
    Ok(())
}
