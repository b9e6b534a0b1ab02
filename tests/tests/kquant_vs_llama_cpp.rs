//! Kiln's K-quant quantizers against llama-quantize on real weights: the SmolLM2 fixture's
//! tensors dequantized to f32, quantized by each. llama.cpp's per-tensor RMSE is committed in
//! `quant/tests/data/llama_cpp_kquants.json` by `scripts/fixtures/llama-cpp-quant-check.sh`;
//! Kiln's total RMSE over the same tensors must be within 1% of it.

use kiln_quant::GgmlType;
use kiln_quant::convert::convert_tensor;
use kiln_quant::gguf::GgufFile;
use kiln_tests::fixture;

/// The fixture and what the script recorded of llama-quantize (`None` when the fixture is
/// missing locally).
fn fixture_and_llama_cpp() -> Option<(GgufFile, serde_json::Value)> {
    let file = GgufFile::open(fixture("smollm2-q4_1")?).unwrap();
    let json = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../quant/tests/data/llama_cpp_kquants.json"
    );
    let seen = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    Some((file, seen))
}

#[test]
fn kquant_rmse_within_1_percent_of_llama_quantize() {
    let Some((file, seen)) = fixture_and_llama_cpp() else {
        return;
    };
    let types = seen["types"].as_object().unwrap();
    assert_eq!(types.len(), 5, "Q2_K..Q6_K");
    for (name, tensors) in types {
        let ty = GgmlType::from_name(name).unwrap();
        let (mut kiln_sq, mut llama_sq, mut n_total) = (0.0f64, 0.0f64, 0u64);
        let tensors = tensors.as_object().unwrap();
        assert!(
            !tensors.is_empty(),
            "{name}: llama.cpp made no tensor of this type"
        );
        for (tensor, row) in tensors {
            let info = file.tensor(tensor).unwrap();
            // Dequantize to f32, then quantize: what the reference did through an f32 file.
            let (_, report) =
                convert_tensor(tensor, info.ty, ty, file.tensor_data(info), info.n_elements)
                    .unwrap();
            let n = row["n"].as_u64().unwrap();
            assert_eq!(n, info.n_elements, "{tensor}");
            let llama = row["rmse"].as_f64().unwrap();
            kiln_sq += report.rmse * report.rmse * n as f64;
            llama_sq += llama * llama * n as f64;
            n_total += n;
        }
        let kiln = (kiln_sq / n_total as f64).sqrt();
        let llama = (llama_sq / n_total as f64).sqrt();
        eprintln!(
            "{name}: {} tensors, rmse kiln {kiln:.6e} llama.cpp {llama:.6e} ratio {:.5}",
            tensors.len(),
            kiln / llama
        );
        assert!(
            kiln <= llama * 1.01,
            "{name}: kiln {kiln} vs llama.cpp {llama}"
        );
    }
}

/// `kiln quantize` of the fixture gives, tensor for tensor, the bytes llama-quantize gives (same
/// types, same blocks) for the 32-element formats, Q6_K, and every K-quant with `--pure`.
/// llama-quantize's K-quant *mixes* (Q4_K_M …) are not reproduced and not compared.
#[test]
fn quantized_tensors_are_byte_identical_to_llama_quantize() {
    use kiln_quant::convert::{ConvertOptions, plan};
    use sha2::{Digest, Sha256};

    let Some((file, seen)) = fixture_and_llama_cpp() else {
        return;
    };
    let cases = seen["identical"].as_object().unwrap();
    assert_eq!(cases.len(), 11);
    for (case, want) in cases {
        let (ty, pure) = match case.strip_suffix(" --pure") {
            Some(t) => (t, true),
            None => (case.as_str(), false),
        };
        let options = ConvertOptions {
            target: GgmlType::from_name(ty).unwrap(),
            allow_requantize: true,
            pure,
        };
        let (mut types, mut data) = (Sha256::new(), Sha256::new());
        // In tensor-name order: llama-quantize reorders tensors in its file.
        let mut tensors: Vec<_> = file
            .tensors
            .iter()
            .zip(plan(&file, &options).unwrap())
            .collect();
        tensors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        for (info, p) in tensors {
            // The reference went through an f32 file; converting the fixture's blocks directly
            // takes the same steps (dequantize, then quantize).
            let (bytes, _) = convert_tensor(
                &info.name,
                p.from,
                p.to,
                file.tensor_data(info),
                info.n_elements,
            )
            .unwrap();
            types.update(format!("{}:{}\n", info.name, p.to.name().to_uppercase()));
            data.update(&bytes);
        }
        let hex = |d: sha2::digest::Output<Sha256>| {
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(
            hex(types.finalize()),
            want["types_sha256"],
            "{case}: tensor types"
        );
        assert_eq!(
            hex(data.finalize()),
            want["data_sha256"],
            "{case}: tensor bytes"
        );
    }
}
