//! kiln-kernels: Kiln's custom ops, joined to Burn's run-time dispatch as backend extensions
//! (`#[backend_extension(Cube, Flex)]`). Each op family is one trait; the Flex (CPU)
//! implementation is the reference that the CubeCL one (wgpu, CUDA) is tested against.
//!
//! Quantized weights stay in their GGUF blocks on the device ([`QTensor`]); kernels read the
//! blocks directly.

pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube_blocks;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[doc(hidden)]
pub mod cube_check;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube_softfloat;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube_util;
pub mod dequant;
pub mod dream;
pub mod encoder;
mod error;
pub mod nn;
pub mod qmatmul;
mod qtensor;

pub use error::{KernelError, Result};
pub use qtensor::{Layout, QTensor};

/// The weight types Kiln's CubeCL kernels read (dequantize, row lookup, quantized matmul).
pub const CUBE_TYPES: &[kiln_quant::GgmlType] = &[
    kiln_quant::GgmlType::F32,
    kiln_quant::GgmlType::F16,
    kiln_quant::GgmlType::Q4_0,
    kiln_quant::GgmlType::Q4_1,
    kiln_quant::GgmlType::Q5_0,
    kiln_quant::GgmlType::Q5_1,
    kiln_quant::GgmlType::Q8_0,
    kiln_quant::GgmlType::Q4_K,
    kiln_quant::GgmlType::Q5_K,
    kiln_quant::GgmlType::Q6_K,
];

/// Which of Burn's backends a device runs on, as far as Kiln's kernels care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's Flex CPU backend: Kiln's CPU kernels.
    Flex,
    /// A CubeCL runtime (wgpu, CUDA): Kiln's CubeCL kernels.
    Cube,
}

impl BackendKind {
    /// The backend of a Burn device, or an error for a backend Kiln has no kernels for.
    pub fn of(device: &burn::tensor::Device) -> Result<Self> {
        use burn::backend::DispatchDevice;
        match device.as_dispatch() {
            DispatchDevice::Flex(_) => Ok(BackendKind::Flex),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            DispatchDevice::Cube(_) => Ok(BackendKind::Cube),
            #[allow(unreachable_patterns)]
            other => Err(KernelError::UnsupportedDevice(format!("{other:?}"))),
        }
    }
}

/// Whether a device runs plane (subgroup) operations in kernels: never on the CPU backend.
pub fn device_has_planes(device: &burn::tensor::Device) -> bool {
    match device.as_dispatch() {
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        burn::backend::DispatchDevice::Cube(d) => d
            .client()
            .properties()
            .features
            .plane
            .contains(cubecl::features::Plane::Ops),
        _ => false,
    }
}

/// What a device's allocator holds, bytes: `(in_use, reserved)`, over every stream. `None` for
/// the CPU backend (its memory is the process's: read the OS).
pub fn device_memory(device: &burn::tensor::Device) -> Option<(u64, u64)> {
    match device.as_dispatch() {
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        burn::backend::DispatchDevice::Cube(d) => {
            let u = d
                .client()
                .memory_report(cubecl_runtime::memory_management::MemoryScope::Device)
                .usage();
            Some((u.bytes_in_use, u.bytes_reserved))
        }
        _ => None,
    }
}

/// Shared memory per workgroup on a device, bytes (0 for the CPU backend).
pub fn device_shared_memory(device: &burn::tensor::Device) -> usize {
    match device.as_dispatch() {
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        burn::backend::DispatchDevice::Cube(d) => {
            d.client().properties().hardware.max_shared_memory_size
        }
        _ => 0,
    }
}
