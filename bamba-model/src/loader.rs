//! Hugging Face safetensors checkpoints: one file or sharded (`model.safetensors.index.json`),
//! memory-mapped, every tensor converted once to the compute dtype on its way to the device.
//!
//! Only one tensor is ever held on the host besides the mapping (which is the page cache), so a
//! 19.6 GB checkpoint loads without two copies. Every tensor the model asks for is checked for
//! presence, shape and dtype; tensors nobody asked for are an error too.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bamba_kernels::BambaOps;
use burn::tensor::{DType, Distribution, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use thiserror::Error;

use crate::config::ConfigError;

/// The dtype weights are converted to and the model computes in (SSM math is f32 regardless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Precision {
    /// Burn's dtype for it.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::F16 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "float16" | "half" => Ok(Precision::F16),
            _ => Err(format!("unknown dtype {s:?} (expected f32, bf16 or f16)")),
        }
    }
}

/// Errors loading a checkpoint.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights(PathBuf),
    #[error("malformed shard index {path}: {message}")]
    Index { path: PathBuf, message: String },
    #[error("malformed or truncated safetensors file {path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor {name} is missing from the checkpoint{}", .file.as_ref().map(|f| format!(" (the index names {})", f.display())).unwrap_or_default())]
    Missing { name: String, file: Option<PathBuf> },
    #[error("tensor {name} appears in both {first} and {second}")]
    Duplicate { name: String, first: PathBuf, second: PathBuf },
    #[error("unexpected tensors the model does not use: {}", .names.join(", "))]
    Unexpected { names: Vec<String> },
    #[error("tensor {name} in {file} has shape {found:?}, expected {expected:?}")]
    Shape { name: String, file: PathBuf, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name} in {file} has dtype {dtype}; expected a float type (F32, BF16 or F16)")]
    Dtype { name: String, file: PathBuf, dtype: String },
    #[error("backend {backend} cannot compute in {precision}; choose another precision (f32 works everywhere)")]
    UnsupportedPrecision { precision: Precision, backend: String },
}

/// One memory-mapped safetensors file with its parsed, validated header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: PathBuf) -> Result<Self, LoadError> {
        let file = crate::files::open_regular(&path).map_err(|source| LoadError::Io { path: path.clone(), source })?;
        // SAFETY: the mapping is read-only; a checkpoint modified while loading is outside our contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io { path: path.clone(), source })?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| LoadError::Safetensors { path: path.clone(), message: e.to_string() })?;
        Ok(Shard { path, mmap, data_start: 8 + header_len, metadata })
    }
}

/// An opened checkpoint: every shard mapped, every tensor name located.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// name → shard index.
    locations: HashMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (files, claimed): (Vec<PathBuf>, HashMap<String, PathBuf>) = if index_path.exists() {
            let text = crate::files::read_text(&index_path, crate::files::TEXT_LIMIT)
                .map_err(|source| LoadError::Io { path: index_path.clone(), source })?;
            let index: ShardIndex = serde_json::from_str(&text)
                .map_err(|e| LoadError::Index { path: index_path.clone(), message: e.to_string() })?;
            let files: BTreeSet<&String> = index.weight_map.values().collect();
            for f in &files {
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(LoadError::Index {
                        path: index_path.clone(),
                        message: format!("shard name {f:?} is not a file name"),
                    });
                }
            }
            let claimed = index.weight_map.iter().map(|(k, v)| (k.clone(), dir.join(v))).collect();
            (files.into_iter().map(|f| dir.join(f)).collect(), claimed)
        } else if single.exists() {
            (vec![single], HashMap::new())
        } else {
            return Err(LoadError::NoWeights(dir.to_path_buf()));
        };

        let shards = files.into_iter().map(Shard::open).collect::<Result<Vec<_>, _>>()?;
        let mut locations = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().keys() {
                if let Some(prev) = locations.insert(name.clone(), i) {
                    return Err(LoadError::Duplicate {
                        name: name.clone(),
                        first: shards[prev].path.clone(),
                        second: shard.path.clone(),
                    });
                }
            }
        }
        // The index must not point at a shard that lacks the tensor.
        for (name, file) in &claimed {
            match locations.get(name) {
                Some(&i) if shards[i].path == *file => {}
                _ => return Err(LoadError::Missing { name: name.clone(), file: Some(file.clone()) }),
            }
        }
        Ok(Checkpoint { shards, locations })
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// Bytes of tensor data in all shards.
    pub fn total_bytes(&self) -> u64 {
        self.names().filter_map(|n| self.view(n)).map(|(_, _, bytes, _)| bytes.len() as u64).sum()
    }

    /// Raw view of one tensor: dtype, shape, bytes, and the file it lives in.
    fn view(&self, name: &str) -> Option<(Dtype, &[usize], &[u8], &Path)> {
        let shard = &self.shards[*self.locations.get(name)?];
        let info = shard.metadata.info(name)?;
        let (a, b) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + a..shard.data_start + b];
        Some((info.dtype, &info.shape, bytes, &shard.path))
    }
}

