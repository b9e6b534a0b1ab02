//! Hostile and broken GGUF files: each must give its specific error — never a panic, a hang, an
//! allocation sized by an unchecked count, or a read past the end.

use kiln_quant::gguf::{GgufFile, Metadata, TensorToWrite, Value, write_gguf};
use kiln_quant::{Error, GgmlType};

/// A byte-level GGUF builder that will write anything, valid or not.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = B::default();
        b.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).raw(s)
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, alignment: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }
    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(&self) -> Result<GgufFile, Error> {
        GgufFile::from_bytes(self.0.clone())
    }
}

/// A valid file with one F32 tensor of 8 elements, for truncation tests.
fn valid() -> B {
    let mut b = B::header(3, 1, 1);
    b.kv_u32("a.b", 7).tensor("t", &[8], 0, 0).pad(32).zeros(32);
    b
}

macro_rules! expect_err {
    ($b:expr, $pat:pat) => {{
        let got = $b.parse();
        match got {
            Err(ref e @ $pat) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                msg
            }
            Err(other) => panic!("expected {}, got error: {other:?}", stringify!($pat)),
            Ok(f) => panic!("expected {}, file parsed: {f:?}", stringify!($pat)),
        }
    }};
}

#[test]
fn the_valid_base_file_parses() {
    let f = valid().parse().unwrap();
    assert_eq!(f.tensors.len(), 1);
    assert_eq!(f.metadata.u32("a.b").unwrap(), 7);
    assert_eq!(f.data_offset % 32, 0);
}

#[test]
fn m01_empty_file() {
    let msg = expect_err!(B::default(), Error::Truncated { .. });
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn m02_bad_magic() {
    let mut b = valid();
    b.0[..4].copy_from_slice(b"GGML");
    let msg = expect_err!(b, Error::BadMagic { .. });
    assert!(msg.contains("GGML"), "{msg}");
}

#[test]
fn m03_version_1_unsupported() {
    expect_err!(B::header(1, 0, 0), Error::UnsupportedVersion { found: 1 });
}

#[test]
fn m04_future_version_unsupported() {
    expect_err!(B::header(4, 0, 0), Error::UnsupportedVersion { found: 4 });
}

#[test]
fn m05_truncated_header() {
    let mut b = B::default();
    b.raw(b"GGUF").u32(3).u32(0);
    let msg = expect_err!(b, Error::Truncated { .. });
    assert!(msg.contains("tensor count"), "{msg}");
}

#[test]
fn m06_huge_metadata_count() {
    let b = B::header(3, 0, u64::MAX);
    let msg = expect_err!(b, Error::CountTooLarge { .. });
    assert!(msg.contains("metadata count"), "{msg}");
}

#[test]
fn m07_huge_tensor_count() {
    let b = B::header(3, 1 << 40, 0);
    let msg = expect_err!(b, Error::CountTooLarge { .. });
    assert!(msg.contains("tensor count"), "{msg}");
}

#[test]
fn m08_truncated_metadata_key() {
    let mut b = B::header(3, 0, 1);
    b.u64(100).raw(b"abc").zeros(10);
    let msg = expect_err!(b, Error::Truncated { .. });
    assert!(msg.contains("metadata key"), "{msg}");
}

#[test]
fn m09_huge_string_length() {
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).raw(b"key").u32(4).u32(1);
    expect_err!(b, Error::Truncated { .. });
}

#[test]
fn m10_non_utf8_key() {
    let mut b = B::header(3, 0, 1);
    b.str(b"bad\xff\xfekey").u32(4).u32(1);
    let msg = expect_err!(b, Error::InvalidUtf8 { .. });
    assert!(msg.contains("metadata key"), "{msg}");
}

#[test]
fn m11_non_utf8_string_value() {
    let mut b = B::header(3, 0, 1);
    b.str(b"general.name").u32(8).str(b"\xc3\x28");
    expect_err!(b, Error::InvalidUtf8 { .. });
}

#[test]
fn m12_unknown_value_type() {
    let mut b = B::header(3, 0, 1);
    b.str(b"k").u32(99).u32(0);
    expect_err!(b, Error::UnknownValueType { found: 99, .. });
}

#[test]
fn m13_truncated_metadata_value() {
    let mut b = B::header(3, 0, 1);
    b.str(b"k").u32(10).u32(0); // u64 value, 4 bytes present
    expect_err!(b, Error::Truncated { .. });
}

