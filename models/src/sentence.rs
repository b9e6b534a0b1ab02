//! A sentence-transformers model directory: tokenizer (`tokenizer.json`, truncated at
//! `max_seq_length` from `sentence_bert_config.json`), the BERT encoder, pooling
//! (`1_Pooling/config.json`) and `Normalize`, as `modules.json` lists them.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::bert::{Bert, Pooling, TokenBatch, pool, read_pipeline};
use crate::{ModelError, Result};

/// One text, tokenized and truncated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A loaded sentence-embedding model on one device.
pub struct SentenceModel {
    name: String,
    dir: PathBuf,
    bert: Bert,
    tokenizer: Tokenizer,
    pooling: Vec<Pooling>,
    normalize: bool,
    max_seq_length: usize,
}

impl SentenceModel {
    /// Loads a Hugging Face / sentence-transformers model directory onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, kiln_quant::GgmlType::F32)
    }

    /// [`SentenceModel::load`] with the encoder's weights converted to `format` as they load
    /// (f32, f16, q8_0: [`crate::bert::WEIGHT_FORMATS`]).
    pub fn load_as(dir: &Path, device: &Device, format: kiln_quant::GgmlType) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Config(format!(
                "{}: not a model directory",
                dir.display()
            )));
        }
        let bert = Bert::load_as(dir, device, format)?;
        let (pooling, normalize) = read_pipeline(dir)?;
        let max_positions = bert.config().max_position_embeddings;
        let max_seq_length = read_max_seq_length(dir)?
            .unwrap_or(max_positions)
            .min(max_positions);
        let tk_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tk_path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tk_path.display())))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let name = dir
            .canonicalize()
            .ok()
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            dir: dir.to_path_buf(),
            bert,
            tokenizer,
            pooling,
            normalize,
            max_seq_length,
        })
    }

    /// The directory's name (used in output metadata).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Length of an embedding (hidden size × pooling modes).
    pub fn dim(&self) -> usize {
        self.bert.config().hidden_size * self.pooling.len()
    }

    pub fn normalized(&self) -> bool {
        self.normalize
    }

    pub fn pooling(&self) -> &[Pooling] {
        &self.pooling
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    pub fn device(&self) -> &Device {
        self.bert.device()
    }

    /// Tokenizes one text with special tokens, truncated to `max_seq_length`.
    pub fn tokenize(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Embeds already tokenized texts as one padded batch: `rows × dim` floats, row-major.
    pub fn embed_encoded(&self, rows: &[&Encoded]) -> Result<Vec<f32>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(r) = rows.iter().find(|r| r.is_empty()) {
            return Err(ModelError::Tokenizer(format!(
                "an empty token sequence cannot be embedded ({r:?})"
            )));
        }
        let pairs: Vec<(&[u32], &[u32])> = rows
            .iter()
            .map(|r| (r.ids.as_slice(), r.type_ids.as_slice()))
            .collect();
        let batch = TokenBatch::pad(&pairs);
        let states = self.bert.forward(&batch)?;
        let v = pool(states, &batch.lengths, &self.pooling, self.normalize);
        v.into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Config(format!("reading embeddings back: {e:?}")))
    }
}

fn read_max_seq_length(dir: &Path) -> Result<Option<usize>> {
    let p = dir.join("sentence_bert_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p)
        .map_err(|e| ModelError::Config(format!("{}: {e}", p.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Config(format!("{}: {e}", p.display())))?;
    match v.get("max_seq_length") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(n) => match n.as_u64() {
            Some(n) if n >= 2 => Ok(Some(n as usize)),
            _ => Err(ModelError::Config(format!(
                "{}: max_seq_length {n} is not a length",
                p.display()
            ))),
        },
    }
}