/// Elements per parallel piece of a conversion: 4 MiB of bf16, large enough that the split costs
/// nothing and small enough that every core gets work on the largest tensors.
const PIECE: usize = 1 << 21;

/// Writes bytes `offset..offset + out.len()` of a tensor held in the checkpoint as `bytes` (dtype
/// `from`, little-endian) and wanted as `target` (native-endian) into `out`, in parallel pieces: a
/// copy when the dtypes match (on little-endian hosts) and `scale` is 1, else a conversion through
/// f32, multiplied by `scale` there (one rounding to `target`). `offset` and `out.len()` are whole
/// `target` elements.
fn convert_into(bytes: &[u8], from: Dtype, target: DType, scale: f32, offset: usize, out: &mut [u8]) {
    let (from_size, to_size) = (from.bitsize() / 8, target.size());
    let first = offset / to_size;
    let source = &bytes[first * from_size..(first + out.len() / to_size) * from_size];
    let same =
        matches!((from, target), (Dtype::BF16, DType::BF16) | (Dtype::F16, DType::F16) | (Dtype::F32, DType::F32));
    if same && scale == 1.0 && cfg!(target_endian = "little") {
        let piece = PIECE * to_size;
        out.par_chunks_mut(piece).zip(source.par_chunks(piece)).for_each(|(out, source)| out.copy_from_slice(source));
        return;
    }
    let read: fn(&[u8]) -> f32 = match from {
        Dtype::F32 => |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        Dtype::BF16 => |c| bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        Dtype::F16 => |c| f16::from_le_bytes([c[0], c[1]]).to_f32(),
        _ => unreachable!("dtype checked by the caller"),
    };
    let write: fn(f32, &mut [u8]) = match target {
        DType::BF16 => |v, o| o.copy_from_slice(&bf16::from_f32(v).to_ne_bytes()),
        DType::F16 => |v, o| o.copy_from_slice(&f16::from_f32(v).to_ne_bytes()),
        _ => |v, o| o.copy_from_slice(&v.to_ne_bytes()),
    };
    out.par_chunks_mut(PIECE * to_size).zip(source.par_chunks(PIECE * from_size)).for_each(|(out, source)| {
        out.chunks_exact_mut(to_size).zip(source.chunks_exact(from_size)).for_each(|(o, c)| write(read(c) * scale, o))
    });
}

/// One contiguous run of an upload assembled from several sources: `bytes` (stored as `from`) times
/// `scale`, filling `len` bytes of the target.
struct Piece<'b> {
    bytes: &'b [u8],
    from: Dtype,
    scale: f32,
    len: usize,
}

/// Writes bytes `offset..offset + out.len()` of the concatenation of `pieces` (converted to `target`)
/// into `out`, which may start inside a piece and span several.
fn fill_pieces(pieces: &[Piece], target: DType, offset: usize, out: &mut [u8]) {
    let (mut skip, mut out) = (offset, out);
    for piece in pieces {
        if out.is_empty() {
            return;
        }
        if skip >= piece.len {
            skip -= piece.len;
            continue;
        }
        let len = (piece.len - skip).min(out.len());
        let (here, rest) = std::mem::take(&mut out).split_at_mut(len);
        convert_into(piece.bytes, piece.from, target, piece.scale, skip, here);
        (skip, out) = (0, rest);
    }
}

/// Where a [`WeightReader`] takes its tensors from.
enum Source<'a> {
    Checkpoint(&'a Checkpoint),
    /// Seeded random values generated on the device (benchmarks of shapes without a checkpoint).
    Random,
}

