//! Intent classification with a causal LM.
//!
//! Generative scoring (zero-shot or prompted): each label's tokens are scored by their
//! log-likelihood after the prompt. The prompt runs once; then every label's tokens run in one
//! batch as separate sequences sharing the prompt's KV cache (positions restart after the
//! prompt for each label, each label sees only the prompt and itself).
//!
//! Sequence-classification head: a fine-tuned classifier's `score` matrix `[labels, n_embd]`
//! (safetensors) applied to the last token's final hidden state.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use kiln_kernels::nn::seq_id;
use kiln_models::llama::Output;

use super::Llm;
use crate::{Result, RuntimeError};

/// The default prompt: the labels listed, the query as the user's turn, the answer begun.
pub const DEFAULT_TEMPLATE: &str = "Classify the e-commerce customer query into exactly one of these intents: {labels}.\nQuery: {query}\nIntent:";

#[derive(Clone, Debug, serde::Serialize)]
pub struct Classification {
    pub label: String,
    /// Probabilities over the labels, in label order.
    pub probabilities: Vec<f32>,
    /// Log-likelihood of each label's tokens (generative scoring) or the head's logits.
    pub scores: Vec<f32>,
    pub latency_ms: f64,
}

/// How labels are scored.
pub enum Scorer {
    Generative {
        template: String,
        /// With the model's chat template: the filled template is the user's turn.
        chat: bool,
        /// Each label's tokens as they follow the prompt.
        label_tokens: Vec<Vec<u32>>,
    },
    Head {
        template: String,
        /// `[labels, n_embd]`.
        score: Box<Tensor<2>>,
    },
}

pub struct Classifier<'a> {
    pub llm: &'a Llm,
    pub labels: Vec<String>,
    pub scorer: Scorer,
}

fn usage(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Usage(msg.into())
}

/// Reads a labels file: one label per line, blank lines and `#` comments skipped.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_labels(&text)
}

/// Labels from text: one per line, blank lines and `#` comments skipped.
pub fn parse_labels(text: &str) -> Result<Vec<String>> {
    let labels: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    validate_labels(&labels)?;
    Ok(labels)
}

