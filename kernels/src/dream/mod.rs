//! DREAM's multi-scale dilated convolution (MambaRec's ASPP-style block, ../shared/MODELS.md §2):
//! several conv branches over the same input, each `taps` wide with its own dilation, BatchNorm
//! folded into weights and bias, ReLU, outputs concatenated along channels.
//!
//! DREAM sees its input as a map of height 1: `[B, S, C]` becomes `[B, C, 1, S]`, `[N, C]`
//! becomes `[N, C, 1, 1]`. On a height-1 map a k × k kernel with padding = dilation only meets
//! real data with its middle row, so each branch is a 1-D dilated convolution along S
//! ([`DilatedConv::from_conv2d`] keeps that row). Two cases, both served:
//! * the sequence form (S > 1): taps at `s + (t − (taps−1)/2) · dilation`, zero outside;
//! * the point form (S = 1, the `[N, C]` input): only the centre tap meets data, so every branch
//!   is a pointwise (matrix) product, and the kernels compute the centre tap alone.

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod flex;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{Device, Tensor, TensorData};

use crate::{BackendKind, KernelError, Result};

#[backend_extension(Cube: cfg(any(feature = "wgpu", feature = "cuda")), Flex)]
pub trait DreamOps: Backend {
    /// `x[b, s, c_in]` → `[b, s, branches · c_out]`, ReLU applied. `weights`:
    /// `[branches, c_out, max_taps, c_in]`; `bias`: `[branches, c_out]`; per branch its taps
    /// (odd) and dilation.
    #[allow(clippy::too_many_arguments)]
    fn dilated_conv(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        taps: Vec<u32>,
        dilations: Vec<u32>,
        c_out: usize,
        max_taps: usize,
    ) -> FloatTensor<Self>;
}

/// One branch as PyTorch holds it: `Conv2d(c_in, c_out, k, padding = dilation)` then
/// `BatchNorm2d` in eval mode.
#[derive(Clone, Debug)]
pub struct Conv2dBn<'a> {
    /// `[c_out, c_in, k, k]`.
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub kernel: usize,
    pub dilation: usize,
    pub bn_gamma: &'a [f32],
    pub bn_beta: &'a [f32],
    pub bn_mean: &'a [f32],
    pub bn_var: &'a [f32],
    pub bn_eps: f32,
}

/// The branches of a multi-scale dilated convolution, BatchNorm folded, on a device.
#[derive(Clone, Debug)]
pub struct DilatedConv {
    weights: Tensor<1>,
    bias: Tensor<1>,
    taps: Vec<u32>,
    dilations: Vec<u32>,
    c_in: usize,
    c_out: usize,
    max_taps: usize,
}

impl DilatedConv {
    /// Folds each branch's BatchNorm (`w · γ/√(σ² + ε)`, `(b − μ) · γ/√(σ² + ε) + β`) and
    /// keeps the middle row of its kernel (the one a height-1 map meets).
    pub fn from_conv2d(
        branches: &[Conv2dBn],
        c_in: usize,
        c_out: usize,
        device: &Device,
    ) -> Result<Self> {
        BackendKind::of(device)?;
        if branches.is_empty() || c_in == 0 || c_out == 0 {
            return Err(KernelError::Shape(
                "dilated conv: no branches or channels".into(),
            ));
        }
        let max_taps = branches.iter().map(|b| b.kernel).max().unwrap_or(1);
        let mut weights = vec![0.0f32; branches.len() * c_out * max_taps * c_in];
        let mut bias = vec![0.0f32; branches.len() * c_out];
        for (bi, br) in branches.iter().enumerate() {
            let k = br.kernel;
            let vecs = [br.bn_gamma, br.bn_beta, br.bn_mean, br.bn_var];
            if k % 2 == 0
                || br.weight.len() != c_out * c_in * k * k
                || br.bias.is_some_and(|b| b.len() != c_out)
                || vecs.iter().any(|v| v.len() != c_out)
            {
                return Err(KernelError::Shape(format!(
                    "dilated conv branch {bi}: a {k}×{k} kernel needs {} weights and {c_out} bias and BatchNorm values",
                    c_out * c_in * k * k
                )));
            }
            let mid = k / 2;
            for co in 0..c_out {
                let scale = br.bn_gamma[co] / (br.bn_var[co] + br.bn_eps).sqrt();
                let b = br.bias.map_or(0.0, |b| b[co]);
                bias[bi * c_out + co] = (b - br.bn_mean[co]) * scale + br.bn_beta[co];
                for t in 0..k {
                    for ci in 0..c_in {
                        let w = br.weight[((co * c_in + ci) * k + mid) * k + t];
                        weights[((bi * c_out + co) * max_taps + t) * c_in + ci] = w * scale;
                    }
                }
            }
        }
        let n_w = weights.len();
        let n_b = bias.len();
        Ok(DilatedConv {
            weights: Tensor::from_data(TensorData::new(weights, [n_w]), device),
            bias: Tensor::from_data(TensorData::new(bias, [n_b]), device),
            taps: branches.iter().map(|b| b.kernel as u32).collect(),
            dilations: branches.iter().map(|b| b.dilation as u32).collect(),
            c_in,
            c_out,
            max_taps,
        })
    }

    /// Output channels: branches × c_out.
    pub fn out_channels(&self) -> usize {
        self.taps.len() * self.c_out
    }

    /// `x[b, s, c_in]` → `relu(branches)` `[b, s, branches · c_out]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        let [_, _, c] = x.dims();
        if c != self.c_in {
            return Err(KernelError::Shape(format!(
                "dilated conv: {c} input channels, the weights take {}",
                self.c_in
            )));
        }
        Ok(Tensor::from_dispatch(<Dispatch as DreamOps>::dilated_conv(
            x.into_dispatch(),
            self.weights.clone().into_dispatch(),
            self.bias.clone().into_dispatch(),
            self.taps.clone(),
            self.dilations.clone(),
            self.c_out,
            self.max_taps,
        )))
    }

    /// The point form: `x[n, c_in]` (a 1 × 1 map per row) → `[n, branches · c_out]`.
    pub fn forward_points(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let [n, c] = x.dims();
        let y = self.forward(x.reshape([n, 1, c]))?;
        Ok(y.reshape([n, self.out_channels()]))
    }
}