/// The value range a randomly initialized weight gets, from its name: ones for norms and `D`,
/// Mamba2's initialization ranges for `A_log` (A in [-16, -1]) and `dt_bias` (dt in about
/// [0.01, 0.1]), zero biases, and ±1/√fan_in for matrices. Realistic magnitudes keep activations
/// finite, so a benchmark times the same arithmetic as with real weights.
fn random_range(name: &str, shape: &[usize]) -> (f64, f64) {
    if name.ends_with("norm.weight") || name.ends_with(".D") {
        (1.0, 1.0)
    } else if name.ends_with(".A_log") {
        (0.0, 16f64.ln())
    } else if name.ends_with(".dt_bias") {
        (-4.6, -2.2)
    } else if name.ends_with(".bias") {
        (0.0, 0.0)
    } else {
        let fan_in = shape.last().copied().unwrap_or(1).max(1) as f64;
        (-fan_in.powf(-0.5), fan_in.powf(-0.5))
    }
}

/// Which part of a stored tensor a read takes, and the factor it is multiplied by.
#[derive(Debug, Clone, Copy)]
struct Part {
    /// `(first, count)` rows of dim 0; `None` is the whole tensor.
    rows: Option<(usize, usize)>,
    scale: f32,
}

impl Part {
    const WHOLE: Part = Part { rows: None, scale: 1.0 };
}

/// Reads tensors out of a [`Checkpoint`] (or generates them, see [`WeightReader::random`]) onto a
/// device, tracking which ones were used.
pub struct WeightReader<'a, B: BambaOps> {
    source: Source<'a>,
    device: B::Device,
    dtype: DType,
    used: BTreeSet<String>,
    /// Called with the bytes of each tensor read (a progress bar).
    on_read: Option<&'a mut dyn FnMut(u64)>,
}

impl<'a, B: BambaOps> WeightReader<'a, B> {
    /// Reads tensors of `checkpoint` onto `device`, converted to `dtype`.
    pub fn new(checkpoint: &'a Checkpoint, device: B::Device, dtype: DType) -> Self {
        WeightReader { source: Source::Checkpoint(checkpoint), device, dtype, used: BTreeSet::new(), on_read: None }
    }

    /// A reader that makes up every tensor asked for: uniform values in `random_range`, drawn on
    /// the device from a generator seeded with `seed` (same seed and backend, same weights).
    pub fn random(device: B::Device, dtype: DType, seed: u64) -> Self {
        B::seed(&device, seed);
        WeightReader { source: Source::Random, device, dtype, used: BTreeSet::new(), on_read: None }
    }

    /// Reports the bytes of every tensor read to `on_read`.
    pub fn with_progress(mut self, on_read: &'a mut dyn FnMut(u64)) -> Self {
        self.on_read = Some(on_read);
        self
    }

    fn read<const D: usize>(
        &mut self,
        name: &str,
        file_shape: &[usize],
        shape: [usize; D],
        dtype: DType,
        part: Part,
    ) -> Result<Tensor<B, D>, LoadError> {
        let Source::Checkpoint(_) = self.source else {
            return Ok(self.made_up(name, file_shape, shape, dtype, part.scale));
        };
        let (from, bytes) = self.checked_bytes(name, file_shape, part.rows)?;
        let mut fill = |offset: usize, out: &mut [u8]| convert_into(bytes, from, dtype, part.scale, offset, out);
        Ok(B::upload_weight(shape, dtype, &mut fill, &self.device))
    }

    /// Seeded uniform values in `random_range` of `name` (scaled), for [`Source::Random`].
    fn made_up<const D: usize>(
        &self,
        name: &str,
        file_shape: &[usize],
        shape: [usize; D],
        dtype: DType,
        scale: f32,
    ) -> Tensor<B, D> {
        let (low, high) = random_range(name, file_shape);
        let (low, high) = (low * scale as f64, high * scale as f64);
        if low == high {
            Tensor::full(shape, low, (&self.device, dtype))
        } else {
            // Drawn in f32 (every backend has it), stored in the target dtype.
            Tensor::<B, D>::random(shape, Distribution::Uniform(low, high), (&self.device, DType::F32)).cast(dtype)
        }
    }

