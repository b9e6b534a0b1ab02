//! Dispatch: which device, which kernels and which weight format a model runs with.
//!
//! [`plan`] is a pure function of plain facts ([`DeviceFacts`] from probing, [`ModelFacts`] from
//! the model file, [`Overrides`] from the user), so every rule is unit-tested on made-up
//! hardware. Every choice carries its reason and the alternatives it rejected, and `kiln plan`
//! prints them.
//!
//! The rules, and where they come from:
//! * Devices: a CUDA or discrete GPU where the model fits; else the CPU. Software GPUs (llvmpipe,
//!   WARP) run on the CPU through a graphics API and are never picked unasked; integrated GPUs
//!   share the CPU's memory bandwidth, and decoding is bandwidth-bound, so Kiln's CPU kernels
//!   are preferred there too. A GPU must hold the weights, the KV cache and 10% headroom, and
//!   its largest storage binding must hold the largest weight.
//! * Format: the file's own format where the device has kernels for it (conversion is a
//!   separate, explicit step: `kiln quantize`). Kiln's GPU kernels decode GGUF blocks in
//!   registers, so a 4-bit weight costs a quarter of the memory traffic of an f16 one without
//!   needing int4 math units; the intent-classifier paper's T4 slowdown came from
//!   dequantizing before multiplying (../shared/MODELS.md §1), which Kiln does not do.
//!   The faster format for the device is named when it is not the file's.
//! * Kernels: on a GPU, the CPU path's arithmetic (bit-identical logits) for the formats the CPU
//!   repacks, unless fast kernels are asked for; for the fast kernels, plane (subgroup)
//!   reductions where the device has them, else shared memory, and tiles by shared memory;
//!   the CPU's SIMD level from the detected instruction sets.

use std::fmt;
use std::path::Path;

use kiln_kernels::nn::Softmax;
use kiln_kernels::qmatmul::{Arithmetic, Reduction, Tiling};
use kiln_quant::GgmlType;
use serde::Serialize;

use crate::devices::{DeviceClass, DeviceId, DeviceInfo, SimdFeatures};
use crate::{Result, RuntimeError};

/// What the policy reads about a device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceFacts {
    pub id: DeviceId,
    pub name: String,
    /// Stable name across runs (graphics API, adapter, driver): what measurements are kept
    /// under ([`crate::tune::device_key`]).
    pub key: String,
    pub class: DeviceClass,
    /// Memory the model may use: device memory for a GPU that reports it, RAM for the CPU.
    pub memory_bytes: Option<u64>,
    /// Largest buffer one kernel can bind (GPUs).
    pub max_binding_bytes: Option<u64>,
    pub shared_memory_bytes: Option<u64>,
    pub max_invocations: Option<u32>,
    pub f16: bool,
    pub subgroups: bool,
    /// CPU instruction sets (the `cpu` device).
    pub simd: Option<SimdFeatures>,
}

impl From<&DeviceInfo> for DeviceFacts {
    fn from(d: &DeviceInfo) -> Self {
        DeviceFacts {
            id: d.id,
            name: d.name.clone(),
            key: crate::tune::device_key(d),
            class: d.class,
            memory_bytes: d
                .memory_bytes
                .or_else(|| d.cpu.as_ref().map(|c| c.memory_bytes)),
            max_binding_bytes: d.limits.as_ref().map(|l| l.max_storage_binding_size),
            shared_memory_bytes: d.limits.as_ref().map(|l| l.max_shared_memory),
            max_invocations: d.limits.as_ref().map(|l| l.max_workgroup_invocations),
            f16: d.f16,
            subgroups: d.subgroups,
            simd: d.cpu.as_ref().map(|c| c.simd.clone()),
        }
    }
}

/// What the policy reads about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFacts {
    pub name: String,
    pub params: u64,
    /// Bytes of weights per storage format, largest first.
    pub formats: Vec<(GgmlType, u64)>,
    /// The format of the matrix weights holding most bytes: what "the model's format" means.
    pub main_format: GgmlType,
    pub weight_bytes: u64,
    /// The largest single weight (it must fit one GPU storage binding).
    pub largest_tensor_bytes: u64,
    /// KV cache bytes per token of context (0 for encoders).
    pub kv_bytes_per_token: u64,
    /// Context the plan budgets memory for.
    pub context: usize,
    /// The formats `kiln tradeoffs` recommended for this file (by content), per device key.
    pub measured: Vec<Measured>,
}

/// Context budgeted when the model's is longer (intent classification prompts are short).
pub const DEFAULT_CONTEXT: usize = 4096;

impl ModelFacts {
    /// Facts from a GGUF file's header (no tensor data is read).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let gguf = kiln_quant::gguf::GgufFile::open(path)?;
        let cfg = kiln_models::llama::LlamaConfig::from_gguf(&gguf)?;
        let mut per_type: Vec<(GgmlType, u64)> = Vec::new();
        let mut matrix_bytes: Vec<(GgmlType, u64)> = Vec::new();
        let (mut total, mut largest) = (0u64, 0u64);
        for t in &gguf.tensors {
            total += t.n_bytes;
            largest = largest.max(t.n_bytes);
            add_bytes(&mut per_type, t.ty, t.n_bytes);
            if t.dims.len() == 2 {
                add_bytes(&mut matrix_bytes, t.ty, t.n_bytes);
            }
        }
        per_type.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
        matrix_bytes.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
        let main_format = matrix_bytes
            .first()
            .or(per_type.first())
            .map(|&(t, _)| t)
            .ok_or_else(|| RuntimeError::Usage(format!("{}: no tensors", path.display())))?;
        // The CPU caches K/V as f16 and the GPU as f32: budget the larger.
        let kv = 2 * cfg.n_layer as u64 * (cfg.n_head_kv * cfg.head_dim) as u64 * 4;
        Ok(ModelFacts {
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            params: cfg.n_params,
            formats: per_type,
            main_format,
            weight_bytes: total,
            largest_tensor_bytes: largest,
            kv_bytes_per_token: kv,
            context: cfg.context_length.min(DEFAULT_CONTEXT),
            measured: Vec::new(),
        })
    }

    fn memory_needed(&self) -> u64 {
        self.weight_bytes + self.kv_bytes_per_token * self.context as u64
    }
}

