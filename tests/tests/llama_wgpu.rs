//! The Llama model end to end on a wgpu device (llvmpipe in CI) through Kiln's CubeCL kernels,
//! against the CPU path on the 10 parity prompts of `llama_vs_llama_cpp.rs` (135 positions)
//! and 8-token greedy continuations (the decode kernels and the KV cache append). Every op on
//! the way is a Kiln kernel: a missing one is a `NoKernel` error, which fails the test; nothing
//! falls back to the CPU.
//!
//! With the default kernels (the CPU path's arithmetic: `Arithmetic::Cpu`, `Softmax::Rounded`)
//! the GPU computes what the CPU computes, operation for operation, so the whole-vocabulary
//! logits at every prompt position and every greedy step are asserted bit-identical — and
//! since the CPU path's are llama.cpp's on this fixture, the GPU's top-32 logits are checked
//! against llama.cpp's reference too.

use burn::tensor::Device;
use kiln_models::llama::{Llama, Output};
use kiln_tests::{fixture, wgpu_device};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/llm/llama_cpp_smollm2.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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

/// The prompt's logits at every position (`[t][vocab]` flattened), then `steps` greedy steps'
/// logits, one token at a time through the cache.
fn run(model: &Llama, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
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
    let mut next = argmax(&logits[(t - 1) * vocab..]) as u32;
    let mut greedy = Vec::new();
    for step in 0..steps {
        let l = model
            .forward(
                &[next],
                &[(t + step) as u32],
                &[0],
                &mut cache,
                &Output::Logits(vec![0]),
            )
            .unwrap();
        let l = l.into_data().try_to_vec::<f32>().unwrap();
        next = argmax(&l) as u32;
        greedy.push(l);
    }
    (logits, greedy)
}

fn differing(got: &[f32], want: &[f32]) -> usize {
    got.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

#[test]
fn llama_on_wgpu_is_bit_identical_to_the_cpu_path() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let Some((info, gpu)) = wgpu_device() else {
        return;
    };
    eprintln!("wgpu device: {} ({})", info.name, info.api);
    let (cpu_model, _) = Llama::load(&path, &Device::flex()).unwrap();
    let (gpu_model, _) = Llama::load(&path, &gpu).unwrap();
    let vocab = cpu_model.config.vocab_size;
    let r = reference();
    let (mut positions, mut steps, mut top_exact, mut top_total) = (0, 0, 0, 0);
    for (i, p) in r["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (want, want_greedy) = run(&cpu_model, &prompt, 8);
        let (got, got_greedy) = run(&gpu_model, &prompt, 8);
        for (j, (g, w)) in got.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
            positions += 1;
            assert_eq!(argmax(g), argmax(w), "prompt {i} position {j}: argmax");
            assert_eq!(
                differing(g, w),
                0,
                "prompt {i} position {j}: logits differ from the CPU's"
            );
            // llama.cpp's top-32 logits (made by scripts/fixtures/llama-cpp-llm.py).
            let theirs = &p["positions"][j];
            assert_eq!(argmax(g), theirs["argmax"].as_u64().unwrap() as usize);
            for (id, l) in theirs["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(theirs["top_logits"].as_array().unwrap())
            {
                top_total += 1;
                let (ours, theirs) = (g[id.as_u64().unwrap() as usize], l.as_f64().unwrap());
                if f64::from(ours) == theirs {
                    top_exact += 1;
                }
                assert!(
                    (f64::from(ours) - theirs).abs() <= 0.05,
                    "prompt {i}: {ours} vs llama.cpp {theirs}"
                );
            }
        }
        for (s, (g, w)) in got_greedy.iter().zip(&want_greedy).enumerate() {
            steps += 1;
            assert_eq!(argmax(g), argmax(w), "prompt {i} greedy step {s}: token");
            assert_eq!(
                differing(g, w),
                0,
                "prompt {i} greedy step {s}: logits differ from the CPU's"
            );
        }
    }
    eprintln!(
        "{positions} prompt positions and {steps} greedy steps: every logit of the vocabulary \
         bit-identical to the CPU path; {top_exact} of llama.cpp's {top_total} top-32 logits \
         equal to the bit"
    );
}
