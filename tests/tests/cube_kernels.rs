//! Kiln's CubeCL kernels on a wgpu device (llvmpipe in CI) against their references, over
//! awkward shapes: sizes that are not multiples of the tiles (64 × 64 × 32) or of the mat-vec
//! cube (64 units), batch 1, a few rows, and sequences longer than the attention tile (32).
//!
//! Stated tolerances:
//! * dequantize / row lookup: ≤ 1 ulp of the value against kiln-quant's scalar codec (the
//!   products are ggml's; a shader compiler may fuse `q·d + m` into one FMA);
//! * quantized matmul in the CPU's arithmetic (the default, `Arithmetic::Cpu`): bit-identical to
//!   the CPU kernels for every type the CPU repacks (x8), whatever the shape;
//! * quantized matmul, fast kernels: |Δ| ≤ 2e-6 · Σ|w·x| against the CPU kernels, which round
//!   activations to ggml's dot formats (Q8_0, Q8_1 with its f16 block sums, Q8_K, f16) as the
//!   Cube kernels do too (f32 sums in another order); the CPU is itself checked against the f64
//!   product of the dequantized weights within the activation rounding (2e-3 · Σ|w·x|);
//! * RMSNorm, SwiGLU, RoPE: bit-identical to the Flex ops;
//! * attention: the default (`Softmax::Rounded`) bit-identical to the Flex op; the one-pass
//!   (online softmax) kernel ≤ 2e-3 · max|v| (the CPU rounds probabilities to f16 as ggml does;
//!   one pass cannot, as the normalizer is known only at the end).

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use kiln_kernels::nn::{self, KvCache, Positions, Rope, Softmax, Visibility, seq_id};
use kiln_kernels::qmatmul::{self, CubeKernel, Reduction, Tiling};
use kiln_kernels::{KernelError, QTensor, dequant};
use kiln_quant::GgmlType;
use kiln_tests::{data, wgpu_device};

fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn vec3(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn t2(v: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn t3(v: &[f32], shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// Weights of `n × k` quantized to `ty`, and their dequantized values.
fn weights(ty: GgmlType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let w: Vec<f32> = data(n * k, seed).iter().map(|v| v * 2.0).collect();
    let bytes = kiln_quant::blocks::quantize_to_vec(ty, &w).unwrap();
    let deq = kiln_quant::blocks::dequantize_to_vec(ty, &bytes).unwrap();
    (bytes, deq)
}

/// Every type the Cube kernels read: a type added there is tested here.
const TYPES: &[GgmlType] = kiln_kernels::CUBE_TYPES;

/// A row length for `ty` that is not a multiple of the 32-wide K tile where the type allows.
fn awkward_k(ty: GgmlType) -> usize {
    match ty.block_size() {
        1 => 83,
        32 => 224, // 7 blocks: 28 groups of 8 for 64 mat-vec units
        _ => 512,
    }
}

fn ulp_close(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got - want).abs() <= want.abs() * f32::EPSILON
}

#[test]
fn dequantize_and_row_lookup_every_type() {
    let Some((info, gpu)) = wgpu_device() else {
        return;
    };
    eprintln!("wgpu device: {} ({})", info.name, info.api);
    for &ty in TYPES {
        let (n, k) = (13, awkward_k(ty));
        let (bytes, want) = weights(ty, n, k, ty.id() as u64);
        let q = QTensor::from_blocks("w", ty, &[n, k], &bytes, &gpu).unwrap();
        let got = vec2(dequant::dequantize(&q).unwrap());
        let bad = (0..want.len())
            .filter(|&i| !ulp_close(got[i], want[i]))
            .count();
        assert_eq!(bad, 0, "{ty}: {bad} of {} values differ", want.len());

        let ids = [12u32, 0, 7, 7, 3];
        let rows = vec2(qmatmul::qrows(&q, &ids).unwrap());
        for (r, &id) in ids.iter().enumerate() {
            for j in 0..k {
                let (g, w) = (rows[r * k + j], want[id as usize * k + j]);
                assert!(ulp_close(g, w), "{ty} row {id}[{j}]: {g} vs {w}");
            }
        }
        let err = qmatmul::qrows(&q, &[13]).unwrap_err();
        assert!(matches!(err, KernelError::Shape(_)), "{err}");
    }
}

/// `x[m, k] · Wᵀ` in f64 from the dequantized weights, and Σ|w·x| per output.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                let p = f64::from(x[i * k + l]) * f64::from(w[j * k + l]);
                y[i * n + j] += p;
                mag[i * n + j] += p.abs();
            }
        }
    }
    (y, mag)
}

