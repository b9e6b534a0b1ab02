//! Quantized matrix products, `y[m, n] = x[m, k] · W[n, k]ᵀ` with `W` in GGML blocks, and row
//! lookups in such a matrix (token embeddings).
//!
//! CPU (Flex): [`crate::cpu`]'s SIMD kernels with activations quantized on the fly, as llama.cpp.
//! Cube (wgpu, CUDA): kernels that decode the blocks as they multiply. By default
//! ([`Arithmetic::Cpu`]) they compute what the CPU kernels compute, operation for operation
//! (`cube_exact.rs`); [`Arithmetic::Fast`] runs their own parallel sums instead (`cube.rs`): a
//! mat-vec kernel for `m ≤ MATVEC_MAX_M` and a tiled one above.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) mod cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) mod cube_exact;
mod flex;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;
use kiln_quant::GgmlType;

use crate::{BackendKind, KernelError, Layout, QTensor, Result};

/// Activation rows up to which the Cube backend runs the mat-vec kernel (decode, label scoring);
/// above, the tiled kernel.
pub const MATVEC_MAX_M: usize = 4;

/// How the Cube mat-vec kernel (cubes of 64 units) splits output rows among units and reduces
/// a row's partial sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// [`Reduction::default_for`] the device.
    #[default]
    Auto,
    /// One row per cube: `plane_sum` within each plane, then one value per plane through
    /// shared memory. Needs plane (subgroup) operations.
    Plane,
    /// `units_per_row` (2, 4, …, 64) units per row, a shared-memory tree of log2 steps.
    Shared(u32),
    /// One unit per row, no reduction and no barrier.
    PerUnit,
}

impl Reduction {
    /// Plane sums where the device has them, else 8 units per row with a shared-memory tree.
    pub fn default_for(planes: bool) -> Self {
        if planes {
            Reduction::Plane
        } else {
            Reduction::Shared(8)
        }
    }

    /// Every variant worth measuring on a device.
    pub fn variants(planes: bool) -> Vec<Self> {
        let mut v = vec![Reduction::PerUnit];
        v.extend([2, 4, 8, 16, 32, 64].map(Reduction::Shared));
        if planes {
            v.push(Reduction::Plane);
        }
        v
    }
}

/// The Cube tiled mat-mul kernel (m > [`MATVEC_MAX_M`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tiling {
    /// [`Tiling::for_shared_memory`] of the device.
    #[default]
    Auto,
    /// 128 × 64 tiles in vec4 shared memory: 4 + 2 vector loads per 128 multiply-adds
    /// ([`VEC4_SHARED_BYTES`]).
    Vec4,
    /// 32 × 64 tiles in scalar shared memory, for devices with WebGPU's minimum of 16 KiB
    /// ([`SCALAR_SHARED_BYTES`]).
    Scalar,
}

/// Shared memory of the vec4 tiled kernel: activation and weight tiles (128 and 64 rows × 32),
/// Q4_1/Q5_1 block minima and sums.
pub const VEC4_SHARED_BYTES: usize = (128 * 32 + 64 * 32 + 64 + 128) * 4;
/// Shared memory of the scalar tiled kernel (32 activation rows).
pub const SCALAR_SHARED_BYTES: usize = (32 * 32 + 64 * 32 + 64 + 32) * 4;

impl Tiling {
    /// Vec4 tiles where they fit (measured on llvmpipe, SmolLM2's up projection, m = 128:
    /// 15.8 ms against 23.5 ms for the best scalar tiling), else the scalar 32-row tiles.
    pub fn for_shared_memory(shared: usize) -> Self {
        if shared >= VEC4_SHARED_BYTES {
            Tiling::Vec4
        } else {
            Tiling::Scalar
        }
    }

    /// Output rows × columns × K step of a tile.
    pub fn tile(self) -> (u32, u32, u32) {
        match self {
            Tiling::Scalar => (32, 64, 32),
            _ => (128, 64, 32),
        }
    }
}

/// How the Cube kernels add up a product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Arithmetic {
    /// The CPU kernels' arithmetic: activations quantized as the CPU quantizes them, integer
    /// block sums, and the blocks' fused multiply-adds in the CPU's order, so results are
    /// bit-identical to the Flex path for the types the CPU repacks ([`crate::cpu::x8::TYPES`]:
    /// Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K; those kernels sum in one order on every instruction
    /// set). One unit per output. Other types run [`Arithmetic::Fast`].
    #[default]
    Cpu,
    /// The kernels' own parallel orders ([`Reduction`] for decode, [`Tiling`] above): within
    /// float rounding of the CPU, faster where the shapes are large.
    Fast,
}

impl Arithmetic {
    /// `cpu` or `fast` (the CLI's `--arithmetic` values).
    pub fn name(self) -> &'static str {
        match self {
            Arithmetic::Cpu => "cpu",
            Arithmetic::Fast => "fast",
        }
    }

    /// The variant [`Arithmetic::name`] calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Arithmetic::Cpu, Arithmetic::Fast]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// Which Cube kernel variant a product runs (the CPU ignores all three).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CubeKernel {
    pub arithmetic: Arithmetic,
    /// The mat-vec reduction of [`Arithmetic::Fast`].
    pub reduction: Reduction,
    /// The tiling of [`Arithmetic::Fast`].
    pub tiling: Tiling,
}

impl CubeKernel {
    /// [`Arithmetic::Fast`] with these variants.
    pub fn fast(reduction: Reduction, tiling: Tiling) -> Self {
        CubeKernel {
            arithmetic: Arithmetic::Fast,
            reduction,
            tiling,
        }
    }
}

