//! Sentence and product embeddings: the [`Embedder`] library API, token-budget batching, the
//! `kiln embed` batch job ([`job`]) and `kiln bench embed` ([`bench`]).
//!
//! An [`Embedder`] holds a text encoder (a sentence-transformers or BERT directory) or COPE
//! (`kiln_models::cope`), which embeds product pages (title + image), short videos or live
//! clips (frames) into one space; a record is [`Embedder::prepare`]d (tokenized, its images
//! decoded and preprocessed) and then embedded in batches.

pub mod bench;
pub mod input;
pub mod job;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kiln_models::cope::{Cope, Domain, sample_frames};
use kiln_models::image::{Limits, preprocess};
use kiln_models::sentence::{Encoded, SentenceModel};
use rayon::prelude::*;

use crate::{Result, RuntimeError};

/// Default budget of padded tokens per batch (rows × longest row). Measured on all-MiniLM-L6-v2
/// with 2 threads: 512–3072 embed at the same speed, 4096 is 20% and 8192 40% slower
/// (activations leave the caches, and large buffers are mapped and unmapped per op).
pub const DEFAULT_BATCH_TOKENS: usize = 2048;
/// At most this many rows per batch, however short.
pub const MAX_BATCH_ROWS: usize = 256;
/// COPE's default batch: frames per forward pass (a product page is one frame, a clip eight).
/// Measured at full size with 2 threads: 8–32 frames embed at the same speed per frame.
pub const DEFAULT_BATCH_FRAMES: usize = 16;

/// An embedding model ready to embed records. `Send + Sync`: share it between threads
/// (`Arc<Embedder>`); every call is independent and gives the same vectors as a lone call.
pub struct Embedder {
    model: Model,
    /// Text models: padded tokens per batch; COPE: frames per batch.
    batch_tokens: usize,
}

enum Model {
    Sentence(Box<SentenceModel>),
    Cope {
        model: Box<Cope>,
        domain: Domain,
        dir: PathBuf,
        name: String,
    },
}

/// One record ready for [`Embedder::embed_prepared`].
#[derive(Clone, Debug)]
pub enum Prepared {
    /// A text's tokens.
    Text(Encoded),
    /// A product page (its title and one image) or a clip (frames; the title unused), each
    /// frame preprocessed to `[3, size, size]`.
    Visual {
        title: String,
        frames: Vec<Vec<f32>>,
    },
}

