//! Kiln's CPU kernels: quantized matrix products over GGML blocks with activations quantized on
//! the fly ([`act`]), in a scalar reference ([`dot_scalar`]) and SIMD versions selected at run
//! time ([`Isa`]), spread over the cores by a spinning fork-join [`pool`].

pub mod act;
#[cfg(target_arch = "aarch64")]
mod dot_neon;
pub mod dot_scalar;
#[cfg(target_arch = "x86_64")]
mod dot_x86;
pub mod encoder;
pub mod gemm;
pub mod pool;
pub mod x8;
#[cfg(target_arch = "aarch64")]
mod x8_neon;
#[cfg(target_arch = "x86_64")]
mod x8_x86;

use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use kiln_quant::GgmlType;
use std::sync::Mutex;

pub use act::ActFormat;

/// The instruction sets Kiln's CPU kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust: the reference, and the fallback.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 kernels with AVX-512 VNNI's `vpdpbusd` for the 8-bit multiply-adds.
    Avx512Vnni,
    /// 64-bit ARM: NEON with the dot-product extension (`SDOT`, ARMv8.2) for the quantized types'
    /// x8 kernels, NEON for F32 and F16 rows; other GGUF-layout rows run the scalar dots.
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the kernels.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The best instruction set this CPU has.
    pub fn best() -> Self {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(&Isa::Scalar)
    }
}

/// Whether this CPU has AVX2 and FMA: scalar hot loops (`f32::mul_add`, `round_ties_even`) are
/// then compiled into clones with those features instead of calling libm.
pub fn has_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| Isa::Avx2.available())
}

static FORCED: AtomicU8 = AtomicU8::new(u8::MAX);

