//! The transformer ops Kiln runs as its own kernels: RMSNorm, RoPE, SwiGLU, and attention over a
//! KV cache with an explicit visibility rule (causal, and several sequences sharing a prefix).
//!
//! CPU (Flex) implementations follow ggml's arithmetic (f64 sums in RMSNorm and the softmax,
//! ggml's vectorized `expf`, f16 K/V cache, query and probabilities rounded to f16 as ggml's f16
//! `mul_mat` does, its summation orders), so logits are llama.cpp's. The CubeCL kernels
//! (`cube.rs`) compute the same, operation for operation, on wgpu and CUDA (their K/V cache is
//! f32 holding f16-rounded values: shader f16 is optional on wgpu), so a model's results are
//! bit-identical on both backends; [`Softmax::OnePass`] trades that for one sweep over K/V.
//! Any other backend gets [`KernelError::NoKernel`].

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) mod cube;
mod flex;

/// ggml's vectorized `expf`, lane by lane (what the CPU's softmax and SiLU use).
pub use flex::ggml_expf;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use std::sync::{Arc, OnceLock};

use burn::tensor::{DType, Tensor};

use crate::{BackendKind, KernelError, Result};

#[backend_extension(Cube: cfg(any(feature = "wgpu", feature = "cuda")), Flex)]
pub trait NnOps: Backend {
    /// `x[rows, d] / rms(x) * weight[d]`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;

    /// Rotates the first `rope.n_rot` values of each head of `x[t, heads, d]`, token `i` at
    /// position `positions.pos[i]`.
    fn rope(x: FloatTensor<Self>, positions: Positions, rope: Rope) -> FloatTensor<Self>;

    /// `silu(gate) * up`.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Writes `k`, `v` (`[t, kv_heads, d]`) into cache slots `start..start + t`, then attends
    /// each query of `q[t, heads, d]` to the visible slots of `0..start + t`. Returns
    /// `([t, heads * d], k_cache, v_cache)`; the caches (`[capacity, kv_heads, d]` f16) are
    /// updated in place when not shared. (f16 caches on Flex, f32 on Cube: see [`KvCache::new`].)
    #[allow(clippy::too_many_arguments)]
    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        start: usize,
        mask: Visibility,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// RoPE parameters, as ggml's `ggml_rope_ext` takes them (no YaRN).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Rotated values per head (pairs `n_rot / 2`).
    pub n_rot: usize,
    pub freq_base: f32,
    /// Linear position scaling (`1 / rope.scaling.factor`); 1 for none.
    pub freq_scale: f32,
    /// Per-pair divisors of θ (Llama-3 scaling: GGUF `rope_freqs.weight`); empty for none.
    pub freq_factors: Vec<f32>,
    /// NeoX layout (pairs `i`, `i + n_rot/2`, HF safetensors) instead of adjacent pairs (GGUF).
    pub neox: bool,
}

/// The positions of one forward pass's tokens. Their RoPE angles' cosines and sines
/// ([`rope_table`]) are made once, on the host, and shared by every layer's q and k (clones
/// share the copy).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Positions {
    pub pos: Arc<[u32]>,
    pub device_copy: DeviceCopy,
}

impl Positions {
    pub fn new(pos: &[u32]) -> Self {
        Positions {
            pos: pos.into(),
            device_copy: DeviceCopy::default(),
        }
    }
}

/// `(cos θ, sin θ)` for each token and rotated pair, `[t][n_rot / 2][2]`, as ggml's
/// `ggml_rope_cache_init` makes them: θ = position · base^(-2i / n_rot) by repeated f32
/// products, divided by the pair's frequency factor, times the linear scale; cosine and sine
/// from the host's libm (both backends use this table, so they agree bit for bit).
pub fn rope_table(pos: &[u32], rope: &Rope) -> Vec<f32> {
    let half = rope.n_rot / 2;
    let theta_scale = rope.freq_base.powf(-2.0 / rope.n_rot as f32);
    let mut table = Vec::with_capacity(pos.len() * half * 2);
    for &p in pos {
        let mut theta = p as f32;
        for i in 0..half {
            let ff = rope.freq_factors.get(i).copied().unwrap_or(1.0);
            let t = rope.freq_scale * (theta / ff);
            table.extend([t.cos(), t.sin()]);
            theta *= theta_scale;
        }
    }
    table
}

