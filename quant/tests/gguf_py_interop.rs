//! gguf-py (llama.cpp's Python GGUF library) reads a Kiln-written file and sees the same keys,
//! types, values, shapes and bytes. `tests/data/kiln_written.gguf` is what this test writes
//! (`KILN_BLESS=1` rewrites it); `tests/data/read_with_gguf_py.py` records gguf-py's reading of
//! it in `kiln_written.gguf-py.json`.

use kiln_quant::GgmlType;
use kiln_quant::gguf::{Array, GgufFile, Metadata, TensorToWrite, Value, write_gguf};
use serde_json::Value as Json;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn kiln_written() -> Vec<u8> {
    let mut md = Metadata::default();
    let entries = [
        ("general.architecture", Value::String("kiln-interop".into())),
        ("general.alignment", Value::U32(64)),
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(0.1)),
        ("t.bool", Value::Bool(true)),
        (
            "t.string",
            Value::String("Laufschuhe Damen 👟 返品したいです".into()),
        ),
        ("t.u64", Value::U64(1 << 60)),
        ("t.i64", Value::I64(-(1 << 60))),
        ("t.f64", Value::F64(-1.5e300)),
        (
            "t.strings",
            Value::Array(Array::String(vec!["<s>".into(), "".into(), "Ġthe".into()])),
        ),
        ("t.f32s", Value::Array(Array::F32(vec![1.0, -0.5, 3.25]))),
        ("t.i32s", Value::Array(Array::I32(vec![-1, 0, 1]))),
        ("t.bools", Value::Array(Array::Bool(vec![true, false]))),
        ("t.empty", Value::Array(Array::U8(vec![]))),
    ];
    for (k, v) in entries {
        md.insert(k.to_string(), v).unwrap();
    }
    let f32_data: Vec<u8> = (0..12)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let (f16_data, q8_data, q4k_data, bf16_data) =
        (bytes(16, 1), bytes(68, 2), bytes(144, 3), bytes(64, 4));
    let tensors = [
        TensorToWrite {
            name: "w.f32",
            dims: &[3, 4],
            ty: GgmlType::F32,
            data: &f32_data,
        },
        TensorToWrite {
            name: "w.f16",
            dims: &[8],
            ty: GgmlType::F16,
            data: &f16_data,
        },
        TensorToWrite {
            name: "w.q8_0",
            dims: &[32, 2],
            ty: GgmlType::Q8_0,
            data: &q8_data,
        },
        TensorToWrite {
            name: "w.q4_k",
            dims: &[256],
            ty: GgmlType::Q4_K,
            data: &q4k_data,
        },
        TensorToWrite {
            name: "w.bf16",
            dims: &[4, 2, 2, 2],
            ty: GgmlType::BF16,
            data: &bf16_data,
        },
    ];
    let mut out = Vec::new();
    write_gguf(&mut out, &md, &tensors).unwrap();
    out
}

#[test]
fn the_committed_file_is_what_kiln_writes() {
    let path = format!("{DATA}/kiln_written.gguf");
    let written = kiln_written();
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &written).unwrap();
    }
    let committed = std::fs::read(&path).unwrap();
    assert!(
        committed == written,
        "Kiln's writer output changed; re-bless and re-run gguf-py"
    );
}

fn json_of(v: &Value) -> (Vec<u64>, Json) {
    fn arr(a: &Array) -> (Vec<u64>, Json) {
        let t = a.element_type() as u64;
        let j: Json = match a {
            Array::U8(v) => v.iter().map(|&x| Json::from(x)).collect(),
            Array::I32(v) => v.iter().map(|&x| Json::from(x)).collect(),
            Array::F32(v) => v.iter().map(|&x| Json::from(f64::from(x))).collect(),
            Array::Bool(v) => v.iter().map(|&x| Json::from(x)).collect(),
            Array::String(v) => v.iter().map(|x| Json::from(x.as_str())).collect(),
            other => panic!("not used here: {other:?}"),
        };
        // gguf-py lists no element type for an empty array.
        let types = if a.is_empty() { vec![9] } else { vec![9, t] };
        (types, j)
    }
    let t = v.value_type() as u64;
    match v {
        Value::U8(x) => (vec![t], (*x).into()),
        Value::I8(x) => (vec![t], (*x).into()),
        Value::U16(x) => (vec![t], (*x).into()),
        Value::I16(x) => (vec![t], (*x).into()),
        Value::U32(x) => (vec![t], (*x).into()),
        Value::I32(x) => (vec![t], (*x).into()),
        Value::F32(x) => (vec![t], f64::from(*x).into()),
        Value::Bool(x) => (vec![t], (*x).into()),
        Value::String(x) => (vec![t], x.as_str().into()),
        Value::U64(x) => (vec![t], (*x).into()),
        Value::I64(x) => (vec![t], (*x).into()),
        Value::F64(x) => (vec![t], (*x).into()),
        Value::Array(a) => arr(a),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn gguf_py_reads_what_kiln_wrote() {
    let file = GgufFile::open(format!("{DATA}/kiln_written.gguf")).unwrap();
    let text = std::fs::read_to_string(format!("{DATA}/kiln_written.gguf-py.json")).unwrap();
    let seen: Json = serde_json::from_str(&text).unwrap();

    assert_eq!(seen["alignment"], file.alignment);
    let fields = seen["fields"].as_array().unwrap();
    assert_eq!(fields.len(), file.metadata.len());
    for (field, (key, value)) in fields.iter().zip(file.metadata.iter()) {
        assert_eq!(field["key"], key);
        let (types, json) = json_of(value);
        let seen_types: Vec<u64> = field["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(seen_types, types, "{key}: types");
        assert_eq!(field["value"], json, "{key}: value");
    }
    let tensors = seen["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), file.tensors.len());
    for (t, info) in tensors.iter().zip(&file.tensors) {
        assert_eq!(t["name"], info.name.as_str());
        assert_eq!(t["type"], info.ty.id());
        assert_eq!(t["dims"], serde_json::json!(info.dims));
        assert_eq!(t["n_bytes"], info.n_bytes);
        assert_eq!(t["data_hex"], hex(file.tensor_data(info)), "{}", info.name);
    }
}
