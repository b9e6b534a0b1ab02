//! `kiln embed` as a batch job meets real files: bad records, every input format, both output
//! formats, refusing to overwrite, `--strict`, and a `kill -9` in the middle followed by a restart.
//! Runs on the all-MiniLM-L6-v2 fixture.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use burn::tensor::Device;
use kiln_runtime::embed::Embedder;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn model() -> Option<PathBuf> {
    match kiln_runtime::models_dir::fixture_path("minilm") {
        Some(p) if p.exists() => Some(p),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") => {
            panic!("fixture missing in CI (run scripts/fetch-models.sh)")
        }
        _ => {
            eprintln!("SKIPPED: run scripts/fetch-models.sh");
            None
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-embed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Product-like texts, some long, some non-Latin.
fn texts(n: usize) -> Vec<String> {
    let things = [
        "running shoes",
        "Regenjacke",
        "écouteurs sans fil",
        "リュックサック",
        "台灯",
    ];
    let colors = ["black", "navy", "rot", "白色"];
    (0..n)
        .map(|i| {
            let mut t = format!(
                "{} {} size {} #{i}",
                colors[i % colors.len()],
                things[i % things.len()],
                36 + i % 12
            );
            if i % 7 == 0 {
                t.push_str(&" Machine washable, 2-year warranty, free returns.".repeat(i % 5 + 1));
            }
            t
        })
        .collect()
}

fn write_jsonl(path: &Path, rows: &[(String, String)], extra: &[u8]) {
    let mut out = Vec::new();
    for (id, text) in rows {
        out.extend(serde_json::to_vec(&serde_json::json!({"id": id, "text": text})).unwrap());
        out.push(b'\n');
    }
    out.extend_from_slice(extra);
    std::fs::write(path, out).unwrap();
}

fn rows(n: usize) -> Vec<(String, String)> {
    texts(n)
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("sku-{i:05}"), t))
        .collect()
}

/// A Parquet output: ids, vectors, schema metadata (sorted).
type Table = (Vec<String>, Vec<Vec<f32>>, Vec<(String, String)>);

fn read_parquet(path: &Path) -> Table {
    let file = std::fs::File::open(path).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let mut meta: Vec<(String, String)> = builder
        .schema()
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort();
    let (mut ids, mut vecs) = (Vec::new(), Vec::new());
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let id = batch.column_by_name("id").unwrap().as_string::<i32>();
        let emb = batch
            .column_by_name("embedding")
            .unwrap()
            .as_fixed_size_list();
        for r in 0..batch.num_rows() {
            ids.push(id.value(r).to_string());
            let v = emb.value(r);
            vecs.push(v.as_primitive::<Float32Type>().values().to_vec());
        }
    }
    (ids, vecs, meta)
}

