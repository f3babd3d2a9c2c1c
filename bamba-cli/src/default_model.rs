//! The tiny Bamba shipped inside the binary, used when `--model` is not given: 4 layers (one of them
//! attention), 0.8 M parameters and a 512-token byte-level BPE tokenizer, trained for a few minutes
//! on "Around the World in Eighty Days" by `scripts/train_tiny.py`. It writes Verne-flavoured
//! near-English; it is there so that the engine runs end to end on a fresh machine.

use std::path::PathBuf;

use anyhow::{Context, Result};

const FILES: [(&str, &[u8]); 5] = [
    ("config.json", include_bytes!("../assets/tiny-bamba/config.json")),
    ("generation_config.json", include_bytes!("../assets/tiny-bamba/generation_config.json")),
    ("model.safetensors", include_bytes!("../assets/tiny-bamba/model.safetensors")),
    ("tokenizer.json", include_bytes!("../assets/tiny-bamba/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../assets/tiny-bamba/tokenizer_config.json")),
];

/// FNV-1a over the embedded files, so that a binary with other weights never reads a stale copy.
fn fingerprint() -> u64 {
    FILES
        .iter()
        .flat_map(|(name, bytes)| name.bytes().chain(bytes.iter().copied()))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The embedded checkpoint as a directory (written once into the temp dir; loaders read directories).
pub fn directory() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bamba-tiny-{:016x}", fingerprint()));
    if FILES.iter().all(|(name, bytes)| std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() == bytes.len() as u64))
    {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in FILES {
        // write then rename: concurrent runs never see a half-written file
        let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
        std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, dir.join(name)).with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(dir)
}
