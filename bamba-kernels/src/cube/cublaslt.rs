//! The CUDA fast path for large products: cuBLASLt through `cudarc`, on the buffers CubeCL owns.
//!
//! Burn 0.21's matmul reaches ~30% of cuBLAS on the prefill GEMMs of the Bamba-9B shape on the H200.
//! No CubeCL tensor-core kernel of ours gets closer yet, so on CUDA a product of at least
//! [`MIN_MACS`] multiply-adds runs cuBLASLt.
//!
//! Each product is queued from CubeCL's server thread (`ComputeClient::exclusive`), after everything
//! queued before it: its operands' addresses cost no round trip to that thread each, and it goes on
//! the CUDA stream of CubeCL's last command there, the caller's stream (the patched `cubecl-cuda`
//! exposes it, third_party/README.md), in order with CubeCL's kernels: no host sync, no barrier across
//! streams. (Waiting on the host for CubeCL's queue and then for a stream of our own around each
//! product drains the GPU: decode batches and short prompts then ran slower than Burn's kernels.)
//! f32 runs with full f32 compute (`CUBLAS_COMPUTE_32F`, not TF32); 16-bit operands accumulate in
//! f32.
//!
//! Anything this path does not handle (another runtime, mixed dtypes, a layout that is neither row-
//! nor column-major, a cuBLASLt error) returns `None` and the caller runs Burn's matmul; an error is
//! reported once on stderr. [`set_enabled`]`(false)` turns the path off (for same-run comparisons).

use core::any::Any;
use core::ffi::c_void;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

use super::legacy_stream::{device_address, make_current, with_state, DeviceState, Failure};
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::result as driver;
use cudarc::driver::sys::CUstream;

/// Multiply-adds (over the whole batch) from which a product runs cuBLASLt: 2^24.
pub const MIN_MACS: usize = 1 << 24;
/// Rows from which a product the GEMV kernel could take (≤ `MAX_GEMV_ROWS`) runs cuBLASLt instead.
/// The GEMV slows down with rows (it keeps one f32 accumulator vector per row and lane): Bamba-9B
/// decode steps of 7.2, 9.3, 15.0 and 36.9 ms at batch 1, 2, 4, 8 on the H200 against 8.4–13.3 ms
/// on cuBLASLt from 2 rows (host-bound there: one round trip per product).
pub const GEMV_CUBLASLT_FROM_ROWS: usize = 3;
/// Workspace cuBLASLt may use (split-K, stream-K): 32 MiB, what PyTorch gives it on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;
/// Plans cached before the cache is cleared (attention's products change shape with the context).
const MAX_PLANS: usize = 4096;

static PRODUCTS_RUN: AtomicU64 = AtomicU64::new(0);
static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Products that ran through cuBLASLt in this process (tests check the path was taken).
pub fn products_run() -> u64 {
    PRODUCTS_RUN.load(Ordering::Relaxed)
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the cuBLASLt path on or off for this process (on by default); returns whether it was on.
pub fn set_enabled(on: bool) -> bool {
    ENABLED.swap(on, Ordering::Relaxed)
}

fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) && library_present()
}

/// Whether libcublasLt can be loaded. cudarc panics on the first call into a library it cannot find; without
/// one, the products run CubeCL's matmul, with one warning.
fn library_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: opens the library by its candidate names and closes it again; calls nothing in it.
        let present = unsafe { sys::is_culib_present() };
        if !present {
            eprintln!("bamba: libcublasLt was not found on the library path; products run CubeCL's matmul");
        }
        present
    })
}

/// Whether [`try_launch`] would run an unbatched `[rows, inner] · [inner, cols]` product of a
/// dtype it supports on `R` (the CUDA runtime only).
pub fn takes<R: CubeRuntime>(rows: usize, inner: usize, cols: usize) -> bool {
    core::any::TypeId::of::<R>() == core::any::TypeId::of::<CudaRuntime>()
        && enabled()
        && rows * inner * cols >= MIN_MACS
}

/// One operand as cuBLASLt sees it: a column-major matrix, maybe transposed, with its leading
/// dimension and its batch stride (elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Operand {
    rows: u64,
    cols: u64,
    ld: i64,
    transposed: bool,
    batch_stride: i64,
}

/// A row-major `[rows, cols]` matrix with `strides` (elements), described as the column-major
/// `[cols, rows]` matrix cuBLASLt multiplies: stored as is (`transposed` false) when its rows are
/// contiguous, stored as `[rows, cols]` and transposed when its columns are. Size-1 dims may carry any
/// stride. `None` for any other layout.
fn operand(rows: usize, cols: usize, strides: [usize; 2], batch_stride: usize) -> Option<Operand> {
    let [row_stride, col_stride] = strides;
    // (stored rows, stored columns, leading dimension, transposed), column-major.
    let (stored_rows, stored_cols, ld, transposed) = if col_stride == 1 || cols == 1 {
        (cols, rows, if rows == 1 { cols.max(1) } else { row_stride }, false)
    } else if row_stride == 1 || rows == 1 {
        (rows, cols, if cols == 1 { rows.max(1) } else { col_stride }, true)
    } else {
        return None;
    };
    (ld >= stored_rows).then_some(Operand {
        rows: stored_rows as u64,
        cols: stored_cols as u64,
        ld: ld as i64,
        transposed,
        batch_stride: batch_stride as i64,
    })
}