/// The library's vectors for `texts` (what every output must hold, bit for bit).
fn library(model: &Path, texts: &[String]) -> Vec<Vec<f32>> {
    let e = Embedder::load(model, &Device::flex()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let out = e.embed(&refs).unwrap();
    (0..out.rows()).map(|i| out.row(i).to_vec()).collect()
}

#[test]
fn bad_records_go_to_the_errors_file_and_the_job_finishes() {
    let Some(m) = model() else { return };
    let dir = tmp("bad");
    let good = rows(40);
    let input = dir.join("in.jsonl");
    let extra = b"{\"id\": \"no-text\"}\n\
{\"text\": \"no id\"}\n\
{\"id\": \"sku-00003\", \"text\": \"a duplicate id\"}\n\
{\"id\": \"blank\", \"text\": \"   \"}\n\
this is not json\n\
\n\
{\"id\": \"latin1\", \"text\": \"caf\xe9\"}\n\
{\"id\": 77, \"text\": \"numeric ids are fine\"}\n";
    write_jsonl(&input, &good, extra);
    let output = dir.join("out.parquet");
    let (i, o, m_) = (
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        m.to_str().unwrap(),
    );
    let out = kiln(&["embed", "-m", m_, "-i", i, "-o", o]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("47 rows: 41 embedded, 6 failed"), "{err}");
    // Not a terminal: plain progress lines with a rate.
    assert!(err.contains("rows/s"), "{err}");
    assert!(err.contains("padding"), "{err}");

    let errors = std::fs::read_to_string(dir.join("out.parquet.errors.jsonl")).unwrap();
    let errors: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (41, "missing field \"text\""),
            (42, "missing field \"id\""),
            (43, "duplicate id (the first occurrence is kept)"),
            (44, "field \"text\" is empty"),
            (45, "not a JSON object: expected ident at line 1 column 2"),
            (47, "not valid UTF-8"),
        ]
    );

    let (ids, vecs, meta) = read_parquet(&output);
    let mut want_ids: Vec<String> = good.iter().map(|(id, _)| id.clone()).collect();
    want_ids.push("77".into());
    assert_eq!(ids, want_ids, "input order, each id once");
    let mut want_texts: Vec<String> = good.iter().map(|(_, t)| t.clone()).collect();
    want_texts.push("numeric ids are fine".into());
    assert_eq!(vecs, library(&m, &want_texts), "the library's vectors");
    assert_eq!(
        meta,
        vec![
            ("kiln.dim".into(), "384".into()),
            ("kiln.model".into(), "all-minilm-l6-v2".into()),
            ("kiln.normalized".into(), "true".into()),
            ("kiln.pooling".into(), "mean".into()),
        ]
    );
    assert!(!dir.join("out.parquet.partial").exists(), "state removed");

    // An existing output is kept unless --overwrite; --strict fails on bad records.
    let before = std::fs::read(&output).unwrap();
    let out = kiln(&["embed", "-m", m_, "-i", i, "-o", o]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--overwrite"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), before);
    let out = kiln(&[
        "embed",
        "-m",
        m_,
        "-i",
        i,
        "-o",
        o,
        "--overwrite",
        "--strict",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("6 records failed (--strict)"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn csv_parquet_and_jsonl_inputs_and_npy_output_agree() {
    let Some(m) = model() else { return };
    let dir = tmp("formats");
    let good = rows(30);
    let m_ = m.to_str().unwrap();

    let jsonl = dir.join("in.jsonl");
    write_jsonl(&jsonl, &good, b"");
    let mut csv = b"sku,title,price\n".to_vec();
    for (id, t) in &good {
        csv.extend(format!("{id},\"{}\",9.99\n", t.replace('"', "\"\"")).as_bytes());
    }
    csv.extend(b"bad-bytes,\"caf\xe9\",1\n");
    std::fs::write(dir.join("in.csv"), &csv).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(good.iter().map(|r| &r.0))),
            Arc::new(StringArray::from_iter_values(good.iter().map(|r| &r.1))),
        ],
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(dir.join("in.parquet")).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let run = |input: &str, output: &str, fields: &[&str]| {
        let (i, o) = (dir.join(input), dir.join(output));
        let mut args = vec![
            "embed",
            "-m",
            m_,
            "-i",
            i.to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ];
        args.extend_from_slice(fields);
        let out = kiln(&args);
        assert!(out.status.success(), "{input}: {}", stderr(&out));
        stderr(&out)
    };
    run("in.jsonl", "a.parquet", &[]);
    let err = run(
        "in.csv",
        "b.parquet",
        &["--id-field", "sku", "--text-field", "title"],
    );
    assert!(err.contains("1 failed"), "{err}");
    let errors = std::fs::read_to_string(dir.join("b.parquet.errors.jsonl")).unwrap();
    assert!(
        errors.contains("\"line\":32") && errors.contains("not valid UTF-8"),
        "{errors}"
    );
    run(
        "in.parquet",
        "c.parquet",
        &["--id-field", "sku", "--text-field", "title"],
    );
    run("in.jsonl", "d.npy", &[]);

    let (ids, vecs, _) = read_parquet(&dir.join("a.parquet"));
    assert_eq!(ids.len(), good.len());
    for other in ["b.parquet", "c.parquet"] {
        let (ids2, vecs2, _) = read_parquet(&dir.join(other));
        assert_eq!((&ids2, &vecs2), (&ids, &vecs), "{other}");
    }
    // .npy: the NumPy 1.0 header, then rows × 384 little-endian f32; ids beside it.
    let npy = std::fs::read(dir.join("d.npy")).unwrap();
    assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (30, 384)"),
        "{header}"
    );
    assert_eq!((10 + hlen) % 64, 0);
    let flat: Vec<f32> = npy[10 + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(flat, vecs.concat());
    let id_lines: Vec<String> = std::fs::read_to_string(dir.join("d.ids.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(id_lines, ids);
    std::fs::remove_dir_all(&dir).ok();
}

/// `kill -9` in the middle, then the same command again: it resumes from the last committed
/// chunk and the output holds every input id exactly once, with the vectors of a clean run.
#[test]
fn a_killed_job_resumes_where_it_stopped() {
    let Some(m) = model() else { return };
    let dir = tmp("kill");
    let good = rows(1500);
    let input = dir.join("in.jsonl");
    write_jsonl(&input, &good, b"");
    let output = dir.join("out.parquet");
    let partial = dir.join("out.parquet.partial");
    let args = [
        "embed",
        "-m",
        m.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--chunk-rows",
        "100",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !partial.join("chunk-000002.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no chunk committed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!output.exists(), "no output from a killed run");
    let committed = std::fs::read_dir(&partial)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count()
        - 1; // job.json
    assert!((3..15).contains(&committed), "{committed} chunks committed");

    // Other arguments do not touch the unfinished run.
    let mut other = args.to_vec();
    other.extend(["--text-field", "title"]);
    let out = kiln(&other);
    assert!(stderr(&out).contains("unfinished run"), "{}", stderr(&out));

    let out = kiln(&args);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming"), "{err}");
    let (ids, vecs, _) = read_parquet(&output);
    let want: Vec<String> = good.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, want, "every id once, in input order");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    // Spot-check vectors on both sides of the kill against the library.
    let picks = [0usize, 150, 420, 1499];
    let texts: Vec<String> = picks.iter().map(|&i| good[i].1.clone()).collect();
    let want = library(&m, &texts);
    for (k, &i) in picks.iter().enumerate() {
        assert_eq!(vecs[i], want[k], "row {i}");
    }
    assert!(!partial.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_are_errors_before_any_work() {
    let Some(m) = model() else { return };
    let dir = tmp("args");
    let input = dir.join("in.jsonl");
    write_jsonl(&input, &rows(3), b"");
    let (i, m_) = (input.to_str().unwrap(), m.to_str().unwrap());
    let x = dir.join("x.parquet");
    let x = x.to_str().unwrap();
    let out = kiln(&["embed", "-m", m_, "-i", i, "-o", "/tmp/x.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown output format"),
        "{}",
        stderr(&out)
    );
    let out = kiln(&["embed", "-m", m_, "-i", "/nonexistent.jsonl", "-o", x]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    let out = kiln(&["embed", "-m", "/nonexistent", "-i", i, "-o", x]);
    assert_eq!(out.status.code(), Some(2));
    let out = kiln(&["embed", "-m", m_, "-i", i, "-o", x, "--device", "cuda:7"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).ok();
}
