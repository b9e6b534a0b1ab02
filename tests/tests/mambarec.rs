//! MambaRec against the repository's own code (github rkl71/MambaRec, `src/`): a model trained
//! briefly by its trainer on a synthetic dataset in its input format, converted by
//! `scripts/convert/mambarec.py`. Fixture and expected outputs: `tests/data/mambarec/`, from
//! `scripts/fixtures/mambarec.py` (its header says what the data is).
//!
//! Tolerances: the kNN graphs have the same edges, weights within 1e-5 relative; final user and
//! item embeddings within 1e-4 relative (|Δ| ≤ 1e-4·|want| + 1e-6·max|want|); top-20 lists
//! identical; DREAM's sequence form within 2e-5 + 1e-4 relative. On the CPU and on wgpu.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use kiln_models::mambarec::MambaRec;
use kiln_tests::wgpu_device;
use safetensors::SafeTensors;

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mambarec"))
}

fn expected() -> Vec<u8> {
    std::fs::read(dir().join("expected.safetensors")).unwrap()
}

/// A 4-byte little-endian tensor of the expected outputs, each element through `from`.
fn words<T>(st: &SafeTensors, name: &str, from: fn([u8; 4]) -> T) -> Vec<T> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    t.data()
        .chunks_exact(4)
        .map(|b| from([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    words(st, name, f32::from_le_bytes)
}

fn i32s(st: &SafeTensors, name: &str) -> Vec<i32> {
    words(st, name, i32::from_le_bytes)
}

/// The worst |Δ| / (|want| + 1e-2·max|want|), asserted ≤ 1e-4.
fn check_close(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs() + 1e-6 * scale,
            "{what}[{i}]: {g} vs {w}"
        );
        worst = worst.max((g - w).abs() / (w.abs() + 1e-2 * scale));
    }
    worst
}

fn check(device: &Device, what: &str) {
    let bytes = expected();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = MambaRec::load(&dir().join("model"), device).unwrap();

    for modality in ["image", "text"] {
        let g = model.knn_graph(modality).unwrap();
        let rows = i32s(&st, &format!("{modality}_adj_rows"));
        let cols = i32s(&st, &format!("{modality}_adj_cols"));
        let vals = f32s(&st, &format!("{modality}_adj_vals"));
        assert_eq!(g.nnz(), vals.len(), "{what}: {modality} graph edges");
        let mut worst = 0f32;
        for ((&r, &c), &v) in rows.iter().zip(&cols).zip(&vals) {
            let (gc, gv) = g.row(r as usize);
            let at = gc
                .binary_search(&(c as u32))
                .unwrap_or_else(|_| panic!("{what}: {modality} edge {r} → {c} missing"));
            let rel = (gv[at] - v).abs() / v.abs();
            assert!(
                rel <= 1e-6,
                "{what}: {modality} edge {r} → {c}: {} vs {v}",
                gv[at]
            );
            worst = worst.max(rel);
        }
        eprintln!(
            "{what}: {modality} kNN graph: {} edges identical, weights within {worst:.2e} relative",
            vals.len()
        );
    }

    let emb = model.forward().unwrap();
    let u = check_close(&emb.users, &f32s(&st, "user_embeddings"), "user embeddings");
    let i = check_close(&emb.items, &f32s(&st, "item_embeddings"), "item embeddings");
    let want = i32s(&st, "top20");
    let users: Vec<usize> = (0..emb.n_users()).collect();
    let recs = model.recommend(&emb, &users, 20).unwrap();
    for (user, rec) in recs.iter().enumerate() {
        let got: Vec<i32> = rec.iter().map(|r| r.0 as i32).collect();
        assert_eq!(got, want[user * 20..][..20], "{what}: user {user}'s top 20");
        let seen = model.train_items(user);
        assert!(rec.iter().all(|r| seen.binary_search(&r.0).is_err()));
    }

    let x = f32s(&st, "dream_seq_in");
    let want = f32s(&st, "dream_seq_out");
    let dream = model.dream("image").unwrap();
    let y = dream
        .forward(Tensor::from_data(TensorData::new(x, [3, 37, 64]), device))
        .unwrap();
    let got = y.into_data().try_into_vec::<f32>().unwrap();
    let mut seq = 0f32;
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-5 + 1e-4 * w.abs(),
            "{what}: DREAM sequence [{k}]: {g} vs {w}"
        );
        seq = seq.max((g - w).abs());
    }
    eprintln!(
        "{what}: embeddings within {u:.2e} (users), {i:.2e} (items) relative; {} top-20 lists identical; DREAM [3, 37, 64] within {seq:.2e}",
        recs.len()
    );
}

#[test]
fn cpu_matches_the_reference() {
    check(&Device::flex(), "cpu");
}

#[test]
fn wgpu_matches_the_reference() {
    let Some((info, device)) = wgpu_device() else {
        return;
    };
    check(&device, &format!("wgpu {}", info.name));
}

/// A copy of the fixture model with `edit` applied to one of its files.
fn broken(name: &str, file: &str, edit: impl Fn(&[u8]) -> Vec<u8>) -> PathBuf {
    let out = std::env::temp_dir().join(format!("kiln-mambarec-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors", "interactions.tsv"] {
        let bytes = std::fs::read(dir().join("model").join(f)).unwrap();
        let bytes = if f == file { edit(&bytes) } else { bytes };
        std::fs::write(out.join(f), bytes).unwrap();
    }
    out
}

#[test]
fn bad_model_directories_are_errors() {
    let text =
        |f: fn(&str) -> String| move |b: &[u8]| f(std::str::from_utf8(b).unwrap()).into_bytes();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            broken(
                "range",
                "interactions.tsv",
                text(|s| format!("{s}999999\t1\t0\n")),
            ),
            "userID 999999 is out of range",
        ),
        (
            broken(
                "column",
                "interactions.tsv",
                text(|s| s.replacen("x_label", "label", 1)),
            ),
            "no x_label column",
        ),
        (
            broken(
                "number",
                "interactions.tsv",
                text(|s| format!("{s}1\tseven\t0\n")),
            ),
            "itemID \"seven\" is not a non-negative integer",
        ),
        (
            broken(
                "config",
                "config.json",
                text(|s| s.replace("\"knn_k\": 10", "\"knn_k\": 0")),
            ),
            "must be positive",
        ),
        (
            broken(
                "layers",
                "config.json",
                text(|s| s.replace("\"n_ui_layers\": 4", "\"n_ui_layers\": 1000000000")),
            ),
            "at most 64 propagation layers",
        ),
        (
            // A config claiming a billion users is checked against the tables before anything
            // is sized by it.
            broken(
                "users",
                "config.json",
                text(|s| s.replace("\"n_users\": 300", "\"n_users\": 1000000000")),
            ),
            "user_embedding.weight: expected shape [1000000000, 64]",
        ),
        (
            broken("weights", "model.safetensors", |b| {
                b[..b.len() / 2].to_vec()
            }),
            "model.safetensors",
        ),
    ];
    for (path, want) in cases {
        let err = MambaRec::load(&path, &Device::flex()).err().expect(want);
        assert!(err.to_string().contains(want), "{want}: {err}");
        std::fs::remove_dir_all(path).unwrap();
    }
    let model = MambaRec::load(&dir().join("model"), &Device::flex()).unwrap();
    let emb = model.forward().unwrap();
    let err = model.recommend(&emb, &[emb.n_users()], 5).unwrap_err();
    assert!(err.to_string().contains("the model has users"), "{err}");
}