impl Prepared {
    /// What a batch budget counts: tokens of a text, frames of a visual record.
    pub fn len(&self) -> usize {
        match self {
            Prepared::Text(e) => e.len(),
            Prepared::Visual { frames, .. } => frames.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn dir_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Whether `dir/config.json` says `"model_type": "cope"`.
fn is_cope(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["model_type"] == "cope")
}

/// `rows × dim` embeddings, row-major and contiguous.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    data: Vec<f32>,
    rows: usize,
    dim: usize,
}

impl Embeddings {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The vector of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// All rows, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// Groups row indices (sorted by length, longest first) into batches whose padded size
/// (rows × longest row) stays within `budget` tokens and whose rows are at least ¾ as long as
/// the longest.
pub fn plan_batches(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Longest first; ties by index so that the plan is deterministic.
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].max(1);
        let new_longest = longest.max(len);
        // Close the batch when the next row would not fit, or is under ¾ of the longest (so
        // that padding stays under a quarter even when few rows share a length).
        if !current.is_empty()
            && ((current.len() + 1) * new_longest > budget
                || current.len() >= MAX_BATCH_ROWS
                || len * 4 < longest * 3)
        {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl Embedder {
    /// Loads a sentence-transformers (or plain BERT) model directory, or a COPE directory
    /// (`scripts/convert/cope.py`; product pages until [`Embedder::with_domain`]), onto
    /// `device`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, kiln_quant::GgmlType::F32)
    }

    /// [`Embedder::load`] with the encoder's weights converted to `format` as they load (f32,
    /// f16 or q8_0; `kiln tradeoffs` compares them).
    pub fn load_as(
        dir: impl AsRef<Path>,
        device: &Device,
        format: kiln_quant::GgmlType,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if is_cope(dir) {
            let model = Cope::load_as(dir, device, format)?;
            return Ok(Self {
                model: Model::Cope {
                    model: Box::new(model),
                    domain: Domain::Product,
                    dir: dir.to_path_buf(),
                    name: dir_name(dir),
                },
                batch_tokens: DEFAULT_BATCH_FRAMES,
            });
        }
        let model = SentenceModel::load_as(dir, device, format)?;
        Ok(Self {
            model: Model::Sentence(Box::new(model)),
            batch_tokens: DEFAULT_BATCH_TOKENS,
        })
    }

    /// Which of a multimodal model's domains to embed (COPE: product pages by default).
    pub fn with_domain(mut self, domain: Domain) -> Result<Self> {
        match &mut self.model {
            Model::Cope { domain: d, .. } => *d = domain,
            Model::Sentence(_) => {
                return Err(RuntimeError::Usage(format!(
                    "{}: a text model has no {} domain (domains are for multimodal models                      such as COPE)",
                    self.name(),
                    domain.name()
                )));
            }
        }
        Ok(self)
    }

    /// The domain a multimodal model embeds; `None` for text models.
    pub fn domain(&self) -> Option<Domain> {
        match &self.model {
            Model::Cope { domain, .. } => Some(*domain),
            Model::Sentence(_) => None,
        }
    }

    /// Whether records need images (a multimodal model).
    pub fn takes_images(&self) -> bool {
        self.domain().is_some()
    }

    /// Whether records need a text (not for video and live clips).
    pub fn takes_text(&self) -> bool {
        !matches!(self.domain(), Some(Domain::Video | Domain::Live))
    }

    /// The longest record a batch must hold: a text model's `max_seq_length`, COPE's clip.
    fn max_len(&self) -> usize {
        match &self.model {
            Model::Sentence(m) => m.max_seq_length(),
            Model::Cope { model, .. } => model.config().vision.frames,
        }
    }

    /// Sets the budget of one batch — padded tokens for text models, frames for COPE — (at
    /// least one longest record fits).
    pub fn with_batch_tokens(mut self, tokens: usize) -> Self {
        self.batch_tokens = tokens.max(self.max_len());
        self
    }

    pub fn batch_tokens(&self) -> usize {
        self.batch_tokens
    }

    /// The text model, if this is one.
    pub fn sentence_model(&self) -> Option<&SentenceModel> {
        match &self.model {
            Model::Sentence(m) => Some(m.as_ref()),
            Model::Cope { .. } => None,
        }
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        match &self.model {
            Model::Sentence(m) => m.dir(),
            Model::Cope { dir, .. } => dir,
        }
    }

    /// How vectors are pooled, for output metadata (`cope-product`, … for COPE).
    pub fn pooling_name(&self) -> String {
        match &self.model {
            Model::Sentence(m) => m
                .pooling()
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join("+"),
            Model::Cope { domain, .. } => format!("cope-{}", domain.name()),
        }
    }

    pub fn dim(&self) -> usize {
        match &self.model {
            Model::Sentence(m) => m.dim(),
            Model::Cope { model, .. } => model.dim(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.model {
            Model::Sentence(m) => m.name(),
            Model::Cope { name, .. } => name,
        }
    }

    pub fn normalized(&self) -> bool {
        match &self.model {
            Model::Sentence(m) => m.normalized(),
            Model::Cope { .. } => true,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.model {
            Model::Sentence(m) => m.device(),
            Model::Cope { model, .. } => model.device(),
        }
    }

    /// Tokenizes one text (truncated at the model's `max_seq_length`).
    pub fn tokenize(&self, text: &str) -> Result<Encoded> {
        match &self.model {
            Model::Sentence(m) => Ok(m.tokenize(text)?),
            Model::Cope { model, .. } => {
                let ids = model.tokenize(text)?;
                Ok(Encoded {
                    type_ids: vec![0; ids.len()],
                    ids,
                })
            }
        }
    }

    /// One record for [`Embedder::embed_prepared`]: its text tokenized, or for COPE its
    /// images read (relative paths under `base`), decoded and preprocessed. A clip's frames
    /// are sampled to the model's clip length at segment centres as the reference's datasets
    /// do (one image stays one frame: the same vector as eight copies of it, at an eighth of
    /// the work). Errors name the image.
    pub fn prepare(&self, text: &str, images: &[String], base: Option<&Path>) -> Result<Prepared> {
        let (model, domain) = match &self.model {
            Model::Sentence(_) => {
                if !images.is_empty() {
                    return Err(RuntimeError::Usage(format!(
                        "{} is a text model: it takes no images",
                        self.name()
                    )));
                }
                return Ok(Prepared::Text(self.tokenize(text)?));
            }
            Model::Cope { model, domain, .. } => (model, *domain),
        };
        let clip = model.config().vision.frames;
        let picked: Vec<&String> = match domain {
            Domain::Product if images.len() != 1 => {
                return Err(RuntimeError::Usage(format!(
                    "a product page has one image, this record has {}",
                    images.len()
                )));
            }
            _ if images.is_empty() => {
                return Err(RuntimeError::Usage("no image paths".into()));
            }
            _ if images.len() == 1 => vec![&images[0]],
            _ => sample_frames(images.len(), clip)
                .into_iter()
                .map(|i| &images[i])
                .collect(),
        };
        let spec = model.image_spec();
        let frames = picked
            .iter()
            .map(|p| {
                let path = match base {
                    Some(b) if Path::new(p.as_str()).is_relative() => b.join(p.as_str()),
                    _ => PathBuf::from(p.as_str()),
                };
                let bytes = std::fs::read(&path)
                    .map_err(|e| RuntimeError::Usage(format!("{}: {e}", path.display())))?;
                preprocess(&bytes, &spec, &Limits::default())
                    .map_err(|e| RuntimeError::Usage(format!("{}: {e}", path.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared::Visual {
            title: text.to_string(),
            frames,
        })
    }

    /// Embeds prepared records, batched within the budget, in order.
    pub fn embed_prepared(&self, rows: &[&Prepared]) -> Result<Embeddings> {
        self.batched(rows, Prepared::len, |batch| self.embed_batch(batch))
    }

    /// `rows` in batches planned by `len` within the budget, each embedded by `embed`
    /// (`batch × dim` floats), put back in input order.
    fn batched<T>(
        &self,
        rows: &[&T],
        len: impl Fn(&T) -> usize,
        embed: impl Fn(&[&T]) -> Result<Vec<f32>>,
    ) -> Result<Embeddings> {
        let dim = self.dim();
        let mut data = vec![0f32; rows.len() * dim];
        let lengths: Vec<usize> = rows.iter().map(|r| len(r)).collect();
        for batch in plan_batches(&lengths, self.batch_tokens) {
            let members: Vec<&T> = batch.iter().map(|&i| rows[i]).collect();
            let out = embed(&members)?;
            if out.len() != batch.len() * dim {
                return Err(RuntimeError::Readback(format!(
                    "expected {} floats, got {}",
                    batch.len() * dim,
                    out.len()
                )));
            }
            for (k, &i) in batch.iter().enumerate() {
                data[i * dim..(i + 1) * dim].copy_from_slice(&out[k * dim..(k + 1) * dim]);
            }
        }
        Ok(Embeddings {
            data,
            rows: rows.len(),
            dim,
        })
    }

    fn embed_batch(&self, rows: &[&Prepared]) -> Result<Vec<f32>> {
        let mismatch = || RuntimeError::Usage("a record prepared for another model".into());
        match &self.model {
            Model::Sentence(m) => {
                let enc = rows
                    .iter()
                    .map(|r| match r {
                        Prepared::Text(e) => Ok(e),
                        Prepared::Visual { .. } => Err(mismatch()),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(m.embed_encoded(&enc)?)
            }
            Model::Cope { model, domain, .. } => {
                let mut titles = Vec::with_capacity(rows.len());
                let mut clips = Vec::with_capacity(rows.len());
                for r in rows {
                    let Prepared::Visual { title, frames } = r else {
                        return Err(mismatch());
                    };
                    titles.push(title.as_str());
                    clips.push(frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
                }
                Ok(match domain {
                    Domain::Product => {
                        let images: Vec<&[f32]> = clips.iter().map(|c| c[0]).collect();
                        model.embed_products(&titles, &images)?
                    }
                    d => model.embed_clips(*d, &clips)?,
                })
            }
        }
    }

    /// Embeds `texts`: one row per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let encoded: Vec<Encoded> = if texts.len() >= 64 {
            texts
                .par_iter()
                .map(|t| self.tokenize(t))
                .collect::<Result<_>>()?
        } else {
            texts
                .iter()
                .map(|t| self.tokenize(t))
                .collect::<Result<_>>()?
        };
        let refs: Vec<&Encoded> = encoded.iter().collect();
        self.embed_encoded(&refs)
    }

    /// Embeds tokenized texts, batched by length within the token budget, in order.
    pub fn embed_encoded(&self, rows: &[&Encoded]) -> Result<Embeddings> {
        let Model::Sentence(model) = &self.model else {
            return Err(RuntimeError::Usage(
                "COPE embeds prepared records (Embedder::prepare)".into(),
            ));
        };
        self.batched(rows, Encoded::len, |batch| Ok(model.embed_encoded(batch)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_token_budget_and_cover_every_row() {
        let lengths = [5, 256, 7, 7, 100, 1, 30, 30, 30, 12];
        let batches = plan_batches(&lengths, 300);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= 300, "{b:?}");
        }
        assert_eq!(batches[0], vec![1], "the longest row alone");
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.iter().all(|&i| lengths[i] * 4 >= longest * 3), "{b:?}");
        }
    }

    #[test]
    fn embedder_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Embedder>();
    }
}