/// The GPU product against the CPU's (same activation rounding, ggml's), and both against the
/// exact product of the dequantized weights (which differs by the activation rounding only).
fn check_qmatmul(gpu: &Device, ty: GgmlType, m: usize, n: usize, k: usize, red: Reduction) {
    check_qmatmul_tiled(gpu, ty, m, n, k, red, Tiling::Auto)
}

fn check_qmatmul_tiled(
    gpu: &Device,
    ty: GgmlType,
    m: usize,
    n: usize,
    k: usize,
    red: Reduction,
    tiling: Tiling,
) {
    let (bytes, deq) = weights(ty, n, k, (m * 31 + n) as u64);
    let x = data(m * k, 7 + m as u64);
    let run = |dev: &Device, red, tiling| {
        let q = QTensor::from_blocks("w", ty, &[n, k], &bytes, dev).unwrap();
        vec2(qmatmul::qmatmul_with(t2(&x, [m, k], dev), &q, CubeKernel::fast(red, tiling)).unwrap())
    };
    let got = run(gpu, red, tiling);
    let cpu = run(&Device::flex(), Reduction::Auto, Tiling::Auto);
    let (exact, mag) = reference(&x, &deq, m, n, k);
    assert_eq!(got.len(), m * n);
    for i in 0..m * n {
        let from_exact = (f64::from(cpu[i]) - exact[i]).abs();
        assert!(
            from_exact <= 2e-3 * mag[i] + 1e-6,
            "{ty} m={m} n={n} k={k}: the CPU's y[{i}] = {} is not the product {}",
            cpu[i],
            exact[i]
        );
        let want = f64::from(cpu[i]);
        let err = (f64::from(got[i]) - want).abs();
        assert!(
            err <= 2e-6 * mag[i] + 1e-7,
            "{ty} m={m} n={n} k={k} {red:?} {tiling:?}: y[{}, {}] = {} want {} (Σ|wx| {})",
            i / n,
            i % n,
            got[i],
            want,
            mag[i]
        );
    }
}

#[test]
fn qmatmul_matvec_every_type_against_dequantized_reference() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let planes = kiln_kernels::device_has_planes(&gpu);
    for &ty in TYPES {
        let k = awkward_k(ty);
        // m = 1 (decode) and m = 3 (label scoring); n below and above a cube's rows.
        for (m, n) in [(1, 1), (1, 67), (3, 130)] {
            check_qmatmul(&gpu, ty, m, n, k, Reduction::Auto);
        }
        // Every rows-per-cube split the device can run.
        for red in Reduction::variants(planes) {
            check_qmatmul(&gpu, ty, 2, 70, k, red);
        }
    }
}

#[test]
fn qmatmul_tiled_every_type_against_dequantized_reference() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    for &ty in TYPES {
        let k = awkward_k(ty);
        // m just above the mat-vec limit, and more rows and columns than one tile of either
        // tiling (vec4: 128 × 64; scalar, for 16 KiB devices: 32 × 64).
        for (m, n) in [(5, 37), (70, 129), (133, 65)] {
            for tiling in [Tiling::Vec4, Tiling::Scalar] {
                check_qmatmul_tiled(&gpu, ty, m, n, k, Reduction::Auto, tiling);
            }
        }
    }
}