/// Forces the kernels of one instruction set (tests, benchmarks), or back to automatic with
/// `None`. Errors when this CPU lacks it.
pub fn force_isa(isa: Option<Isa>) -> Result<(), crate::KernelError> {
    match isa {
        Some(i) if !i.available() => Err(crate::KernelError::UnsupportedDevice(format!(
            "this CPU cannot run the {} kernels",
            i.name()
        ))),
        Some(i) => {
            FORCED.store(i as u8, Ordering::Relaxed);
            Ok(())
        }
        None => {
            FORCED.store(u8::MAX, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// The instruction set in use: forced by [`force_isa`], else `KILN_CPU_ISA` (scalar, avx2,
/// avx512vnni; ignored when unavailable), else the best this CPU has.
pub fn active_isa() -> Isa {
    let forced = FORCED.load(Ordering::Relaxed);
    if let Some(&i) = Isa::ALL.get(forced as usize) {
        return i;
    }
    static DEFAULT: OnceLock<Isa> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        std::env::var("KILN_CPU_ISA")
            .ok()
            .and_then(|n| Isa::from_name(&n))
            .filter(|i| i.available())
            .unwrap_or_else(Isa::best)
    })
}

/// `dot(k, weight_row, activation_row)`: rows hold `k` values in their formats.
pub type DotFn = fn(usize, &[u8], &[u8]) -> f32;

/// The weight types with a CPU dot product.
pub const MATMUL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The dot product of `isa` for weights of `ty`.
pub fn dot_fn(isa: Isa, ty: GgmlType) -> Option<DotFn> {
    macro_rules! pick {
        ($m:path) => {{
            use $m as m;
            Some(match ty {
                GgmlType::F32 => m::f32,
                GgmlType::F16 => m::f16,
                GgmlType::Q4_0 => m::q4_0,
                GgmlType::Q4_1 => m::q4_1,
                GgmlType::Q5_0 => m::q5_0,
                GgmlType::Q5_1 => m::q5_1,
                GgmlType::Q8_0 => m::q8_0,
                GgmlType::Q4_K => m::q4_k,
                GgmlType::Q5_K => m::q5_k,
                GgmlType::Q6_K => m::q6_k,
                _ => return None,
            })
        }};
    }
    match isa {
        Isa::Scalar => pick!(dot_scalar),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.available() => Some(match ty {
            GgmlType::F32 => safe_neon::f32,
            GgmlType::F16 => safe_neon::f16,
            _ => return dot_fn(Isa::Scalar, ty),
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => pick!(safe_x86::avx2),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.available() => pick!(safe_x86::avx512vnni),
        _ => None,
    }
}

/// One weight row against [`ROWS`] activation rows (batches): results bit-identical to [`DotFn`]
/// row by row, so a token's logits do not depend on its batch.
pub type DotRowsFn = fn(usize, &[u8], &[&[u8]; ROWS]) -> [f32; ROWS];
pub const ROWS: usize = 4;

/// The multi-row kernel of `isa` for `ty`, where there is one.
pub fn dot_rows_fn(isa: Isa, ty: GgmlType) -> Option<DotRowsFn> {
    let _ = ty; // (no multi-row kernels on ARM)
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => match ty {
            GgmlType::Q4_0 => Some(safe_x86::avx2::q4_0_rows),
            GgmlType::Q4_1 => Some(safe_x86::avx2::q4_1_rows),
            GgmlType::Q8_0 => Some(safe_x86::avx2::q8_0_rows),
            GgmlType::F16 => Some(safe_x86::avx2::f16_rows),
            GgmlType::Q5_0 => Some(safe_x86::avx2::q5_0_rows),
            GgmlType::Q5_1 => Some(safe_x86::avx2::q5_1_rows),
            GgmlType::Q4_K => Some(safe_x86::avx2::q4_k_rows),
            GgmlType::Q5_K => Some(safe_x86::avx2::q5_k_rows),
            GgmlType::Q6_K => Some(safe_x86::avx2::q6_k_rows),
            _ => None,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.available() => match ty {
            GgmlType::Q4_0 => Some(safe_x86::avx512vnni::q4_0_rows),
            GgmlType::Q4_1 => Some(safe_x86::avx512vnni::q4_1_rows),
            GgmlType::Q8_0 => Some(safe_x86::avx512vnni::q8_0_rows),
            GgmlType::F16 => Some(safe_x86::avx512vnni::f16_rows),
            GgmlType::Q5_0 => Some(safe_x86::avx512vnni::q5_0_rows),
            GgmlType::Q5_1 => Some(safe_x86::avx512vnni::q5_1_rows),
            GgmlType::Q4_K => Some(safe_x86::avx512vnni::q4_k_rows),
            GgmlType::Q5_K => Some(safe_x86::avx512vnni::q5_k_rows),
            GgmlType::Q6_K => Some(safe_x86::avx512vnni::q6_k_rows),
            _ => None,
        },
        _ => None,
    }
}

/// Weight rows per tile of the batched kernels.
pub const TILE_W: usize = 4;
/// Activation rows (a multiple of [`ROWS`]) a thread runs against all its weight tiles before
/// the next ones.
const TILE_CHUNK: usize = 64;
/// Activation rows from which a product splits activation rows (not weight rows) among threads
/// ([`split_product`]).
const SPLIT_ROWS_FROM: usize = 16;
/// [`TILE_W`] weight rows against [`ROWS`] activation rows (batches).
pub type DotTileFn = fn(usize, &[&[u8]; TILE_W], &[&[u8]; ROWS]) -> [[f32; ROWS]; TILE_W];

/// The tile kernel of `isa` for `ty`, where there is one.
pub fn dot_tile_fn(isa: Isa, ty: GgmlType) -> Option<DotTileFn> {
    let _ = ty; // (no tile kernels on ARM)
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => match ty {
            GgmlType::Q4_0 => Some(safe_x86::avx2::q4_0_tile),
            GgmlType::Q4_1 => Some(safe_x86::avx2::q4_1_tile),
            GgmlType::Q8_0 => Some(safe_x86::avx2::q8_0_tile),
            _ => None,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if isa.available() => match ty {
            GgmlType::Q4_0 => Some(safe_x86::avx512vnni::q4_0_tile),
            GgmlType::Q4_1 => Some(safe_x86::avx512vnni::q4_1_tile),
            GgmlType::Q8_0 => Some(safe_x86::avx512vnni::q8_0_tile),
            _ => None,
        },
        _ => None,
    }
}

/// Batches of weights held in a format the tile kernel would convert on every load (F16): the
/// rows converted to f32 beforehand, in the kernel's own order ("panels"), the activations once
/// per product and each weight tile once per chunk of activation rows.
#[derive(Clone, Copy)]
pub struct PanelFns {
    /// `to_panel(k, rows, out)`: weight or activation rows of `k` values as one panel (the
    /// rows interleaved in the order the tile reads them).
    pub to_panel: fn(usize, &[&[u8]], &mut [f32]),
    /// A panel of [`PANEL_W`] weight rows against one of [`ROWS`] activation rows, bit-identical
    /// to the [`DotFn`] per output.
    pub tile: PanelTileFn,
}

/// `tile(k, weight_panel, activation_panel)` ([`PanelFns`]).
pub type PanelTileFn = fn(usize, &[f32], &[f32]) -> [[f32; ROWS]; PANEL_W];

std::thread_local! {
    /// Each thread's panel buffer, kept from one product to the next: a prompt's products
    /// would otherwise fault in megabytes of fresh pages each (with glibc's malloc).
    static SPARE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The most f32 values a thread's spare buffer keeps (16 MiB).
const SPARE_MAX: usize = 1 << 22;

/// Weight rows per tile of the panel kernels.
pub const PANEL_W: usize = 6;
// (A tile's outputs are gathered in an array of PANEL_W.)
const _: () = assert!(PANEL_W >= TILE_W);

/// The panel kernels of `isa` for `ty`, where there are some.
pub fn panel_fns(isa: Isa, ty: GgmlType) -> Option<PanelFns> {
    let _ = ty; // (none on ARM)
    match (isa, ty) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::F16) if isa.available() => Some(PanelFns {
            to_panel: safe_x86::avx2::f16_to_panel,
            tile: safe_x86::avx2::f16_panel_tile,
        }),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, GgmlType::F16) if isa.available() => Some(PanelFns {
            to_panel: safe_x86::avx512vnni::f16_to_panel,
            tile: safe_x86::avx512vnni::f16_panel_tile,
        }),
        _ => None,
    }
}

/// Safe entry points to the SIMD dots: [`dot_fn`] hands them out only after checking the CPU,
/// and [`qmatmul`] only passes whole rows.
#[cfg(target_arch = "x86_64")]
mod safe_x86 {
    macro_rules! wrap {
        (@fns $isa:ident: $($f:ident),*) => {
            $(pub fn $f(k: usize, w: &[u8], a: &[u8]) -> f32 {
                // SAFETY: reached only through `dot_fn`, which checked that the CPU has the
                // features, with rows of `k` values from `qmatmul`.
                unsafe { super::super::dot_x86::$isa::$f(k, w, a) }
            })*
        };
    }
    macro_rules! wrap_tile {
        ($isa:ident: $($f:ident),*) => {
            $(pub fn $f(
                k: usize,
                w: &[&[u8]; super::super::TILE_W],
                a: &[&[u8]; super::super::ROWS],
            ) -> [[f32; super::super::ROWS]; super::super::TILE_W] {
                // SAFETY: as `wrap!`, through `dot_tile_fn`.
                unsafe { super::super::dot_x86::$isa::$f(k, w, a) }
            })*
        };
    }
    macro_rules! wrap_panel {
        ($isa:ident) => {
            pub fn f16_to_panel(k: usize, src: &[&[u8]], dst: &mut [f32]) {
                // SAFETY: as `wrap!`, through `panel_fns`.
                unsafe { super::super::dot_x86::$isa::f16_to_panel(k, src, dst) }
            }
            pub fn f16_panel_tile(
                k: usize,
                w: &[f32],
                a: &[f32],
            ) -> [[f32; super::super::ROWS]; super::super::PANEL_W] {
                // SAFETY: as `wrap!`, through `panel_fns`.
                unsafe { super::super::dot_x86::$isa::f16_panel_tile(k, w, a) }
            }
        };
    }
    macro_rules! wrap_rows {
        ($isa:ident: $($f:ident),*) => {
            $(pub fn $f(k: usize, w: &[u8], a: &[&[u8]; super::super::ROWS]) -> [f32; super::super::ROWS] {
                // SAFETY: as `wrap!`, through `dot_rows_fn`.
                unsafe { super::super::dot_x86::$isa::$f(k, w, a) }
            })*
        };
    }
    pub mod avx2 {
        wrap!(@fns avx2: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k);
        wrap_rows!(avx2: f16_rows, q4_0_rows, q4_1_rows, q5_0_rows, q5_1_rows, q8_0_rows, q4_k_rows, q5_k_rows, q6_k_rows);
        wrap_tile!(avx2: q4_0_tile, q4_1_tile, q8_0_tile);
        wrap_panel!(avx2);
    }
    pub mod avx512vnni {
        wrap!(@fns avx512vnni: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k);
        wrap_rows!(avx512vnni: f16_rows, q4_0_rows, q4_1_rows, q5_0_rows, q5_1_rows, q8_0_rows, q4_k_rows, q5_k_rows, q6_k_rows);
        wrap_tile!(avx512vnni: q4_0_tile, q4_1_tile, q8_0_tile);
        wrap_panel!(avx512vnni);
    }
}

/// Safe entry points to the NEON dots: [`dot_fn`] hands them out only after checking the CPU.
#[cfg(target_arch = "aarch64")]
mod safe_neon {
    pub fn f32(k: usize, w: &[u8], a: &[u8]) -> f32 {
        // SAFETY: reached only through `dot_fn`, which checked that the CPU has NEON.
        unsafe { super::dot_neon::f32(k, w, a) }
    }

    pub fn f16(k: usize, w: &[u8], a: &[u8]) -> f32 {
        // SAFETY: as above.
        unsafe { super::dot_neon::f16(k, w, a) }
    }
}

/// Why a product cannot run: the weight type, or a `k` that is not whole blocks.
pub fn check(ty: GgmlType, k: usize) -> Result<ActFormat, String> {
    let act = ActFormat::for_weights(ty).ok_or_else(|| format!("no CPU kernel for {ty}"))?;
    if !k.is_multiple_of(ty.block_size()) || !k.is_multiple_of(act.block().0) {
        return Err(format!(
            "rows of {k} values are not whole {ty} blocks of {}",
            ty.block_size()
        ));
    }
    Ok(act)
}

/// `y[m, n] = x[m, k] · W[n, k]ᵀ`, `W` as `n` rows of GGML blocks of `ty` (`w`), `x` row-major.
///
/// Panics when the sizes disagree or [`check`] fails: callers validate user input first.
pub fn qmatmul(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    let act = check(ty, k).unwrap_or_else(|e| panic!("qmatmul: {e}"));
    let dot =
        dot_fn(isa, ty).unwrap_or_else(|| panic!("qmatmul: no {} kernel for {ty}", isa.name()));
    let dot_rows = if m >= ROWS {
        dot_rows_fn(isa, ty)
    } else {
        None
    };
    let dot_tile = if m >= ROWS {
        dot_tile_fn(isa, ty)
    } else {
        None
    };
    let panel = if m >= ROWS { panel_fns(isa, ty) } else { None };
    let w_row = ty.block_bytes() * (k / ty.block_size());
    assert_eq!(
        w.len(),
        n * w_row,
        "qmatmul: weight bytes for [{n}, {k}] {ty}"
    );
    assert_eq!(x.len(), m * k, "qmatmul: activations for [{m}, {k}]");

    let a_row = act.row_bytes(k);
    let a = quantize_acts(act, x, m, k);
    let a_at = |i: usize| &a[i * a_row..(i + 1) * a_row];

    // Weight rows `ws` against activation rows `is`.
    let block = |ws: Range<usize>, is: Range<usize>, put: Put| {
        // Groups of ROWS activation rows share each weight row's loads; the rest go singly.
        let grouped = if dot_rows.is_some() {
            is.start..is.start + is.len() / ROWS * ROWS
        } else {
            is.start..is.start
        };
        // Batches: tiles of TILE_W (PANEL_W) weight rows × ROWS activation rows, the
        // activation rows taken TILE_CHUNK at a time against all the weight tiles (so that they
        // stay in the core's cache while the weights stream past).
        let tw = if panel.is_some() { PANEL_W } else { TILE_W };
        let tiled = if !grouped.is_empty() && (dot_tile.is_some() || panel.is_some()) {
            ws.start..ws.start + ws.len() / tw * tw
        } else {
            ws.start..ws.start
        };
        // The grouped activation rows and a weight tile as panels, in this thread's spare
        // buffer (taken here, given back at the end).
        let mut spare = None;
        let (a_panel, w_panel) = match panel.filter(|_| !tiled.is_empty()) {
            Some(p) => {
                let spare = spare.insert(SPARE.take());
                spare.resize((grouped.len() + PANEL_W) * k, 0.0);
                let (ap, wp) = spare.split_at_mut(grouped.len() * k);
                for (d, i) in ap
                    .chunks_exact_mut(ROWS * k)
                    .zip(grouped.clone().step_by(ROWS))
                {
                    let rows: [&[u8]; ROWS] = std::array::from_fn(|q| a_at(i + q));
                    (p.to_panel)(k, &rows, d);
                }
                (&*ap, wp)
            }
            None => (&[][..], &mut [][..]),
        };
        for c0 in grouped
            .clone()
            .step_by(TILE_CHUNK)
            .filter(|_| !tiled.is_empty())
        {
            let c1 = (c0 + TILE_CHUNK).min(grouped.end);
            for j in tiled.clone().step_by(tw) {
                let w_at = |q: usize| &w[(j + q) * w_row..(j + q + 1) * w_row];
                let mut put_tile = |i: usize, y: &[[f32; ROWS]]| {
                    for r in 0..ROWS {
                        let mut ys = [0.0f32; PANEL_W];
                        for (o, yq) in ys.iter_mut().zip(y) {
                            *o = yq[r];
                        }
                        put(i + r, j, &ys[..y.len()]);
                    }
                };
                if let Some(p) = panel {
                    let rows: [&[u8]; PANEL_W] = std::array::from_fn(w_at);
                    (p.to_panel)(k, &rows, w_panel);
                    for i in (c0..c1).step_by(ROWS) {
                        let at = (i - grouped.start) * k;
                        put_tile(i, &(p.tile)(k, w_panel, &a_panel[at..at + ROWS * k]));
                    }
                } else if let Some(tile) = dot_tile {
                    let wr = std::array::from_fn(w_at);
                    for i in (c0..c1).step_by(ROWS) {
                        put_tile(i, &tile(k, &wr, &std::array::from_fn(|q| a_at(i + q))));
                    }
                }
            }
        }
        // Outside the tiles: ROWS activation rows at a time where there is a kernel; the
        // activation rows left over, every weight row, one at a time.
        for j in ws {
            let wr = &w[j * w_row..(j + 1) * w_row];
            if let Some(f) = dot_rows.filter(|_| !tiled.contains(&j)) {
                for i in grouped.clone().step_by(ROWS) {
                    let y = f(k, wr, &std::array::from_fn(|q| a_at(i + q)));
                    for (r, v) in y.into_iter().enumerate() {
                        put(i + r, j, &[v]);
                    }
                }
            }
            for i in grouped.end..is.end {
                put(i, j, &[dot(k, wr, a_at(i))]);
            }
        }
        if let Some(spare) = spare.filter(|s| s.capacity() <= SPARE_MAX) {
            SPARE.set(spare);
        }
    };

    split_product(m, n, 1, &block)
}

/// `put(i, j, ys)`: outputs `ys` of activation row `i` against weight rows `j..j + ys.len()`.
pub(crate) type Put<'a> = &'a mut dyn FnMut(usize, usize, &[f32]);

/// The `[m, n]` outputs of a product that `block(units, rows, put)` computes for weight units
/// `units` (`unit` weight rows each, `n / unit` in all) against activation rows `rows`, spread
/// over the pool. Prompts (from [`SPLIT_ROWS_FROM`] activation rows, and any batch on one
/// thread): each thread its own activation rows against every unit, writing whole output rows.
/// Decode and small batches: each thread an even share of the units, writing `[n, m]` (disjoint
/// slices), transposed after.
pub(crate) fn split_product(
    m: usize,
    n: usize,
    unit: usize,
    block: &(impl Fn(Range<usize>, Range<usize>, Put) + Sync),
) -> Vec<f32> {
    let pool = pool::pool();
    let threads = pool.threads();
    let units = n / unit;
    if m >= SPLIT_ROWS_FROM || (threads == 1 && m > 1) {
        let mut out = vec![0.0f32; m * n];
        let parts: Vec<Mutex<&mut [f32]>> = split_rows(&mut out, n, m, threads)
            .into_iter()
            .map(Mutex::new)
            .collect();
        pool.run(&|t: usize| {
            let mine = pool::share(m, threads, t);
            let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
            let first = mine.start;
            block(0..units, mine, &mut |i, j, ys| {
                part[(i - first) * n + j..][..ys.len()].copy_from_slice(ys)
            });
        });
        return out;
    }
    let mut out_t = vec![0.0f32; n * m];
    {
        let parts: Vec<Mutex<&mut [f32]>> = split_rows(&mut out_t, unit * m, units, threads)
            .into_iter()
            .map(Mutex::new)
            .collect();
        pool.run(&|t: usize| {
            let mine = pool::share(units, threads, t);
            let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
            let first = mine.start * unit;
            block(mine, 0..m, &mut |i, j, ys| {
                for (q, &y) in ys.iter().enumerate() {
                    part[(j + q - first) * m + i] = y;
                }
            });
        });
    }
    if m == 1 {
        return out_t;
    }
    transpose(&out_t, n, m)
}

/// The `m` rows of `x` (`k` values each) quantized to `act`, the rows shared among the pool's
/// threads.
fn quantize_acts(act: ActFormat, x: &[f32], m: usize, k: usize) -> Vec<u8> {
    let a_row = act.row_bytes(k);
    let pool = pool::pool();
    let threads = pool.threads();
    let mut a = vec![0u8; m * a_row];
    {
        let parts: Vec<Mutex<(&mut [u8], &[f32])>> = split_rows(&mut a, a_row, m, threads)
            .into_iter()
            .zip((0..threads).map(|t| {
                &x[pool::share(m, threads, t).start * k..pool::share(m, threads, t).end * k]
            }))
            .map(Mutex::new)
            .collect();
        let quantize = |t: usize| {
            let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
            let (out, x) = &mut *part;
            for (o, x) in out.chunks_exact_mut(a_row).zip(x.chunks_exact(k)) {
                act.quantize_row(x, o);
            }
        };
        if m > 1 {
            pool.run(&quantize)
        } else {
            quantize(0)
        }
    }
    a
}

/// `src` `[rows, cols]` → `[cols, rows]`, the output rows shared among the pool's threads and
/// walked in 16-column strips, so that each write fills a cache line and the 16 source rows a
/// strip reads stay cached (the plain double loop thrashed on prompt-sized batches).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const STRIP: usize = 16;
    let mut out = vec![0.0f32; rows * cols];
    let pool = pool::pool();
    let threads = pool.threads();
    let parts: Vec<Mutex<&mut [f32]>> = split_rows(&mut out, rows, cols, threads)
        .into_iter()
        .map(Mutex::new)
        .collect();
    pool.run(&|t: usize| {
        let mine = pool::share(cols, threads, t);
        let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
        for j0 in (0..rows).step_by(STRIP) {
            let j1 = (j0 + STRIP).min(rows);
            for (r, i) in mine.clone().enumerate() {
                let dst = &mut part[r * rows + j0..r * rows + j1];
                for (d, j) in dst.iter_mut().zip(j0..j1) {
                    *d = src[j * cols + i];
                }
            }
        }
    });
    out
}

/// `buf` (`rows` rows of `row` items) cut into the [`pool::share`]s of `parts` threads.
pub(crate) fn split_rows<T>(
    mut buf: &mut [T],
    row: usize,
    rows: usize,
    parts: usize,
) -> Vec<&mut [T]> {
    let mut out = Vec::with_capacity(parts);
    for t in 0..parts {
        let (head, rest) = buf.split_at_mut(pool::share(rows, parts, t).len() * row);
        out.push(head);
        buf = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| lcg(&mut s) * (1.0 + (i % 7) as f32))
            .collect()
    }

    /// Dequantize-then-matmul in f64: the reference of every kernel.
    fn reference(ty: GgmlType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
        let wf = kiln_quant::blocks::dequantize_to_vec(ty, w).unwrap();
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|l| f64::from(wf[j * k + l]) * f64::from(x[i * k + l]))
                    .sum();
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    /// Every type, every ISA this CPU has, odd shapes: the kernels agree with the scalar dot
    /// to float rounding, and with dequantize-then-matmul within the activation quantization's
    /// error (llama.cpp's test-quantize-fns allows 0.02 per dot; normalized here by |x|·|w|).
    #[test]
    fn kernels_match_the_reference() {
        for &ty in MATMUL_TYPES {
            let kb = ty.block_size().max(32);
            for &(m, n, kblocks) in &[
                (1, 1, 1),
                (1, 37, 3),
                (3, 13, 2),
                (17, 5, 1),
                (2, 67, 5),
                (9, 37, 3),
            ] {
                let k = kb * kblocks;
                let wf = data(n * k, 7 + n as u64);
                let w = kiln_quant::blocks::quantize_to_vec(ty, &wf).unwrap();
                let x = data(m * k, 99 + m as u64);
                let want = reference(ty, &w, n, k, &x, m);
                let scalar = qmatmul(Isa::Scalar, ty, &w, n, k, &x, m);
                let xnorm = (x.iter().map(|v| v * v).sum::<f32>() / m as f32).sqrt();
                let wnorm = (wf.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
                let tol = if matches!(ty, GgmlType::F32 | GgmlType::F16) {
                    2e-3
                } else {
                    0.02
                };
                for (g, w) in scalar.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= tol * xnorm * wnorm + 1e-5,
                        "{ty} scalar m{m} n{n} k{k}: {g} vs {w}"
                    );
                }
                for isa in Isa::ALL
                    .into_iter()
                    .filter(|i| *i != Isa::Scalar && i.available())
                {
                    let got = qmatmul(isa, ty, &w, n, k, &x, m);
                    for (g, s) in got.iter().zip(&scalar) {
                        assert!(
                            (g - s).abs() <= 1e-5 * (1.0 + s.abs()) + 1e-6 * xnorm * wnorm,
                            "{ty} {} m{m} n{n} k{k}: {g} vs scalar {s}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    /// The panel kernels (F16 batches) give each output the one-row dot's bits, whatever the
    /// tail of `k` past its 32-value steps.
    #[test]
    fn panel_tiles_are_bit_identical_to_the_dot() {
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let Some(p) = panel_fns(isa, GgmlType::F16) else {
                continue;
            };
            let dot = dot_fn(isa, GgmlType::F16).unwrap();
            for k in [32, 101, 583] {
                let row = |i: usize| {
                    kiln_quant::blocks::quantize_to_vec(GgmlType::F16, &data(k, 40 + i as u64))
                        .unwrap()
                };
                let w: Vec<Vec<u8>> = (0..PANEL_W).map(row).collect();
                let a: Vec<Vec<u8>> = (0..ROWS).map(|i| row(100 + i)).collect();
                let (mut wp, mut ap) = (vec![0.0; PANEL_W * k], vec![0.0; ROWS * k]);
                (p.to_panel)(k, &w.iter().map(|r| &r[..]).collect::<Vec<_>>(), &mut wp);
                (p.to_panel)(k, &a.iter().map(|r| &r[..]).collect::<Vec<_>>(), &mut ap);
                let y = (p.tile)(k, &wp, &ap);
                for (q, yq) in y.iter().enumerate() {
                    for (r, v) in yq.iter().enumerate() {
                        let want = dot(k, &w[q], &a[r]);
                        assert_eq!(
                            v.to_bits(),
                            want.to_bits(),
                            "{} k{k} ({q}, {r})",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    /// Batches go through the tile and multi-row kernels, single rows through the one-row dot:
    /// a row's outputs are the same bits either way (and so do not depend on the batch).
    #[test]
    fn batched_rows_are_bit_identical_to_rows_alone() {
        for &ty in MATMUL_TYPES {
            let kb = ty.block_size().max(32);
            // n = 9: two 4-row weight tiles and a leftover row (F16: a 6-row panel tile and 3);
            // m = 11: two groups of 4 and 3;
            // m = 70 (activation rows split among threads): on one thread a chunk of 64 rows
            // (TILE_CHUNK), one of 4 and 2 left; on two, 35 rows each (8 groups and 3 left).
            let (n, k) = (9, kb * 3 + if ty.block_size() == 1 { 5 } else { 0 });
            let w = kiln_quant::blocks::quantize_to_vec(ty, &data(n * k, 5)).unwrap();
            for (m, isa) in [11, 70].into_iter().flat_map(|m| {
                Isa::ALL
                    .into_iter()
                    .filter(|i| i.available())
                    .map(move |i| (m, i))
            }) {
                let x = data(m * k, 6);
                let batch = qmatmul(isa, ty, &w, n, k, &x, m);
                for i in 0..m {
                    let alone = qmatmul(isa, ty, &w, n, k, &x[i * k..(i + 1) * k], 1);
                    assert_eq!(
                        alone,
                        batch[i * n..(i + 1) * n],
                        "{ty} {} row {i}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn activation_quantizers_follow_ggml() {
        // Q8_0: ties round to even (ggml-cpu's _mm256_round_ps), d = max/127.
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        let mut out = vec![0u8; 34];
        ActFormat::Q8_0.quantize_row(&x, &mut out);
        assert_eq!(half::f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        assert_eq!([out[2] as i8, out[3] as i8, out[4] as i8], [127, 2, -4]);
        // Q8_K: the signed maximum maps to -127 (so d is negative for a positive maximum);
        // nearest_int rounds ties to even too.
        let mut x = vec![0.0f32; 256];
        x[0] = 127.0;
        x[1] = 2.5;
        let mut out = vec![0u8; 292];
        ActFormat::Q8K.quantize_row(&x, &mut out);
        let d = f32::from_le_bytes(out[..4].try_into().unwrap());
        assert_eq!(d, -1.0);
        assert_eq!([out[4] as i8, out[5] as i8], [-127, -2]);
        assert_eq!(i16::from_le_bytes([out[260], out[261]]), -129);
    }
}
