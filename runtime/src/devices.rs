//! Device discovery: the CPU (with the SIMD features detected at run time), every wgpu adapter
//! on the graphics API Kiln's wgpu backend would use, and CUDA devices when built with `cuda`.
//!
//! Probing never panics: a missing or broken driver becomes a note, and the CPU is always there.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use sysinfo::System;

use crate::{Result, RuntimeError};

/// A device Kiln can run on, named as users type it: `cpu`, `wgpu:0`, `cuda:0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum DeviceId {
    Cpu,
    Wgpu(usize),
    Cuda(usize),
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Cpu => f.write_str("cpu"),
            DeviceId::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceId::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.to_string()
    }
}

impl std::str::FromStr for DeviceId {
    type Err = RuntimeError;

    /// `cpu`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || RuntimeError::UnknownDevice(s.to_string());
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        match (kind.to_ascii_lowercase().as_str(), index) {
            ("cpu", None) => Ok(DeviceId::Cpu),
            ("wgpu", i) => Ok(DeviceId::Wgpu(i.unwrap_or(0))),
            ("cuda", i) => Ok(DeviceId::Cuda(i.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

/// What sort of device it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceClass {
    Cpu,
    DiscreteGpu,
    IntegratedGpu,
    VirtualGpu,
    /// A GPU API implemented on the CPU (Mesa llvmpipe / lavapipe, WARP, SwiftShader).
    SoftwareGpu,
    Other,
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceClass::Cpu => "CPU",
            DeviceClass::DiscreteGpu => "discrete GPU",
            DeviceClass::IntegratedGpu => "integrated GPU",
            DeviceClass::VirtualGpu => "virtual GPU",
            DeviceClass::SoftwareGpu => "software GPU (runs on the CPU)",
            DeviceClass::Other => "other",
        })
    }
}

/// SIMD instruction sets detected at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimdFeatures {
    pub sse4_2: bool,
    pub avx: bool,
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx_vnni: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub neon: bool,
    pub dotprod: bool,
    pub i8mm: bool,
}

impl SimdFeatures {
    /// Detects the features of the CPU this process runs on.
    pub fn detect() -> Self {
        #[allow(unused_mut)]
        let mut f = SimdFeatures::default();
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            f.sse4_2 = std::is_x86_feature_detected!("sse4.2");
            f.avx = std::is_x86_feature_detected!("avx");
            f.avx2 = std::is_x86_feature_detected!("avx2");
            f.fma = std::is_x86_feature_detected!("fma");
            f.f16c = std::is_x86_feature_detected!("f16c");
            f.avx_vnni = std::is_x86_feature_detected!("avxvnni");
            f.avx512f = std::is_x86_feature_detected!("avx512f");
            f.avx512bw = std::is_x86_feature_detected!("avx512bw");
            f.avx512vl = std::is_x86_feature_detected!("avx512vl");
            f.avx512vnni = std::is_x86_feature_detected!("avx512vnni");
            f.avx512bf16 = std::is_x86_feature_detected!("avx512bf16");
        }
        #[cfg(target_arch = "aarch64")]
        {
            f.neon = std::arch::is_aarch64_feature_detected!("neon");
            f.dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
            f.i8mm = std::arch::is_aarch64_feature_detected!("i8mm");
        }
        f
    }

    /// Names of the features present, in llama.cpp's spelling.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.sse4_2, "sse4.2"),
            (self.avx, "avx"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.f16c, "f16c"),
            (self.avx_vnni, "avx-vnni"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512vnni, "avx512-vnni"),
            (self.avx512bf16, "avx512-bf16"),
            (self.neon, "neon"),
            (self.dotprod, "dotprod"),
            (self.i8mm, "i8mm"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The host CPU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuInfo {
    pub model: String,
    pub arch: &'static str,
    /// Threads the OS lets this process run at once.
    pub logical_cores: usize,
    pub physical_cores: Option<usize>,
    pub memory_bytes: u64,
    pub simd: SimdFeatures,
}

impl CpuInfo {
    pub fn detect() -> Self {
        let mut sys = sysinfo::System::new();
        sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        sys.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
        let model = sys
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_string())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "unknown CPU".to_string());
        CpuInfo {
            model,
            arch: std::env::consts::ARCH,
            logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            physical_cores: System::physical_core_count(),
            memory_bytes: sys.total_memory(),
            simd: SimdFeatures::detect(),
        }
    }
}