    /// The stored bytes of `name` (rows `first .. first + count` of dim 0 if `rows` says so), after
    /// checking its dtype and that its shape is `file_shape`; marks it read and reports its size.
    fn checked_bytes(
        &mut self,
        name: &str,
        file_shape: &[usize],
        rows: Option<(usize, usize)>,
    ) -> Result<(Dtype, &'a [u8]), LoadError> {
        let Source::Checkpoint(checkpoint) = self.source else {
            unreachable!("only a checkpoint holds bytes");
        };
        let (from, found, bytes, path) =
            checkpoint.view(name).ok_or_else(|| LoadError::Missing { name: name.to_string(), file: None })?;
        if !matches!(from, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(LoadError::Dtype { name: name.into(), file: path.into(), dtype: format!("{from:?}") });
        }
        if found != file_shape {
            return Err(LoadError::Shape {
                name: name.into(),
                file: path.into(),
                expected: file_shape.to_vec(),
                found: found.to_vec(),
            });
        }
        self.used.insert(name.to_string());
        // Rows `first .. first + count` of dim 0 are one contiguous run of the row-major tensor.
        let row_bytes = bytes.len() / file_shape.first().copied().unwrap_or(1).max(1);
        let bytes = match rows {
            Some((first, count)) => &bytes[first * row_bytes..(first + count) * row_bytes],
            None => bytes,
        };
        if let Some(on_read) = self.on_read.as_mut() {
            on_read(bytes.len() as u64);
        }
        Ok((from, bytes))
    }

    /// `scale ·` the tensors `names`, each of shape `[shape[1], shape[2]]`, stacked along a new
    /// dim 0 of length `names.len()` (per-expert weights as one `[experts, out, in]` tensor):
    /// converted straight into the one upload, with no per-part tensors and no copy to join them.
    pub fn tensor_stacked(
        &mut self,
        names: &[String],
        shape: [usize; 3],
        scale: f64,
    ) -> Result<Tensor<B, 3>, LoadError> {
        let (part_shape, dtype, scale) = ([shape[1], shape[2]], self.dtype, scale as f32);
        assert_eq!(names.len(), shape[0], "one name per stacked part");
        let Source::Checkpoint(_) = self.source else {
            return Ok(self.made_up(&names[0], &part_shape, shape, dtype, scale));
        };
        let parts =
            names.iter().map(|name| self.checked_bytes(name, &part_shape, None)).collect::<Result<Vec<_>, _>>()?;
        let part_bytes = shape[1] * shape[2] * dtype.size();
        let pieces: Vec<Piece> =
            parts.into_iter().map(|(from, bytes)| Piece { bytes, from, scale, len: part_bytes }).collect();
        let mut fill = |offset: usize, out: &mut [u8]| fill_pieces(&pieces, dtype, offset, out);
        Ok(B::upload_weight(shape, dtype, &mut fill, &self.device))
    }

