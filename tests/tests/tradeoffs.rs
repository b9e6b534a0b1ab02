//! `kiln tradeoffs`' accuracy measurements on cases with known answers, on the SmolLM2 fixture:
//! a variant identical to the reference has KL 0 and agrees everywhere; a deliberately broken
//! variant (several layers' attention output zeroed) has a large KL, a worse perplexity and
//! low agreement. And the matrix run end to end (in this process, CPU): resumable, with a
//! recommendation that `kiln plan` follows.

use std::path::{Path, PathBuf};

use kiln_quant::GgmlType;
use kiln_quant::gguf::GgufFile;
use kiln_runtime::plan;
use kiln_runtime::tradeoffs::{
    self, CellSpec, CellStatus, Event, LabeledQuery, LlmRun, LlmSettings, llm_cell,
};
use kiln_tests::fixture;

fn settings() -> LlmSettings {
    LlmSettings {
        prompt_tokens: 16,
        generate_tokens: 4,
        repetitions: 1,
        text_tokens: 256,
        context: 128,
        batch: 3,
        chat: false,
        threads: 2,
        seed: 7,
    }
}

fn eval() -> Vec<LabeledQuery> {
    tradeoffs::parse_labeled(tradeoffs::DEFAULT_EVAL, "intents-dev.tsv").unwrap()[..6].to_vec()
}

fn text() -> String {
    tradeoffs::corpus_text(tradeoffs::DEFAULT_CORPUS, "(built-in catalog)").unwrap()
}

fn spec(model: &Path, dir: PathBuf, reference: Option<PathBuf>) -> CellSpec {
    let eval = eval();
    CellSpec {
        model: model.to_path_buf(),
        device: "cpu".into(),
        format: "q4_1".into(),
        file_bytes: std::fs::metadata(model).unwrap().len(),
        weight_rmse: None,
        settings: settings(),
        labels: tradeoffs::labels_of(&eval),
        eval,
        text: text(),
        reference,
        dir,
    }
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-tradeoffs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of `src` with the attention output projection of layers 0–9 zeroed.
fn broken_copy(src: &Path, dst: &Path) {
    let gguf = GgufFile::open(src).unwrap();
    let mut bytes = std::fs::read(src).unwrap();
    let mut zeroed = 0;
    for t in &gguf.tensors {
        let layer: Option<usize> = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok());
        if t.name.ends_with("attn_output.weight") && layer.is_some_and(|l| l < 10) {
            let at = (gguf.data_offset + t.offset) as usize;
            bytes[at..at + t.n_bytes as usize].fill(0);
            zeroed += 1;
        }
    }
    assert_eq!(zeroed, 10);
    std::fs::write(dst, bytes).unwrap();
}