/// Limits of a GPU that matter to Kiln's kernels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuLimits {
    pub max_buffer_size: u64,
    pub max_storage_binding_size: u64,
    /// Shared (workgroup) memory per workgroup, bytes.
    pub max_shared_memory: u64,
    pub max_workgroup_invocations: u32,
}

/// Everything Kiln knows about one device. The dispatch policy is a function of these.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    pub name: String,
    pub class: DeviceClass,
    /// `flex` (CPU), `vulkan`, `metal`, `dx12`, `gl`, `cuda`.
    pub api: String,
    pub driver: Option<String>,
    /// Device memory, where the API reports it.
    pub memory_bytes: Option<u64>,
    pub limits: Option<GpuLimits>,
    /// Kernels may use f16 arithmetic.
    pub f16: bool,
    /// Subgroup (plane / warp) operations are available to kernels.
    pub subgroups: bool,
    pub subgroup_size: Option<(u32, u32)>,
    /// The host CPU, for the `cpu` device.
    pub cpu: Option<CpuInfo>,
    #[serde(skip)]
    selector: Selector,
}

/// How to open the device through Burn.
#[derive(Clone, Debug, PartialEq)]
enum Selector {
    Flex,
    /// cubecl's per-type adapter selector; the graphics API is `DeviceInfo::api`.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    Wgpu(WgpuKind),
    Cuda(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
enum WgpuKind {
    Discrete(usize),
    Integrated(usize),
    Virtual(usize),
    Cpu,
    Other(usize),
}

impl DeviceInfo {
    /// The CPU device (Burn's Flex backend with Kiln's CPU kernels).
    pub fn cpu() -> Self {
        let cpu = CpuInfo::detect();
        DeviceInfo {
            id: DeviceId::Cpu,
            name: cpu.model.clone(),
            class: DeviceClass::Cpu,
            api: "flex".into(),
            driver: None,
            memory_bytes: Some(cpu.memory_bytes),
            limits: None,
            f16: cpu.simd.f16c || cpu.simd.neon,
            subgroups: false,
            subgroup_size: None,
            cpu: Some(cpu),
            selector: Selector::Flex,
        }
    }

    /// Opens the device through Burn. Lazy: the first tensor op initializes it.
    pub fn burn_device(&self) -> Result<burn::tensor::Device> {
        match &self.selector {
            Selector::Flex => Ok(burn::tensor::Device::flex()),
            #[cfg(feature = "wgpu")]
            Selector::Wgpu(kind) => Ok(wgpu_probe::burn_device(*kind, &self.api)),
            #[cfg(not(feature = "wgpu"))]
            Selector::Wgpu(_) => Err(RuntimeError::Device {
                id: self.id.to_string(),
                reason: "this build of Kiln has no wgpu support".into(),
            }),
            #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
            Selector::Cuda(_) => Err(RuntimeError::Device {
                id: self.id.to_string(),
                reason: "this build of Kiln has no GPU support".into(),
            }),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Selector::Cuda(index) => cubecl::Device::cuda(*index)
                .map(burn::tensor::Device::new)
                .map_err(|e| RuntimeError::Device {
                    id: self.id.to_string(),
                    reason: e.to_string(),
                }),
        }
    }

    /// Whether Kiln's kernels run on this device through CubeCL (wgpu, CUDA).
    pub fn is_gpu_api(&self) -> bool {
        !matches!(self.selector, Selector::Flex)
    }
}

/// The result of probing: every usable device, and what could not be probed and why.
#[derive(Clone, Debug, Serialize)]
pub struct Devices {
    pub devices: Vec<DeviceInfo>,
    pub notes: Vec<String>,
    pub kiln_version: &'static str,
    pub backends_built: Vec<&'static str>,
}

impl Devices {
    /// The CPU alone, without probing GPUs.
    pub fn cpu_only() -> Self {
        Devices {
            devices: vec![DeviceInfo::cpu()],
            notes: vec![],
            kiln_version: env!("CARGO_PKG_VERSION"),
            backends_built: vec!["cpu (flex)"],
        }
    }

    pub fn get(&self, id: DeviceId) -> Option<&DeviceInfo> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// Looks up a device as a user names it (`cpu`, `wgpu:0`, `cuda`).
    pub fn find(&self, name: &str) -> Result<&DeviceInfo> {
        let id: DeviceId = name.parse()?;
        self.get(id).ok_or_else(|| RuntimeError::Device {
            id: id.to_string(),
            reason: format!(
                "not found on this machine (found: {})",
                self.devices
                    .iter()
                    .map(|d| d.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

/// Runs `f`, turning a panic inside a driver or runtime into an error message.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    out.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        format!("{what} failed: {msg}")
    })
}

/// Probes every device this build of Kiln can use. Never panics.
pub fn probe_devices() -> Devices {
    let mut devices = vec![DeviceInfo::cpu()];
    let mut notes = Vec::new();
    let mut backends_built = vec!["cpu (flex)"];

    #[cfg(feature = "wgpu")]
    {
        backends_built.push("wgpu");
        match guarded("wgpu adapter probe", wgpu_probe::probe) {
            Ok((found, wgpu_notes)) => {
                if found.is_empty() {
                    notes.push(
                        "wgpu: no adapter found (no GPU driver: on Linux install a Vulkan \
                         driver, e.g. Debian's mesa-vulkan-drivers)"
                            .to_string(),
                    );
                }
                devices.extend(found);
                notes.extend(wgpu_notes);
            }
            Err(e) => notes.push(format!("wgpu: {e}")),
        }
    }
    #[cfg(not(feature = "wgpu"))]
    notes.push("wgpu: not built in (enable the `wgpu` feature)".to_string());

    let cuda_linked = !matches!(
        cubecl::Device::cuda(0),
        Err(cubecl::device::DeviceUnavailable::NotLinked(_))
    );
    if cuda_linked {
        backends_built.push("cuda");
        match guarded("CUDA probe", probe_cuda) {
            Ok((found, cuda_notes)) => {
                devices.extend(found);
                notes.extend(cuda_notes);
            }
            Err(e) => notes.push(format!("cuda: {e}")),
        }
    } else {
        notes.push("cuda: not built in (build Kiln with `--features cuda`)".to_string());
    }

    Devices {
        devices,
        notes,
        kiln_version: env!("CARGO_PKG_VERSION"),
        backends_built,
    }
}

/// CUDA devices through cubecl's CUDA runtime (linked only with the `cuda` feature).
fn probe_cuda() -> (Vec<DeviceInfo>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for index in 0.. {
        let device = match cubecl::Device::cuda(index) {
            Ok(d) => d,
            Err(e) => {
                if index == 0 {
                    notes.push(format!("cuda: no device ({e})"));
                }
                break;
            }
        };
        let client = device.client();
        let p = client.properties();
        let plane = p.features.plane.contains(cubecl::features::Plane::Ops);
        out.push(DeviceInfo {
            id: DeviceId::Cuda(index),
            name: p.identity.name.clone(),
            class: DeviceClass::DiscreteGpu,
            api: "cuda".into(),
            driver: Some(p.identity.fingerprint.clone()),
            memory_bytes: p.memory.max_memory(),
            limits: Some(GpuLimits {
                max_buffer_size: p.memory.max_page_size,
                max_storage_binding_size: p.memory.max_page_size,
                max_shared_memory: p.hardware.max_shared_memory_size as u64,
                max_workgroup_invocations: p.hardware.max_units_per_cube,
            }),
            f16: p.supports_type(cubecl::ir::ElemType::Float(cubecl::ir::FloatKind::F16)),
            subgroups: plane,
            subgroup_size: Some((p.hardware.plane_size_min, p.hardware.plane_size_max)),
            cpu: None,
            selector: Selector::Cuda(index),
        });
    }
    (out, notes)
}

#[cfg(feature = "wgpu")]
mod wgpu_probe {
    //! wgpu adapters, on the graphics API cubecl's `Auto` would settle on: the first of the
    //! platform's chain with a hardware adapter, or failing that the first with any adapter
    //! (cubecl-wgpu `runtime.rs` `settle`).

    use super::*;
    use burn::backend::WgpuDevice;
    use cubecl::device::{WgpuBackend, WgpuDeviceKind};

    fn chain() -> Vec<wgpu::Backend> {
        if cfg!(target_os = "macos") {
            vec![wgpu::Backend::Metal]
        } else {
            vec![
                wgpu::Backend::Vulkan,
                wgpu::Backend::Dx12,
                wgpu::Backend::Gl,
            ]
        }
    }

    fn adapters(api: wgpu::Backend) -> Vec<wgpu::Adapter> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: api.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        cubecl::future::block_on(instance.enumerate_adapters(api.into()))
    }

    pub(super) fn probe() -> (Vec<DeviceInfo>, Vec<String>) {
        let mut chosen: Option<(wgpu::Backend, Vec<wgpu::Adapter>)> = None;
        for api in chain() {
            let found = adapters(api);
            let hardware = found
                .iter()
                .any(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
            if hardware {
                chosen = Some((api, found));
                break;
            }
            if chosen.is_none() && !found.is_empty() {
                chosen = Some((api, found));
            }
        }
        let Some((api, found)) = chosen else {
            return (Vec::new(), Vec::new());
        };

        let mut counters = [0usize; 5];
        let mut out = Vec::new();
        for (index, adapter) in found.iter().enumerate() {
            let info = adapter.get_info();
            let limits = adapter.limits();
            let features = adapter.features();
            let mut next = |slot: usize| {
                let i = counters[slot];
                counters[slot] += 1;
                i
            };
            let (class, kind) = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => {
                    (DeviceClass::DiscreteGpu, WgpuKind::Discrete(next(0)))
                }
                wgpu::DeviceType::IntegratedGpu => {
                    (DeviceClass::IntegratedGpu, WgpuKind::Integrated(next(1)))
                }
                wgpu::DeviceType::VirtualGpu => {
                    (DeviceClass::VirtualGpu, WgpuKind::Virtual(next(2)))
                }
                wgpu::DeviceType::Cpu => (DeviceClass::SoftwareGpu, WgpuKind::Cpu),
                wgpu::DeviceType::Other => (DeviceClass::Other, WgpuKind::Other(next(4))),
            };
            let subgroups = features.contains(wgpu::Features::SUBGROUP)
                && info.device_type != wgpu::DeviceType::Cpu;
            let driver = [info.driver.as_str(), info.driver_info.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            out.push(DeviceInfo {
                id: DeviceId::Wgpu(index),
                name: info.name.clone(),
                class,
                api: api.to_str().to_string(),
                driver: (!driver.is_empty()).then_some(driver),
                memory_bytes: None,
                limits: Some(GpuLimits {
                    max_buffer_size: limits.max_buffer_size,
                    max_storage_binding_size: limits.max_storage_buffer_binding_size,
                    max_shared_memory: limits.max_compute_workgroup_storage_size as u64,
                    max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
                }),
                f16: features.contains(wgpu::Features::SHADER_F16),
                subgroups,
                subgroup_size: subgroups
                    .then_some((info.subgroup_min_size, info.subgroup_max_size)),
                cpu: None,
                selector: Selector::Wgpu(kind),
            });
        }
        let notes = if out.iter().all(|d| d.class == DeviceClass::SoftwareGpu) {
            vec![format!(
                "wgpu: only software adapters on {}: GPU kernels run, slowly, on the CPU",
                api.to_str()
            )]
        } else {
            Vec::new()
        };
        (out, notes)
    }

    pub(super) fn burn_device(kind: WgpuKind, api: &str) -> burn::tensor::Device {
        let kind = match kind {
            WgpuKind::Discrete(i) => WgpuDeviceKind::DiscreteGpu(i),
            WgpuKind::Integrated(i) => WgpuDeviceKind::IntegratedGpu(i),
            WgpuKind::Virtual(i) => WgpuDeviceKind::VirtualGpu(i),
            WgpuKind::Cpu => WgpuDeviceKind::Cpu,
            WgpuKind::Other(i) => WgpuDeviceKind::Other(i),
        };
        let backend = match api {
            "vulkan" => WgpuBackend::Vulkan,
            "metal" => WgpuBackend::Metal,
            "dx12" => WgpuBackend::Dx12,
            "gl" => WgpuBackend::Gl,
            _ => WgpuBackend::Auto,
        };
        burn::tensor::Device::new(WgpuDevice::new(kind).on(backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_parse_and_print() {
        for (s, id) in [
            ("cpu", DeviceId::Cpu),
            ("wgpu", DeviceId::Wgpu(0)),
            ("wgpu:2", DeviceId::Wgpu(2)),
            ("CUDA:1", DeviceId::Cuda(1)),
        ] {
            assert_eq!(s.parse::<DeviceId>().unwrap(), id, "{s}");
        }
        assert_eq!(DeviceId::Wgpu(3).to_string(), "wgpu:3");
        for bad in ["gpu", "cpu:1", "wgpu:x", "", "cuda:-1"] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn probe_always_finds_the_cpu() {
        let devices = probe_devices();
        let cpu = devices.get(DeviceId::Cpu).expect("cpu");
        let info = cpu.cpu.as_ref().unwrap();
        assert!(info.logical_cores >= 1);
        assert!(info.memory_bytes > 0);
        #[cfg(target_arch = "x86_64")]
        assert!(info.simd.sse4_2 || !info.simd.avx2, "avx2 implies sse4.2");
    }
}
