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
