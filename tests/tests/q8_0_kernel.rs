//! Kiln's first CubeCL kernel, Q8_0 dequantization, run through Burn's wgpu backend and checked
//! bit for bit against the CPU reference (kiln-quant's scalar codec via the Flex backend).

use burn::tensor::{Device, Tensor};
use kiln_kernels::{KernelError, QTensor, dequant};
use kiln_quant::GgmlType;
use kiln_quant::gguf::GgufFile;
use kiln_tests::{fixture, wgpu_device};

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

fn assert_bit_exact(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ; first at {}: got {} want {}",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

fn dequantize_on(device: &Device, ty: GgmlType, shape: &[usize], bytes: &[u8]) -> Vec<f32> {
    let q = QTensor::from_blocks("test", ty, shape, bytes, device).expect("upload");
    to_vec(dequant::dequantize(&q).expect("dequantize"))
}

/// Rows of the fixture's real Q8_0 token embedding, at an odd offset and count.
#[test]
fn q8_0_dequantize_on_wgpu_matches_cpu_on_real_weights() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let Some((info, wgpu)) = wgpu_device() else {
        return;
    };
    eprintln!("wgpu device: {} ({})", info.name, info.api);

    let file = GgufFile::open(&path).unwrap();
    let t = file.tensor("token_embd.weight").unwrap();
    assert_eq!(t.ty, GgmlType::Q8_0);
    let [_, cols] = t.shape()[..] else {
        panic!("2-D")
    };
    let row_bytes = cols / 32 * 34;
    let (first, rows) = (1001, 37);
    let bytes = &file.tensor_data(t)[first * row_bytes..(first + rows) * row_bytes];

    let want = kiln_quant::blocks::dequantize_to_vec(GgmlType::Q8_0, bytes).unwrap();
    let cpu = dequantize_on(&Device::flex(), GgmlType::Q8_0, &[rows, cols], bytes);
    let gpu = dequantize_on(&wgpu, GgmlType::Q8_0, &[rows, cols], bytes);
    assert_bit_exact(&cpu, &want, "flex vs scalar");
    assert_bit_exact(&gpu, &want, "wgpu vs cpu");
    assert!(
        want.iter().any(|&v| v != 0.0),
        "real weights are not all zero"
    );
}

/// Every finite f16 scale (normal, subnormal, ±0) with extreme quants: exercises the kernel's
/// integer f16 decoding and signed-byte extraction exhaustively.
#[test]
fn q8_0_dequantize_on_wgpu_every_f16_scale() {
    let Some((_, wgpu)) = wgpu_device() else {
        return;
    };
    let scales: Vec<u16> = (0..=u16::MAX)
        .filter(|&h| !half::f16::from_bits(h).is_infinite() && !half::f16::from_bits(h).is_nan())
        .collect();
    let qs: [i8; 32] = std::array::from_fn(|j| match j {
        0 => i8::MIN,
        1 => i8::MAX,
        2 => -1,
        3 => 1,
        4 => 0,
        j => (j as i8).wrapping_mul(37),
    });
    let mut bytes = Vec::with_capacity(scales.len() * 34);
    for &h in &scales {
        bytes.extend_from_slice(&h.to_le_bytes());
        bytes.extend(qs.iter().map(|&q| q as u8));
    }
    let want = kiln_quant::blocks::dequantize_to_vec(GgmlType::Q8_0, &bytes).unwrap();
    let gpu = dequantize_on(&wgpu, GgmlType::Q8_0, &[scales.len(), 32], &bytes);
    assert_bit_exact(&gpu, &want, "wgpu vs cpu, all f16 scales");
}

#[test]
fn missing_gpu_kernel_is_an_error_not_a_fallback() {
    let Some((_, wgpu)) = wgpu_device() else {
        return;
    };
    // Q3_K has a CPU codec but no Cube kernel.
    let ty = GgmlType::Q3_K;
    assert!(!kiln_kernels::CUBE_TYPES.contains(&ty));
    let bytes = vec![0u8; ty.block_bytes() * 2];
    let q = QTensor::from_blocks("w", ty, &[2, 256], &bytes, &wgpu).unwrap();
    match dequant::dequantize(&q) {
        Err(KernelError::NoKernel { ty: t, .. }) => assert_eq!(t, ty),
        other => panic!("expected NoKernel, got {other:?}"),
    }
    let x = burn::tensor::Tensor::<2>::zeros([1, 256], &wgpu);
    match kiln_kernels::qmatmul::qmatmul(x, &q) {
        Err(KernelError::NoKernel { op, .. }) => assert_eq!(op, "qmatmul"),
        other => panic!("expected NoKernel, got {other:?}"),
    }
}

#[test]
fn wrong_block_count_is_rejected_at_upload() {
    let err = QTensor::from_blocks("w", GgmlType::Q8_0, &[2, 32], &[0u8; 33], &Device::flex())
        .unwrap_err();
    assert!(err.to_string().contains("w: 33 bytes"), "{err}");
}