/// The stride between consecutive matrices over all batch dims, if they collapse into one
/// (`Some(0)` when there is a single matrix, which then broadcasts).
fn batch_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let rank = dims.len();
    let mut stride = None;
    for i in (0..rank - 2).rev() {
        if dims[i] == 1 {
            continue;
        }
        match stride {
            None => stride = Some((strides[i], dims[i] * strides[i])),
            Some((s, next)) if strides[i] == next => stride = Some((s, dims[i] * next)),
            Some(_) => return None,
        }
    }
    Some(stride.map_or(0, |(s, _)| s))
}

/// What a cached plan depends on: the operands, the batch, the dtype and the pointers' alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Problem {
    a: Operand,
    b: Operand,
    d: Operand,
    batch: u64,
    data_type: sys::cudaDataType,
    alignment: u32,
}

/// The descriptors and the algorithm for one problem.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

struct State {
    device: usize,
    context: cudarc::driver::sys::CUcontext,
    handle: sys::cublasLtHandle_t,
    workspace: cudarc::driver::sys::CUdeviceptr,
    plans: HashMap<Problem, Plan>,
}

// SAFETY: the raw handles are used only under the `STATE` mutex, with the context made current on the
// calling thread first.
unsafe impl Send for State {}

impl DeviceState for State {
    const WHAT: &'static str = "cuBLASLt state";

    fn device(&self) -> usize {
        self.device
    }

    fn context(&self) -> cudarc::driver::sys::CUcontext {
        self.context
    }

    fn new(device: usize) -> Result<Self, Failure> {
        let context = make_current(device)?;
        let handle = lt::create_handle()?;
        // SAFETY: plain device allocation in the current context, never freed (process lifetime).
        let workspace = unsafe { driver::malloc_sync(WORKSPACE_BYTES)? };
        Ok(Self { device, context, handle, workspace, plans: HashMap::new() })
    }
}

impl State {
    fn plan(&mut self, problem: Problem) -> Result<&Plan, Failure> {
        if !self.plans.contains_key(&problem) {
            if self.plans.len() >= MAX_PLANS {
                for plan in self.plans.values() {
                    destroy(plan);
                }
                self.plans.clear();
            }
            let plan = make_plan(self.handle, &problem)?;
            self.plans.insert(problem, plan);
        }
        Ok(&self.plans[&problem])
    }
}

fn destroy(plan: &Plan) {
    // SAFETY: each descriptor was created by `make_plan` and is destroyed once, when dropped from the cache.
    unsafe {
        let _ = lt::destroy_matmul_desc(plan.desc);
        for layout in plan.layouts {
            let _ = lt::destroy_matrix_layout(layout);
        }
    }
}

fn layout(operand: &Operand, batch: u64, data_type: sys::cudaDataType) -> Result<sys::cublasLtMatrixLayout_t, Failure> {
    let layout = lt::create_matrix_layout(data_type, operand.rows, operand.cols, operand.ld)?;
    if batch > 1 {
        let count = batch as i32;
        // SAFETY: the layout was just created; the attribute buffers outlive the calls.
        unsafe {
            lt::set_matrix_layout_attribute(
                layout,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                &count as *const i32 as *const c_void,
                size_of::<i32>(),
            )?;
            lt::set_matrix_layout_attribute(
                layout,
                sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                &operand.batch_stride as *const i64 as *const c_void,
                size_of::<i64>(),
            )?;
        }
    }
    Ok(layout)
}