/// Which cache slots each query sees: slot `s` is visible to query `i` when
/// `key_pos[s] <= query_pos[i]` and [`sees`]`(query_seq[i], key_seq[s])`: the slot belongs to
/// the query's sequence, to the shared prefix (`key_seq[s] == 0`), or to its group's prefix.
/// Shared slices: one mask serves every layer of a forward pass.
///
/// Sequence ids are `group << SEQ_GROUP_SHIFT | branch`. Branch 0 of a group is that group's
/// prefix, seen by every branch of the group: several prompts batched together (groups
/// 1, 2, …), each followed by several continuations (branches 1, 2, …) that see their own
/// prompt and themselves. Group 0 is the plain case: id 0 is the prefix every sequence sees.
/// Bits of a sequence id below its group (see [`Visibility`]).
pub const SEQ_GROUP_SHIFT: u32 = 16;

/// Sequence id of `branch` in `group` (see [`Visibility`]).
pub fn seq_id(group: u32, branch: u32) -> u32 {
    (group << SEQ_GROUP_SHIFT) | branch
}

/// Whether a query of sequence `query` sees a slot of sequence `key` (positions aside).
pub fn sees(query: u32, key: u32) -> bool {
    let group_prefix = key & ((1 << SEQ_GROUP_SHIFT) - 1) == 0;
    key == 0 || key == query || (group_prefix && key >> SEQ_GROUP_SHIFT == query >> SEQ_GROUP_SHIFT)
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Visibility {
    pub query_pos: Arc<[u32]>,
    pub query_seq: Arc<[u32]>,
    /// One entry per slot `0..start + t`.
    pub key_pos: Arc<[u32]>,
    pub key_seq: Arc<[u32]>,
    /// Score scale, usually `1 / sqrt(d)`.
    pub scale: f32,
    /// How the Cube kernel computes the softmax (the CPU always computes ggml's).
    pub softmax: Softmax,
    /// The four arrays on the device, uploaded by the first layer that needs them and shared
    /// by the clones the other layers get.
    pub device_copy: DeviceCopy,
}

/// A device copy of host data (or, on the CPU, data derived from it), made once by the first op
/// that needs it and shared by clones (every layer of a forward pass gets a clone of the same
/// mask). A cache, not data: two copies always compare equal.
#[derive(Clone, Default)]
pub struct DeviceCopy(Arc<OnceLock<Box<dyn std::any::Any + Send + Sync>>>);

impl DeviceCopy {
    /// The cached value if it is a `T` for which `fits` holds, else `make()`'s (cached when
    /// nothing is cached yet).
    pub(crate) fn get_or<T: Clone + Send + Sync + 'static>(
        &self,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> T {
        if let Some(t) = self.0.get().and_then(|b| b.downcast_ref::<T>())
            && fits(t)
        {
            return t.clone();
        }
        let t = make();
        // The first copy made is kept; one for another device is used once and dropped.
        let _ = self.0.set(Box::new(t.clone()));
        t
    }
}

impl std::fmt::Debug for DeviceCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "DeviceCopy(made)"
        } else {
            "DeviceCopy(empty)"
        })
    }
}

impl PartialEq for DeviceCopy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The Cube attention kernel's softmax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Softmax {
    /// ggml's arithmetic, step for step as the CPU path: scores summed in llama.cpp's lane
    /// orders, the maximum, ggml's `expf`, 16-lane chunk sums added in f64, probabilities
    /// normalized and rounded to f16 before they weigh V. Three sweeps over K (maximum,
    /// normalizer, weights). Bit-identical to the CPU.
    #[default]
    Rounded,
    /// One sweep, online softmax (flash-attention style): K and V read once, no rounding of
    /// probabilities. Faster at long contexts; logits differ from the CPU path's by ~1e-3
    /// relative, enough to flip near-tied argmaxes.
    OnePass,
}

/// Both backends Kiln knows run these ops; `BackendKind::of` rejects any other device.
fn supported(_op: &'static str, device: &burn::tensor::Device) -> Result<()> {
    BackendKind::of(device).map(|_| ())
}

pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f32) -> Result<Tensor<2>> {
    supported("rms_norm", &x.device())?;
    let [_, d] = x.dims();
    if weight.dims() != [d] {
        return Err(KernelError::Shape(format!(
            "rms_norm: rows of {d} with a weight of {:?}",
            weight.dims()
        )));
    }
    let y = <Dispatch as NnOps>::rms_norm(x.into_dispatch(), weight.clone().into_dispatch(), eps);
    Ok(Tensor::from_dispatch(y))
}

