//! The BERT encoder against sentence-transformers on the all-MiniLM-L6-v2 fixture: token ids,
//! embeddings on the CPU and on wgpu (cosine ≥ 0.9999 on all 204 committed texts), batch
//! independence and concurrent use. Expected values: scripts/fixtures/sentence-transformers-minilm.py.

use std::sync::Arc;

use burn::tensor::Device;
use kiln_runtime::embed::{Embedder, Embeddings};
use kiln_tests::{fixture, wgpu_device};

struct Expected {
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    vectors: Vec<f32>,
    dim: usize,
}

fn expected() -> Expected {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/embed");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/minilm_st.json")).unwrap())
            .unwrap();
    let texts: Vec<String> = json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let token_ids = json["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let bytes = std::fs::read(format!("{dir}/minilm_st.f32")).unwrap();
    let vectors: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let dim = json["dim"].as_u64().unwrap() as usize;
    assert_eq!(vectors.len(), texts.len() * dim);
    Expected {
        texts,
        token_ids,
        vectors,
        dim,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Every text's cosine with sentence-transformers ≥ 0.9999; returns the smallest.
fn assert_matches(got: &Embeddings, want: &Expected, what: &str) -> f64 {
    assert_eq!(got.dim(), want.dim);
    assert_eq!(got.rows(), want.texts.len());
    let mut worst = (1.0f64, 0usize);
    for i in 0..got.rows() {
        let c = cosine(got.row(i), &want.vectors[i * want.dim..(i + 1) * want.dim]);
        if c < worst.0 {
            worst = (c, i);
        }
    }
    eprintln!(
        "{what}: {} texts, smallest cosine {:.9} (text {}: {:?})",
        got.rows(),
        worst.0,
        worst.1,
        want.texts[worst.1].chars().take(40).collect::<String>()
    );
    assert!(
        worst.0 >= 0.9999,
        "{what}: cosine {} on text {}",
        worst.0,
        worst.1
    );
    // Normalize module: unit vectors.
    for i in 0..got.rows() {
        let n: f32 = got.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "{what}: text {i} has norm {n}");
    }
    worst.0
}

fn refs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

#[test]
fn tokenizer_matches_sentence_transformers() {
    let Some(dir) = fixture("minilm") else { return };
    let want = expected();
    let embedder = Embedder::load(&dir, &Device::flex()).unwrap();
    let mut truncated = 0;
    for (text, ids) in want.texts.iter().zip(&want.token_ids) {
        let got = embedder.tokenize(text).unwrap();
        assert_eq!(&got.ids, ids, "token ids of {text:?}");
        truncated += usize::from(ids.len() == embedder.sentence_model().unwrap().max_seq_length());
    }
    assert!(
        truncated >= 20,
        "the set must hold texts past max_seq_length"
    );
}

#[test]
fn cpu_embeddings_match_sentence_transformers() {
    let Some(dir) = fixture("minilm") else { return };
    let want = expected();
    let embedder = Embedder::load(&dir, &Device::flex()).unwrap();
    assert_eq!((embedder.dim(), embedder.normalized()), (384, true));
    let t = std::time::Instant::now();
    let got = embedder.embed(&refs(&want.texts)).unwrap();
    eprintln!("cpu: {:.2} s", t.elapsed().as_secs_f64());
    assert_matches(&got, &want, "cpu");
}

/// A text's vector is the same, bit for bit, alone, in a batch of others, and padded in a batch
/// with a much longer text.
#[test]
fn batch_contents_do_not_change_a_result() {
    let Some(dir) = fixture("minilm") else { return };
    let want = expected();
    let embedder = Embedder::load(&dir, &Device::flex()).unwrap();
    let all = embedder.embed(&refs(&want.texts)).unwrap();
    let longest = want
        .texts
        .iter()
        .max_by_key(|t| embedder.tokenize(t).unwrap().len())
        .unwrap()
        .as_str();
    let mut worst = 0f32;
    for i in [0usize, 3, 5, 17, 40, 120, 180, 200] {
        let text = want.texts[i].as_str();
        let alone = embedder.embed(&[text]).unwrap();
        let padded = embedder.embed(&[longest, text, "x"]).unwrap();
        for (a, b) in [(alone.row(0), all.row(i)), (alone.row(0), padded.row(1))] {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            worst = worst.max(d);
        }
    }
    eprintln!("largest difference alone / in batch / padded: {worst:e}");
    // Kiln's CPU kernels sum in an order fixed per row: not just close, identical.
    assert_eq!(worst, 0.0, "batch contents changed a result by {worst}");
}

#[test]
fn concurrent_use_gives_the_single_threaded_vectors() {
    let Some(dir) = fixture("minilm") else { return };
    let want = expected();
    let embedder = Arc::new(Embedder::load(&dir, &Device::flex()).unwrap());
    let texts: Vec<String> = want.texts[..64].to_vec();
    let single = embedder.embed(&refs(&texts)).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let embedder = Arc::clone(&embedder);
            let texts = texts.clone();
            std::thread::spawn(move || {
                // Each thread takes the texts in its own order and chunking.
                let mut order: Vec<usize> = (0..texts.len()).collect();
                order.rotate_left(k * 13);
                let mut out = vec![Vec::new(); texts.len()];
                for chunk in order.chunks(5 + k * 7) {
                    let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
                    let e = embedder.embed(&batch).unwrap();
                    for (r, &i) in chunk.iter().enumerate() {
                        out[i] = e.row(r).to_vec();
                    }
                }
                out
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        for (i, v) in out.iter().enumerate() {
            let d = v
                .iter()
                .zip(single.row(i))
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert_eq!(d, 0.0, "text {i}: threads changed the vector by {d}");
        }
    }
}

#[test]
fn wgpu_embeddings_match_sentence_transformers() {
    let Some(dir) = fixture("minilm") else { return };
    let Some((info, device)) = wgpu_device() else {
        return;
    };
    let want = expected();
    let embedder = Embedder::load(&dir, &device).unwrap();
    let t = std::time::Instant::now();
    let got = embedder.embed(&refs(&want.texts)).unwrap();
    eprintln!("wgpu ({}): {:.2} s", info.name, t.elapsed().as_secs_f64());
    assert_matches(&got, &want, &format!("wgpu {}", info.name));
    // The wgpu path (Kiln's CubeCL encoder kernels) against the CPU path (Kiln's CPU kernels).
    let cpu = Embedder::load(&dir, &Device::flex())
        .unwrap()
        .embed(&refs(&want.texts))
        .unwrap();
    let worst = (0..got.rows())
        .map(|i| cosine(got.row(i), cpu.row(i)))
        .fold(1.0f64, f64::min);
    eprintln!("wgpu vs CPU: lowest cosine {worst:.9}");
    assert!(worst >= 0.9999, "wgpu vs CPU cosine {worst}");
    // Batch contents: the tiled and mat-vec kernels sum in other orders, so close, not equal.
    for i in [0usize, 17, 200] {
        let alone = embedder.embed(&[want.texts[i].as_str()]).unwrap();
        let d = alone
            .row(0)
            .iter()
            .zip(got.row(i))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "wgpu: text {i} alone differs by {d}");
    }
}

/// A temporary model directory: the fixture's files linked, some replaced.
fn variant_dir(
    fixture: &std::path::Path,
    name: &str,
    replace: &[(&str, &[u8])],
) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-st-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name();
        let file = file.to_str().unwrap();
        if entry.path().is_file() && !replace.iter().any(|(r, _)| *r == file) {
            std::os::unix::fs::symlink(entry.path(), dir.join(file)).unwrap();
        }
    }
    for (file, bytes) in replace {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    dir
}

