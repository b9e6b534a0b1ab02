//! The encoders' ops (BERT, InterBERT, COPE, MambaRec's LayerNorm): dense layers on packed f32
//! weights (bias and GELU or QuickGELU fused), masked multi-head self-attention straight from the
//! fused QKV rows, and LayerNorm with or without a residual added first.
//!
//! CPU (Flex): [`crate::cpu::gemm`], [`crate::cpu::encoder`]. Cube (wgpu, CUDA): `cube.rs`,
//! tested against the CPU.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod flex;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{Device, Tensor, TensorData};

use crate::cpu::gemm::{self, Act};
use crate::{BackendKind, KernelError, Result};

#[backend_extension(Cube: cfg(any(feature = "wgpu", feature = "cuda")), Flex)]
pub trait EncoderOps: Backend {
    /// `x[m, k] · W + bias`, then `act`; `W` `[k, n]` as [`PackedLinear::new`] lays it out for
    /// the backend (Flex: [`gemm::pack_b`]; Cube: `[n, k]` row-major).
    fn dense(
        x: FloatTensor<Self>,
        packed: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        k: usize,
        n: usize,
        act: Act,
    ) -> FloatTensor<Self>;

    /// `[batch·seq, 3·heads·head_dim]` fused QKV rows → `[batch·seq, heads·head_dim]` context.
    fn self_attention(
        qkv: FloatTensor<Self>,
        lengths: Vec<u32>,
        seq: usize,
        heads: usize,
        head_dim: usize,
    ) -> FloatTensor<Self>;

    /// `LayerNorm(x + residual)` over the last dimension.
    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `LayerNorm(x)` over the last dimension. (A separate op: burn 0.22.1's extension macro
    /// does not hand an `Option` tensor through to the backends.)
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

/// A dense layer with its weight packed for [`dense`].
#[derive(Clone, Debug)]
pub struct PackedLinear {
    packed: Tensor<1>,
    bias: Tensor<1>,
    k: usize,
    n: usize,
}

impl PackedLinear {
    /// `w` is `[k, n]` row-major (inputs × outputs), `bias` `[n]`.
    pub fn new(w: &[f32], bias: Vec<f32>, k: usize, n: usize, device: &Device) -> Result<Self> {
        let backend = BackendKind::of(device)?;
        if w.len() != k * n || bias.len() != n {
            return Err(KernelError::Shape(format!(
                "dense: weight of {} floats and bias of {} for [{k}, {n}]",
                w.len(),
                bias.len()
            )));
        }
        let packed = match backend {
            BackendKind::Flex => gemm::pack_b(w, k, n),
            // A row per output, as the Cube matmul kernels read weights.
            BackendKind::Cube => {
                let mut t = vec![0.0f32; k * n];
                for (i, row) in w.chunks_exact(n).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        t[j * k + i] = v;
                    }
                }
                t
            }
        };
        let len = packed.len();
        Ok(Self {
            packed: Tensor::from_data(TensorData::new(packed, [len]), device),
            bias: Tensor::from_data(TensorData::new(bias, [n]), device),
            k,
            n,
        })
    }

    pub fn out_features(&self) -> usize {
        self.n
    }
}

/// `x[m, k] · W + bias`, then `act`.
pub fn dense(x: Tensor<2>, layer: &PackedLinear, act: Act) -> Tensor<2> {
    let [_, k] = x.dims();
    assert_eq!(
        k, layer.k,
        "dense: input width {k} for a [{}, {}] layer",
        layer.k, layer.n
    );
    Tensor::from_dispatch(<Dispatch as EncoderOps>::dense(
        x.into_dispatch(),
        layer.packed.clone().into_dispatch(),
        layer.bias.clone().into_dispatch(),
        layer.k,
        layer.n,
        act,
    ))
}

/// Masked self-attention of padded rows (see [`EncoderOps::self_attention`]).
pub fn self_attention(
    qkv: Tensor<2>,
    lengths: &[usize],
    seq: usize,
    heads: usize,
    head_dim: usize,
) -> Tensor<2> {
    let lengths = lengths.iter().map(|&l| l as u32).collect();
    Tensor::from_dispatch(<Dispatch as EncoderOps>::self_attention(
        qkv.into_dispatch(),
        lengths,
        seq,
        heads,
        head_dim,
    ))
}

/// `LayerNorm(x + residual)` over rows; `LayerNorm(x)` when `residual` is `None`.
pub fn add_layer_norm(
    x: Tensor<2>,
    residual: Option<Tensor<2>>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    eps: f32,
) -> Tensor<2> {
    let (gamma, beta) = (gamma.clone().into_dispatch(), beta.clone().into_dispatch());
    Tensor::from_dispatch(match residual {
        Some(r) => <Dispatch as EncoderOps>::add_layer_norm(
            x.into_dispatch(),
            r.into_dispatch(),
            gamma,
            beta,
            eps,
        ),
        None => <Dispatch as EncoderOps>::layer_norm(x.into_dispatch(), gamma, beta, eps),
    })
}
