use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::TensorData;
use burn_flex::FlexTensor;

use super::EncoderOps;
use crate::cpu::active_isa;
use crate::cpu::encoder::{self, AttnShape};
use crate::cpu::gemm::{self, Act};

fn floats(t: &FlexTensor) -> &[f32] {
    t.as_slice().expect("encoder ops: f32 tensors")
}

impl EncoderOps for Flex {
    fn dense(
        x: FloatTensor<Self>,
        packed: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        k: usize,
        n: usize,
        act: Act,
    ) -> FloatTensor<Self> {
        let (x, packed, bias) = (
            x.to_contiguous(),
            packed.to_contiguous(),
            bias.to_contiguous(),
        );
        let x = floats(&x);
        let m = x.len() / k;
        let y = gemm::gemm(
            active_isa(),
            x,
            m,
            k,
            floats(&packed),
            n,
            floats(&bias),
            act,
        );
        FlexTensor::from_data(TensorData::new(y, [m, n]))
    }

    fn self_attention(
        qkv: FloatTensor<Self>,
        lengths: Vec<u32>,
        seq: usize,
        heads: usize,
        head_dim: usize,
    ) -> FloatTensor<Self> {
        let qkv = qkv.to_contiguous();
        let lengths: Vec<usize> = lengths.iter().map(|&l| l as usize).collect();
        let shape = AttnShape {
            batch: lengths.len(),
            seq,
            heads,
            head_dim,
        };
        let y = encoder::attention(active_isa(), floats(&qkv), &lengths, shape);
        FlexTensor::from_data(TensorData::new(y, [lengths.len() * seq, heads * head_dim]))
    }

    fn add_layer_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        norm(x, Some(residual), gamma, beta, eps)
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        norm(x, None, gamma, beta, eps)
    }
}

fn norm(
    x: FlexTensor,
    residual: Option<FlexTensor>,
    gamma: FlexTensor,
    beta: FlexTensor,
    eps: f32,
) -> FlexTensor {
    let (x, r) = (x.to_contiguous(), residual.map(|r| r.to_contiguous()));
    let (g, b) = (gamma.to_contiguous(), beta.to_contiguous());
    let shape = x.layout().shape().clone();
    let y = encoder::add_layer_norm(
        active_isa(),
        floats(&x),
        r.as_ref().map(floats),
        floats(&g),
        floats(&b),
        eps,
    );
    let dims: Vec<usize> = shape.iter().copied().collect();
    FlexTensor::from_data(TensorData::new(y, dims))
}
