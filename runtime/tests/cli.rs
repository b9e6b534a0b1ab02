//! The `kiln` binary as a user meets it: exit codes, one-line errors, JSON that parses.

use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

#[test]
fn devices_lists_the_cpu_and_exits_zero() {
    let out = kiln(&["devices"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("cpu "), "{text}");
    assert!(text.contains("SIMD:"), "{text}");
}

#[test]
fn devices_json_parses_and_names_every_device() {
    let out = kiln(&["devices", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let devices = v["devices"].as_array().expect("devices array");
    assert_eq!(devices[0]["id"], "cpu");
    assert!(devices[0]["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    for d in devices {
        assert!(d["name"].is_string() && d["api"].is_string(), "{d}");
    }
    assert!(v["notes"].is_array());
}

#[test]
fn usage_errors_exit_2() {
    let out = kiln(&["devices", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = kiln(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn inspect_of_a_missing_file_is_one_line_and_exit_1() {
    let out = kiln(&["inspect", "/nonexistent/model.gguf"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("kiln: error: /nonexistent/model.gguf"),
        "{err}"
    );
}

#[test]
fn inspect_of_a_non_gguf_file_names_the_problem() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not.gguf");
    std::fs::write(&path, b"PK\x03\x04 definitely a zip").unwrap();
    let out = kiln(&["inspect", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not a GGUF file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A machine whose GPU driver is missing or broken: `kiln devices` still lists the CPU, says
/// why there is no GPU, and exits 0.
#[cfg(target_os = "linux")]
#[test]
fn devices_without_a_driver_says_so_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("devices")
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .env("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent/egl.json")
        .output()
        .expect("run kiln");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("cpu "), "{text}");
    assert!(!text.contains("wgpu:0"), "{text}");
    assert!(text.contains("wgpu: no adapter found"), "{text}");
}

mod quantize {
    use super::kiln;
    use kiln_quant::GgmlType;
    use kiln_quant::blocks::quantize_to_vec;
    use kiln_quant::gguf::{GgufFile, Metadata, TensorToWrite, Value, write_gguf_file};
    use std::path::{Path, PathBuf};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-q-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tiny Llama-like model: tied embeddings, a norm, an FFN weight, all F32 (or `ffn` as
    /// Q8_0).
    fn write_model(path: &Path, ffn_q8: bool) {
        let f = |n: usize, s: f32| -> Vec<u8> {
            (0..n)
                .flat_map(|i| ((i as f32 * s).sin()).to_le_bytes())
                .collect()
        };
        let (emb, norm) = (f(64 * 256, 0.37), f(256, 0.11));
        let ffn_f32: Vec<f32> = (0..32 * 256).map(|i| (i as f32 * 0.05).cos()).collect();
        let (ffn, ffn_ty) = if ffn_q8 {
            (
                quantize_to_vec(GgmlType::Q8_0, &ffn_f32).unwrap(),
                GgmlType::Q8_0,
            )
        } else {
            (
                ffn_f32.iter().flat_map(|v| v.to_le_bytes()).collect(),
                GgmlType::F32,
            )
        };
        let mut md = Metadata::default();
        md.insert("general.architecture".into(), Value::String("llama".into()))
            .unwrap();
        let tensors = [
            TensorToWrite {
                name: "token_embd.weight",
                dims: &[256, 64],
                ty: GgmlType::F32,
                data: &emb,
            },
            TensorToWrite {
                name: "blk.0.attn_norm.weight",
                dims: &[256],
                ty: GgmlType::F32,
                data: &norm,
            },
            TensorToWrite {
                name: "blk.0.ffn_down.weight",
                dims: &[256, 32],
                ty: ffn_ty,
                data: &ffn,
            },
        ];
        write_gguf_file(path, &md, &tensors).unwrap();
    }

    /// `kiln quantize IN OUT --type TYPE EXTRA...`
    fn quantize(input: &Path, output: &Path, ty: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "quantize",
            input.to_str().unwrap(),
            output.to_str().unwrap(),
        ];
        args.extend(["--type", ty]);
        args.extend(extra);
        kiln(&args)
    }

    fn types(path: &Path) -> Vec<(String, GgmlType)> {
        GgufFile::open(path)
            .unwrap()
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.ty))
            .collect()
    }

    #[test]
    fn quantize_follows_llama_cpp_conventions_and_reports_per_tensor() {
        let d = dir("conv");
        let (input, output) = (d.join("in.gguf"), d.join("out.gguf"));
        write_model(&input, false);
        let out = quantize(&input, &output, "q4_k", &[]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("blk.0.ffn_down.weight") && text.contains("rmse"),
            "{text}"
        );
        assert_eq!(
            types(&output),
            vec![
                ("token_embd.weight".into(), GgmlType::Q6_K), // tied output projection
                ("blk.0.attn_norm.weight".into(), GgmlType::F32), // 1-D: kept
                ("blk.0.ffn_down.weight".into(), GgmlType::Q4_K),
            ]
        );
        let md = GgufFile::open(&output).unwrap().metadata;
        assert_eq!(md.u32("general.file_type").unwrap(), 14);
        assert_eq!(md.u32("general.quantization_version").unwrap(), 2);

        // --pure: the output projection too.
        let pure = d.join("pure.gguf");
        let out = quantize(&input, &pure, "q4_k", &["--pure"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(types(&pure)[0].1, GgmlType::Q4_K);

        // An existing output is not replaced without --overwrite.
        let out = quantize(&input, &output, "q8_0", &[]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
        assert_eq!(types(&output)[2].1, GgmlType::Q4_K, "untouched");
        let out = quantize(&input, &output, "q8_0", &["--overwrite"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(types(&output)[2].1, GgmlType::Q8_0);
        assert!(!d.join(".out.gguf.partial").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn requantizing_needs_allow_requantize() {
        let d = dir("req");
        let (input, output) = (d.join("in.gguf"), d.join("out.gguf"));
        write_model(&input, true);
        let out = quantize(&input, &output, "q4_0", &[]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("blk.0.ffn_down.weight") && err.contains("--allow-requantize"),
            "{err}"
        );
        assert!(!output.exists());
        let out = quantize(&input, &output, "q4_0", &["--allow-requantize"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(types(&output)[2].1, GgmlType::Q4_0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_quantize_requests_are_usage_errors() {
        let d = dir("bad");
        let input = d.join("in.gguf");
        write_model(&input, false);
        let i = input.to_str().unwrap();
        for args in [
            vec!["quantize", i, "/tmp/x.gguf", "--type", "q9_9"],
            vec!["quantize", i, "/tmp/x.gguf", "--type", "iq2_xxs"],
            vec!["quantize", i, i, "--type", "q8_0", "--overwrite"],
        ] {
            let out = kiln(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
        // A missing flag: clap's usage error (status 2, names the flag).
        let out = kiln(&["quantize", i, "/tmp/x.gguf"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--type"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// `kiln generate`, `classify` and `bench llm` on the SmolLM2 fixture (skipped locally when it is
/// missing; CI fetches it first).
mod llm {
    use super::kiln;

    fn model() -> Option<String> {
        let p = kiln_runtime::models_dir::fixture_path("smollm2-q4_1");
        match p {
            Some(p) if p.exists() => Some(p.display().to_string()),
            // As kiln_tests::in_ci: CI set to anything but empty, "false" or "0".
            _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") => {
                panic!("fixture missing in CI (run scripts/fetch-models.sh)")
            }
            _ => {
                eprintln!("SKIPPED: run scripts/fetch-models.sh");
                None
            }
        }
    }

    fn text(out: &std::process::Output) -> (String, String) {
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn generate_streams_greedy_text() {
        let Some(m) = model() else { return };
        let out = kiln(&[
            "generate",
            "-m",
            &m,
            "-p",
            "The capital of France is",
            "-n",
            "3",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        // " Paris", ".", "\n" (llama.cpp's greedy tokens), then the closing newline.
        assert_eq!(stdout, " Paris.\n\n");
        assert!(stderr.contains("stop: Length"), "{stderr}");
    }

    #[test]
    fn classify_writes_jsonl_and_accuracy() {
        let Some(m) = model() else { return };
        let dir = std::env::temp_dir().join(format!("kiln-cli-classify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let labels = dir.join("labels.txt");
        std::fs::write(
            &labels,
            "order_status\nreturn_refund\n# a comment\n\nproduct_search\n",
        )
        .unwrap();
        let input = dir.join("q.jsonl");
        std::fs::write(&input, "{\"id\": 7, \"query\": \"where is my parcel\", \"label\": \"order_status\"}\n\n{\"query\": \"red shoes size 40\"}\n").unwrap();
        let out = kiln(&[
            "classify",
            "-m",
            &m,
            "--labels",
            labels.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "I want my money back",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let rows: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1]["id"], "7");
        for r in &rows {
            let p = r["probabilities"].as_object().unwrap();
            assert_eq!(p.len(), 3);
            let sum: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
            assert!((sum - 1.0).abs() < 1e-4);
            assert!(p.contains_key(r["label"].as_str().unwrap()));
        }
        assert!(
            stderr.contains("accuracy") && stderr.contains("p95"),
            "{stderr}"
        );
        // Bad input is an error naming the file and line, exit status 2.
        std::fs::write(&input, "{\"query\": \"ok\"}\nnot json\n").unwrap();
        let out = kiln(&[
            "classify",
            "-m",
            &m,
            "--labels",
            labels.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("q.jsonl:2"), "{stderr}");
        std::fs::write(&labels, "only_one\n").unwrap();
        let out = kiln(&[
            "classify",
            "-m",
            &m,
            "--labels",
            labels.to_str().unwrap(),
            "x",
        ]);
        assert_eq!(out.status.code(), Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bench_llm_prints_llama_bench_rows() {
        let Some(m) = model() else { return };
        let out = kiln(&[
            "bench", "llm", "-m", &m, "-p", "8", "-n", "4", "-r", "2", "--json",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let tests: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["test"].as_str().unwrap())
            .collect();
        assert_eq!(tests, ["pp8", "tg4"]);
        for r in rows.as_array().unwrap() {
            assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0);
            assert_eq!(r["samples_seconds"].as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn bad_llm_requests_are_usage_errors() {
        let Some(m) = model() else { return };
        for args in [
            vec!["generate", "-m", "/nonexistent.gguf", "-p", "hi"],
            vec!["generate", "-m", &m, "-p", "hi", "--top-p", "2"],
            vec!["generate", "-m", &m, "-p", ""],
            vec!["bench", "llm", "-m", &m, "-r", "0"],
        ] {
            let out = kiln(&args);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            // One error line from Kiln, last. (Probing GPUs for `--device auto` may let a
            // graphics driver print first, e.g. Mesa without XDG_RUNTIME_DIR.)
            let kiln_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("kiln")).collect();
            assert_eq!(kiln_lines.len(), 1, "{stderr}");
            assert!(
                stderr
                    .trim_end()
                    .lines()
                    .last()
                    .unwrap()
                    .starts_with("kiln: error: "),
                "{stderr}"
            );
        }
        // A device that does not exist: exit 1, named.
        let out = kiln(&["generate", "-m", &m, "-p", "hi", "--device", "tpu:0"]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("tpu:0"), "{stderr}");
        // A file that is not GGUF: exit 1 with the reason.
        let out = kiln(&["generate", "-m", env!("CARGO_MANIFEST_DIR"), "-p", "hi"]);
        assert_eq!(out.status.code(), Some(1));
    }

    /// `kiln plan`: the device, format and kernels with their reasons, as text and JSON; the
    /// overrides; bad requests. (Its own cache: no `kiln tradeoffs` recommendation applies.)
    #[test]
    fn plan_prints_the_choices_and_takes_overrides() {
        let Some(m) = model() else { return };
        let cache = std::env::temp_dir().join(format!("kiln-plan-cache-{}", std::process::id()));
        let kiln = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args(args)
                .env("KILN_CACHE", &cache)
                .output()
                .expect("run kiln")
        };
        let out = kiln(&["plan", "-m", &m, "--device", "cpu"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        for want in [
            "device:  cpu",
            "format:  q4_1",
            "kernels: CPU",
            "why:",
            "not q4_0",
        ] {
            assert!(stdout.contains(want), "{want:?} in {stdout}");
        }
        let out = kiln(&[
            "plan", "-m", &m, "--device", "cpu", "--format", "q8_0", "--json",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["format"], "q8_0");
        assert_eq!(v["needs_conversion"], true);
        assert_eq!(v["device"], "cpu");
        assert!(v["choices"].as_array().unwrap().len() >= 3);
        // Automatic choice on this machine: never a software GPU (llvmpipe) unasked.
        let out = kiln(&["plan", "-m", &m, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
        assert_eq!(v["device"], "cpu", "{v}");
        for args in [
            vec!["plan", "-m", &m, "--format", "q9_9"],
            vec!["plan", "-m", "/nonexistent.gguf"],
        ] {
            let out = kiln(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out).1);
        }
    }

    /// `--device wgpu` runs the model through Kiln's CubeCL kernels (llvmpipe in CI).
    #[test]
    fn generate_on_wgpu() {
        let Some(m) = model() else { return };
        if kiln_tests_wgpu_absent() {
            return;
        }
        let out = kiln(&[
            "generate",
            "-m",
            &m,
            "-p",
            "The capital of France is",
            "-n",
            "3",
            "--device",
            "wgpu",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("Paris"), "{stdout}");
    }

    fn kiln_tests_wgpu_absent() -> bool {
        let out = kiln(&["devices", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
        !v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"].as_str().is_some_and(|id| id.starts_with("wgpu")))
    }
}

/// `kiln tradeoffs` as a user runs it: every cell in a child process, a report (JSON,
/// Markdown, SVG), a recommendation that `kiln plan` then follows, a second run that measures
/// nothing, clear errors for bad flags; and the embedding form.
mod tradeoffs {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn fixture(name: &str) -> Option<PathBuf> {
        match kiln_runtime::models_dir::fixture_path(name) {
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

    fn kiln(cache: &Path, args: &[&str]) -> (bool, Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_CACHE", cache)
            .output()
            .expect("run kiln");
        (
            out.status.success(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn llm_report_recommendation_plan_and_resume() {
        let Some(m) = fixture("smollm2-q4_1") else {
            return;
        };
        let m = m.display().to_string();
        let dir = temp("llm");
        let cache = dir.join("cache");
        let eval = dir.join("eval.tsv");
        std::fs::write(
            &eval,
            "label\tquery\norder_status\twhere is my order\nreturn_refund\tI want my money back\nproduct_search\tred running shoes\n",
        )
        .unwrap();
        let out = dir.join("out");
        let args = [
            "tradeoffs",
            "-m",
            &m,
            "--formats",
            "q8_0,q4_1",
            "--devices",
            "cpu",
            "--eval",
            eval.to_str().unwrap(),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "2",
            "--text-tokens",
            "256",
            "--ctx",
            "128",
            "--max-loss",
            "100%",
            "-t",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        let (ok, _, stdout, stderr) = kiln(&cache, &args);
        assert!(ok, "{stderr}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let dev = &report["devices"][0];
        let rec = dev["recommendation"]["format"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(stdout.contains(&format!("cpu: {rec}")), "{stdout}");
        // Every measurement the issue names is in the report.
        let cell = &dev["cells"][0];
        for key in [
            "file_bytes",
            "load_seconds",
            "host_peak_rss_bytes",
            "pp",
            "tg",
            "classify",
            "text",
        ] {
            assert!(!cell[key].is_null(), "{key} in {cell}");
        }
        assert_eq!(cell["tg"]["samples_seconds"].as_array().unwrap().len(), 2);
        assert_eq!(cell["tg"]["warmup_runs"], 1);
        assert_eq!(cell["threads"], 2);
        assert!(cell["classify"]["latency_p95_ms"].as_f64().unwrap() > 0.0);
        assert!(report["method"].as_array().unwrap().len() >= 5);
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains(&format!("**Recommended: {rec}**")), "{md}");
        assert!(
            std::fs::read_to_string(out.join("plot-cpu.svg"))
                .unwrap()
                .starts_with("<svg")
        );

        // kiln plan follows the measurement.
        let (ok, _, plan, stderr) = kiln(&cache, &["plan", "-m", &m, "--device", "cpu", "--json"]);
        assert!(ok, "{stderr}");
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        assert_eq!(plan["format"], rec.as_str(), "{plan}");

        // A second run reads every cell back.
        let (ok, _, _, stderr) = kiln(&cache, &args);
        assert!(ok, "{stderr}");
        assert_eq!(
            stderr.matches("kept from an earlier run").count(),
            2,
            "{stderr}"
        );

        // Bad flags and devices: a one-line error, exit 2 (usage) or 1.
        for bad in [
            vec!["tradeoffs", "-m", &m, "--max-loss", "abc", "--out", "x"],
            vec!["tradeoffs", "-m", &m, "--formats", "q9_9", "--out", "x"],
            vec!["tradeoffs", "-m", "/nonexistent.gguf", "--out", "x"],
            vec!["tradeoffs", "-m", &m, "--devices", "cuda:7", "--out", "x"],
        ] {
            let (ok, code, _, stderr) = kiln(&cache, &bad);
            // (Probing wgpu may make Mesa print its XDG_RUNTIME_DIR line first.)
            let last = stderr.lines().last().unwrap_or("");
            assert!(!ok && last.starts_with("kiln: error:"), "{bad:?}: {stderr}");
            assert!(matches!(code, Some(1 | 2)), "{bad:?}: {code:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn embedding_report_compares_formats_by_cosine() {
        let Some(m) = fixture("minilm") else {
            return;
        };
        let dir = temp("embed");
        let corpus = dir.join("corpus.jsonl");
        let texts: String = (0..24)
            .map(|i| {
                format!(
                    "{{\"text\": \"product {i}: {} shoes in size {}\"}}\n",
                    ["red", "blue", "black"][i % 3],
                    36 + i
                )
            })
            .collect();
        std::fs::write(&corpus, texts).unwrap();
        let out = dir.join("out");
        let (ok, _, stdout, stderr) = kiln(
            &dir.join("cache"),
            &[
                "tradeoffs",
                "-m",
                m.to_str().unwrap(),
                "--devices",
                "cpu",
                "--text",
                corpus.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(ok, "{stderr}");
        assert!(stdout.starts_with("cpu: "), "{stdout}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let cells = report["devices"][0]["cells"].as_array().unwrap();
        let by = |f: &str| cells.iter().find(|c| c["format"] == f).unwrap();
        // The reference against itself: exactly 1.
        assert_eq!(by("f32")["cosine_mean"], 1.0);
        assert_eq!(by("f32")["overlap_at_10"], 1.0);
        for (f, min_cos) in [("f16", 0.99999), ("q8_0", 0.999)] {
            let c = by(f);
            let cos = c["cosine_mean"].as_f64().unwrap();
            assert!(cos > min_cos && cos < 1.0 + 1e-9, "{f}: {cos}");
            assert!(c["texts_per_second_median"].as_f64().unwrap() > 0.0);
        }
        assert!(
            std::fs::read_to_string(out.join("report.md"))
                .unwrap()
                .contains("overlap@10")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

mod interbert {
    use super::kiln;

    const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/interbert/model");

    #[test]
    fn bench_prints_pairs_per_second() {
        let out = kiln(&[
            "bench",
            "interbert",
            "-m",
            MODEL,
            "--pairs",
            "5",
            "--batch",
            "2",
            "--regions",
            "3",
            "-r",
            "2",
            "-t",
            "1",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["pairs"], 5);
        assert_eq!(r["pairs_per_second"].as_array().unwrap().len(), 2);
        // Captions of 8 + (7·i mod 23) tokens: 8, 15, 22, 29, 13.
        assert_eq!(r["caption_tokens"], 87);
        assert!(r["median_pairs_per_second"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn bench_refuses_bad_flags() {
        let zero = kiln(&["bench", "interbert", "-m", MODEL, "--batch", "0"]);
        assert_eq!(zero.status.code(), Some(2));
        let fmt = kiln(&["bench", "interbert", "-m", MODEL, "--format", "q4_0"]);
        assert_eq!(
            fmt.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&fmt.stderr)
        );
        assert!(String::from_utf8_lossy(&fmt.stderr).contains("q4_0"));
        let dir = kiln(&["bench", "interbert", "-m", "/nonexistent"]);
        assert_eq!(dir.status.code(), Some(2));
    }
}

mod mambarec {
    use super::kiln;

    const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/mambarec/model");

    fn jsonl(stdout: &[u8]) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn recommend_writes_one_ranked_row_per_user() {
        let out = kiln(&["recommend", "-m", MODEL, "--users", "0-2,7", "-k", "20"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = jsonl(&out.stdout);
        let users: Vec<u64> = rows.iter().map(|r| r["user"].as_u64().unwrap()).collect();
        assert_eq!(users, vec![0, 1, 2, 7]);
        for r in &rows {
            let items = r["items"].as_array().unwrap();
            let scores: Vec<f64> = r["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_f64().unwrap())
                .collect();
            assert_eq!(items.len(), 20);
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
            let mut distinct: Vec<u64> = items.iter().map(|i| i.as_u64().unwrap()).collect();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 20);
        }
        // The same lists through a file, and every user by default.
        let path = std::env::temp_dir().join(format!("kiln-recs-{}.jsonl", std::process::id()));
        let out = kiln(&[
            "recommend",
            "-m",
            MODEL,
            "-k",
            "20",
            "-o",
            path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all = jsonl(&std::fs::read(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(all[7], rows[3]);
    }

    #[test]
    fn recommend_refuses_bad_requests() {
        for (args, code) in [
            (vec!["-k", "0"], 2),
            (vec!["--users", "5-2"], 2),
            (vec!["--users", "300"], 2),
            (vec!["--users", "abc"], 2),
        ] {
            let mut a = vec!["recommend", "-m", MODEL];
            a.extend(args.iter());
            let out = kiln(&a);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = kiln(&["recommend", "-m", "/nonexistent"]);
        assert_eq!(out.status.code(), Some(2));
    }

    #[test]
    fn bench_reports_load_and_forward_times() {
        let out = kiln(&[
            "bench", "mambarec", "-m", MODEL, "-r", "2", "-t", "1", "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["users"], 300);
        assert_eq!(r["items"], 500);
        assert_eq!(r["forward_s"].as_array().unwrap().len(), 2);
        assert!(r["median_forward_s"].as_f64().unwrap() > 0.0);
        assert!(r["load_graphs_s"].as_f64().unwrap() > 0.0);
    }
}

mod cope {
    use super::kiln;
    use std::path::{Path, PathBuf};

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data");

    fn model() -> String {
        format!("{DATA}/cope/model")
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-cope-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Tensor `name` of a safetensors file (f32), as rows of its last dimension.
    fn expected(name: &str) -> Vec<Vec<f32>> {
        let bytes = std::fs::read(format!("{DATA}/cope/expected.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let t = &header[name];
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let off: Vec<usize> = t["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let v: Vec<f32> = bytes[8 + n + off[0]..8 + n + off[1]]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        v.chunks_exact(*shape.last().unwrap())
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// A `.npy` file of f32 rows `dim` wide.
    fn npy(path: &Path, dim: usize) -> Vec<Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..6], b"\x93NUMPY");
        let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        bytes[10 + header..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<_>>()
            .chunks_exact(dim)
            .map(<[f32]>::to_vec)
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    }

    fn fixture_json() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(format!("{DATA}/cope/expected.json")).unwrap())
            .unwrap()
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// Product pages from a JSONL file (relative image paths), with bad records beside the
    /// good ones: the good rows are the reference's embeddings, the bad ones are in the errors
    /// file, the job finishes.
    #[test]
    fn embed_product_pages_from_jsonl_with_images() {
        let dir = temp("products");
        let refs = format!("{DATA}/images/ref/cope");
        std::os::unix::fs::symlink(&refs, dir.join("imgs")).unwrap();
        std::fs::write(dir.join("empty.png"), b"").unwrap();
        let exp = fixture_json();
        let titles = strings(&exp["titles"]);
        let products = strings(&exp["products"]);
        let mut lines = Vec::new();
        for (i, (t, p)) in titles.iter().zip(&products).enumerate() {
            lines.push(
                serde_json::json!({"id": format!("p{i}"), "text": t, "image": format!("imgs/{p}")}),
            );
        }
        lines.push(serde_json::json!({"id": "no-file", "text": "x", "image": "imgs/none.png"}));
        lines.push(serde_json::json!({"id": "zero", "text": "x", "image": "empty.png"}));
        lines.push(
            serde_json::json!({"id": "two", "text": "x", "image": ["imgs/a.png", "imgs/b.png"]}),
        );
        lines.push(serde_json::json!({"id": "no-image", "text": "x"}));
        let input = dir.join("pages.jsonl");
        let body: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        std::fs::write(&input, body.join("\n") + "\n").unwrap();
        let out = dir.join("pages.npy");
        let run = kiln(&[
            "embed",
            "-m",
            &model(),
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-t",
            "1",
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let got = npy(&out, 128);
        let want = expected("product");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(cosine(g, w) >= 0.9999, "cosine {}", cosine(g, w));
        }
        let ids = std::fs::read_to_string(dir.join("pages.ids.jsonl")).unwrap();
        assert_eq!(ids.lines().count(), 6);
        let errors = std::fs::read_to_string(dir.join("pages.npy.errors.jsonl")).unwrap();
        for (id, why) in [
            ("no-file", "none.png"),
            ("zero", "empty file"),
            ("two", "one image"),
            ("no-image", "missing field \\\"image\\\""),
        ] {
            let line = errors
                .lines()
                .find(|l| l.contains(&format!("\"{id}\"")))
                .unwrap_or_else(|| panic!("{id} in {errors}"));
            assert!(line.contains(why), "{id}: {line}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Short videos from a CSV of `|`-separated frame lists: a 24-frame list is sampled to 8
    /// frames at segment centres as the reference's dataset does, and a single image stays one.
    #[test]
    fn embed_videos_from_csv_frame_lists() {
        let dir = temp("videos");
        let refs = format!("{DATA}/images/ref/cope");
        let mut files: Vec<String> = std::fs::read_dir(&refs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let exp = fixture_json();
        let single = strings(&exp["video_single"][0]);
        let all: Vec<String> = files.iter().map(|f| format!("{refs}/{f}")).collect();
        let csv = format!(
            "id,frames\nv24,{}\nv1,{refs}/{}\n",
            all.join("|"),
            single[0]
        );
        let input = dir.join("videos.csv");
        std::fs::write(&input, csv).unwrap();
        let out = dir.join("videos.npy");
        let run = kiln(&[
            "embed",
            "-m",
            &model(),
            "--domain",
            "video",
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let got = npy(&out, 128);
        let (v, s) = (expected("video"), expected("video_single"));
        assert!(
            cosine(&got[0], &v[0]) >= 0.9999,
            "{}",
            cosine(&got[0], &v[0])
        );
        assert!(
            cosine(&got[1], &s[0]) >= 0.9999,
            "{}",
            cosine(&got[1], &s[0])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn embed_refuses_images_for_text_models_and_bad_domains() {
        let dir = temp("refuse");
        let input = dir.join("x.jsonl");
        std::fs::write(&input, "{\"id\": 1, \"text\": \"a\"}\n").unwrap();
        let out = dir.join("x.npy");
        let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
        let bad = kiln(&[
            "embed",
            "-m",
            &model(),
            "--domain",
            "photo",
            "-i",
            i,
            "-o",
            o,
        ]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("photo"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bench_prints_product_pages_per_second() {
        let out = kiln(&[
            "bench",
            "cope",
            "-m",
            &model(),
            "--pages",
            "3",
            "--batch",
            "2",
            "-r",
            "2",
            "-t",
            "1",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["pages"], 3);
        assert_eq!(r["pages_per_second"].as_array().unwrap().len(), 2);
        assert!(r["median_pages_per_second"].as_f64().unwrap() > 0.0);
        let zero = kiln(&["bench", "cope", "-m", &model(), "--batch", "0"]);
        assert_eq!(zero.status.code(), Some(2));
    }
}

/// `kiln bench images` on the committed test images (and the bad ones, counted, not fatal).
#[test]
fn bench_images_reports_each_thread_count() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/images");
    let (inputs, bad) = (format!("{data}/inputs"), format!("{data}/bad"));
    let out = kiln(&[
        "bench", "images", "-i", &inputs, &bad, "--spec", "clip:64", "-t", "1,2", "-r", "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let bad_files = std::fs::read_dir(&bad).unwrap().count();
    for (row, threads) in rows.iter().zip([1, 2]) {
        assert_eq!(row["threads"], threads);
        assert_eq!(row["images"].as_u64().unwrap() as usize, 24 + bad_files);
        assert_eq!(row["failed"].as_u64().unwrap() as usize, bad_files);
        assert_eq!(row["images_per_second"].as_array().unwrap().len(), 2);
        assert!(row["median_megapixels_per_second"].as_f64().unwrap() > 0.0);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("decompression bomb"), "{stderr}");
    for args in [
        vec!["bench", "images", "-i", &inputs, "--spec", "vit"],
        vec!["bench", "images", "-i", &inputs, "-t", "0"],
        vec!["bench", "images", "-i", "/nonexistent.png"],
        vec!["bench", "images", "-i", &data], // a directory without images
    ] {
        let out = kiln(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
