//! Kiln's Llama against llama.cpp on the SmolLM2-135M Q4_1 fixture: token ids, chat template,
//! logits at every position of 10 prompts, and 32-token greedy continuations. The reference is
//! `tests/data/llm/llama_cpp_smollm2.json`, made by `scripts/fixtures/llama-cpp-llm.py`.
//!
//! Kiln follows llama.cpp's CPU arithmetic (activation rounding, ggml's exp, the f16 KV cache,
//! summation orders, fused multiply-adds where GCC contracts them), and on this fixture its
//! logits come out bit-identical. The asserted tolerances leave room for a libm that rounds a
//! cos/sin differently: llama.cpp's top-32 logits within 0.05, the whole-vocabulary difference
//! (estimated from 64 random ±1 projections) under 0.5% of the logits' spread, the same argmax
//! at every position and identical 32-token greedy continuations.

use burn::tensor::Device;
use kiln_models::llama::{Llama, Output};
use kiln_models::tokenizer::Tokenizer;
use kiln_tests::fixture;
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/llm/llama_cpp_smollm2.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load() -> Option<(Llama, Tokenizer)> {
    let path = fixture("smollm2-q4_1")?;
    Some(Llama::load(path, &Device::flex()).unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn token_ids_equal_llama_cpp() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let gguf = kiln_quant::gguf::GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    let r = reference();
    let cases = r["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 60);
    let mut bad = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, false, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}: kiln {got:?}, llama.cpp {want:?}"));
        }
        if let Some(plain) = case.get("ids_no_special") {
            let got = tok.encode(text, false, false).unwrap();
            if got != ids(plain) {
                bad.push(format!(
                    "{text:?} (no special): kiln {got:?}, llama.cpp {:?}",
                    ids(plain)
                ));
            }
        }
        let detok = tok.decode(&want, false);
        if detok != case["detokenized"].as_str().unwrap() {
            bad.push(format!(
                "{text:?}: decoded {detok:?}, llama.cpp {:?}",
                case["detokenized"]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn chat_template_renders_like_jinja2() {
    let Some(path) = fixture("smollm2-q4_1") else {
        return;
    };
    let gguf = kiln_quant::gguf::GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf.metadata).unwrap();
    for case in reference()["templates"].as_array().unwrap() {
        let messages: Vec<(String, String)> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().into(),
                    m["content"].as_str().unwrap().into(),
                )
            })
            .collect();
        let got = tok.apply_chat_template(&messages, true).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap());
    }
}

/// The ±1 projections of the script (`splitmix64(j * vocab + i) & 1`).
fn sketch(logits: &[f32], rows: usize) -> Vec<f64> {
    let vocab = logits.len();
    let mean = logits.iter().map(|&v| f64::from(v)).sum::<f64>() / vocab as f64;
    (0..rows)
        .map(|j| {
            let mut s = 0.0f64;
            for (i, &v) in logits.iter().enumerate() {
                let mut z = ((j * vocab + i) as u64).wrapping_add(0x9E3779B97F4A7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                z ^= z >> 31;
                let sign = if z & 1 == 1 { 1.0 } else { -1.0 };
                s += sign * (f64::from(v) - mean);
            }
            s / (rows as f64).sqrt()
        })
        .collect()
}

/// Largest difference allowed on llama.cpp's top-32 logits of any position (logits span ~30).
const TOP_TOL: f32 = 0.05;
/// Largest full-vocabulary difference, relative to the spread of llama.cpp's logits.
const REL_TOL: f64 = 0.005;

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn logits_and_greedy_continuations_match_llama_cpp() {
    let Some((model, _tok)) = load() else { return };
    let r = reference();
    let rows = r["sketch"]["rows"].as_u64().unwrap() as usize;
    let vocab = model.config.vocab_size;
    let (mut worst_top, mut worst_rel) = (0.0f32, 0.0f64);
    let (mut positions, mut same_argmax, mut exact_top1) = (0, 0, 0);
    let (mut greedy_same, mut greedy_tokens_same) = (0, 0);
    for p in r["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let prompt = ids(&p["ids"]);
        let t = prompt.len();
        let mut cache = model.new_cache(t + 32);
        let pos: Vec<u32> = (0..t as u32).collect();
        let logits = model
            .forward(
                &prompt,
                &pos,
                &vec![0; t],
                &mut cache,
                &Output::Logits((0..t).collect()),
            )
            .unwrap();
        let logits: Vec<f32> = logits.into_data().try_to_vec::<f32>().unwrap();
        for (i, want) in p["positions"].as_array().unwrap().iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let top: Vec<f32> = want["top_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let want_argmax = want["argmax"].as_u64().unwrap() as usize;
            positions += 1;
            assert_eq!(
                argmax(row),
                want_argmax,
                "{text:?} position {i} (llama.cpp's margin {})",
                top[0] - top[1]
            );
            same_argmax += 1;
            for (id, l) in ids(&want["top_ids"]).iter().zip(&top) {
                worst_top = worst_top.max((row[*id as usize] - l).abs());
            }
            if row[want_argmax] == top[0] {
                exact_top1 += 1;
            }
            let s = sketch(row, rows);
            let diff: f64 = s
                .iter()
                .zip(want["sketch"].as_array().unwrap())
                .map(|(a, b)| (a - b.as_f64().unwrap()).powi(2))
                .sum::<f64>()
                .sqrt();
            worst_rel = worst_rel.max(diff / want["norm"].as_f64().unwrap());
        }
        // Greedy, one token at a time through the cache (llama.cpp's decode path).
        let want = ids(&p["greedy"]);
        let mut next = argmax(&logits[(t - 1) * vocab..]) as u32;
        let mut greedy = vec![next];
        for i in 0..want.len() - 1 {
            let l = model
                .forward(
                    &[next],
                    &[(t + i) as u32],
                    &[0],
                    &mut cache,
                    &Output::Logits(vec![0]),
                )
                .unwrap();
            next = argmax(&l.into_data().try_to_vec::<f32>().unwrap()) as u32;
            greedy.push(next);
        }
        let agree = greedy.iter().zip(&want).take_while(|(a, b)| a == b).count();
        greedy_tokens_same += agree;
        assert_eq!(
            greedy, want,
            "{text:?}: greedy continuation differs at token {agree}"
        );
        greedy_same += 1;
    }
    eprintln!(
        "{same_argmax}/{positions} positions with llama.cpp's argmax ({exact_top1} with its top logit to the bit); \
         greedy continuations identical {greedy_same}/10, {greedy_tokens_same}/320 tokens before any difference; \
         worst top-32 logit difference {worst_top}, worst relative full-vocabulary difference {worst_rel:.4}"
    );
    assert!(worst_top <= TOP_TOL, "top-32 logits differ by {worst_top}");
    assert!(
        worst_rel <= REL_TOL,
        "full-vocabulary difference {worst_rel}"
    );
}
