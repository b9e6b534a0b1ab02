//! CPU reference: plain loops, f32 sums in input-channel order.

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::TensorData;
use burn_flex::FlexTensor;

use super::DreamOps;

impl DreamOps for Flex {
    fn dilated_conv(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        taps: Vec<u32>,
        dilations: Vec<u32>,
        c_out: usize,
        max_taps: usize,
    ) -> FloatTensor<Self> {
        let (x, w, b) = (
            x.to_contiguous(),
            weights.to_contiguous(),
            bias.to_contiguous(),
        );
        let dims = x.layout().shape().clone();
        let (batch, s, c_in) = (dims[0], dims[1], dims[2]);
        let xs: &[f32] = x.as_slice().expect("dilated_conv: f32 input");
        let ws: &[f32] = w.as_slice().expect("dilated_conv: f32 weights");
        let bs: &[f32] = b.as_slice().expect("dilated_conv: f32 bias");
        let branches = taps.len();
        let c_total = branches * c_out;
        let mut out = vec![0.0f32; batch * s * c_total];
        for bb in 0..batch {
            for pos in 0..s {
                for br in 0..branches {
                    let (k, d) = (taps[br] as i64, dilations[br] as i64);
                    for co in 0..c_out {
                        let mut acc = bs[br * c_out + co];
                        for t in 0..k {
                            let p = pos as i64 + (t - (k - 1) / 2) * d;
                            if p < 0 || p >= s as i64 {
                                continue;
                            }
                            let xr = &xs[(bb * s + p as usize) * c_in..][..c_in];
                            let wr =
                                &ws[((br * c_out + co) * max_taps + t as usize) * c_in..][..c_in];
                            acc += xr.iter().zip(wr).map(|(a, b)| a * b).sum::<f32>();
                        }
                        out[(bb * s + pos) * c_total + br * c_out + co] = acc.max(0.0);
                    }
                }
            }
        }
        FlexTensor::from_data(TensorData::new(out, [batch, s, c_total]))
    }
}