fn make_plan(handle: sys::cublasLtHandle_t, problem: &Problem) -> Result<Plan, Failure> {
    let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)?;
    let layouts = [
        layout(&problem.a, problem.batch, problem.data_type)?,
        layout(&problem.b, problem.batch, problem.data_type)?,
        layout(&problem.d, problem.batch, problem.data_type)?,
    ];
    let pref = lt::create_matmul_pref()?;
    // SAFETY: all descriptors were just created and are valid; attribute buffers outlive the calls.
    let heuristic = unsafe {
        for (attr, operand) in [
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &problem.a),
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &problem.b),
        ] {
            let op: i32 = operand.transposed.into();
            lt::set_matmul_desc_attribute(desc, attr, &op as *const i32 as *const c_void, size_of::<i32>())?;
        }
        let workspace = WORKSPACE_BYTES as u64;
        lt::set_matmul_pref_attribute(
            pref,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &workspace as *const u64 as *const c_void,
            size_of::<u64>(),
        )?;
        // The heuristic assumes 256-byte aligned buffers unless told; CubeCL slices pools finer.
        for attr in [
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        ] {
            lt::set_matmul_pref_attribute(
                pref,
                attr,
                &problem.alignment as *const u32 as *const c_void,
                size_of::<u32>(),
            )?;
        }
        let found = lt::get_matmul_algo_heuristic(handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref);
        let _ = lt::destroy_matmul_pref(pref);
        found
    };
    let plan = Plan { desc, layouts, algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] } };
    match heuristic {
        Ok(found) => Ok(Plan { algo: found.algo, ..plan }),
        Err(e) => {
            destroy(&plan);
            Err(e.into())
        }
    }
}

/// The largest power of two ≤ 256 dividing every address.
fn alignment(addresses: &[u64]) -> u32 {
    let bits = addresses.iter().fold(256u64, |acc, &a| acc | a);
    (bits & bits.wrapping_neg()).min(256) as u32
}

/// `lhs · rhs (+ addend)` on cuBLASLt when `R` is CUDA and the product qualifies (see the module docs),
/// else `None`. cuBLASLt adds the addend to the f32 accumulator (its `beta · C`) and rounds once: a
/// linear layer's residual add costs no launch and no pass over the output.
///
/// # Shapes
/// - `lhs`: `[..., m, k]`, `rhs`: `[..., k, n]` (batch dims equal, or all 1 in `rhs`) → `[..., m, n]`
/// - `addend`: the output's shape, contiguous (else `None`)
pub fn try_launch<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    addend: Option<&CubeTensor<R>>,
) -> Option<CubeTensor<R>> {
    let lhs_cuda = (lhs as &dyn Any).downcast_ref::<CubeTensor<CudaRuntime>>()?;
    let rhs_cuda = (rhs as &dyn Any).downcast_ref::<CubeTensor<CudaRuntime>>()?;
    if !enabled() || lhs.dtype != rhs.dtype {
        return None;
    }
    let data_type = match lhs.dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        _ => return None,
    };
    let (lhs_dims, rhs_dims) = (lhs.meta.shape().to_vec(), rhs.meta.shape().to_vec());
    let (lhs_strides, rhs_strides) = (lhs.meta.strides().to_vec(), rhs.meta.strides().to_vec());
    let rank = lhs_dims.len();
    if rank < 2 || rhs_dims.len() != rank {
        return None;
    }
    let (m, k, n) = (lhs_dims[rank - 2], lhs_dims[rank - 1], rhs_dims[rank - 1]);
    let lhs_batch: usize = lhs_dims[..rank - 2].iter().product();
    let rhs_batch: usize = rhs_dims[..rank - 2].iter().product();
    if rhs_dims[rank - 2] != k || m * n * k == 0 || lhs_batch * m * n * k < MIN_MACS {
        return None;
    }
    if rhs_batch != 1 && rhs_dims[..rank - 2] != lhs_dims[..rank - 2] {
        return None;
    }
    let matrix_strides = |s: &[usize]| [s[rank - 2], s[rank - 1]];
    let a = operand(k, n, matrix_strides(&rhs_strides), batch_stride(&rhs_dims, &rhs_strides)?)?;
    let b = operand(m, k, matrix_strides(&lhs_strides), batch_stride(&lhs_dims, &lhs_strides)?)?;
    let d = operand(m, n, [n, 1], m * n)?;

    let mut out_shape = lhs_dims;
    out_shape[rank - 1] = n;
    let addend_cuda = match addend {
        Some(c) => {
            if c.dtype != lhs.dtype || c.meta.shape().as_slice() != out_shape.as_slice() || !c.is_contiguous() {
                return None;
            }
            Some((c as &dyn Any).downcast_ref::<CubeTensor<CudaRuntime>>()?)
        }
        None => None,
    };
    let out = empty_device_contiguous_dtype(lhs.client.clone(), lhs.device.clone(), out_shape.into(), lhs.dtype);
    let out_cuda = (&out as &dyn Any).downcast_ref::<CubeTensor<CudaRuntime>>()?;
    let device = (&lhs_cuda.device as &dyn Any).downcast_ref::<CudaDevice>()?.index;

    let operands = Operands { lhs: lhs_cuda, rhs: rhs_cuda, addend: addend_cuda, out: out_cuda };
    let result = run(operands, device, [a, b, d], lhs_batch as u64, data_type);
    match result {
        Ok(()) => {
            PRODUCTS_RUN.fetch_add(1, Ordering::Relaxed);
            Some(out)
        }
        Err(e) => {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| eprintln!("bamba: cuBLASLt failed ({e}); products run Burn's matmul"));
            None
        }
    }
}

