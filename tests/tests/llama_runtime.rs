//! The Llama runtime around the model: RoPE scaling against a numpy reference, resident memory,
//! generation (greedy, streaming, stop strings, seeded sampling), classification (the batched
//! shared-prefix scoring against one-label-at-a-time scoring; the `score` head), and model-file
//! errors on synthetic GGUF files.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use kiln_kernels::nn::{self, Rope};
use kiln_models::llama::{Llama, Output, llama3_freq_factors};
use kiln_quant::GgmlType;
use kiln_quant::gguf::{Array, GgufFile, Metadata, TensorToWrite, Value, write_gguf};
use kiln_runtime::llm::classify::{Classifier, DEFAULT_TEMPLATE};
use kiln_runtime::llm::sampling::SamplerConfig;
use kiln_runtime::llm::{GenerateOptions, Llm, StopReason, floats};
use kiln_tests::fixture;
use serde_json::Value as Json;

fn json(name: &str) -> Json {
    let path = format!("{}/data/llm/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f64s(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn llama3_rope_scaling_matches_the_hf_formula() {
    let r = json("rope_llama3.json");
    let dim = r["dim"].as_u64().unwrap() as usize;
    let factors = llama3_freq_factors(
        r["base"].as_f64().unwrap() as f32,
        dim,
        r["factor"].as_f64().unwrap() as f32,
        r["low_freq_factor"].as_f64().unwrap() as f32,
        r["high_freq_factor"].as_f64().unwrap() as f32,
        r["original_context"].as_f64().unwrap() as f32,
    );
    let want = f64s(&r["freq_factors"]);
    assert!(want.iter().any(|&f| f > 2.0) && want.iter().any(|&f| (f - 1.0).abs() < 1e-9));
    for (g, w) in factors.iter().zip(&want) {
        assert!((f64::from(*g) - w).abs() <= 1e-5 * w, "factor {g} vs {w}");
    }
    let rope = Rope {
        n_rot: dim,
        freq_base: r["base"].as_f64().unwrap() as f32,
        freq_scale: 1.0,
        freq_factors: factors,
        neox: false,
    };
    let x: Vec<f32> = f64s(&r["x"]).iter().map(|&v| v as f32).collect();
    let positions: Vec<u32> = r["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    let t = positions.len();
    let device = Device::flex();
    let input: Vec<f32> = (0..t).flat_map(|_| x.clone()).collect();
    let xt = Tensor::<3>::from_data(TensorData::new(input, [t, 1, dim]), &device);
    let got = floats(nn::rope(xt, &nn::Positions::new(&positions), &rope).unwrap()).unwrap();
    for (i, want) in r["rotated"].as_array().unwrap().iter().enumerate() {
        // θ is accumulated in f32 pair by pair as ggml does: error grows with the position.
        let tol = if positions[i] <= 100 { 1e-4 } else { 2e-2 };
        for (g, w) in got[i * dim..(i + 1) * dim].iter().zip(f64s(want)) {
            assert!(
                (f64::from(*g) - w).abs() <= tol,
                "position {}: {g} vs {w}",
                positions[i]
            );
        }
    }
}

fn smollm() -> Option<Llm> {
    Some(Llm::load(fixture("smollm2-q4_1")?, &Device::flex()).unwrap())
}

#[test]
fn greedy_generation_streams_and_stops() {
    let Some(llm) = smollm() else { return };
    let reference = json("llama_cpp_smollm2.json");
    let p = &reference["prompts"][0];
    assert_eq!(p["text"], "The capital of France is");
    let prompt = llm
        .prompt_tokens("The capital of France is", false, None)
        .unwrap();
    let ids: Vec<u32> = p["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(prompt, ids);

    let mut pieces = Vec::new();
    let opts = GenerateOptions {
        max_tokens: 32,
        ..Default::default()
    };
    let g = llm
        .generate(&prompt, &opts, |s| pieces.push(s.to_string()))
        .unwrap();
    let want: Vec<u32> = p["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(g.tokens, want, "llama.cpp's greedy continuation");
    assert_eq!(g.stop, StopReason::Length);
    assert_eq!(pieces.concat(), g.text);
    assert_eq!(g.text, p["greedy_text"].as_str().unwrap());

    // A stop string ends the text before it, and nothing of it is streamed.
    let opts = GenerateOptions {
        max_tokens: 32,
        stop: vec!["United".into()],
        ..Default::default()
    };
    let mut streamed = String::new();
    let g = llm
        .generate(&prompt, &opts, |s| streamed.push_str(s))
        .unwrap();
    assert_eq!(g.stop, StopReason::StopString);
    assert_eq!(g.text, " Paris.\n\nThe ");
    assert_eq!(streamed, g.text);
}

#[test]
fn chat_generation_ends_at_the_end_of_turn() {
    let Some(llm) = smollm() else { return };
    let prompt = llm.prompt_tokens("Say hello.", true, None).unwrap();
    let g = llm
        .generate(
            &prompt,
            &GenerateOptions {
                max_tokens: 64,
                ..Default::default()
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::Eos, "{:?}", g.text);
    assert!(!g.text.is_empty() && !g.text.contains("<|im_end|>"));
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(llm) = smollm() else { return };
    let prompt = llm.prompt_tokens("Once upon a time", false, None).unwrap();
    let run = |seed| {
        let sampler = SamplerConfig {
            temperature: 1.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            seed,
            ..Default::default()
        };
        let opts = GenerateOptions {
            max_tokens: 24,
            sampler,
            ..Default::default()
        };
        llm.generate(&prompt, &opts, |_| {}).unwrap().tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

fn labels() -> Vec<String> {
    [
        "order_status",
        "return_refund",
        "product_search",
        "cancel_order",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn batched_label_scoring_equals_one_label_at_a_time() {
    let Some(llm) = smollm() else { return };
    let c = Classifier::generative(&llm, labels(), DEFAULT_TEMPLATE, false).unwrap();
    let query = "where is my parcel? it was due yesterday";
    let got = c.classify(query).unwrap();
    // Reference: prompt + label as one sequence per label, summing token log-probabilities.
    let filled = DEFAULT_TEMPLATE
        .replace("{labels}", &labels().join(", "))
        .replace("{query}", query);
    let prompt = llm.prompt_tokens(&filled, false, None).unwrap();
    for (j, label) in labels().iter().enumerate() {
        let lt = llm
            .tokenizer
            .encode(&format!(" {label}"), false, false)
            .unwrap();
        let all: Vec<u32> = prompt.iter().chain(&lt).copied().collect();
        let n = all.len();
        let mut cache = llm.model.new_cache(n);
        let pos: Vec<u32> = (0..n as u32).collect();
        let rows: Vec<usize> = (prompt.len() - 1..n - 1).collect();
        let logits = floats(
            llm.model
                .forward(&all, &pos, &vec![0; n], &mut cache, &Output::Logits(rows))
                .unwrap(),
        )
        .unwrap();
        let vocab = llm.model.config.vocab_size;
        let mut ll = 0.0f64;
        for (r, &tok) in lt.iter().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            ll += f64::from(row[tok as usize]) - lse;
        }
        let diff = (f64::from(got.scores[j]) - ll).abs();
        assert!(
            diff < 0.05,
            "{label}: batched {} vs alone {ll}",
            got.scores[j]
        );
    }
    let sum: f32 = got.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4);
    assert!(labels().contains(&got.label));
}

/// Several queries in one batch (each prompt a sequence group, its labels branches of it) score
/// as each query alone; an empty query gets its own error and the batch goes on.
#[test]
fn batched_queries_score_as_each_query_alone() {
    let Some(llm) = smollm() else { return };
    let c = Classifier::generative(&llm, labels(), DEFAULT_TEMPLATE, false).unwrap();
    let queries = [
        "where is my parcel? it was due yesterday",
        "  ",
        "I want to return these shoes",
        "Laufschuhe Damen wasserdicht",
    ];
    let batch = c.classify_batch(&queries).unwrap();
    assert_eq!(batch.len(), queries.len());
    assert!(batch[1].is_err(), "the blank query is an error of its own");
    for (i, q) in queries.iter().enumerate() {
        let Ok(got) = &batch[i] else { continue };
        let alone = c.classify(q).unwrap();
        assert_eq!(got.label, alone.label, "{q}");
        // Prompts and label continuations sit at other cache slots than alone, and the CPU
        // attention sums in 16-lane groups by slot (as ggml does), so rounding differs a
        // little (measured ≤ 0.19); a query seeing another's prompt or label would move its
        // scores by whole nats.
        for (a, b) in got.scores.iter().zip(&alone.scores) {
            assert!((a - b).abs() <= 0.25, "{q}: batched {a} vs alone {b}");
        }
    }
}

#[test]
fn sequence_classification_head_scores_the_last_hidden_state() {
    let Some(llm) = smollm() else { return };
    let d = llm.model.config.n_embd;
    let n_labels = labels().len();
    let w: Vec<f32> = (0..n_labels * d)
        .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
        .collect();
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n_labels, d], &bytes)
            .unwrap();
    let dir = std::env::temp_dir().join(format!("kiln-head-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let head = dir.join("score.safetensors");
    safetensors::serialize_to_file([("score.weight", view)], None, &head).unwrap();
    let c = Classifier::with_head(&llm, labels(), &head, "{query}").unwrap();
    let got = c.classify("I want my money back").unwrap();
    let prompt = llm
        .prompt_tokens("I want my money back", false, None)
        .unwrap();
    let n = prompt.len();
    let mut cache = llm.model.new_cache(n);
    let pos: Vec<u32> = (0..n as u32).collect();
    let h = floats(
        llm.model
            .forward(
                &prompt,
                &pos,
                &vec![0; n],
                &mut cache,
                &Output::Hidden(vec![n - 1]),
            )
            .unwrap(),
    )
    .unwrap();
    for (j, s) in got.scores.iter().enumerate() {
        let want: f32 = h
            .iter()
            .zip(&w[j * d..(j + 1) * d])
            .map(|(a, b)| a * b)
            .sum();
        assert!(
            (s - want).abs() <= 1e-3 * (1.0 + want.abs()),
            "label {j}: {s} vs {want}"
        );
    }
    // A head whose shape does not fit is an error naming both.
    let bad = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![3, d],
        &bytes[..3 * d * 4],
    )
    .unwrap();
    safetensors::serialize_to_file([("score.weight", bad)], None, &head).unwrap();
    let err = Classifier::with_head(&llm, labels(), &head, "{query}")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("[3, 576]") && err.contains("4 labels"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tiny F32 Llama with a SentencePiece vocabulary, written with Kiln's GGUF writer.
fn tiny_llama(
    mutate: impl FnOnce(&mut Metadata, &mut HashMap<String, (Vec<u64>, Vec<f32>)>),
) -> Vec<u8> {
    let (d, ff, layers, heads, kv) = (32usize, 64usize, 2usize, 4usize, 2usize);
    let mut tokens: Vec<String> = [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "▁b",
    ]
    .map(String::from)
    .to_vec();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let vocab = tokens.len();
    let mut types = vec![1i32; vocab];
    types[0] = 2;
    types[1] = 3;
    types[2] = 3;
    for t in types.iter_mut().skip(10) {
        *t = 6;
    }
    let scores: Vec<f32> = (0..vocab).map(|i| -(i as f32)).collect();
    let mut m = Metadata::default();
    let s = |v: &str| Value::String(v.into());
    m.set("general.architecture", s("llama"));
    m.set("llama.block_count", Value::U32(layers as u32));
    m.set("llama.context_length", Value::U32(64));
    m.set("llama.embedding_length", Value::U32(d as u32));
    m.set("llama.feed_forward_length", Value::U32(ff as u32));
    m.set("llama.attention.head_count", Value::U32(heads as u32));
    m.set("llama.attention.head_count_kv", Value::U32(kv as u32));
    m.set("tokenizer.ggml.model", s("llama"));
    m.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)));
    m.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
    m.set("tokenizer.ggml.scores", Value::Array(Array::F32(scores)));
    m.set("tokenizer.ggml.bos_token_id", Value::U32(1));
    m.set("tokenizer.ggml.eos_token_id", Value::U32(2));
    m.set("tokenizer.ggml.unknown_token_id", Value::U32(0));
    let mut t: HashMap<String, (Vec<u64>, Vec<f32>)> = HashMap::new();
    let mut seed = 1u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    };
    let hd = d / heads;
    let mut mat = |name: &str, rows: usize, cols: usize| {
        (
            name.to_string(),
            (vec![cols as u64, rows as u64], rnd(rows * cols)),
        )
    };
    let mut entries = vec![mat("token_embd.weight", vocab, d)];
    for l in 0..layers {
        entries.push(mat(&format!("blk.{l}.attn_q.weight"), heads * hd, d));
        entries.push(mat(&format!("blk.{l}.attn_k.weight"), kv * hd, d));
        entries.push(mat(&format!("blk.{l}.attn_v.weight"), kv * hd, d));
        entries.push(mat(&format!("blk.{l}.attn_output.weight"), d, heads * hd));
        entries.push(mat(&format!("blk.{l}.ffn_gate.weight"), ff, d));
        entries.push(mat(&format!("blk.{l}.ffn_up.weight"), ff, d));
        entries.push(mat(&format!("blk.{l}.ffn_down.weight"), d, ff));
        for n in ["attn_norm", "ffn_norm"] {
            entries.push((
                format!("blk.{l}.{n}.weight"),
                (vec![d as u64], vec![1.0; d]),
            ));
        }
    }
    entries.push(("output_norm.weight".into(), (vec![d as u64], vec![1.0; d])));
    t.extend(entries);
    mutate(&mut m, &mut t);
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    let bytes: Vec<(String, Vec<u64>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let (dims, v) = &t[*n];
            (
                (*n).clone(),
                dims.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let tensors: Vec<TensorToWrite<'_>> = bytes
        .iter()
        .map(|(name, dims, data)| TensorToWrite {
            name,
            dims,
            ty: GgmlType::F32,
            data,
        })
        .collect();
    let mut out = Vec::new();
    write_gguf(&mut out, &m, &tensors).unwrap();
    out
}

#[test]
fn sentencepiece_vocabularies_encode_with_byte_fallback() {
    let gguf = GgufFile::from_bytes(tiny_llama(|_, _| {})).unwrap();
    let tok = kiln_models::tokenizer::Tokenizer::from_gguf(&gguf.metadata).unwrap();
    // "ab ab" -> "▁ab▁ab": merges ranked by score; BOS added as the llama vocabulary asks.
    assert_eq!(tok.encode("ab ab", true, true).unwrap(), vec![1, 8, 8]);
    // Unknown characters fall back to their UTF-8 bytes.
    let ids = tok.encode("é", false, true).unwrap();
    assert_eq!(ids, vec![3, 10 + 0xC3, 10 + 0xA9]);
    assert_eq!(tok.decode(&ids, false), "é");
    assert_eq!(tok.decode(&[1, 8, 9], false), "ab b");
    // Streaming never splits a character.
    let mut dec = tok.decoder();
    let pieces: Vec<String> = ids.iter().map(|&i| dec.push(i)).collect();
    assert_eq!(pieces, ["", "", "é"]);
}

#[test]
fn a_tiny_model_runs_and_bad_files_are_errors() {
    let device = Device::flex();
    let gguf = GgufFile::from_bytes(tiny_llama(|_, _| {})).unwrap();
    let model = Llama::from_gguf(&gguf, &device).unwrap();
    let mut cache = model.new_cache(8);
    let logits = model
        .forward(
            &[1, 8, 9],
            &[0, 1, 2],
            &[0, 0, 0],
            &mut cache,
            &Output::Logits(vec![2]),
        )
        .unwrap();
    assert_eq!(logits.dims(), [1, model.config.vocab_size]);
    // Token ids outside the vocabulary, a full cache: errors.
    assert!(
        model
            .forward(&[100_000], &[3], &[0], &mut cache, &Output::Logits(vec![0]))
            .is_err()
    );
    assert!(
        model
            .forward(
                &[1; 6],
                &[3, 4, 5, 6, 7, 8],
                &[0; 6],
                &mut cache,
                &Output::Logits(vec![0])
            )
            .is_err()
    );

    let err = |m: Vec<u8>| {
        Llama::from_gguf(&GgufFile::from_bytes(m).unwrap(), &device)
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(tiny_llama(|_, t| {
        t.get_mut("blk.1.attn_q.weight").unwrap().0 = vec![32, 16];
        t.get_mut("blk.1.attn_q.weight").unwrap().1.truncate(512);
    }));
    assert!(
        e.contains("blk.1.attn_q.weight") && e.contains("[32, 32]") && e.contains("[16, 32]"),
        "{e}"
    );
    let e = err(tiny_llama(|_, t| {
        t.remove("blk.0.ffn_down.weight");
    }));
    assert!(e.contains("blk.0.ffn_down.weight"), "{e}");
    let e = err(tiny_llama(|m, _| {
        m.set("llama.attention.head_count_kv", Value::U32(3))
    }));
    assert!(e.contains("KV heads"), "{e}");
    let e = err(tiny_llama(|m, _| {
        m.set("llama.rope.scaling.type", Value::String("yarn".into()))
    }));
    assert!(e.contains("yarn"), "{e}");
    let e = err(tiny_llama(|m, _| {
        m.set("general.architecture", Value::String("bert".into()))
    }));
    assert!(e.contains("bert"), "{e}");
}

#[test]
fn a_separate_output_matrix_is_used_when_present() {
    let device = Device::flex();
    let tied = Llama::from_gguf(
        &GgufFile::from_bytes(tiny_llama(|_, _| {})).unwrap(),
        &device,
    )
    .unwrap();
    assert!(tied.config.tied_embeddings);
    // output.weight = 2 × token_embd.weight: logits double.
    let untied = tiny_llama(|_, t| {
        let (dims, v) = t["token_embd.weight"].clone();
        t.insert(
            "output.weight".into(),
            (dims, v.iter().map(|x| 2.0 * x).collect()),
        );
    });
    let untied = Llama::from_gguf(&GgufFile::from_bytes(untied).unwrap(), &device).unwrap();
    assert!(!untied.config.tied_embeddings);
    let run = |m: &Llama| {
        let mut cache = m.new_cache(4);
        floats(
            m.forward(
                &[1, 8],
                &[0, 1],
                &[0, 0],
                &mut cache,
                &Output::Logits(vec![1]),
            )
            .unwrap(),
        )
        .unwrap()
    };
    for (a, b) in run(&tied).iter().zip(run(&untied)) {
        assert!((2.0 * a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} {b}");
    }
}

#[test]
fn llama3_scaling_keys_configure_rope() {
    let gguf = GgufFile::from_bytes(tiny_llama(|m, _| {
        m.set("llama.rope.scaling.type", Value::String("llama3".into()));
        m.set("llama.rope.scaling.factor", Value::F32(32.0));
        m.set("llama.rope.scaling.low_freq_factor", Value::F32(1.0));
        m.set("llama.rope.scaling.high_freq_factor", Value::F32(4.0));
        m.set(
            "llama.rope.scaling.original_context_length",
            Value::U32(8192),
        );
        m.set("llama.rope.freq_base", Value::F32(500000.0));
    }))
    .unwrap();
    let cfg = kiln_models::llama::LlamaConfig::from_gguf(&gguf).unwrap();
    let rope = cfg.rope();
    assert_eq!(
        rope.freq_factors,
        llama3_freq_factors(500000.0, 8, 32.0, 1.0, 4.0, 8192.0)
    );
    assert!(rope.freq_factors.iter().any(|&f| f > 1.0));
}