fn add_bytes(v: &mut Vec<(GgmlType, u64)>, ty: GgmlType, bytes: u64) {
    match v.iter_mut().find(|(t, _)| *t == ty) {
        Some((_, b)) => *b += bytes,
        None => v.push((ty, bytes)),
    }
}

/// A format `kiln tradeoffs` measured and recommended for a model on one device.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Measured {
    /// [`DeviceFacts::key`].
    pub device_key: String,
    pub device_name: String,
    pub format: String,
    pub reason: String,
    pub rejected: Vec<(String, String)>,
    /// The report the measurement is in.
    pub report: String,
}

/// One variant's measurements, as [`recommend`] reads them.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Candidate {
    pub format: String,
    /// Median speed: decode tokens/s (LLMs), texts/s (encoders).
    pub speed: f64,
    /// Accuracy lost against the reference variant: `1 − top-1 agreement` (LLMs),
    /// `1 − mean cosine` (encoders).
    pub loss: f64,
    /// Memory the variant needs (peak resident, or device memory in use).
    pub memory_bytes: u64,
}

/// How a recommendation names speed and loss.
pub struct Wording {
    pub speed: &'static str,
    pub unit: &'static str,
    pub loss: &'static str,
}

/// LLMs: decode speed, top-1 disagreement.
pub const LLM_WORDING: Wording = Wording {
    speed: "decode speed",
    unit: "tokens/s",
    loss: "top-1 disagreement",
};

/// The recommendation: the format and why, with the rejected alternatives.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Recommendation {
    pub format: String,
    pub reason: String,
    pub rejected: Vec<(String, String)>,
}

/// The trade-off rule (`kiln tradeoffs` recommends with it, and `kiln plan` follows what it
/// recommended): among the variants whose loss against the reference is within `max_loss`,
/// the fastest; equal speeds go to the smaller. `reference` is the highest-precision variant
/// measured (its loss is 0 by definition).
pub fn recommend(
    candidates: &[Candidate],
    reference: &str,
    max_loss: f64,
    w: &Wording,
) -> Option<Recommendation> {
    let within = |c: &&Candidate| c.loss <= max_loss;
    let best = candidates.iter().filter(within).max_by(|a, b| {
        a.speed
            .total_cmp(&b.speed)
            .then(b.memory_bytes.cmp(&a.memory_bytes))
    })?;
    let refc = candidates.iter().find(|c| c.format == reference);
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let reason = match refc {
        Some(r) if best.format != reference => format!(
            "{}: {:.2}× the {} of {} ({:.1} vs {:.1} {}), {} {}, within --max-loss {}",
            best.format,
            best.speed / r.speed,
            w.speed,
            reference,
            best.speed,
            r.speed,
            w.unit,
            pct(best.loss),
            w.loss,
            pct(max_loss)
        ),
        _ => format!(
            "{}: the reference (highest precision measured); no faster format stays within --max-loss {}",
            best.format,
            pct(max_loss)
        ),
    };
    let rejected = candidates
        .iter()
        .filter(|c| c.format != best.format)
        .map(|c| {
            let why = if c.loss > max_loss {
                format!(
                    "{} {} exceeds --max-loss {} ({:.1} {})",
                    pct(c.loss),
                    w.loss,
                    pct(max_loss),
                    c.speed,
                    w.unit
                )
            } else {
                format!(
                    "{:.1} {}, slower than {}'s {:.1} ({} {})",
                    c.speed,
                    w.unit,
                    best.format,
                    best.speed,
                    pct(c.loss),
                    w.loss
                )
            };
            (c.format.clone(), why)
        })
        .collect();
    Some(Recommendation {
        format: best.format.clone(),
        reason,
        rejected,
    })
}

/// Where `kiln tradeoffs` keeps its recommendations for `kiln plan`:
/// `$KILN_CACHE/tradeoffs/recommended` (default `~/.cache/kiln/…`).
pub fn measured_dir() -> std::path::PathBuf {
    crate::tradeoffs::cache_dir().join("recommended")
}

/// The recommendations kept in `dir` for a model file (by content hash), per device.
pub fn read_measured(dir: &Path, hash: &str) -> Vec<Measured> {
    std::fs::read_to_string(dir.join(format!("{hash}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Keeps `entries` for a model file in `dir`, replacing earlier ones for the same devices.
pub fn write_measured(dir: &Path, hash: &str, entries: &[Measured]) -> Result<()> {
    let path = dir.join(format!("{hash}.json"));
    let mut all = read_measured(dir, hash);
    all.retain(|m| entries.iter().all(|e| e.device_key != m.device_key));
    all.extend(entries.iter().cloned());
    let io = |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&all).expect("measurements serialize"),
    )
    .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// What the user fixed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub device: Option<DeviceId>,
    pub format: Option<GgmlType>,
    /// The GPU kernels' arithmetic (`--arithmetic cpu|fast`).
    pub arithmetic: Option<Arithmetic>,
}

/// `cpu` or `fast` (`--arithmetic`).
pub fn parse_arithmetic(name: &str) -> Result<Arithmetic> {
    Arithmetic::from_name(name).ok_or_else(|| {
        RuntimeError::Usage(format!(
            "--arithmetic {name:?}: cpu (results bit-identical to the CPU path) or fast"
        ))
    })
}

/// One decision: what was chosen, why, and what was rejected for which reason.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    pub what: &'static str,
    pub chosen: String,
    pub why: String,
    pub rejected: Vec<(String, String)>,
}

/// The kernels a GPU plan runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuKernels {
    /// The CPU path's arithmetic (bit-identical results) or the fast kernels' own sums.
    #[serde(serialize_with = "debug_str")]
    pub arithmetic: Arithmetic,
    /// The fast mat-vec kernel's reduction.
    #[serde(serialize_with = "debug_str")]
    pub matvec_reduction: Reduction,
    /// Units per cube of the mat-vec kernel.
    pub matvec_units: u32,
    /// Values per shared-memory load in the tiled mat-mul (4 with vec4 tiles).
    pub vector_width: u32,
    /// Output rows × columns × K step of the tiled mat-mul.
    pub tile: (u32, u32, u32),
    #[serde(serialize_with = "debug_str")]
    pub softmax: Softmax,
}

