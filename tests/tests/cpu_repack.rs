//! Weights on the CPU are repacked at upload into the x8 layout (`kiln_kernels::cpu::x8`) where
//! it applies; everything that reads them — dequantize, row lookup, matrix products — gives what
//! the GGUF layout gives.

use burn::tensor::{Device, Tensor, TensorData};
use kiln_kernels::cpu::{self, Isa};
use kiln_kernels::{Layout, QTensor, dequant, qmatmul};
use kiln_quant::GgmlType;
use kiln_quant::gguf::GgufFile;
use kiln_tests::{data, fixture};

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// One matrix through every reader, against the GGUF bytes.
fn check(ty: GgmlType, n: usize, k: usize, bytes: &[u8], what: &str) {
    let device = Device::flex();
    let q = QTensor::from_blocks(what, ty, &[n, k], bytes, &device).unwrap();
    assert_eq!(
        q.layout,
        Layout::CpuX8 { k },
        "{what}: {ty} [{n}, {k}] is repacked"
    );

    let want = kiln_quant::blocks::dequantize_to_vec(ty, bytes).unwrap();
    let got = to_vec(dequant::dequantize(&q).unwrap());
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: dequantize"
    );
    let ids = [0u32, (n - 1) as u32, (n / 2 + 3) as u32];
    let rows = to_vec(qmatmul::qrows(&q, &ids).unwrap());
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            rows[r * k..(r + 1) * k],
            want[id as usize * k..(id as usize + 1) * k],
            "{what}: row {id}"
        );
    }

    for m in [1, 5, 37] {
        let x = data(m * k, 11 + m as u64);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
        let got = to_vec(qmatmul::qmatmul(xt, &q).unwrap());
        let gguf = cpu::qmatmul(cpu::active_isa(), ty, bytes, n, k, &x, m);
        let scale: f32 = x.iter().map(|v| v.abs()).sum::<f32>() / m as f32;
        for (i, (g, r)) in got.iter().zip(&gguf).enumerate() {
            if ty == GgmlType::Q4_1 && cpu::active_isa() != Isa::Scalar {
                // llama.cpp's order, kept bit for bit.
                assert_eq!(g.to_bits(), r.to_bits(), "{what}: m{m} output {i}");
            } else {
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()) + 1e-6 * scale,
                    "{what}: m{m} output {i}: {g} vs {r}"
                );
            }
        }
    }
}

#[test]
fn repacked_weights_read_as_their_gguf_blocks() {
    for &ty in cpu::x8::TYPES {
        let (n, k) = (40, 2 * ty.block_size().max(64));
        let w = kiln_quant::blocks::quantize_to_vec(ty, &data(n * k, 5)).unwrap();
        check(ty, n, k, &w, "random");
    }
}

#[test]
fn the_fixture_weights_are_repacked() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let gguf = GgufFile::open(path).unwrap();
    for name in ["blk.3.ffn_up.weight", "blk.0.attn_k.weight"] {
        let info = gguf.tensor(name).unwrap();
        let [k, n] = [info.shape()[1], info.shape()[0]];
        check(info.ty, n, k, gguf.tensor_data(info), name);
    }
}

#[test]
fn shapes_without_whole_row_groups_keep_the_gguf_layout() {
    let (n, k) = (13, 64);
    let w = kiln_quant::blocks::quantize_to_vec(GgmlType::Q4_0, &data(n * k, 9)).unwrap();
    let q = QTensor::from_blocks("w", GgmlType::Q4_0, &[n, k], &w, &Device::flex()).unwrap();
    assert_eq!(q.layout, Layout::Gguf);
    let x = data(k, 1);
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [1, k]), &Device::flex());
    let got = to_vec(qmatmul::qmatmul(xt, &q).unwrap());
    assert_eq!(
        got,
        cpu::qmatmul(cpu::active_isa(), GgmlType::Q4_0, &w, n, k, &x, 1)
    );
}
