//! Helpers shared by Kiln's CubeCL kernels: byte addressing inside u32 words (WGSL has no byte
//! type) and exact f16 decoding with integer ops (no reliance on shader f16 support).

use cubecl::prelude::*;

/// Byte `idx` of a little-endian byte string stored as u32 words.
#[cube]
pub fn byte_at(words: &[u32], idx: usize) -> u32 {
    (words[idx / 4] >> (u32::cast_from(idx % 4) * 8u32)) & 0xFFu32
}

/// The little-endian u16 at byte `idx`; `idx` must be even (it never straddles a word).
#[cube]
pub fn u16_at(words: &[u32], idx: usize) -> u32 {
    (words[idx / 4] >> (u32::cast_from(idx % 4) * 8u32)) & 0xFFFFu32
}

/// IEEE half bits (low 16 bits of `h`) to f32, exactly, subnormals and inf/NaN included.
#[cube]
pub fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u32) << 16u32;
    let exp = (h >> 10u32) & 0x1Fu32;
    let mant = h & 0x3FFu32;
    let mut out = f32::reinterpret(sign | ((exp + 112u32) << 23u32) | (mant << 13u32));
    if exp == 0u32 {
        // Zero or subnormal: mant * 2^-24, a normal f32 (no flush-to-zero can touch it).
        let mag = f32::cast_from(mant) * 5.960_464_5e-8f32;
        out = mag;
        if sign != 0u32 {
            out = -mag;
        }
    }
    if exp == 31u32 {
        out = f32::reinterpret(sign | 0x7F80_0000u32 | (mant << 13u32));
    }
    out
}

/// The signed byte at byte `idx`, as i32.
#[cube]
pub fn sbyte_at(words: &[u32], idx: usize) -> i32 {
    let raw = byte_at(words, idx);
    i32::cast_from(raw) - i32::cast_from(raw >= 128u32) * 256
}

/// `x` rounded to the nearest f16 value (ties to even), returned as f32: what storing in an f16
/// cache and reading back gives, with integer ops only (no shader f16 needed).
#[cube]
#[allow(unused_assignments)] // CubeCL variables need a value before a branch assigns them.
pub fn round_to_f16(x: f32) -> f32 {
    let bits = u32::reinterpret(x);
    let sign = bits & 0x8000_0000u32;
    let mag = bits & 0x7FFF_FFFFu32;
    let mut out = x;
    if mag >= 0x7F80_0000u32 {
        // inf / NaN stay as they are.
        out = x;
    } else if mag >= 0x477F_F000u32 {
        // 65520 and above round to infinity.
        out = f32::reinterpret(sign | 0x7F80_0000u32);
    } else if mag >= 0x3880_0000u32 {
        // Normal half range: keep 10 mantissa bits, round to nearest even.
        let lsb = (mag >> 13u32) & 1u32;
        let rounded = (mag + 0x0FFFu32 + lsb) & 0xFFFF_E000u32;
        out = f32::reinterpret(sign | rounded);
    } else {
        // Half subnormals are multiples of 2^-24; `round` is ties-to-even in WGSL and CUDA.
        let q = f32::round(f32::reinterpret(mag) * 16_777_216.0f32);
        out = f32::reinterpret(sign | u32::reinterpret(q * 5.960_464_5e-8f32));
    }
    out
}

/// `values` as a raw f32 buffer on `client`'s device (probes and checks that launch kernels
/// outside Burn's tensors).
pub fn upload_f32(client: &cubecl::client::Client, values: &[f32]) -> cubecl::server::Handle {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    client.create_from_slice(&bytes)
}

/// The f32 values of a raw buffer ([`upload_f32`]'s counterpart); `None` when the read fails.
pub fn read_f32(client: &cubecl::client::Client, h: cubecl::server::Handle) -> Option<Vec<f32>> {
    let bytes = client.read_one(h).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// A small host array (positions, ids, masks) as a u32 tensor on `like`'s device.
pub fn upload_u32(
    like: &burn_cubecl::tensor::CubeTensor,
    values: &[u32],
) -> burn_cubecl::tensor::CubeTensor {
    // An empty binding is not allowed on every API: keep at least one word.
    let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    if bytes.is_empty() {
        bytes.extend_from_slice(&[0; 4]);
    }
    let handle = like.client.create_from_slice(&bytes);
    burn_cubecl::tensor::CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        burn::tensor::Shape::new([bytes.len() / 4]),
        handle,
        burn::tensor::DType::U32,
    )
}

/// Sum of `smem[0..CUBE_DIM]` into `smem[0]`, each unit having written its slot (the cube's
/// size a power of two). Starts and ends with a barrier.
#[cube]
pub fn tree_sum(smem: &mut Shared<[f32]>) {
    let u = UNIT_POS as usize;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if u < stride {
            let other = smem[u + stride];
            smem[u] += other;
        }
        sync_cube();
        stride /= 2;
    }
}