#[test]
fn qmatmul_plane_reduction_where_the_device_has_planes() {
    let Some((info, gpu)) = wgpu_device() else {
        return;
    };
    let (bytes, _) = weights(GgmlType::Q4_0, 9, 64, 1);
    let q = QTensor::from_blocks("w", GgmlType::Q4_0, &[9, 64], &bytes, &gpu).unwrap();
    if kiln_kernels::device_has_planes(&gpu) {
        check_qmatmul(&gpu, GgmlType::Q4_0, 1, 67, 256, Reduction::Plane);
        check_qmatmul(&gpu, GgmlType::Q4_K, 2, 67, 512, Reduction::Plane);
    } else {
        // llvmpipe: subgroups are off on CPU adapters. Asking for them is an error, not a
        // silent fallback.
        eprintln!("{}: no plane operations; plane variant refused", info.name);
        let x = t2(&data(64, 1), [1, 64], &gpu);
        let plane = CubeKernel::fast(Reduction::Plane, Tiling::Auto);
        let err = qmatmul::qmatmul_with(x.clone(), &q, plane).unwrap_err();
        assert!(matches!(err, KernelError::Unsupported(_)), "{err}");
    }
    for bad in [0, 1, 3, 128] {
        let x = t2(&data(64, 1), [1, 64], &gpu);
        let shared = CubeKernel::fast(Reduction::Shared(bad), Tiling::Auto);
        let err = qmatmul::qmatmul_with(x, &q, shared).unwrap_err();
        assert!(matches!(err, KernelError::Unsupported(_)), "{bad}: {err}");
    }
}

/// The default GPU product (the CPU's arithmetic) is the CPU's, bit for bit, for every type the
/// CPU repacks: odd block counts, batch 1 and batches (the decode kernel and the tiled one,
/// tiles ragged at both edges), row counts below and above a cube (64); activations scaled over
/// 2^±20 so that blocks of tiny and huge values and the fused multiply-adds' roundings all
/// occur.
#[test]
fn qmatmul_in_the_cpu_arithmetic_is_bit_identical() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    for &ty in kiln_kernels::cpu::x8::TYPES {
        // m < 16: one unit per output; from 16: 32 × 32 tiles (ragged at both edges).
        for &(m, n, blocks) in &[
            (1, 8, 1),
            (1, 72, 5),
            (3, 16, 3),
            (5, 136, 2),
            (15, 24, 7),
            (16, 24, 7),
            (37, 40, 3),
            (70, 96, 2),
        ] {
            let k = blocks * ty.block_size();
            let (bytes, _) = weights(ty, n, k, (n + blocks) as u64);
            let x: Vec<f32> = data(m * k, 5 + m as u64)
                .iter()
                .enumerate()
                .map(|(i, v)| v * 2f32.powi((i / 32 % 41) as i32 - 20))
                .collect();
            let run = |dev: &Device| {
                let q = QTensor::from_blocks("w", ty, &[n, k], &bytes, dev).unwrap();
                vec2(qmatmul::qmatmul(t2(&x, [m, k], dev), &q).unwrap())
            };
            let (got, want) = (run(&gpu), run(&Device::flex()));
            assert_bits(&got, &want, &format!("{ty} m={m} n={n} k={k}"));
        }
    }
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ; first at {}: {} vs {}",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs() + abs,
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn rms_norm_swiglu_and_rope_match_the_cpu() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let cpu = Device::flex();
    for (rows, d) in [(1, 576), (7, 67), (3, 2048)] {
        let x = data(rows * d, d as u64);
        let w = data(d, 3);
        let run = |dev: &Device| {
            let wt = Tensor::<1>::from_data(TensorData::new(w.clone(), [d]), dev);
            vec2(nn::rms_norm(t2(&x, [rows, d], dev), &wt, 1e-5).unwrap())
        };
        assert_bits(&run(&gpu), &run(&cpu), "rms_norm");

        let g: Vec<f32> = x.iter().map(|v| v * 20.0).collect();
        let run = |dev: &Device| {
            vec2(nn::swiglu(t2(&g, [rows, d], dev), t2(&w.repeat(rows), [rows, d], dev)).unwrap())
        };
        assert_bits(&run(&gpu), &run(&cpu), "swiglu");
    }

    let (t, heads, d) = (37, 3, 64);
    let x = data(t * heads * d, 11);
    // Positions out of order and far apart (cached prefixes, several sequences).
    let positions: Vec<u32> = (0..t as u32).map(|i| (i * 7919) % 1000).collect();
    let factors: Vec<f32> = (0..24).map(|i| 1.0 + i as f32 / 3.0).collect();
    for rope in [
        Rope {
            n_rot: 64,
            freq_base: 10000.0,
            freq_scale: 1.0,
            freq_factors: vec![],
            neox: false,
        },
        Rope {
            n_rot: 48,
            freq_base: 500000.0,
            freq_scale: 0.25,
            freq_factors: factors.clone(),
            neox: false,
        },
        Rope {
            n_rot: 64,
            freq_base: 10000.0,
            freq_scale: 1.0,
            freq_factors: vec![],
            neox: true,
        },
    ] {
        let positions = Positions::new(&positions);
        let run =
            |dev: &Device| vec3(nn::rope(t3(&x, [t, heads, d], dev), &positions, &rope).unwrap());
        assert_bits(&run(&gpu), &run(&cpu), &format!("rope {rope:?}"));
    }
}