#[test]
fn m14_huge_array_length() {
    let mut b = B::header(3, 0, 1);
    b.str(b"arr").u32(9).u32(6).u64(u64::MAX / 2);
    let msg = expect_err!(b, Error::CountTooLarge { .. });
    assert!(msg.contains("arr"), "{msg}");
}

#[test]
fn m15_huge_string_array_length() {
    let mut b = B::header(3, 0, 1);
    b.str(b"tokens").u32(9).u32(8).u64(1 << 50).zeros(64);
    expect_err!(b, Error::CountTooLarge { .. });
}

#[test]
fn m16_array_of_unknown_type() {
    let mut b = B::header(3, 0, 1);
    b.str(b"arr").u32(9).u32(13).u64(1).zeros(8);
    expect_err!(b, Error::UnknownValueType { found: 13, .. });
}

#[test]
fn m17_arrays_nested_too_deep() {
    let mut b = B::header(3, 0, 1);
    b.str(b"deep").u32(9);
    for _ in 0..64 {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(0);
    expect_err!(b, Error::NestingTooDeep { .. });
}

#[test]
fn m18_bool_not_0_or_1() {
    let mut b = B::header(3, 0, 1);
    b.str(b"flag").u32(7).raw(&[2]);
    expect_err!(b, Error::BadBool { found: 2, .. });
}

#[test]
fn m19_duplicate_key() {
    let mut b = B::header(3, 0, 2);
    b.kv_u32("k", 1).kv_u32("k", 2);
    expect_err!(b, Error::DuplicateKey { .. });
}

#[test]
fn m20_alignment_zero() {
    let mut b = B::header(3, 0, 1);
    b.kv_u32("general.alignment", 0);
    expect_err!(b, Error::BadAlignment { found: 0 });
}

#[test]
fn m21_alignment_not_power_of_two() {
    let mut b = B::header(3, 0, 1);
    b.kv_u32("general.alignment", 48);
    expect_err!(b, Error::BadAlignment { found: 48 });
}

#[test]
fn m22_alignment_of_wrong_type() {
    let mut b = B::header(3, 0, 1);
    b.str(b"general.alignment").u32(8).str(b"32");
    expect_err!(b, Error::WrongType { .. });
}

#[test]
fn m23_truncated_tensor_infos() {
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[8], 0, 0).str(b"b").u32(1);
    b.zeros(24); // room for the count check, then the dims run out
    b.0.truncate(b.0.len() - 24);
    let mut padded = b;
    padded.zeros(3);
    expect_err!(
        padded,
        Error::Truncated { .. } | Error::CountTooLarge { .. }
    );
}

#[test]
fn m24_too_many_dims() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[1, 1, 1, 1, 1], 0, 0).pad(32).zeros(32);
    expect_err!(b, Error::TooManyDims { found: 5, .. });
}

#[test]
fn m25_dims_overflow_u64() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[1 << 32, 1 << 32, 1 << 8], 0, 0).pad(32);
    let msg = expect_err!(b, Error::ShapeOverflow { .. });
    assert!(msg.contains("\"t\""), "{msg}");
}

#[test]
fn m26_dim_beyond_i64() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[u64::MAX], 0, 0).pad(32);
    expect_err!(b, Error::ShapeOverflow { .. });
}

#[test]
fn m27_removed_ggml_type() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[32], 4, 0).pad(32).zeros(64);
    expect_err!(b, Error::UnknownGgmlType { found: 4, .. });
}

#[test]
fn m28_unknown_ggml_type() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[32], 1000, 0).pad(32).zeros(64);
    expect_err!(b, Error::UnknownGgmlType { found: 1000, .. });
}

#[test]
fn m29_row_not_a_whole_number_of_blocks() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[33, 2], 8, 0).pad(32).zeros(128);
    expect_err!(
        b,
        Error::NotBlockMultiple {
            ne0: 33,
            block: 32,
            ..
        }
    );
}

#[test]
fn m30_misaligned_tensor_offset() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[8], 0, 4).pad(32).zeros(64);
    expect_err!(b, Error::MisalignedTensor { offset: 4, .. });
}

#[test]
fn m31_truncated_tensor_data() {
    let mut b = valid();
    b.0.truncate(b.0.len() - 1);
    expect_err!(
        b,
        Error::TensorOutOfRange {
            end: 32,
            data_len: 31,
            ..
        }
    );
}