pub fn rope(x: Tensor<3>, positions: &Positions, rope: &Rope) -> Result<Tensor<3>> {
    supported("rope", &x.device())?;
    let [t, _, d] = x.dims();
    if positions.pos.len() != t || rope.n_rot > d || !rope.n_rot.is_multiple_of(2) {
        return Err(KernelError::Shape(format!(
            "rope: {t} tokens with {} positions, {} rotated of {d}",
            positions.pos.len(),
            rope.n_rot
        )));
    }
    if !rope.freq_factors.is_empty() && rope.freq_factors.len() != rope.n_rot / 2 {
        return Err(KernelError::Shape(format!(
            "rope: {} frequency factors for {} pairs",
            rope.freq_factors.len(),
            rope.n_rot / 2
        )));
    }
    let y = <Dispatch as NnOps>::rope(x.into_dispatch(), positions.clone(), rope.clone());
    Ok(Tensor::from_dispatch(y))
}

pub fn swiglu(gate: Tensor<2>, up: Tensor<2>) -> Result<Tensor<2>> {
    supported("swiglu", &gate.device())?;
    if gate.dims() != up.dims() {
        return Err(KernelError::Shape(format!(
            "swiglu: gate {:?} and up {:?}",
            gate.dims(),
            up.dims()
        )));
    }
    Ok(Tensor::from_dispatch(<Dispatch as NnOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    )))
}

/// One layer's K/V cache: `[capacity, kv_heads, head_dim]` f16 on the device.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// `(k, v)`; taken out while `attention` runs so that the op owns (and updates in place)
    /// the only reference.
    kv: Option<(Tensor<3>, Tensor<3>)>,
}

impl KvCache {
    pub fn new(
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
        device: &burn::tensor::Device,
    ) -> Self {
        // The CPU stores f16 as llama.cpp does; Cube kernels keep f32 holding f16-rounded values.
        let dtype = match BackendKind::of(device) {
            Ok(BackendKind::Cube) => DType::F32,
            _ => DType::F16,
        };
        let zeros = || Tensor::<3>::zeros([capacity, kv_heads, head_dim], (device, dtype));
        KvCache {
            kv: Some((zeros(), zeros())),
        }
    }

    fn tensors(&self) -> &(Tensor<3>, Tensor<3>) {
        self.kv
            .as_ref()
            .expect("a KV cache is only taken inside `attention`")
    }

    /// Slots the cache holds.
    pub fn capacity(&self) -> usize {
        self.tensors().0.dims()[0]
    }

    pub fn k(&self) -> &Tensor<3> {
        &self.tensors().0
    }

    pub fn v(&self) -> &Tensor<3> {
        &self.tensors().1
    }
}

/// Appends `k`, `v` at `start` and attends `q` to the cache (see [`NnOps::attention`]).
pub fn attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    cache: &mut KvCache,
    start: usize,
    mask: Visibility,
) -> Result<Tensor<2>> {
    supported("attention", &q.device())?;
    let [t, heads, d] = q.dims();
    let [tk, kv_heads, dk] = k.dims();
    let [cap, ckv, cd] = cache.k().dims();
    let n = start + t;
    let ok = tk == t
        && v.dims() == k.dims()
        && dk == d
        && ckv == kv_heads
        && cd == d
        && kv_heads > 0
        && heads % kv_heads == 0
        && n <= cap
        && mask.query_pos.len() == t
        && mask.query_seq.len() == t
        && mask.key_pos.len() == n
        && mask.key_seq.len() == n;
    if !ok {
        return Err(KernelError::Shape(format!(
            "attention: q {:?}, k {:?}, v {:?}, cache {:?}, {t} new tokens at slot {start}, mask for {} queries and {} keys",
            q.dims(),
            k.dims(),
            v.dims(),
            cache.k().dims(),
            mask.query_pos.len(),
            mask.key_pos.len()
        )));
    }
    // Moved out, not cloned: a cache held only here is updated in place.
    let (kc, vc) = cache
        .kv
        .take()
        .expect("a KV cache is only taken inside `attention`");
    let (out, kc, vc) = <Dispatch as NnOps>::attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        kc.into_dispatch(),
        vc.into_dispatch(),
        start,
        mask,
    );
    cache.kv = Some((Tensor::from_dispatch(kc), Tensor::from_dispatch(vc)));
    Ok(Tensor::from_dispatch(out))
}