/// Units per cube of the Cube mat-vec and tiled kernels.
pub const MATVEC_CUBE_UNITS: u32 = 64;
pub const TILED_CUBE_UNITS: u32 = 64;

#[backend_extension(Cube: cfg(any(feature = "wgpu", feature = "cuda")), Flex)]
pub trait QMatmulOps: Backend {
    /// `x`: `[m, k]` f32; `words`: `n` rows of `k` values in blocks of `ty`. Returns `[m, n]`.
    /// `kernel` picks the Cube kernels' variant; the CPU ignores it. `layout`: how the blocks
    /// are arranged (the Cube backend only ever holds [`Layout::Gguf`]).
    fn qmatmul(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: Layout,
        n: usize,
        k: usize,
        kernel: CubeKernel,
    ) -> FloatTensor<Self>;

    /// Rows `ids` of the `[n, k]` matrix in `words`, as `[ids.len(), k]` f32.
    fn qrows(
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: Layout,
        k: usize,
        ids: Vec<u32>,
    ) -> FloatTensor<Self>;
}

/// The weight types `qmatmul` serves on a backend.
pub fn supports(backend: BackendKind, ty: GgmlType) -> bool {
    match backend {
        BackendKind::Flex => crate::cpu::MATMUL_TYPES.contains(&ty),
        BackendKind::Cube => crate::CUBE_TYPES.contains(&ty),
    }
}

fn matrix_dims(w: &QTensor, op: &'static str) -> Result<(usize, usize)> {
    match w.shape.as_slice() {
        [n, k] => Ok((*n, *k)),
        other => Err(KernelError::Shape(format!(
            "{op}: the weight must be a matrix, it has shape {other:?}"
        ))),
    }
}

/// `x[m, k] · Wᵀ` for a quantized `W` of shape `[n, k]`: `[m, n]`.
pub fn qmatmul(x: Tensor<2>, w: &QTensor) -> Result<Tensor<2>> {
    qmatmul_with(x, w, CubeKernel::default())
}

/// [`qmatmul`] with the Cube kernel chosen by the caller (a dispatch plan, a test of each
/// variant). A variant the device cannot run ([`Reduction::Plane`] without plane operations,
/// [`Tiling::Vec4`] without the shared memory) is an error.
pub fn qmatmul_with(x: Tensor<2>, w: &QTensor, kernel: CubeKernel) -> Result<Tensor<2>> {
    let backend = BackendKind::of(&w.device())?;
    let (n, k) = matrix_dims(w, "qmatmul")?;
    let [m, kx] = x.dims();
    if kx != k {
        return Err(KernelError::Shape(format!(
            "qmatmul: activations [{m}, {kx}] against a [{n}, {k}] weight"
        )));
    }
    if !supports(backend, w.ty) {
        return Err(KernelError::NoKernel {
            op: "qmatmul",
            ty: w.ty,
            backend,
        });
    }
    match backend {
        BackendKind::Flex => {
            crate::cpu::check(w.ty, k).map_err(KernelError::Shape)?;
        }
        BackendKind::Cube => {
            if !k.is_multiple_of(w.ty.block_size()) {
                return Err(KernelError::Shape(format!(
                    "qmatmul: rows of {k} values are not whole {} blocks",
                    w.ty
                )));
            }
            let CubeKernel {
                reduction, tiling, ..
            } = kernel;
            if reduction == Reduction::Plane && !crate::device_has_planes(&w.device()) {
                return Err(KernelError::Unsupported(
                    "qmatmul: plane reduction on a device without plane operations".into(),
                ));
            }
            if tiling == Tiling::Vec4
                && crate::device_shared_memory(&w.device()) < VEC4_SHARED_BYTES
            {
                return Err(KernelError::Unsupported(format!(
                    "qmatmul: vec4 tiles need {VEC4_SHARED_BYTES} B of shared memory"
                )));
            }
            if let Reduction::Shared(upr) = reduction
                && !(2..=64).contains(&upr) | !upr.is_power_of_two()
            {
                return Err(KernelError::Unsupported(format!(
                    "qmatmul: {upr} units per row (a power of two from 2 to 64)"
                )));
            }
        }
    }
    let y = <Dispatch as QMatmulOps>::qmatmul(
        x.into_dispatch(),
        w.words.clone().into_dispatch(),
        w.ty,
        w.layout,
        n,
        k,
        kernel,
    );
    Ok(Tensor::from_dispatch(y))
}

/// Rows `ids` of a quantized `[n, k]` matrix as f32 `[ids.len(), k]` (embedding lookup).
pub fn qrows(w: &QTensor, ids: &[u32]) -> Result<Tensor<2>> {
    let backend = BackendKind::of(&w.device())?;
    let (n, k) = matrix_dims(w, "qrows")?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
        return Err(KernelError::Shape(format!(
            "qrows: row {bad} of a matrix with {n} rows"
        )));
    }
    let known = match backend {
        BackendKind::Flex => kiln_quant::blocks::DEQUANTIZE_TYPES.contains(&w.ty),
        BackendKind::Cube => crate::CUBE_TYPES.contains(&w.ty),
    };
    if !known {
        return Err(KernelError::NoKernel {
            op: "qrows",
            ty: w.ty,
            backend,
        });
    }
    let y = <Dispatch as QMatmulOps>::qrows(
        w.words.clone().into_dispatch(),
        w.ty,
        w.layout,
        k,
        ids.to_vec(),
    );
    Ok(Tensor::from_dispatch(y))
}