#[test]
fn identical_variants_agree_exactly_and_a_broken_one_does_not() {
    let Some(model) = fixture("smollm2-q4_1") else {
        return;
    };
    let dir = temp("known");
    let reference = llm_cell::measure(&spec(&model, dir.join("ref"), None), &mut |_| {}).unwrap();
    assert!(reference.is_reference);
    let ref_text = reference.text.clone().unwrap();
    assert_eq!((ref_text.kl_mean, ref_text.top1_agreement), (0.0, 1.0));
    assert_eq!(
        ref_text.positions,
        2 * 63,
        "two windows of 128, second halves scored"
    );

    // The same file measured against it: every distribution identical.
    let same = llm_cell::measure(
        &spec(&model, dir.join("same"), Some(dir.join("ref"))),
        &mut |_| {},
    );
    // The reference's predictions come from its kept cell file.
    assert!(same.is_err(), "the reference cell was not written yet");
    tradeoffs::write_cell(&spec(&model, dir.join("ref"), None), &reference).unwrap();
    let same = llm_cell::measure(
        &spec(&model, dir.join("same"), Some(dir.join("ref"))),
        &mut |_| {},
    )
    .unwrap();
    let t = same.text.unwrap();
    assert_eq!(t.kl_mean, 0.0);
    assert_eq!(t.kl_max, 0.0);
    assert_eq!(t.top1_agreement, 1.0);
    assert_eq!(t.perplexity, ref_text.perplexity);
    let c = same.classify.unwrap();
    assert_eq!(c.agreement, 1.0);
    assert_eq!(
        c.predictions,
        reference.classify.as_ref().unwrap().predictions
    );

    // Ten layers' attention output zeroed: the distributions move far.
    let broken = dir.join("broken.gguf");
    broken_copy(&model, &broken);
    let b = llm_cell::measure(
        &spec(&broken, dir.join("broken"), Some(dir.join("ref"))),
        &mut |_| {},
    )
    .unwrap();
    let bt = b.text.unwrap();
    assert!(bt.kl_mean > 0.5, "KL {}", bt.kl_mean);
    assert!(bt.top1_agreement < 0.8, "top-1 {}", bt.top1_agreement);
    assert!(bt.perplexity > 1.5 * ref_text.perplexity);
    // Speed and memory were measured too.
    assert!(b.tg.unwrap().median_tps > 0.0 && b.host_peak_rss_bytes.unwrap() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_matrix_resumes_and_recommends_what_the_plan_then_chooses() {
    let Some(model) = fixture("smollm2-q4_1") else {
        return;
    };
    let dir = temp("matrix");
    let eval = eval();
    let run = LlmRun {
        model: model.clone(),
        formats: vec![GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q3_K],
        devices: vec!["cpu".into()],
        labels: tradeoffs::labels_of(&eval),
        eval,
        eval_name: "six queries".into(),
        text: text(),
        text_name: "catalog".into(),
        max_loss: 1.0,
        settings: settings(),
        out: dir.join("out"),
        cache: dir.join("cache").join("tradeoffs"),
        fresh: false,
    };
    let devices = kiln_runtime::Devices::cpu_only();
    let runner = |s: &CellSpec| llm_cell::measure(s, &mut |_| {});
    let mut resumed = Vec::new();
    let report = tradeoffs::run_llm(&run, &devices, &runner, &mut |e| {
        if let Event::Done { resumed: r, .. } = e {
            resumed.push(r);
        }
    })
    .unwrap();
    assert_eq!(resumed, [false, false, false]);
    let d = &report.devices[0];
    // Highest precision first: q8_0 is the reference; q3_K has no CPU kernel and says so.
    assert_eq!(d.reference.as_deref(), Some("q8_0"));
    let status: Vec<_> = d
        .cells
        .iter()
        .map(|c| (c.format.as_str(), c.status))
        .collect();
    assert_eq!(
        status,
        [
            ("q8_0", CellStatus::Ok),
            ("q4_1", CellStatus::Ok),
            ("q3_K", CellStatus::Skipped)
        ]
    );
    // --max-loss 100%: the faster decoder wins.
    let fastest = d
        .cells
        .iter()
        .filter(|c| c.status == CellStatus::Ok)
        .max_by(|a, b| {
            a.tg.as_ref()
                .unwrap()
                .median_tps
                .total_cmp(&b.tg.as_ref().unwrap().median_tps)
        })
        .unwrap();
    let rec = d.recommendation.as_ref().unwrap();
    assert_eq!(rec.format, fastest.format);
    // kiln plan agrees (one source of truth), with the measurement as its reason. (The CLI
    // test runs `kiln plan` itself; here the plan reads this run's own cache.)
    let mut facts = plan::ModelFacts::from_gguf(&model).unwrap();
    facts.measured = plan::read_measured(&run.cache.join("recommended"), &report.model_sha256);
    let cpu = plan::DeviceFacts::from(&kiln_runtime::DeviceInfo::cpu());
    let plan = plan::plan(&[cpu], &facts, &plan::Overrides::default()).unwrap();
    assert_eq!(plan.format.name(), rec.format);
    let why = &plan
        .choices
        .iter()
        .find(|c| c.what == "format")
        .unwrap()
        .why;
    assert!(why.contains("kiln tradeoffs"), "{why}");

    // The files, and a second run that measures nothing.
    let files = tradeoffs::report::write(&report, &run.out).unwrap();
    assert_eq!(files.len(), 3);
    let md = std::fs::read_to_string(run.out.join("report.md")).unwrap();
    assert!(md.contains(&format!("**Recommended: {}**", rec.format)));
    assert!(md.contains("skipped"));
    let svg = std::fs::read_to_string(run.out.join("plot-cpu.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("q8_0"));
    let mut again = Vec::new();
    let runner = |_: &CellSpec| -> kiln_runtime::Result<_> { panic!("nothing to measure") };
    tradeoffs::run_llm(&run, &devices, &runner, &mut |e| {
        if let Event::Done { resumed: r, .. } = e {
            again.push(r);
        }
    })
    .unwrap();
    assert_eq!(again, [true, true, false], "kept cells are read back");
    let _ = std::fs::remove_dir_all(&dir);
}