/// One attention call: the new tokens' positions and sequence ids.
type Step = (Vec<u32>, Vec<u32>);

/// Runs `steps` attention calls (prefill, then appends) on one device; returns every output.
fn attention_run(
    device: &Device,
    softmax: Softmax,
    heads: usize,
    kv_heads: usize,
    d: usize,
    steps: &[Step],
) -> Vec<Vec<f32>> {
    let cap: usize = steps.iter().map(|s| s.0.len()).sum::<usize>() + 3;
    let mut cache = KvCache::new(cap, kv_heads, d, device);
    let (mut key_pos, mut key_seq) = (Vec::new(), Vec::new());
    let mut outs = Vec::new();
    let mut start = 0;
    for (step, (pos, seq)) in steps.iter().enumerate() {
        let t = pos.len();
        key_pos.extend_from_slice(pos);
        key_seq.extend_from_slice(seq);
        let mask = Visibility {
            query_pos: Arc::from(pos.as_slice()),
            query_seq: Arc::from(seq.as_slice()),
            key_pos: Arc::from(key_pos.as_slice()),
            key_seq: Arc::from(key_seq.as_slice()),
            scale: 1.0 / (d as f32).sqrt(),
            softmax,
            device_copy: Default::default(),
        };
        let s = step as u64 * 3;
        let q = t3(&data(t * heads * d, s + 1), [t, heads, d], device);
        let k: Vec<f32> = data(t * kv_heads * d, s + 2)
            .iter()
            .map(|v| v * 4.0)
            .collect();
        let k = t3(&k, [t, kv_heads, d], device);
        let v = t3(&data(t * kv_heads * d, s + 3), [t, kv_heads, d], device);
        let out = nn::attention(q, k, v, &mut cache, start, mask).unwrap();
        outs.push(vec2(out));
        start += t;
    }
    outs
}

