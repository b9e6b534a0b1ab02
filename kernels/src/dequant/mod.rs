//! Dequantization of GGUF blocks on a device: `[blocks] -> [n] f32`.
//!
//! Burn's own path for a quantized weight is "dequantize, then matmul"; this op is that first
//! step for GGUF blocks, and the first CubeCL kernel of Kiln.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod flex;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;
use kiln_quant::GgmlType;

use crate::{BackendKind, KernelError, Layout, QTensor, Result};

/// Dequantize GGUF blocks held as u32 words.
#[backend_extension(Cube: cfg(any(feature = "wgpu", feature = "cuda")), Flex)]
pub trait DequantOps: Backend {
    /// `words`: `[n_words]` u32 holding whole blocks of `ty`, little-endian bytes, arranged as
    /// `layout` says (the Cube backend only ever holds [`Layout::Gguf`]).
    /// Returns `[n_elements]` f32. Callers check [`supports`] first.
    fn dequantize_blocks(
        words: IntTensor<Self>,
        ty: GgmlType,
        layout: Layout,
        n_elements: usize,
    ) -> FloatTensor<Self>;
}

/// The block types each backend's `dequantize_blocks` implements.
pub fn supports(backend: BackendKind, ty: GgmlType) -> bool {
    match backend {
        BackendKind::Flex => kiln_quant::blocks::DEQUANTIZE_TYPES.contains(&ty),
        BackendKind::Cube => crate::CUBE_TYPES.contains(&ty),
    }
}

/// Expands a quantized tensor to f32 on its own device, keeping its shape.
pub fn dequantize(weight: &QTensor) -> Result<Tensor<2>> {
    let device = weight.device();
    let backend = BackendKind::of(&device)?;
    if !supports(backend, weight.ty) {
        return Err(KernelError::NoKernel {
            op: "dequantize",
            ty: weight.ty,
            backend,
        });
    }
    let n = weight.n_elements();
    let flat = <Dispatch as DequantOps>::dequantize_blocks(
        weight.words.clone().into_dispatch(),
        weight.ty,
        weight.layout,
        n,
    );
    let flat = Tensor::<1>::from_dispatch(flat);
    let (rows, cols) = match weight.shape.as_slice() {
        [] => (1, 1),
        [c] => (1, *c),
        [rest @ .., c] => (rest.iter().product(), *c),
    };
    Ok(flat.reshape([rows, cols]))
}
