//! Block codecs against gguf-py (`gguf.quants`) on the committed vectors made by
//! `tests/data/make_vectors.py`: dequantization and quantization bit-exact.

use kiln_quant::GgmlType;
use kiln_quant::blocks::{DEQUANTIZE_TYPES, QUANTIZE_TYPES, dequantize_to_vec, quantize_to_vec};
use kiln_quant::gguf::GgufFile;

fn vectors() -> GgufFile {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.gguf");
    GgufFile::open(path).expect("vectors.gguf (regenerate with tests/data/make_vectors.py)")
}

fn f32s(file: &GgufFile, name: &str) -> Vec<f32> {
    let t = file.tensor(name).unwrap();
    assert_eq!(t.ty, GgmlType::F32, "{name}");
    dequantize_to_vec(GgmlType::F32, file.tensor_data(t)).unwrap()
}

/// Every codec Kiln has, except F32 (nothing to check) and Q8_K (gguf-py has no Q8_K codec):
/// a new codec without gguf-py vectors fails here.
fn types() -> impl Iterator<Item = GgmlType> {
    DEQUANTIZE_TYPES
        .iter()
        .copied()
        .filter(|t| !matches!(t, GgmlType::F32 | GgmlType::Q8_K))
}

#[test]
fn dequantize_is_bit_exact_with_gguf_py() {
    let file = vectors();
    for ty in types() {
        let name = ty.to_string();
        let q = file.tensor(&format!("{name}.q")).unwrap();
        assert_eq!(q.ty, ty);
        let got = dequantize_to_vec(ty, file.tensor_data(q)).unwrap();
        let want = f32s(&file, &format!("{name}.deq"));
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{name} element {i}: kiln {g}, gguf-py {w}"
            );
        }
    }
}

#[test]
fn quantize_is_bit_exact_with_gguf_py() {
    let file = vectors();
    // gguf-py quantizes the plain and 32-element formats; the K-quants are checked against
    // llama.cpp (llama_cpp_kquants.rs and scripts/llama-cpp-check.sh).
    for ty in types().filter(|t| QUANTIZE_TYPES.contains(t) && t.block_size() < 256) {
        let name = ty.to_string();
        let x = f32s(&file, &format!("{name}.x"));
        let want = file.tensor_data(file.tensor(&format!("{name}.q")).unwrap());
        let got = quantize_to_vec(ty, &x).unwrap();
        let bb = ty.block_bytes();
        for (i, (g, w)) in got.chunks(bb).zip(want.chunks(bb)).enumerate() {
            assert_eq!(g, w, "{name} block {i}");
        }
    }
}

/// llama.cpp `tests/test-quantize-fns.cpp`: on `0.1 + 2 cos(i)`, 4096 values, the "total error"
/// `sqrt(sum of squared differences) / n` stays under 0.002 (0.004 for 3-bit, 0.0075 for 2-bit).
#[test]
fn quantize_then_dequantize_total_error_as_llama_cpp_tests_it() {
    let x: Vec<f32> = (0..4096).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    for &ty in QUANTIZE_TYPES {
        let q = quantize_to_vec(ty, &x).unwrap();
        let y = dequantize_to_vec(ty, &q).unwrap();
        let sum: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let total_error = sum.sqrt() / x.len() as f64;
        let max = match ty {
            GgmlType::Q2_K => 0.0075,
            GgmlType::Q3_K => 0.0040,
            _ => 0.002,
        };
        assert!(
            total_error < max,
            "{ty}: total error {total_error} (max {max})"
        );
    }
}

#[test]
fn codec_input_errors_are_errors() {
    assert!(dequantize_to_vec(GgmlType::Q4_K, &[0u8; 143]).is_err());
    assert!(quantize_to_vec(GgmlType::Q8_0, &[0.0; 31]).is_err());
    assert!(quantize_to_vec(GgmlType::Q4_K, &[0.0; 255]).is_err());
    assert!(
        quantize_to_vec(GgmlType::Q8_K, &[0.0; 256]).is_err(),
        "Q8_K: no quantizer"
    );
    assert!(dequantize_to_vec(GgmlType::IQ2_XXS, &[0u8; 66]).is_err());
}
