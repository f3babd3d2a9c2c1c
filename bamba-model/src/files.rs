//! Opening checkpoint files defensively: only regular files (a FIFO named `config.json` would block
//! forever, `/dev/zero` would be read until memory runs out), and text files only up to a size limit.
//! Errors are `std::io::Error`s whose message names the problem, so callers keep their own variants.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Largest JSON or tokenizer file read whole (config.json, indexes, tokenizer.json).
pub const TEXT_LIMIT: u64 = 256 << 20;

/// Checks, without opening it, that `path` is a regular file (symlinks followed).
pub fn ensure_regular(path: &Path) -> io::Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta);
    }
    let kind = if meta.is_dir() {
        "a directory"
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        }
        #[cfg(not(unix))]
        {
            "not a regular file"
        }
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{kind}, not a regular file")))
}

/// Opens a regular file for reading.
pub fn open_regular(path: &Path) -> io::Result<File> {
    ensure_regular(path)?;
    File::open(path)
}

/// Reads a regular UTF-8 text file of at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    let meta = ensure_regular(path)?;
    if meta.len() > limit {
        return Err(too_large(meta.len(), limit));
    }
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, limit));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(len: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes, more than the {limit} a file of this kind may have"),
    )
}