#[test]
fn m32_tensor_offset_past_the_end() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[8], 0, 1 << 40).pad(32).zeros(32);
    expect_err!(b, Error::TensorOutOfRange { .. });
}

#[test]
fn m33_tensor_offset_plus_size_overflows() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[8], 0, u64::MAX - 31).pad(32).zeros(32);
    expect_err!(b, Error::TensorOutOfRange { .. });
}

#[test]
fn m34_overlapping_tensors() {
    let mut b = B::header(3, 2, 0);
    b.tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .pad(32)
        .zeros(96);
    expect_err!(b, Error::TensorsOverlap { .. });
}

#[test]
fn m35_duplicate_tensor_names() {
    let mut b = B::header(3, 2, 0);
    b.tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .pad(32)
        .zeros(64);
    expect_err!(b, Error::DuplicateTensor { .. });
}

#[test]
fn m36_non_utf8_tensor_name() {
    let mut b = B::header(3, 1, 0);
    b.str(b"\xff").u32(1).u64(8).u32(0).u64(0).pad(32).zeros(32);
    let msg = expect_err!(b, Error::InvalidUtf8 { .. });
    assert!(msg.contains("tensor name"), "{msg}");
}

#[test]
fn m37_data_section_missing() {
    let mut b = B::header(3, 1, 0);
    b.tensor("t", &[8], 0, 0);
    b.0.push(0); // not even the padding to the data section
    expect_err!(b, Error::Truncated { .. } | Error::TensorOutOfRange { .. });
}

/// Every prefix of a valid file is rejected with an error (no panic), except the whole file.
#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let full = valid().0;
    for len in 0..full.len() {
        assert!(
            GgufFile::from_bytes(full[..len].to_vec()).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

/// Single-byte corruptions anywhere in a valid file never panic.
#[test]
fn byte_flips_never_panic() {
    let full = valid().0;
    for i in 0..full.len() {
        for v in [0x00, 0xFF, 0x80, 0x01] {
            let mut bytes = full.clone();
            bytes[i] = v;
            let _ = GgufFile::from_bytes(bytes);
        }
    }
}

#[test]
fn writer_round_trips_every_value_type() {
    use kiln_quant::gguf::Array;
    let mut md = Metadata::default();
    let values = [
        Value::U8(1),
        Value::I8(-2),
        Value::U16(3),
        Value::I16(-4),
        Value::U32(5),
        Value::I32(-6),
        Value::F32(7.5),
        Value::Bool(true),
        Value::String("héllo ✓".into()),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F64(-0.25),
        Value::Array(Array::String(vec!["a".into(), "".into()])),
        Value::Array(Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::Bool(vec![]),
        ])),
        Value::Array(Array::F32(vec![1.0, -1.0])),
    ];
    for (i, v) in values.iter().enumerate() {
        md.insert(format!("k{i}"), v.clone()).unwrap();
    }
    let w: Vec<u8> = (0..64u8).collect();
    let q: Vec<u8> = vec![7u8; 34 * 2];
    let tensors = [
        TensorToWrite {
            name: "w",
            dims: &[4, 4],
            ty: GgmlType::F32,
            data: &w,
        },
        TensorToWrite {
            name: "q",
            dims: &[64],
            ty: GgmlType::Q8_0,
            data: &q,
        },
    ];
    let mut bytes = Vec::new();
    write_gguf(&mut bytes, &md, &tensors).unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(f.metadata.get(&format!("k{i}")), Some(v));
    }
    assert_eq!(f.tensor_data(f.tensor("w").unwrap()), &w[..]);
    assert_eq!(f.tensor_data(f.tensor("q").unwrap()), &q[..]);
    assert_eq!(f.tensor("w").unwrap().shape(), vec![4, 4]);
    let mut again = Vec::new();
    write_gguf(&mut again, &f.metadata, &f.tensors_to_write()).unwrap();
    assert_eq!(again, bytes);
}

#[test]
fn writer_rejects_data_that_does_not_match_the_shape() {
    let tensors = [TensorToWrite {
        name: "w",
        dims: &[32],
        ty: GgmlType::Q8_0,
        data: &[0u8; 33],
    }];
    let err = write_gguf(&mut Vec::new(), &Metadata::default(), &tensors).unwrap_err();
    assert!(matches!(err, Error::PartialBlock { .. }), "{err:?}");
}
