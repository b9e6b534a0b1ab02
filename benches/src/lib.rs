//! Kiln's criterion benchmarks live in `benches/benches/`; run them with
//! `cargo bench -p kiln-benches`. Shared input generators are here.

/// Deterministic pseudo-random bytes (xorshift), for synthetic block data.
pub fn pseudo_random_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// `n_blocks` blocks of `ty` with finite, small f16 scales at every scale position.
pub fn synthetic_blocks(ty: kiln_quant::GgmlType, n_blocks: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut bytes = pseudo_random_bytes(n_blocks * bb, 0x9E37_79B9);
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in bytes.chunks_exact_mut(bb) {
        // The f16 scale fields of each format (ggml-common.h); other bytes stay random.
        use kiln_quant::GgmlType::*;
        let fields: &[usize] = match ty {
            Q4_0 | Q5_0 | Q8_0 => &[0],
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q2_K => &[80, 82],
            Q3_K => &[108],
            Q6_K => &[208],
            Q8_K => {
                block[..4].copy_from_slice(&0.01f32.to_le_bytes());
                &[]
            }
            F16 | BF16 => {
                for pair in block.chunks_exact_mut(2) {
                    pair.copy_from_slice(&scale);
                }
                &[]
            }
            F32 => {
                block.copy_from_slice(&0.01f32.to_le_bytes());
                &[]
            }
            _ => &[],
        };
        for &at in fields {
            block[at..at + 2].copy_from_slice(&scale);
        }
    }
    bytes
}