    /// A tensor whose consecutive ranges of rows (dim 0) are multiplied by their own scales:
    /// `segments` lists `(rows, scale)` in order and covers every row (Falcon-H1's `ssm_multipliers`
    /// over the z, x, B, C, dt rows of `in_proj`). Converted straight into the one upload.
    pub fn tensor_row_scaled<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        segments: &[(usize, f64)],
    ) -> Result<Tensor<B, D>, LoadError> {
        let dtype = self.dtype;
        assert_eq!(segments.iter().map(|s| s.0).sum::<usize>(), shape[0], "segments cover every row");
        let Source::Checkpoint(_) = self.source else {
            return Ok(self.made_up(name, &shape, shape, dtype, 1.0));
        };
        let (from, bytes) = self.checked_bytes(name, &shape, None)?;
        let row_bytes = bytes.len() / shape[0].max(1);
        let mut first = 0;
        let pieces: Vec<Piece> = segments
            .iter()
            .map(|&(rows, scale)| {
                let piece = Piece {
                    bytes: &bytes[first * row_bytes..(first + rows) * row_bytes],
                    from,
                    scale: scale as f32,
                    len: rows * (row_bytes / (from.bitsize() / 8)) * dtype.size(),
                };
                first += rows;
                piece
            })
            .collect();
        let mut fill = |offset: usize, out: &mut [u8]| fill_pieces(&pieces, dtype, offset, out);
        Ok(B::upload_weight(shape, dtype, &mut fill, &self.device))
    }

    /// A tensor of exactly `shape`, in the compute dtype.
    pub fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>, LoadError> {
        self.read(name, &shape, shape, self.dtype, Part::WHOLE)
    }

    /// `scale ·` a tensor of exactly `shape`, multiplied in f32 before the one rounding to the compute
    /// dtype: how a constant multiplier after a linear layer (Granite's residual and attention
    /// multipliers) is folded into its weights.
    pub fn tensor_scaled<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        scale: f64,
    ) -> Result<Tensor<B, D>, LoadError> {
        self.read(name, &shape, shape, self.dtype, Part { rows: None, scale: scale as f32 })
    }

    /// Rows `first .. first + shape[0]` (dim 0) of a tensor stored as `file_shape`: one half of a fused
    /// `[gate|up]` projection. Reading every row of a tensor in parts counts it as read.
    pub fn tensor_rows<const D: usize>(
        &mut self,
        name: &str,
        file_shape: &[usize],
        first: usize,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        self.read(name, file_shape, shape, self.dtype, Part { rows: Some((first, shape[0])), scale: 1.0 })
    }

    /// A tensor of exactly `shape`, kept in f32 whatever the compute dtype (SSM parameters).
    pub fn tensor_f32<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>, LoadError> {
        self.read(name, &shape, shape, DType::F32, Part::WHOLE)
    }

    /// A tensor stored as `file_shape`, reshaped to `shape` (same element count).
    pub fn tensor_reshaped<const D: usize>(
        &mut self,
        name: &str,
        file_shape: &[usize],
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        self.read(name, file_shape, shape, self.dtype, Part::WHOLE)
    }

    /// Marks every tensor whose name starts with `prefix` as deliberately ignored.
    pub fn skip_prefix(&mut self, prefix: &str) {
        if let Source::Checkpoint(c) = self.source {
            let names = c.locations.keys().filter(|name| name.starts_with(prefix)).cloned();
            self.used.extend(names);
        }
    }

    /// Marks a tensor as deliberately ignored, if present.
    pub fn skip(&mut self, name: &str) {
        if matches!(self.source, Source::Checkpoint(c) if c.locations.contains_key(name)) {
            self.used.insert(name.to_string());
        }
    }

    /// Fails if the checkpoint holds tensors that were never read.
    pub fn finish(self) -> Result<(), LoadError> {
        let Source::Checkpoint(checkpoint) = self.source else { return Ok(()) };
        let mut names: Vec<String> = checkpoint.names().filter(|n| !self.used.contains(*n)).map(String::from).collect();
        if names.is_empty() {
            return Ok(());
        }
        names.sort();
        Err(LoadError::Unexpected { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Every dtype pair, on more elements than one parallel piece and from an odd byte offset (a
    /// safetensors header can leave the data unaligned), whole and in pieces, against
    /// element-by-element conversion.
    #[test]
    fn conversion_matches_element_by_element() {
        let n = PIECE + 3;
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        let encode = |dtype: Dtype| -> Vec<u8> {
            let mut bytes = vec![0xAB]; // one byte of misalignment
            for &v in &values {
                match dtype {
                    Dtype::F32 => bytes.extend(v.to_le_bytes()),
                    Dtype::BF16 => bytes.extend(bf16::from_f32(v).to_le_bytes()),
                    _ => bytes.extend(f16::from_f32(v).to_le_bytes()),
                }
            }
            bytes
        };
        for from in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            let bytes = encode(from);
            let stored: Vec<f32> = match from {
                Dtype::F32 => values.clone(),
                Dtype::BF16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
                _ => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
            };
            for target in [DType::F32, DType::BF16, DType::F16] {
                let size = target.size();
                let mut whole = vec![0u8; n * size];
                convert_into(&bytes[1..], from, target, 1.0, 0, &mut whole);
                // In two pieces, as the pinned upload asks for them, split off a parallel-piece boundary.
                let mut pieces = vec![0u8; n * size];
                let split = (PIECE / 2 + 1) * size;
                let (first, second) = pieces.split_at_mut(split);
                convert_into(&bytes[1..], from, target, 1.0, 0, first);
                convert_into(&bytes[1..], from, target, 1.0, split, second);
                assert!(pieces == whole, "{from:?} → {target:?}: pieces differ from the whole");
                let data = TensorData::from_bytes_vec(whole, [n], target);
                match target {
                    DType::F32 => assert_eq!(data.to_vec::<f32>().unwrap(), stored),
                    DType::BF16 => assert_eq!(
                        data.to_vec::<bf16>().unwrap(),
                        stored.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()
                    ),
                    _ => assert_eq!(
                        data.to_vec::<f16>().unwrap(),
                        stored.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()
                    ),
                }
            }
        }
    }
}
