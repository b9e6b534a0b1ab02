//! The Llama model end to end on a wgpu device (llvmpipe in CI) through Kiln's CubeCL kernels,
//! against the CPU path on the 10 parity prompts of `llama_vs_llama_cpp.rs` (124 positions)
//! and 8-token greedy continuations (the decode mat-vec kernel and the KV cache append). Every
//! op on the way is a Kiln kernel: a missing one is a `NoKernel` error, which fails the test;
//! nothing falls back to the CPU.
//!
//! What "the same" can mean here, measured: this Q4_1 model amplifies rounding noise (its
//! activations are re-quantized to 8 bits before every product, so a tiny difference can move a
//! value across a rounding boundary). The CPU path disagrees with itself — prompt prefilled vs
//! fed one token at a time (ggml's summation orders differ by batch shape) — on 1 of the 135
//! argmaxes and by up to 0.38 on a top logit (measured and printed by the test),
//! and the GPU path differs from the CPU's by up to 0.8 (measured on llvmpipe: 133 of 135
//! argmaxes agree; the two that differ have CPU margins below 0.1). The GPU follows the CPU's arithmetic
//! wherever it is a choice rather than an order of sums (activations rounded to Q8_0 / Q8_1 /
//! Q8_K as ggml does, f16 K/V, f16 queries and probabilities). So the test asserts the same
//! argmax at every position whose CPU top-2 margin is at least `MARGIN`, reports how the rest
//! came out, and compares greedy continuations up to the first near-tie.

use burn::tensor::Device;
use kiln_models::llama::{Llama, Output};
use kiln_tests::{fixture, wgpu_device};
use serde_json::Value;

fn prompts() -> Vec<Vec<u32>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/llm/llama_cpp_smollm2.json"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// Top-2 margin above which both paths must pick the same token: above the largest top-logit
/// difference between the two paths on these prompts (0.80 on llvmpipe).
const MARGIN: f32 = 1.0;

fn margin(row: &[f32]) -> f32 {
    let a = argmax(row);
    let second = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != a)
        .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
    row[a] - second
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Per prompt position (argmax, top-2 margin, top logit), then `steps` greedy tokens with
/// their margins.
type Run = (Vec<(usize, f32, f32)>, Vec<(u32, f32)>);

fn run(model: &Llama, prompt: &[u32], steps: usize) -> Run {
    let vocab = model.config.vocab_size;
    let t = prompt.len();
    let mut cache = model.new_cache(t + steps);
    let pos: Vec<u32> = (0..t as u32).collect();
    let logits = model
        .forward(
            prompt,
            &pos,
            &vec![0; t],
            &mut cache,
            &Output::Logits((0..t).collect()),
        )
        .unwrap();
    let logits: Vec<f32> = logits.into_data().try_to_vec::<f32>().unwrap();
    let positions: Vec<(usize, f32, f32)> = logits
        .chunks(vocab)
        .map(|r| (argmax(r), margin(r), r[argmax(r)]))
        .collect();
    let (mut next, first_margin, _) = positions[t - 1];
    let mut generated = vec![(next as u32, first_margin)];
    for step in 0..steps - 1 {
        let p = (t + step) as u32;
        let l = model
            .forward(
                &[next as u32],
                &[p],
                &[0],
                &mut cache,
                &Output::Logits(vec![0]),
            )
            .unwrap();
        let l = l.into_data().try_to_vec::<f32>().unwrap();
        next = argmax(&l);
        generated.push((next as u32, margin(&l)));
    }
    (positions, generated)
}

/// Per prompt position (argmax, top logit) with the prompt fed one token at a time: the same
/// model and device as a prefill, another batch shape.
fn token_by_token(model: &Llama, prompt: &[u32]) -> Vec<(usize, f32)> {
    let mut cache = model.new_cache(prompt.len());
    prompt
        .iter()
        .enumerate()
        .map(|(p, &tok)| {
            let l = model
                .forward(
                    &[tok],
                    &[p as u32],
                    &[0],
                    &mut cache,
                    &Output::Logits(vec![0]),
                )
                .unwrap();
            let l = l.into_data().try_to_vec::<f32>().unwrap();
            (argmax(&l), l[argmax(&l)])
        })
        .collect()
}

#[test]
fn llama_on_wgpu_matches_the_cpu_path() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let Some((info, gpu)) = wgpu_device() else {
        return;
    };
    eprintln!("wgpu device: {} ({})", info.name, info.api);
    let (cpu_model, _) = Llama::load(&path, &Device::flex()).unwrap();
    let (gpu_model, _) = Llama::load(&path, &gpu).unwrap();
    let (mut positions, mut asserted, mut near_same, mut worst) = (0, 0, 0, 0.0f32);
    let (mut greedy_compared, mut greedy_total) = (0, 0);
    // The CPU path against itself (prefill vs one token at a time): the noise floor of "same".
    let (mut self_flips, mut self_worst) = (0, 0.0f32);
    for (i, prompt) in prompts().iter().enumerate() {
        let (want_pos, want_gen) = run(&cpu_model, prompt, 8);
        for (a, b) in token_by_token(&cpu_model, prompt).iter().zip(&want_pos) {
            if a.0 == b.0 {
                self_worst = self_worst.max((a.1 - b.2).abs());
            } else {
                self_flips += 1;
            }
        }
        let (got_pos, got_gen) = run(&gpu_model, prompt, 8);
        for (j, (g, w)) in got_pos.iter().zip(&want_pos).enumerate() {
            positions += 1;
            if w.1 >= MARGIN {
                asserted += 1;
                assert_eq!(
                    g.0, w.0,
                    "prompt {i} position {j}: argmax (CPU margin {})",
                    w.1
                );
            } else if g.0 == w.0 {
                near_same += 1;
            }
            if g.0 == w.0 {
                worst = worst.max((g.2 - w.2).abs());
            }
        }
        // Greedy: token for token until the CPU's first near-tie (after it, either token is a
        // correct greedy choice for a path, and the continuations part).
        for (g, w) in got_gen.iter().zip(&want_gen) {
            greedy_total += 1;
            assert_eq!(g.0, w.0, "prompt {i}: greedy token (CPU margin {})", w.1);
            greedy_compared += 1;
            if w.1 < MARGIN {
                break;
            }
        }
    }
    eprintln!(
        "{positions} positions: {asserted} with a CPU margin ≥ {MARGIN} all agree; \
         {near_same} of the {} near-ties agree too; greedy: {greedy_compared} of {greedy_total} \
         compared tokens identical; largest top-logit difference {worst}",
        positions - asserted
    );
    eprintln!(
        "CPU prefill vs CPU token by token: {self_flips} argmax flips, largest top-logit difference {self_worst}"
    );
    assert!(asserted >= positions / 2, "too few positions asserted");
    assert!(worst < MARGIN, "top logits differ by up to {worst}");
    assert!(
        near_same * 10 >= (positions - asserted) * 9,
        "near-ties mostly agree too"
    );
}