/// The buffers of one product: `out = lhs · rhs (+ addend)`.
struct Operands<'a> {
    lhs: &'a CubeTensor<CudaRuntime>,
    rhs: &'a CubeTensor<CudaRuntime>,
    addend: Option<&'a CubeTensor<CudaRuntime>>,
    out: &'a CubeTensor<CudaRuntime>,
}

fn run(
    operands: Operands<'_>,
    device: usize,
    [a, b, d]: [Operand; 3],
    batch: u64,
    data_type: sys::cudaDataType,
) -> Result<(), Failure> {
    // On CubeCL's server thread, after everything queued before: the operands' addresses cost no
    // round trip each, and the product is queued on the CUDA stream of CubeCL's last command (the
    // caller's), in order with its kernels.
    let task = || -> Result<(), String> {
        let product = || -> Result<(), Failure> {
            let (rhs_ptr, lhs_ptr, out_ptr) =
                (device_address(operands.rhs)?, device_address(operands.lhs)?, device_address(operands.out)?);
            let addend_ptr = operands.addend.map(device_address).transpose()?;
            let stream = cubecl::cuda::last_command_stream();
            if stream.is_null() {
                return Err("no CubeCL stream".into());
            }
            let mut addresses = vec![rhs_ptr, lhs_ptr, out_ptr];
            addresses.extend(addend_ptr);
            let problem = Problem { a, b, d, batch, data_type, alignment: alignment(&addresses) };
            with_state(&STATE, device, |state: &mut State| {
                let (handle, workspace) = (state.handle, state.workspace);
                let plan = state.plan(problem)?;
                matmul(handle, plan, workspace, [rhs_ptr, lhs_ptr, out_ptr], addend_ptr, stream)
            })
        };
        product().map_err(|e| e.to_string())
    };
    operands.out.client.exclusive(task).map_err(|e| format!("{e:?}"))?.map_err(Into::into)
}

/// Queues `d = a·b (+ c)` of `plan` on `stream`; `c` has `d`'s layout.
fn matmul(
    handle: sys::cublasLtHandle_t,
    plan: &Plan,
    workspace: cudarc::driver::sys::CUdeviceptr,
    [rhs_ptr, lhs_ptr, out_ptr]: [u64; 3],
    addend_ptr: Option<u64>,
    stream: CUstream,
) -> Result<(), Failure> {
    // With beta = 0 cuBLASLt does not read C; D stands in for it.
    let (alpha, beta) = (1.0f32, if addend_ptr.is_some() { 1.0f32 } else { 0.0 });
    let c_ptr = addend_ptr.unwrap_or(out_ptr);
    // SAFETY: the pointers address live CubeCL buffers (held by the tensors for the call) of the sizes
    // the layouts describe. On CubeCL's stream the product runs after the kernels queued before it
    // and before those queued after it, like any CubeCL kernel, so its buffers are written before it
    // reads them and not reused before it is done; on the legacy stream CUDA orders it the same way
    // with CubeCL's blocking streams (`legacy_stream.rs`).
    unsafe {
        lt::matmul(
            handle,
            plan.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            rhs_ptr as *const c_void,
            plan.layouts[0],
            lhs_ptr as *const c_void,
            plan.layouts[1],
            c_ptr as *const c_void,
            plan.layouts[2],
            out_ptr as *mut c_void,
            plan.layouts[2],
            &plan.algo,
            workspace as *mut c_void,
            WORKSPACE_BYTES,
            stream as sys::cudaStream_t,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operand_layouts() {
        // Row-major [m, k]: column-major [k, m], ld = row stride.
        let row = operand(6, 4, [5, 1], 30).unwrap();
        assert_eq!((row.rows, row.cols, row.ld, row.transposed), (4, 6, 5, false));
        // A transposed view of a row-major [k, m] (strides (1, m)): stored [m, k], transposed.
        let col = operand(6, 4, [1, 6], 24).unwrap();
        assert_eq!((col.rows, col.cols, col.ld, col.transposed), (6, 4, 6, true));
        // A single row takes any row stride.
        assert_eq!(operand(1, 4, [0, 1], 0).unwrap().ld, 4);
        // Neither rows nor columns contiguous.
        assert!(operand(3, 4, [8, 2], 0).is_none());
    }

    #[test]
    fn batch_strides_collapse_or_refuse() {
        assert_eq!(batch_stride(&[2, 3, 4, 5], &[60, 20, 5, 1]), Some(20));
        assert_eq!(batch_stride(&[1, 1, 4, 5], &[20, 20, 5, 1]), Some(0));
        assert_eq!(batch_stride(&[2, 3, 4, 5], &[100, 20, 5, 1]), None);
        assert_eq!(alignment(&[0x1000, 0x1010]), 16);
        assert_eq!(alignment(&[0]), 256);
    }
}