fn validate_labels(labels: &[String]) -> Result<()> {
    if labels.len() < 2 {
        return Err(usage(format!(
            "need at least two labels, got {}",
            labels.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        return Err(usage(format!("label {d:?} appears twice")));
    }
    Ok(())
}

impl<'a> Classifier<'a> {
    /// Generative scoring with `template` (`{query}`, `{labels}` placeholders).
    pub fn generative(
        llm: &'a Llm,
        labels: Vec<String>,
        template: &str,
        chat: bool,
    ) -> Result<Self> {
        validate_labels(&labels)?;
        if !template.contains("{query}") {
            return Err(usage("the template has no {query} placeholder"));
        }
        // A label follows the prompt after a space, as the model would write it.
        let label_tokens = labels
            .iter()
            .map(|l| llm.tokenizer.encode(&format!(" {l}"), false, false))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Classifier {
            llm,
            labels,
            scorer: Scorer::Generative {
                template: template.to_string(),
                chat,
                label_tokens,
            },
        })
    }

    /// A sequence-classification head from a safetensors file holding `score.weight`
    /// (`[labels, n_embd]`, f32/f16/bf16).
    pub fn with_head(
        llm: &'a Llm,
        labels: Vec<String>,
        head: &Path,
        template: &str,
    ) -> Result<Self> {
        validate_labels(&labels)?;
        let bytes = std::fs::read(head).map_err(|source| RuntimeError::Io {
            path: head.display().to_string(),
            source,
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| usage(format!("{}: not a safetensors file: {e}", head.display())))?;
        let name = ["score.weight", "score"]
            .into_iter()
            .find(|n| st.tensor(n).is_ok())
            .ok_or_else(|| usage(format!("{}: no score.weight tensor", head.display())))?;
        let t = st.tensor(name).map_err(|e| usage(e.to_string()))?;
        let d = llm.model.config.n_embd;
        if t.shape() != [labels.len(), d] {
            return Err(usage(format!(
                "{}: {name} has shape {:?}; {} labels and width {d} need [{}, {d}]",
                head.display(),
                t.shape(),
                labels.len(),
                labels.len()
            )));
        }
        let values: Vec<f32> = match t.dtype() {
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::F16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(usage(format!(
                    "{}: {name} is {other:?}; f32, f16 or bf16 expected",
                    head.display()
                )));
            }
        };
        let score = Tensor::from_data(
            TensorData::new(values, [labels.len(), d]),
            llm.model.device(),
        );
        Ok(Classifier {
            llm,
            labels,
            scorer: Scorer::Head {
                template: template.to_string(),
                score: Box::new(score),
            },
        })
    }

    fn prompt(&self, template: &str, chat: bool, query: &str) -> Result<Vec<u32>> {
        if query.trim().is_empty() {
            return Err(usage("the query is empty"));
        }
        let filled = template
            .replace("{labels}", &self.labels.join(", "))
            .replace("{query}", query);
        self.llm.prompt_tokens(&filled, chat, None)
    }

    /// Classifies one query.
    pub fn classify(&self, query: &str) -> Result<Classification> {
        self.classify_batch(&[query])?
            .pop()
            .unwrap_or_else(|| Err(usage("no result")))
    }

    /// Classifies several queries in one batch: their prompts run together (one sequence group
    /// each), then every (query, label) continuation together, each seeing only its own prompt
    /// and itself. Results are in query order; a bad query (empty) gets its own error and the
    /// others go on. Each result's latency is the whole batch's.
    pub fn classify_batch(&self, queries: &[&str]) -> Result<Vec<Result<Classification>>> {
        let t0 = Instant::now();
        let model = &self.llm.model;
        let (template, chat) = match &self.scorer {
            Scorer::Generative { template, chat, .. } => (template, *chat),
            Scorer::Head { template, .. } => (template, false),
        };
        let prompts: Vec<Result<Vec<u32>>> = queries
            .iter()
            .map(|q| self.prompt(template, chat, q))
            .collect();
        let ok: Vec<&Vec<u32>> = prompts.iter().filter_map(|p| p.as_ref().ok()).collect();
        let mut scores: Vec<Vec<f32>> = Vec::with_capacity(ok.len());
        if !ok.is_empty() {
            // Prompt g is branch 0 of group g + 1.
            let mut tokens = Vec::new();
            let mut positions = Vec::new();
            let mut seqs = Vec::new();
            let mut last = Vec::new();
            for (g, p) in ok.iter().enumerate() {
                tokens.extend_from_slice(p);
                positions.extend(0..p.len() as u32);
                seqs.extend(std::iter::repeat_n(seq_id(g as u32 + 1, 0), p.len()));
                last.push(tokens.len() - 1);
            }
            match &self.scorer {
                Scorer::Generative { label_tokens, .. } => {
                    // Label j's tokens, all but its last, run as branch j + 1 after prompt g.
                    let mut more = Vec::new();
                    let mut more_pos = Vec::new();
                    let mut more_seqs = Vec::new();
                    // Per (prompt, label): the rows whose logits score the label's tokens 2..
                    let mut rows_of: Vec<Vec<Vec<usize>>> = Vec::new();
                    for (g, p) in ok.iter().enumerate() {
                        let mut per_label = Vec::new();
                        for (j, lt) in label_tokens.iter().enumerate() {
                            let mut rows = Vec::new();
                            for (i, &tok) in lt[..lt.len() - 1].iter().enumerate() {
                                rows.push(more.len());
                                more.push(tok);
                                more_pos.push((p.len() + i) as u32);
                                more_seqs.push(seq_id(g as u32 + 1, j as u32 + 1));
                            }
                            per_label.push(rows);
                        }
                        rows_of.push(per_label);
                    }
                    let mut cache = model.new_cache(tokens.len() + more.len());
                    let first = model.forward(
                        &tokens,
                        &positions,
                        &seqs,
                        &mut cache,
                        &Output::Logits(last),
                    )?;
                    let vocab = model.config.vocab_size;
                    let first: Vec<Vec<f32>> = super::floats(first)?
                        .chunks_exact(vocab)
                        .map(log_softmax)
                        .collect();
                    let rest = if more.is_empty() {
                        Vec::new()
                    } else {
                        let all: Vec<usize> = (0..more.len()).collect();
                        let l = model.forward(
                            &more,
                            &more_pos,
                            &more_seqs,
                            &mut cache,
                            &Output::Logits(all),
                        )?;
                        super::floats(l)?
                            .chunks_exact(vocab)
                            .map(log_softmax)
                            .collect::<Vec<_>>()
                    };
                    for (first, per_label) in first.iter().zip(&rows_of) {
                        scores.push(
                            label_tokens
                                .iter()
                                .zip(per_label)
                                .map(|(lt, rows)| {
                                    let mut s = first[lt[0] as usize];
                                    for (r, &tok) in rows.iter().zip(&lt[1..]) {
                                        s += rest[*r][tok as usize];
                                    }
                                    s
                                })
                                .collect(),
                        );
                    }
                }
                Scorer::Head { score, .. } => {
                    let mut cache = model.new_cache(tokens.len());
                    let h = model.forward(
                        &tokens,
                        &positions,
                        &seqs,
                        &mut cache,
                        &Output::Hidden(last),
                    )?;
                    let l = super::floats(h.matmul((**score).clone().transpose()))?;
                    scores.extend(l.chunks_exact(self.labels.len()).map(<[f32]>::to_vec));
                }
            }
        }
        let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut scores = scores.into_iter();
        Ok(prompts
            .into_iter()
            .map(|p| {
                p?;
                let scores = scores.next().ok_or_else(|| usage("no result"))?;
                let probabilities = softmax(&scores);
                let best = probabilities
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                Ok(Classification {
                    label: self.labels[best].clone(),
                    probabilities,
                    scores,
                    latency_ms,
                })
            })
            .collect())
    }
}

fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + x.iter().map(|v| f64::from(v - max).exp()).sum::<f64>().ln() as f32;
    x.iter().map(|v| v - lse).collect()
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let ls = log_softmax(x);
    ls.iter().map(|v| v.exp()).collect()
}