#[test]
fn attention_matches_the_cpu_causal_gqa_shared_prefix_and_long() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let cpu = Device::flex();
    let causal = |from: u32, to: u32| {
        (
            (from..to).collect::<Vec<u32>>(),
            vec![0; (to - from) as usize],
        )
    };
    let cases: Vec<(&str, usize, usize, usize, Vec<Step>)> = vec![
        // Prefill of 37 (not a multiple of the 32-slot tile), then two decode steps; GQA 3:1.
        (
            "causal gqa",
            6,
            2,
            64,
            vec![causal(0, 37), causal(37, 38), causal(38, 39)],
        ),
        // A shared prefix (seq 0) and three label continuations (seqs 1..3) that must not see
        // each other: the padding / multi-sequence case of batched label scoring.
        (
            "shared prefix",
            4,
            4,
            32,
            vec![
                causal(0, 9),
                (vec![9, 10, 9, 10, 11, 9], vec![1, 1, 2, 2, 2, 3]),
            ],
        ),
        // Batched prompts: groups 1 and 2 (branch 0, positions restarting at 0), then two
        // continuations of each (branches 1, 2) that see their own group's prompt only.
        (
            "grouped prompts",
            4,
            2,
            32,
            vec![
                (
                    (0..7).chain(0..5).collect(),
                    [vec![seq_id(1, 0); 7], vec![seq_id(2, 0); 5]].concat(),
                ),
                (
                    vec![7, 8, 7, 5, 5, 6],
                    vec![
                        seq_id(1, 1),
                        seq_id(1, 1),
                        seq_id(1, 2),
                        seq_id(2, 1),
                        seq_id(2, 2),
                        seq_id(2, 2),
                    ],
                ),
            ],
        ),
        // A long sequence: 300 slots in ten tiles, batch 1 decode at the end; head dim 48
        // (not a multiple of the 32 units).
        ("long", 2, 1, 48, vec![causal(0, 299), causal(299, 300)]),
    ];
    for (what, heads, kv_heads, d, steps) in cases {
        let want = attention_run(&cpu, Softmax::Rounded, heads, kv_heads, d, &steps);
        // The one-pass kernel: within the f16 rounding of the CPU's probabilities.
        let got = attention_run(&gpu, Softmax::OnePass, heads, kv_heads, d, &steps);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(g, w, 0.0, 2e-3 * 0.5, &format!("one-pass {what} step {i}"));
        }
        // The default follows the CPU's arithmetic, bit for bit.
        let got = attention_run(&gpu, Softmax::Rounded, heads, kv_heads, d, &steps);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_bits(g, w, &format!("rounded {what} step {i}"));
        }
    }
}

/// The BERT encoder's ops on wgpu against the CPU: dense (mat-vec and tiled, bias, GELU) on a
/// width that is not a multiple of the tiles, masked self-attention over rows of different
/// lengths (one of a single token, one of the full 37), and residual + LayerNorm.
#[test]
fn encoder_ops_match_the_cpu() {
    use kiln_kernels::cpu::gemm::Act;
    use kiln_kernels::encoder::{self, PackedLinear};
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let cpu = Device::flex();
    let (k, n) = (83, 130);
    let w = data(k * n, 21);
    let bias = data(n, 22);
    for m in [1, 3, 70] {
        let x = data(m * k, 23 + m as u64);
        for act in [Act::None, Act::Gelu, Act::QuickGelu] {
            let run = |dev: &Device| {
                let layer = PackedLinear::new(&w, bias.clone(), k, n, dev).unwrap();
                vec2(encoder::dense(t2(&x, [m, k], dev), &layer, act))
            };
            assert_close(
                &run(&gpu),
                &run(&cpu),
                1e-5,
                1e-5,
                &format!("dense m={m} {act:?}"),
            );
        }
    }

    let (seq, heads, hd) = (37, 3, 32);
    let lengths = [37usize, 1, 20];
    let rows = lengths.len() * seq;
    let qkv = data(rows * 3 * heads * hd, 31);
    let run = |dev: &Device| {
        let out = encoder::self_attention(
            t2(&qkv, [rows, 3 * heads * hd], dev),
            &lengths,
            seq,
            heads,
            hd,
        );
        vec2(out)
    };
    let (got, want) = (run(&gpu), run(&cpu));
    // Padded query rows hold junk on both paths: compare real tokens only.
    for (b, &len) in lengths.iter().enumerate() {
        let at = |v: &[f32]| v[b * seq * heads * hd..(b * seq + len) * heads * hd].to_vec();
        assert_close(
            &at(&got),
            &at(&want),
            1e-5,
            1e-5,
            &format!("self-attention row {b}"),
        );
    }

    let d = 384;
    let x = data(5 * d, 41);
    let r = data(5 * d, 42);
    let g = data(d, 43);
    let bt = data(d, 44);
    for residual in [true, false] {
        let run = |dev: &Device| {
            let t1 = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [d]), dev);
            vec2(encoder::add_layer_norm(
                t2(&x, [5, d], dev),
                residual.then(|| t2(&r, [5, d], dev)),
                &t1(&g),
                &t1(&bt),
                1e-12,
            ))
        };
        let what = format!("add_layer_norm residual={residual}");
        assert_close(&run(&gpu), &run(&cpu), 1e-5, 1e-5, &what);
    }
}