fn debug_str<T: fmt::Debug, S: serde::Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

/// The kernels a plan runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// Kiln's CPU kernels at this SIMD level (`scalar`, `avx2`, `avx512-vnni`).
    Cpu { isa: &'static str },
    /// Kiln's CubeCL kernels.
    Gpu(GpuKernels),
}

/// The dispatch decision for one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub model: String,
    pub device: DeviceId,
    pub device_name: String,
    #[serde(serialize_with = "type_name")]
    pub format: GgmlType,
    /// The format is not the file's: convert first with `kiln quantize`.
    pub needs_conversion: bool,
    pub kernels: Kernels,
    pub memory_needed_bytes: u64,
    pub choices: Vec<Choice>,
}

fn type_name<S: serde::Serializer>(t: &GgmlType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

/// The tiled mat-mul's smallest variant's shared memory, and its units per cube.
const TILE_SHARED_BYTES: u64 = kiln_kernels::qmatmul::SCALAR_SHARED_BYTES as u64;
const TILE_INVOCATIONS: u32 = kiln_kernels::qmatmul::TILED_CUBE_UNITS;
const MATVEC_UNITS: u32 = kiln_kernels::qmatmul::MATVEC_CUBE_UNITS;

/// The weight formats Kiln's kernels read on a device.
/// Whether Kiln has kernels for `ty` weights on `device`.
pub fn runs_on(device: &DeviceFacts, ty: GgmlType) -> bool {
    match device.id {
        DeviceId::Cpu => kiln_kernels::cpu::MATMUL_TYPES.contains(&ty),
        _ => kiln_kernels::CUBE_TYPES.contains(&ty),
    }
}

/// Formats ranked fastest first for decoding on a device, with the evidence.
/// CPU: llama-bench tg128 on the 2-core development machine (ISSUE #8's table); the ranking holds
/// for Kiln's CPU kernels, which follow llama.cpp's. GPU: decode reads every weight once per
/// token, so bytes per weight decide (Kiln decodes blocks in registers).
pub fn decode_ranking(device: &DeviceFacts) -> (Vec<GgmlType>, &'static str) {
    use GgmlType::*;
    match device.id {
        DeviceId::Cpu => (
            vec![Q4_0, Q4_K, Q8_0, Q4_1, Q6_K, F16, F32],
            "llama-bench tg128 on a 2-core x86 CPU: q4_0 261, q4_K 196, q8_0 193, q4_1 191, f16 157 t/s",
        ),
        _ => (
            vec![Q4_0, Q4_K, Q4_1, Q6_K, Q8_0, F16, F32],
            "decoding is memory-bound and Kiln's kernels decode blocks in registers: bits per weight q4_0 4.5, q4_K 4.5, q4_1 5, q6_K 6.6, q8_0 8.5, f16 16",
        ),
    }
}

fn cpu_isa(simd: Option<&SimdFeatures>) -> (&'static str, String, Vec<(String, String)>) {
    let s = simd.cloned().unwrap_or_default();
    let mut rejected = Vec::new();
    let avx2 = s.avx2 && s.fma && s.f16c;
    let isa = if avx2 && s.avx512f && s.avx512bw && s.avx512vl && s.avx512vnni {
        (
            "avx512-vnni",
            "AVX-512 with VNNI: vpdpbusd does the 8-bit multiply-adds of the quantized dots"
                .to_string(),
        )
    } else if avx2 {
        rejected.push((
            "avx512-vnni".to_string(),
            "the CPU lacks AVX-512 F/BW/VL + VNNI".to_string(),
        ));
        ("avx2", "AVX2 + FMA + F16C kernels".to_string())
    } else if s.neon && s.dotprod {
        (
            "neon",
            "NEON with the dot-product extension: SDOT does the 8-bit multiply-adds of the quantized dots".to_string(),
        )
    } else {
        if s.neon {
            rejected.push((
                "neon".to_string(),
                "the CPU lacks the dot-product extension (ARMv8.2 SDOT)".to_string(),
            ));
        } else {
            rejected.push((
                "avx2".to_string(),
                "the CPU lacks AVX2/FMA/F16C".to_string(),
            ));
        }
        ("scalar", "portable kernels".to_string())
    };
    (isa.0, isa.1, rejected)
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Why `device` cannot run the model, or `None` when it can.
fn unfit(device: &DeviceFacts, model: &ModelFacts, format: GgmlType) -> Option<String> {
    if !runs_on(device, format) {
        return Some(format!(
            "no Kiln kernel for {} weights on {}",
            format.name(),
            device.id
        ));
    }
    let need = model.memory_needed() + model.memory_needed() / 10;
    if let Some(mem) = device.memory_bytes
        && need > mem
    {
        return Some(format!(
            "needs {} (weights, KV cache for {} tokens, 10% headroom), has {}",
            gib(need),
            model.context,
            gib(mem)
        ));
    }
    if let Some(bind) = device.max_binding_bytes
        && model.largest_tensor_bytes > bind
    {
        return Some(format!(
            "its largest weight ({} MiB) exceeds the largest storage binding ({} MiB)",
            model.largest_tensor_bytes >> 20,
            bind >> 20
        ));
    }
    if device.id != DeviceId::Cpu {
        let shared = device.shared_memory_bytes.unwrap_or(0);
        let inv = device.max_invocations.unwrap_or(0);
        if shared < TILE_SHARED_BYTES || inv < TILE_INVOCATIONS {
            return Some(format!(
                "the tiled mat-mul needs {TILE_SHARED_BYTES} B of shared memory and {TILE_INVOCATIONS} invocations per workgroup (has {shared} B, {inv})"
            ));
        }
    }
    None
}

/// The GPU kernels' arithmetic: the CPU's, wherever a kernel follows it for the format, unless
/// the user asks for the fast kernels.
fn gpu_arithmetic(
    format: GgmlType,
    asked: Option<Arithmetic>,
    choices: &mut Vec<Choice>,
) -> Arithmetic {
    let exact = kiln_kernels::cpu::x8::supported(format);
    let fast_why = "the kernels' own parallel sums (mat-vec reductions, tiles): faster for prompts (3.3× on llvmpipe, whose fma rounds twice; decode as fast), but logits drift from the CPU's (up to 0.8 on SmolLM2's parity prompts) and near-tied argmaxes flip (2 of 135)";
    let (arithmetic, why, rejected) = match asked {
        Some(Arithmetic::Fast) => (
            Arithmetic::Fast,
            "asked for (--arithmetic fast)".to_string(),
            vec![("cpu".to_string(), "not asked for".to_string())],
        ),
        _ if exact => (
            Arithmetic::Cpu,
            format!(
                "the CPU path's operations in its order (activations quantized as the CPU quantizes them for {} weights, exact integer block sums, the blocks' fused multiply-adds in order; RMSNorm, RoPE, SwiGLU and softmax as ggml computes them): logits bit-identical to the CPU path's{}",
                format.name(),
                if asked.is_some() { " (asked for)" } else { "" }
            ),
            vec![("fast".to_string(), fast_why.to_string())],
        ),
        _ => (
            Arithmetic::Fast,
            format!(
                "no GPU kernel follows the CPU's order for {name} (the CPU's own {name} kernels sum in an order that depends on the instruction set)",
                name = format.name()
            ),
            vec![(
                "cpu".to_string(),
                format!(
                    "kernels in the CPU's order exist for {}",
                    kiln_kernels::cpu::x8::TYPES
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )],
        ),
    };
    choices.push(Choice {
        what: "arithmetic",
        chosen: arithmetic.name().to_string(),
        why,
        rejected,
    });
    arithmetic
}

/// The mat-vec kernel's split of rows among units, and its reduction.
fn matvec_variant(device: &DeviceFacts) -> (Reduction, &'static str, Vec<(String, String)>) {
    let plane = ("plane".to_string(), "needs subgroup operations".to_string());
    if device.class == DeviceClass::SoftwareGpu {
        // llvmpipe runs a workgroup's units as SIMD lanes of one CPU thread; each barrier is
        // a coroutine switch. Measured (benches/cube_qmatmul): one row per unit is fastest.
        (
            Reduction::PerUnit,
            "a software GPU runs units as SIMD lanes of a CPU thread: one row per unit, no barriers",
            vec![
                plane,
                (
                    "shared(8)".into(),
                    "barriers cost a coroutine switch per SIMD group on a software GPU".into(),
                ),
            ],
        )
    } else if device.subgroups {
        (
            Reduction::Plane,
            "the device has subgroup operations: one row per 64 units, plane sums, one shared-memory step",
            vec![(
                "shared(8)".into(),
                "a shared-memory tree with a barrier per step".into(),
            )],
        )
    } else {
        (
            Reduction::Shared(8),
            "no subgroup operations: 8 units per row (coalesced 32-byte reads), a 3-step shared-memory tree",
            vec![plane],
        )
    }
}

/// Preference among devices that can run the model (lower is better), with the reason.
fn rank(device: &DeviceFacts) -> (u8, &'static str) {
    match (device.id, device.class) {
        (DeviceId::Cuda(_), _) => (0, "a CUDA GPU: the most memory bandwidth for decoding"),
        (_, DeviceClass::DiscreteGpu) => (1, "a discrete GPU: more memory bandwidth than the CPU"),
        (DeviceId::Cpu, _) => (2, "Kiln's SIMD CPU kernels (llama.cpp's arithmetic)"),
        (_, DeviceClass::IntegratedGpu | DeviceClass::VirtualGpu) => (
            3,
            "an integrated GPU shares the CPU's memory bandwidth, and decoding is bandwidth-bound",
        ),
        (_, DeviceClass::SoftwareGpu) => (
            4,
            "a software GPU runs on the CPU through a graphics API, slower than Kiln's CPU kernels",
        ),
        _ => (3, "an unclassified adapter"),
    }
}

/// The format when nothing was measured: the file's own (or the one asked for), naming the
/// faster format for the device from [`decode_ranking`].
fn format_from_file(
    device: &DeviceFacts,
    model: &ModelFacts,
    format: GgmlType,
    asked: bool,
    choices: &mut Vec<Choice>,
) -> (GgmlType, bool) {
    let (ranking, evidence) = decode_ranking(device);
    let fastest = ranking
        .iter()
        .copied()
        .find(|&t| runs_on(device, t))
        .unwrap_or(format);
    let needs_conversion = format != model.main_format;
    let mut rejected: Vec<(String, String)> = Vec::new();
    if fastest != format {
        rejected.push((
            fastest.name().to_string(),
            format!(
                "decodes faster here ({evidence}), but {} needs `kiln quantize --type {}` first and its accuracy measured (`kiln tradeoffs`)",
                model.name,
                fastest.name()
            ),
        ));
    }
    choices.push(Choice {
        what: "format",
        chosen: format.name().to_string(),
        why: if asked {
            format!(
                "asked for with --format{}",
                if needs_conversion {
                    format!(
                        " (the file holds {}: convert it with `kiln quantize`)",
                        model.main_format.name()
                    )
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "the file's format; Kiln's {} kernels read its blocks directly",
                if device.id == DeviceId::Cpu {
                    "CPU"
                } else {
                    "GPU"
                }
            )
        },
        rejected,
    });
    (format, needs_conversion)
}

/// The dispatch policy: device, kernels and weight format for `model` among `devices`.
pub fn plan(devices: &[DeviceFacts], model: &ModelFacts, ov: &Overrides) -> Result<Plan> {
    let format = ov.format.unwrap_or(model.main_format);
    let mut choices = Vec::new();

    // Device.
    let device = if let Some(id) = ov.device {
        let d = devices
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| RuntimeError::Device {
                id: id.to_string(),
                reason: "not found on this machine".into(),
            })?;
        if let Some(why) = unfit(d, model, format) {
            return Err(RuntimeError::Device {
                id: id.to_string(),
                reason: why,
            });
        }
        choices.push(Choice {
            what: "device",
            chosen: format!("{} ({})", d.id, d.name),
            why: "asked for with --device".into(),
            rejected: vec![],
        });
        d
    } else {
        let mut fit: Vec<&DeviceFacts> = Vec::new();
        let mut rejected = Vec::new();
        for d in devices {
            match unfit(d, model, format) {
                Some(why) => rejected.push((d.id.to_string(), why)),
                None => fit.push(d),
            }
        }
        fit.sort_by_key(|d| rank(d).0);
        let Some(&best) = fit.iter().find(|d| rank(d).0 < 4) else {
            return Err(RuntimeError::Usage(format!(
                "no device can run {} as {}: {}",
                model.name,
                format.name(),
                rejected
                    .iter()
                    .map(|(d, w)| format!("{d}: {w}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        };
        for d in fit.iter().filter(|d| d.id != best.id) {
            rejected.push((d.id.to_string(), rank(d).1.to_string()));
        }
        choices.push(Choice {
            what: "device",
            chosen: format!("{} ({})", best.id, best.name),
            why: rank(best).1.to_string(),
            rejected,
        });
        best
    };

    // Format: a format `kiln tradeoffs` measured and recommended for this file on this device
    // comes first (the one source of truth for both commands), then the file's own.
    let measured = model
        .measured
        .iter()
        .find(|m| m.device_key == device.key)
        .and_then(|m| GgmlType::from_name(&m.format).map(|t| (t, m)))
        .filter(|(t, _)| runs_on(device, *t));
    let (format, needs_conversion) = if ov.format.is_none()
        && let Some((chosen, m)) = measured
    {
        let needs_conversion = chosen != model.main_format;
        choices.push(Choice {
            what: "format",
            chosen: chosen.name().to_string(),
            why: format!(
                "measured here by `kiln tradeoffs` ({}): {}{}",
                m.report,
                m.reason,
                if needs_conversion {
                    format!(
                        "; the file holds {}: convert it with `kiln quantize --type {}`",
                        model.main_format.name(),
                        chosen.name()
                    )
                } else {
                    String::new()
                }
            ),
            rejected: m.rejected.clone(),
        });
        (chosen, needs_conversion)
    } else {
        format_from_file(device, model, format, ov.format.is_some(), &mut choices)
    };

    // Kernels.
    let kernels = if device.id == DeviceId::Cpu {
        let (isa, why, rejected) = cpu_isa(device.simd.as_ref());
        choices.push(Choice {
            what: "cpu kernels",
            chosen: isa.to_string(),
            why,
            rejected,
        });
        Kernels::Cpu { isa }
    } else {
        let arithmetic = gpu_arithmetic(format, ov.arithmetic, &mut choices);
        let (reduction, why, rejected) = matvec_variant(device);
        choices.push(Choice {
            what: "mat-vec reduction",
            chosen: format!("{reduction:?}").to_lowercase(),
            why: format!(
                "{why}; the first run on the device times every variant and keeps the fastest (~/.cache/kiln/tune)"
            ),
            rejected,
        });
        let shared = device.shared_memory_bytes.unwrap_or(0) as usize;
        let tiling = Tiling::for_shared_memory(shared);
        let tile = tiling.tile();
        let (vec4, scalar) = (
            kiln_kernels::qmatmul::VEC4_SHARED_BYTES,
            kiln_kernels::qmatmul::SCALAR_SHARED_BYTES,
        );
        choices.push(Choice {
            what: "tiles",
            chosen: format!(
                "mat-vec cubes of {MATVEC_UNITS} units; mat-mul {}×{}×{} {} tiles in {TILE_INVOCATIONS} units",
                tile.0,
                tile.1,
                tile.2,
                if tiling == Tiling::Vec4 { "vec4" } else { "scalar" }
            ),
            why: if tiling == Tiling::Vec4 {
                format!("{vec4} B of shared memory ({shared} available); 16 × 8 outputs per unit from 6 vector loads per K value")
            } else {
                format!("{scalar} B of shared memory ({shared} available); 4 × 8 outputs per unit")
            },
            rejected: if tiling == Tiling::Vec4 {
                vec![(
                    "scalar 32-row tiles".into(),
                    "1.5× slower on llvmpipe (23.5 vs 15.8 ms at 128 × 1536 × 576); for devices with 16 KiB of shared memory".into(),
                )]
            } else {
                vec![("vec4 128-row tiles".into(), format!("need {vec4} B of shared memory"))]
            },
        });
        let softmax = if arithmetic == Arithmetic::Cpu {
            choices.push(Choice {
                what: "attention",
                chosen: "rounded (ggml arithmetic)".into(),
                why: "the CPU path's softmax step for step (llama.cpp's lane orders, its exp, an f64 normalizer, f16 probabilities): with the CPU's arithmetic in the products, logits are the CPU's to the bit".into(),
                rejected: vec![(
                    "one-pass online softmax".into(),
                    "reads K once instead of three times, but changes logits (~1e-3) and flips near-tied argmaxes".into(),
                )],
            });
            Softmax::Rounded
        } else {
            choices.push(Choice {
                what: "attention",
                chosen: "one-pass online softmax".into(),
                why: "the fast kernels' results are not the CPU's anyway: read K and V once".into(),
                rejected: vec![(
                    "rounded (ggml arithmetic)".into(),
                    "three sweeps over K; bit-identical to the CPU only with the CPU's arithmetic in the products".into(),
                )],
            });
            Softmax::OnePass
        };
        Kernels::Gpu(GpuKernels {
            arithmetic,
            matvec_reduction: reduction,
            matvec_units: MATVEC_UNITS,
            vector_width: if tiling == Tiling::Vec4 { 4 } else { 1 },
            tile,
            softmax,
        })
    };

    Ok(Plan {
        model: model.name.clone(),
        device: device.id,
        device_name: device.name.clone(),
        format,
        needs_conversion,
        kernels,
        memory_needed_bytes: model.memory_needed(),
        choices,
    })
}

/// Plans `model` (a GGUF file) on this machine's devices. `device`: `auto` or a device name
/// (`cpu`, `wgpu[:N]`, `cuda[:N]`); `format`: a ggml type name; `arithmetic`: the GPU kernels'
/// (`None`: the policy's). `cpu` skips probing the GPUs.
pub fn plan_for_file(
    model: &Path,
    device: &str,
    format: Option<&str>,
    arithmetic: Option<Arithmetic>,
) -> Result<Plan> {
    let devices = match device {
        "cpu" => vec![DeviceInfo::cpu()],
        _ => crate::probe_devices().devices,
    };
    plan_on(model, &devices, device, format, arithmetic)
}

/// [`plan_for_file`] among devices probed already.
pub fn plan_on(
    model: &Path,
    devices: &[DeviceInfo],
    device: &str,
    format: Option<&str>,
    arithmetic: Option<Arithmetic>,
) -> Result<Plan> {
    let mut facts = ModelFacts::from_gguf(model)?;
    // Hashing the file is only worth it when something was measured at all.
    if std::fs::read_dir(measured_dir()).is_ok_and(|mut d| d.next().is_some()) {
        let hash =
            crate::tradeoffs::variants::content_hash(model, &crate::models_dir::cache_root())?;
        facts.measured = read_measured(&measured_dir(), &hash);
    }
    let format = format
        .map(|name| {
            GgmlType::from_name(name).ok_or_else(|| {
                RuntimeError::Usage(format!("--format {name:?}: not a ggml type name"))
            })
        })
        .transpose()?;
    let wanted = match device {
        "auto" => None,
        name => Some(name.parse::<DeviceId>()?),
    };
    let facts_of: Vec<DeviceFacts> = devices.iter().map(DeviceFacts::from).collect();
    plan(
        &facts_of,
        &facts,
        &Overrides {
            device: wanted,
            format,
            arithmetic,
        },
    )
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan for {}", self.model)?;
        writeln!(f, "  device:  {} ({})", self.device, self.device_name)?;
        writeln!(
            f,
            "  format:  {}{}",
            self.format.name(),
            if self.needs_conversion {
                " (convert first: kiln quantize)"
            } else {
                ""
            }
        )?;
        match &self.kernels {
            Kernels::Cpu { isa } => writeln!(f, "  kernels: CPU {isa}")?,
            Kernels::Gpu(k) => writeln!(
                f,
                "  kernels: CubeCL, {} arithmetic; mat-vec {:?} reduction, {} units; mat-mul tile {}×{}×{}; vector width {}; attention {:?}",
                k.arithmetic.name(),
                k.matvec_reduction,
                k.matvec_units,
                k.tile.0,
                k.tile.1,
                k.tile.2,
                k.vector_width,
                k.softmax
            )?,
        }
        writeln!(
            f,
            "  memory:  {} (weights + KV cache)",
            gib(self.memory_needed_bytes)
        )?;
        writeln!(f, "why:")?;
        for c in &self.choices {
            writeln!(f, "  {}: {} — {}", c.what, c.chosen, c.why)?;
            for (alt, why) in &c.rejected {
                writeln!(f, "    not {alt}: {why}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn cpu(avx512: bool) -> DeviceFacts {
        let simd = SimdFeatures {
            avx: true,
            avx2: true,
            fma: true,
            f16c: true,
            avx512f: avx512,
            avx512bw: avx512,
            avx512vl: avx512,
            avx512vnni: avx512,
            ..SimdFeatures::default()
        };
        DeviceFacts {
            id: DeviceId::Cpu,
            name: "made-up CPU".into(),
            key: "flex-made-up-cpu".into(),
            class: DeviceClass::Cpu,
            memory_bytes: Some(16 * GIB),
            max_binding_bytes: None,
            shared_memory_bytes: None,
            max_invocations: None,
            f16: false,
            subgroups: false,
            simd: Some(simd),
        }
    }

    fn gpu(id: DeviceId, class: DeviceClass, mem: u64, subgroups: bool) -> DeviceFacts {
        DeviceFacts {
            id,
            name: format!("made-up {class}"),
            key: format!("made-up-{class}-{id}"),
            class,
            memory_bytes: Some(mem),
            max_binding_bytes: Some(mem.min(2 * GIB)),
            shared_memory_bytes: Some(48 << 10),
            max_invocations: Some(1024),
            f16: true,
            subgroups,
            simd: None,
        }
    }

    /// A T4: CUDA, 16 GB, warps, no fast int4 path in Kiln (none is needed: blocks are decoded
    /// to f32 in registers).
    fn t4() -> DeviceFacts {
        gpu(DeviceId::Cuda(0), DeviceClass::DiscreteGpu, 15 * GIB, true)
    }

    fn llama_1b(format: GgmlType) -> ModelFacts {
        let weight_bytes = match format {
            GgmlType::Q4_0 => 770 << 20,
            GgmlType::Q8_0 => 1300 << 20,
            _ => 2500 << 20,
        };
        ModelFacts {
            name: format!("llama-1b-{}.gguf", format.name()),
            params: 1_240_000_000,
            formats: vec![(format, weight_bytes)],
            main_format: format,
            weight_bytes,
            largest_tensor_bytes: weight_bytes / 5,
            kv_bytes_per_token: 2 * 16 * 512 * 4,
            context: DEFAULT_CONTEXT,
            measured: vec![],
        }
    }

    fn choice<'a>(p: &'a Plan, what: &str) -> &'a Choice {
        p.choices.iter().find(|c| c.what == what).unwrap()
    }

    #[test]
    fn t4_like_cuda_gpu_runs_4bit_fused_with_warp_reductions() {
        let devices = [cpu(true), t4()];
        let p = plan(&devices, &llama_1b(GgmlType::Q4_0), &Overrides::default()).unwrap();
        assert_eq!(p.device, DeviceId::Cuda(0));
        assert_eq!(p.format, GgmlType::Q4_0);
        let Kernels::Gpu(k) = &p.kernels else {
            panic!("{p}")
        };
        assert_eq!(k.matvec_reduction, Reduction::Plane);
        assert_eq!(k.softmax, Softmax::Rounded);
        assert!(
            choice(&p, "device")
                .rejected
                .iter()
                .any(|(d, _)| d == "cpu")
        );
        // An f16 file on the T4: runs as stored, q4_0 named as the faster format.
        let p = plan(&devices, &llama_1b(GgmlType::F16), &Overrides::default()).unwrap();
        assert_eq!((p.device, p.format), (DeviceId::Cuda(0), GgmlType::F16));
        let f = choice(&p, "format");
        assert_eq!(f.rejected[0].0, "q4_0", "{p}");
        assert!(f.rejected[0].1.contains("memory-bound"), "{p}");
    }

    /// On a GPU the CPU path's arithmetic (bit-identical logits) wherever a kernel follows it,
    /// with the matching softmax; the fast kernels for other formats or when asked for.
    #[test]
    fn gpu_arithmetic_is_the_cpus_where_a_kernel_follows_it() {
        let devices = [cpu(true), t4()];
        let kernels = |p: &Plan| match &p.kernels {
            Kernels::Gpu(k) => (k.arithmetic, k.softmax),
            Kernels::Cpu { .. } => panic!("{p}"),
        };
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
        ] {
            let p = plan(&devices, &llama_1b(ty), &Overrides::default()).unwrap();
            assert_eq!(kernels(&p), (Arithmetic::Cpu, Softmax::Rounded), "{p}");
            assert!(
                choice(&p, "arithmetic").why.contains("bit-identical"),
                "{p}"
            );
            assert_eq!(choice(&p, "arithmetic").rejected[0].0, "fast");
        }
        // F16: the CPU's f16 kernels sum in an ISA-dependent order; nothing to follow.
        let p = plan(&devices, &llama_1b(GgmlType::F16), &Overrides::default()).unwrap();
        assert_eq!(kernels(&p), (Arithmetic::Fast, Softmax::OnePass), "{p}");
        assert!(choice(&p, "arithmetic").why.contains("f16"), "{p}");
        // Asked for.
        let fast = Overrides {
            arithmetic: Some(Arithmetic::Fast),
            ..Overrides::default()
        };
        let p = plan(&devices, &llama_1b(GgmlType::Q4_0), &fast).unwrap();
        assert_eq!(kernels(&p), (Arithmetic::Fast, Softmax::OnePass), "{p}");
        assert!(p.to_string().contains("fast arithmetic"), "{p}");
        assert!(parse_arithmetic("exact").is_err());
    }

    #[test]
    fn gpu_with_f16_and_subgroups_vs_one_without() {
        let with = gpu(DeviceId::Wgpu(0), DeviceClass::DiscreteGpu, 8 * GIB, true);
        let p = plan(
            &[cpu(false), with],
            &llama_1b(GgmlType::Q8_0),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(p.device, DeviceId::Wgpu(0));
        assert!(matches!(&p.kernels, Kernels::Gpu(k) if k.matvec_reduction == Reduction::Plane));
        let without = gpu(DeviceId::Wgpu(0), DeviceClass::DiscreteGpu, 8 * GIB, false);
        let p = plan(
            &[cpu(false), without],
            &llama_1b(GgmlType::Q8_0),
            &Overrides::default(),
        )
        .unwrap();
        assert!(
            matches!(&p.kernels, Kernels::Gpu(k) if k.matvec_reduction == Reduction::Shared(8))
        );
        assert_eq!(choice(&p, "mat-vec reduction").rejected[0].0, "plane");
    }

    #[test]
    fn integrated_gpu_with_little_memory_is_rejected_and_the_cpu_runs() {
        let igpu = gpu(
            DeviceId::Wgpu(0),
            DeviceClass::IntegratedGpu,
            512 << 20,
            false,
        );
        let p = plan(
            &[cpu(true), igpu.clone()],
            &llama_1b(GgmlType::Q8_0),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(p.device, DeviceId::Cpu);
        let (_, why) = &choice(&p, "device").rejected[0];
        assert!(
            why.contains("needs") && why.contains("has 0.50 GiB"),
            "{why}"
        );
        // Asking for it anyway is an error with the reason, not a silent switch.
        let err = plan(
            &[cpu(true), igpu],
            &llama_1b(GgmlType::Q8_0),
            &Overrides {
                device: Some(DeviceId::Wgpu(0)),
                format: None,
                arithmetic: None,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
    }

    #[test]
    fn cpus_with_and_without_avx512_and_arm_with_and_without_sdot() {
        let m = llama_1b(GgmlType::Q4_1);
        let p = plan(&[cpu(true)], &m, &Overrides::default()).unwrap();
        assert_eq!(p.kernels, Kernels::Cpu { isa: "avx512-vnni" });
        // The file's Q4_1 runs; Q4_0 is named as the faster CPU format, with the evidence.
        assert_eq!(p.format, GgmlType::Q4_1);
        assert!(!p.needs_conversion);
        let f = choice(&p, "format");
        assert_eq!(f.rejected[0].0, "q4_0");
        assert!(f.rejected[0].1.contains("261"), "{p}");
        let p = plan(&[cpu(false)], &m, &Overrides::default()).unwrap();
        assert_eq!(p.kernels, Kernels::Cpu { isa: "avx2" });
        assert_eq!(choice(&p, "cpu kernels").rejected[0].0, "avx512-vnni");
        // 64-bit ARM: NEON with SDOT, else the scalar kernels, saying why.
        let arm = |dotprod: bool| DeviceFacts {
            simd: Some(SimdFeatures {
                neon: true,
                dotprod,
                ..SimdFeatures::default()
            }),
            ..cpu(false)
        };
        let p = plan(&[arm(true)], &m, &Overrides::default()).unwrap();
        assert_eq!(p.kernels, Kernels::Cpu { isa: "neon" });
        let p = plan(&[arm(false)], &m, &Overrides::default()).unwrap();
        assert_eq!(p.kernels, Kernels::Cpu { isa: "scalar" });
        assert!(
            choice(&p, "cpu kernels").rejected[0].1.contains("SDOT"),
            "{p}"
        );
    }

    #[test]
    fn software_gpu_is_never_picked_unasked_but_runs_when_asked() {
        let soft = DeviceFacts {
            memory_bytes: None,
            ..gpu(DeviceId::Wgpu(0), DeviceClass::SoftwareGpu, 2 * GIB, false)
        };
        let m = llama_1b(GgmlType::Q4_0);
        let p = plan(&[cpu(false), soft.clone()], &m, &Overrides::default()).unwrap();
        assert_eq!(p.device, DeviceId::Cpu);
        assert!(choice(&p, "device").rejected[0].1.contains("software GPU"));
        let asked = Overrides {
            device: Some(DeviceId::Wgpu(0)),
            format: None,
            arithmetic: None,
        };
        let p = plan(&[cpu(false), soft], &m, &asked).unwrap();
        assert_eq!(p.device, DeviceId::Wgpu(0));
    }

    #[test]
    fn format_override_and_missing_kernels() {
        let m = llama_1b(GgmlType::Q4_0);
        let ov = Overrides {
            device: None,
            format: Some(GgmlType::Q8_0),
            arithmetic: None,
        };
        let p = plan(&[cpu(true)], &m, &ov).unwrap();
        assert_eq!(p.format, GgmlType::Q8_0);
        assert!(p.needs_conversion);
        // Q3_K has no Kiln kernel on any device (every other format runs on both): no plan,
        // and the error names the format.
        let ov = Overrides {
            device: None,
            format: Some(GgmlType::Q3_K),
            arithmetic: None,
        };
        let err = plan(&[cpu(true), t4()], &m, &ov).unwrap_err();
        assert!(err.to_string().contains("no Kiln kernel for q3_K"), "{err}");
        // A GPU with WebGPU's minimum of 16 KiB of shared memory gets the scalar tiles.
        let mut small_shared = t4();
        small_shared.shared_memory_bytes = Some(16 << 10);
        let p = plan(&[cpu(true), small_shared], &m, &Overrides::default()).unwrap();
        assert!(
            matches!(&p.kernels, Kernels::Gpu(k) if k.tile == (32, 64, 32) && k.vector_width == 1)
        );
        let p = plan(&[cpu(true), t4()], &m, &Overrides::default()).unwrap();
        assert!(
            matches!(&p.kernels, Kernels::Gpu(k) if k.tile == (128, 64, 32) && k.vector_width == 4)
        );
        // A binding too small for the largest tensor rejects the GPU.
        let mut small = t4();
        small.max_binding_bytes = Some(64 << 20);
        let p = plan(&[cpu(true), small], &m, &Overrides::default()).unwrap();
        assert_eq!(p.device, DeviceId::Cpu);
        assert!(
            choice(&p, "device").rejected[0]
                .1
                .contains("storage binding")
        );
    }

    fn cand(format: &str, tps: f64, dis: f64, mem: u64) -> Candidate {
        Candidate {
            format: format.into(),
            speed: tps,
            loss: dis,
            memory_bytes: mem,
        }
    }

    fn recommend(c: &[Candidate], r: &str, max: f64) -> Option<Recommendation> {
        super::recommend(c, r, max, &LLM_WORDING)
    }

    #[test]
    fn recommendation_is_the_fastest_within_the_loss_budget() {
        let c = [
            cand("f16", 100.0, 0.0, 300),
            cand("q8_0", 150.0, 0.004, 160),
            cand("q4_0", 260.0, 0.08, 90),
        ];
        let r = recommend(&c, "f16", 0.01).unwrap();
        assert_eq!(r.format, "q8_0");
        assert!(
            r.reason.contains("1.50× the decode speed of f16"),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains("0.40% top-1 disagreement"),
            "{}",
            r.reason
        );
        let q4 = r.rejected.iter().find(|(f, _)| f == "q4_0").unwrap();
        assert!(q4.1.contains("exceeds --max-loss"), "{}", q4.1);
        // A looser budget takes q4_0; a zero budget keeps the reference.
        assert_eq!(recommend(&c, "f16", 0.1).unwrap().format, "q4_0");
        let r = recommend(&c, "f16", 0.0).unwrap();
        assert_eq!(r.format, "f16");
        assert!(r.reason.contains("the reference"));
        // Equal speeds: the smaller variant.
        let tie = [cand("a", 100.0, 0.0, 300), cand("b", 100.0, 0.0, 200)];
        assert_eq!(recommend(&tie, "a", 0.01).unwrap().format, "b");
        assert!(recommend(&[], "f16", 0.01).is_none());
    }

    #[test]
    fn the_plan_follows_a_measured_recommendation_for_its_device_only() {
        let mut m = llama_1b(GgmlType::Q8_0);
        let cpu = cpu(true);
        m.measured = vec![Measured {
            device_key: cpu.key.clone(),
            device_name: cpu.name.clone(),
            format: "q4_0".into(),
            reason: "q4_0: 2.00× the decode speed of f16".into(),
            rejected: vec![("q8_0".into(), "slower".into())],
            report: "out/report.json".into(),
        }];
        let p = plan(std::slice::from_ref(&cpu), &m, &Overrides::default()).unwrap();
        assert_eq!(p.format, GgmlType::Q4_0);
        assert!(p.needs_conversion);
        let f = choice(&p, "format");
        assert!(f.why.contains("kiln tradeoffs") && f.why.contains("kiln quantize --type q4_0"));
        // --format wins over the measurement; another device has no measurement.
        let ov = Overrides {
            device: None,
            format: Some(GgmlType::Q8_0),
            arithmetic: None,
        };
        assert_eq!(
            plan(std::slice::from_ref(&cpu), &m, &ov).unwrap().format,
            GgmlType::Q8_0
        );
        let p = plan(&[t4()], &m, &Overrides::default()).unwrap();
        assert_eq!(p.format, GgmlType::Q8_0);
    }
}