/// CLS, max, mean-sqrt-len pooling, their concatenation, and no Normalize, against
/// sentence-transformers with the same pipeline configs.
#[test]
fn every_pooling_mode_matches_sentence_transformers() {
    let Some(fixture) = fixture("minilm") else {
        return;
    };
    let want = expected();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/embed/minilm_st.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let subset: Vec<&str> = json["variant_texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| want.texts[i.as_u64().unwrap() as usize].as_str())
        .collect();
    for (name, v) in json["variants"].as_object().unwrap() {
        let modes: Vec<&str> = v["modes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        let normalize = v["normalize"].as_bool().unwrap();
        let mut pooling = serde_json::json!({"word_embedding_dimension": 384});
        for m in [
            "cls_token",
            "mean_tokens",
            "max_tokens",
            "mean_sqrt_len_tokens",
        ] {
            pooling[format!("pooling_mode_{m}")] = modes.contains(&m).into();
        }
        let mut modules = vec![
            serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if normalize {
            modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        }
        let pooling = pooling.to_string();
        let modules = serde_json::Value::from(modules).to_string();
        let dir = variant_dir(
            &fixture,
            name,
            &[
                ("1_Pooling/config.json", pooling.as_bytes()),
                ("modules.json", modules.as_bytes()),
            ],
        );
        let embedder = Embedder::load(&dir, &Device::flex()).unwrap();
        let dim = v["dim"].as_u64().unwrap() as usize;
        assert_eq!(
            (embedder.dim(), embedder.normalized()),
            (dim, normalize),
            "{name}"
        );
        let got = embedder.embed(&subset).unwrap();
        let bytes = std::fs::read(format!(
            "{}/data/embed/minilm_st_{name}.f32",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let exp: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let mut worst = 0f64;
        for i in 0..subset.len() {
            let (a, b) = (got.row(i), &exp[i * dim..(i + 1) * dim]);
            // Direction and length: unnormalized vectors must match in scale too.
            let diff: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
            worst = worst.max(diff / norm);
            assert!(cosine(a, b) >= 0.9999, "{name}: text {i}");
        }
        eprintln!("{name}: largest relative difference {worst:e}");
        assert!(worst < 1e-5, "{name}: relative difference {worst}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Broken model directories are errors that say what is wrong, never panics.
#[test]
fn bad_model_directories_are_errors() {
    let Some(fixture) = fixture("minilm") else {
        return;
    };
    let load = |dir: &std::path::Path| match Embedder::load(dir, &Device::flex()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    let err = load(std::path::Path::new("/nonexistent/model"));
    assert!(err.contains("not a model directory"), "{err}");

    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("config.json", "{ not json".into(), "config.json"),
        (
            "config.json",
            config.replace("\"hidden_size\": 384", "\"hidden_size\": 0"),
            "implausible",
        ),
        (
            "config.json",
            config.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"),
            "multiple",
        ),
        (
            "config.json",
            config.replace("\"hidden_size\": 384", "\"hidden_size\": 768"),
            "expected shape",
        ),
        (
            "config.json",
            config.replace("\"hidden_act\": \"gelu\"", "\"hidden_act\": \"swish\""),
            "hidden_act",
        ),
        (
            "config.json",
            config.replace("\"model_type\": \"bert\"", "\"model_type\": \"roberta\""),
            "roberta",
        ),
        ("model.safetensors", "garbage".into(), "model.safetensors"),
        ("tokenizer.json", "{}".into(), "tokenizer"),
        (
            "sentence_bert_config.json",
            "{\"max_seq_length\": -3}".into(),
            "max_seq_length",
        ),
        (
            "modules.json",
            "[{\"type\": \"sentence_transformers.models.Dense\", \"path\": \"2_Dense\"}]".into(),
            "Dense",
        ),
    ];
    for (i, (file, bytes, expect)) in cases.iter().enumerate() {
        let dir = variant_dir(&fixture, &format!("bad{i}"), &[(file, bytes.as_bytes())]);
        // The pooling config lives in a subdirectory the helper does not link.
        std::os::unix::fs::symlink(
            fixture.join("1_Pooling/config.json"),
            dir.join("1_Pooling/config.json"),
        )
        .unwrap();
        let err = load(&dir);
        assert!(err.contains(expect), "{file}: {err}");
        std::fs::remove_dir_all(&dir).ok();
    }
    // A truncated weight file names the problem too.
    let weights = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let dir = variant_dir(
        &fixture,
        "short",
        &[("model.safetensors", &weights[..weights.len() / 2])],
    );
    std::os::unix::fs::symlink(
        fixture.join("1_Pooling/config.json"),
        dir.join("1_Pooling/config.json"),
    )
    .unwrap();
    let err = load(&dir);
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