/// xorshift64 bits for the arithmetic checks below.
struct Bits(u64);

impl Bits {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A finite f32 with a random sign, mantissa and an exponent field in `exps`.
    fn float(&mut self, exps: std::ops::Range<u32>) -> f32 {
        let r = self.next();
        let e = exps.start + (r >> 40) as u32 % (exps.end - exps.start);
        f32::from_bits(((r >> 63) as u32) << 31 | e << 23 | (r as u32 & 0x7F_FFFF))
    }
}

/// The integer fused multiply-add the exact kernels use where the device's `fma` rounds twice
/// (llvmpipe: Mesa lowers it to a multiply and an add) rounds once, as IEEE's: every case of
/// normal, subnormal and zero operands, cancellation (c = -a·b rounded, and its neighbours),
/// products far above and below c, ties decided by a c far below, and overflow, bit for bit
/// against Rust's `mul_add`.
#[test]
fn soft_fma_is_ieee_fma() {
    let Some((info, gpu)) = wgpu_device() else {
        return;
    };
    eprintln!(
        "{}: the device's own fma {}",
        info.name,
        if kiln_kernels::cube_check::device_fma_is_fused(&gpu) {
            "rounds once"
        } else {
            "rounds twice: the kernels use the integer one"
        }
    );
    let mut r = Bits(0x9E37_79B9_7F4A_7C15);
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..200_000 {
        let (x, y) = match i % 4 {
            0 => (r.float(100..154), r.float(100..154)),
            1 => (r.float(0..255), r.float(0..255)),
            2 => (r.float(1..40), r.float(90..160)),
            _ => (r.float(126..129), r.float(126..129)),
        };
        let z = match i % 7 {
            0 => -(x * y),
            1 => f32::from_bits((-(x * y)).to_bits().wrapping_add(1)),
            2 => f32::from_bits((-(x * y)).to_bits().wrapping_sub(1)),
            3 => 0.0,
            4 => r.float(0..24),
            5 => r.float(0..255),
            _ => x * y * f32::from_bits(0x3380_0000 + (r.next() as u32 & 0x7F_FFFF)),
        };
        let z = if z.is_finite() { z } else { 1.0 };
        a.push(x);
        b.push(y);
        c.push(z);
    }
    // Products exactly halfway between two floats (odd 13-bit significands), nudged by a c
    // far below them: only the sticky bit of the shifted-out c decides the rounding.
    for _ in 0..20_000 {
        let odd13 = |r: &mut Bits| ((r.next() as u32 & 0xFFF) | 0x1001) as f32;
        let (x, y) = (odd13(&mut r), odd13(&mut r));
        let tiny = r.float(1..60);
        a.push(x);
        b.push(y * 2f32.powi(-12));
        c.push(tiny);
    }
    for (x, y, z) in [
        (0.0f32, 5.0f32, -0.0f32),
        (-0.0, 5.0, 0.0),
        (1e-45, 1e-45, 0.0),
        (-1e-45, 1e-45, 0.0),
        (3e38, 3e38, -1.0),
        (1.0 + f32::EPSILON, 1.0 - f32::EPSILON, -1.0),
    ] {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    let got = kiln_kernels::cube_check::soft_fma_on(&gpu, &a, &b, &c);
    let bad: Vec<usize> = (0..a.len())
        .filter(|&i| got[i].to_bits() != a[i].mul_add(b[i], c[i]).to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} differ; first: fma({:e}, {:e}, {:e}) = {:e}, device {:e}",
        bad.len(),
        a.len(),
        a[bad[0]],
        b[bad[0]],
        c[bad[0]],
        a[bad[0]].mul_add(b[bad[0]], c[bad[0]]),
        got[bad[0]]
    );
}

/// ggml's `expf` in the kernels is the CPU's, bit for bit, with the integer FMA and with the
/// device's own (where that rounds once), over the whole range the softmax and SiLU reach,
/// overflow and underflow included.
#[test]
fn ggml_expf_matches_the_cpu() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let mut r = Bits(7);
    let mut x: Vec<f32> = (0..100_000)
        .map(|i| match i % 3 {
            0 => (r.next() >> 40) as f32 / (1u64 << 24) as f32 * -104.0,
            1 => (r.next() >> 40) as f32 / (1u64 << 24) as f32 * 200.0 - 100.0,
            _ => r.float(100..135),
        })
        .collect();
    x.extend([0.0, -0.0, 88.7, 88.8, -87.3, -103.9, -150.0, 200.0, -200.0]);
    let want: Vec<f32> = x.iter().map(|&v| nn::ggml_expf(v)).collect();
    let mut variants = vec![true];
    if kiln_kernels::cube_check::device_fma_is_fused(&gpu) {
        variants.push(false);
    }
    for soft in variants {
        let got = kiln_kernels::cube_check::ggml_expf_on(&gpu, &x, soft);
        // The smallest results are f32 subnormals, which a device may flush to zero; the
        // kernels never depend on them (a softmax term below 2^-126 is lost in its f64 sum, a
        // SiLU's 1 + e is 1).
        let bad: Vec<usize> = (0..x.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits() && want[i] >= f32::MIN_POSITIVE)
            .collect();
        assert!(
            bad.is_empty(),
            "soft={soft}: {} of {} differ; first: expf({:e}) = {:e}, device {:e}",
            bad.len(),
            x.len(),
            x[bad[0]],
            want[bad[0]],
            got[bad[0]]
        );
    }
}

/// The f64 sums of f32 terms (RMSNorm's squares, the softmax's chunk sums) in integer
/// arithmetic, and the f32 quotients taken from them, against Rust's f64: terms spread over
/// 2^±60 so that most additions round, rows of 1 to 600 terms.
#[test]
fn wide_sums_match_f64() {
    let Some((_, gpu)) = wgpu_device() else {
        return;
    };
    let mut r = Bits(99);
    for (len, divisor) in [
        (1, 1.0f32),
        (16, 1.0),
        (37, 576.0),
        (600, 2048.0),
        (64, 3.0),
    ] {
        let rows = 2000;
        let terms: Vec<f32> = (0..rows * len)
            .map(|i| {
                if i % 11 == 3 {
                    0.0
                } else {
                    r.float(67..187).abs()
                }
            })
            .collect();
        let got = kiln_kernels::cube_check::wide_on(&gpu, &terms, len, divisor);
        for (row, (t, g)) in terms.chunks(len).zip(&got).enumerate() {
            let sum: f64 = t.iter().map(|&v| f64::from(v)).sum();
            if sum == 0.0 {
                continue;
            }
            let want = (
                (sum / f64::from(divisor)) as f32,
                (f64::from(divisor) / sum) as f32,
            );
            assert_eq!(
                (g.0.to_bits(), g.1.to_bits()),
                (want.0.to_bits(), want.1.to_bits()),
                "row {row} of {len} terms / {divisor}: {g:?} vs {want:?}"
            );
        }
    }
}
