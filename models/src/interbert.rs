//! InterBERT (arXiv 2003.13198; code github black4321/InterBERT, `bertmodel/modules.py`): an
//! image–text cross-encoder scoring whether a caption matches an image's detected regions.
//!
//! The graph, in eval mode, as `InterBertModel` and `BertPreTrainingHeads` build it:
//! - text embeddings: LayerNorm(word + position + token type), token type 0 (as the
//!   retrieval evaluation feeds it);
//! - image embeddings: LayerNorm(Linear(feature) + Linear(5-d box)), no positions; the image's
//!   first token is the global region (mean of the regions, box `[0, 0, 1, 1, 1]`), prepended
//!   here as the repository's feature reader does ([`Regions`]);
//! - `num_hidden_layers` BERT layers over `[image tokens ++ text tokens]` with the joint
//!   padding mask, then `t_num_hidden_layers` more on the text part and
//!   `v_num_hidden_layers` image layers (their own head count and FFN width) on the image
//!   part, independently;
//! - poolers: ReLU(Linear) on each stream's first token; fused `text ⊙ image` (or `+`,
//!   `fusion_method`); ITM head `Linear(bi_hidden_size → 2)`, class 0 = match. The score
//!   the retrieval evaluation ranks by is `softmax(itm)[0]`.
//!
//! Batching: attention inside a layer never mixes tokens by position (positions enter only
//! through the text embeddings), so each pair's joint sequence is laid out as its real image
//! tokens, then its real text tokens, then padding; the reference's mask (image padding
//! between the two parts) gives the same numbers, and Kiln's attention kernels take a plain
//! length per row. Pairs of unequal length batch with little padding when sorted
//! ([`InterBert::itm_scores`] does).
//!
//! The weights come from the repository's PyTorch state dict through
//! `scripts/convert/interbert.py` (model directory: `config.json`, `model.safetensors`).

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use kiln_kernels::cpu::gemm::Act;
use kiln_quant::GgmlType;

use crate::bert::{
    Dense, Layer, LayerNorm, LayerShape, Weights, check_format, read_config, read_safetensors,
};
use crate::{ModelError, Result};

/// `config.json` as `scripts/convert/interbert.py` writes it (the repository's `BertConfig`
/// keys that shape the model).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InterBertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Single-stream layers over image ++ text.
    pub num_hidden_layers: usize,
    /// Text-only layers after them.
    pub t_num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub v_hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub v_feature_size: usize,
    pub v_hidden_size: usize,
    pub v_num_hidden_layers: usize,
    pub v_num_attention_heads: usize,
    pub v_intermediate_size: usize,
    pub bi_hidden_size: usize,
    pub fusion_method: String,
}

/// BertLayerNorm's epsilon everywhere in the model.
const EPS: f64 = 1e-12;

impl InterBertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_config(path, "scripts/convert/interbert.py")?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if self.model_type != "interbert" {
            return Err(ModelError::Architecture(self.model_type.clone()));
        }
        for (key, act) in [
            ("hidden_act", &self.hidden_act),
            ("v_hidden_act", &self.v_hidden_act),
        ] {
            if act != "gelu" {
                return bad(format!("{key} {act:?} is not supported (only \"gelu\")"));
            }
        }
        if !matches!(self.fusion_method.as_str(), "mul" | "sum") {
            return bad(format!(
                "fusion_method {:?}: InterBERT has \"mul\" and \"sum\"",
                self.fusion_method
            ));
        }
        let dims = [
            self.vocab_size,
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.v_feature_size,
            self.v_num_attention_heads,
            self.v_intermediate_size,
            self.bi_hidden_size,
        ];
        let layers = [
            self.num_hidden_layers,
            self.t_num_hidden_layers,
            self.v_num_hidden_layers,
        ];
        if dims.iter().any(|&d| d == 0 || d > 1 << 24) || layers.iter().any(|&l| l > 1024) {
            return bad(format!(
                "config.json: implausible dimensions {dims:?}, layers {layers:?}"
            ));
        }
        if self.v_hidden_size != self.hidden_size {
            return bad(format!(
                "v_hidden_size {} differs from hidden_size {}: the single-stream layers need them equal",
                self.v_hidden_size, self.hidden_size
            ));
        }
        for (heads, what) in [
            (self.num_attention_heads, "num_attention_heads"),
            (self.v_num_attention_heads, "v_num_attention_heads"),
        ] {
            if !self.hidden_size.is_multiple_of(heads) {
                return bad(format!(
                    "hidden_size {} is not a multiple of {what} {heads}",
                    self.hidden_size
                ));
            }
        }
        Ok(())
    }
}

/// One image's detected regions, as a Faster R-CNN detector gives them: features
/// (`regions × v_feature_size`, row-major) and pixel boxes `[x1, y1, x2, y2]` in an image of
/// `width × height` pixels. [`InterBert`] prepends the global region itself.
#[derive(Clone, Debug)]
pub struct Regions {
    features: Vec<f32>,
    boxes: Vec<[f32; 4]>,
    width: f32,
    height: f32,
}

impl Regions {
    /// Checks what does not depend on the model: at least one region, finite numbers, a
    /// positive image size, one feature row per box.
    pub fn new(features: Vec<f32>, boxes: Vec<[f32; 4]>, width: f32, height: f32) -> Result<Self> {
        let bad = |msg: String| Err(ModelError::Config(format!("image regions: {msg}")));
        if boxes.is_empty() {
            return bad("no regions (InterBERT needs at least one)".into());
        }
        if !features.len().is_multiple_of(boxes.len()) {
            return bad(format!(
                "{} feature values for {} boxes",
                features.len(),
                boxes.len()
            ));
        }
        if !(width > 0.0 && height > 0.0 && width.is_finite() && height.is_finite()) {
            return bad(format!("image size {width} × {height}"));
        }
        if features.iter().any(|v| !v.is_finite()) || boxes.iter().flatten().any(|v| !v.is_finite())
        {
            return bad("a feature or box value is not finite".into());
        }
        Ok(Self {
            features,
            boxes,
            width,
            height,
        })
    }

    /// Regions, not counting the global one.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// Image tokens as the model sees them: the global region first.
    fn tokens(&self) -> usize {
        self.len() + 1
    }

    /// The reader's inputs (`_image_features_reader.py`): features with the global region
    /// (sum of regions / count) first, and 5-d boxes `[x1/W, y1/H, x2/W, y2/H, area/(W·H)]`
    /// with `[0, 0, 1, 1, 1]` first.
    fn reader_inputs(&self, feat: &mut Vec<f32>, loc: &mut Vec<f32>) {
        let n = self.len();
        let d = self.features.len() / n;
        let mut global = vec![0f32; d];
        for row in self.features.chunks_exact(d) {
            for (g, &v) in global.iter_mut().zip(row) {
                *g += v;
            }
        }
        feat.extend(global.iter().map(|g| g / n as f32));
        feat.extend_from_slice(&self.features);
        loc.extend([0.0, 0.0, 1.0, 1.0, 1.0]);
        let (w, h) = (self.width, self.height);
        for &[x1, y1, x2, y2] in &self.boxes {
            let area = (y2 - y1) * (x2 - x1) / (w * h);
            loc.extend([x1 / w, y1 / h, x2 / w, y2 / h, area]);
        }
    }
}

/// A (caption, image) pair: the caption's WordPiece ids, `[CLS] … [SEP]`.
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    pub text: &'a [u32],
    pub image: &'a Regions,
}

/// What one forward pass over a batch of pairs gives.
pub struct InterBertOutput {
    /// ITM logits per pair, `[match, no match]`.
    pub itm_logits: Vec<[f32; 2]>,
    /// `softmax(itm_logits)[0]`: the match probability retrieval ranks by.
    pub itm_scores: Vec<f32>,
    /// Pooled text vectors `[pairs, bi_hidden_size]` (ReLU(Linear) on `[CLS]`).
    pub pooled_text: Tensor<2>,
    /// Pooled image vectors `[pairs, bi_hidden_size]` (on the global region).
    pub pooled_image: Tensor<2>,
    /// Final text states `[pairs, longest caption, hidden]`; past a caption's length: junk.
    pub text_states: Tensor<3>,
    /// Final image states `[pairs, most regions + 1, hidden]`, the global region first;
    /// past a pair's regions: junk.
    pub image_states: Tensor<3>,
}

/// The text embeddings, `bert.embeddings.*`.
struct TextEmbeddings {
    word: Tensor<2>,
    position: Tensor<2>,
    token_type: Tensor<2>,
    norm: LayerNorm,
}

/// A loaded InterBERT on one device.
pub struct InterBert {
    config: InterBertConfig,
    text: TextEmbeddings,
    image_feature: Dense,
    image_location: Dense,
    image_norm: LayerNorm,
    single: Vec<Layer>,
    text_layers: Vec<Layer>,
    image_layers: Vec<Layer>,
    text_pooler: Dense,
    image_pooler: Dense,
    /// `[bi_hidden_size, 2]`, and its bias `[2]`.
    itm_w: Tensor<2>,
    itm_b: Tensor<1>,
    device: Device,
}

impl InterBert {
    /// Loads a model directory (`config.json`, `model.safetensors`) with f32 weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, GgmlType::F32)
    }

    /// [`InterBert::load`] with the layers' dense weights converted to `format` (f32, f16,
    /// q8_0; embeddings, the 5-d box projection, norms and heads stay f32).
    pub fn load_as(dir: &Path, device: &Device, format: GgmlType) -> Result<Self> {
        let config = InterBertConfig::from_file(&dir.join("config.json"))?;
        let (path, bytes) = read_safetensors(dir)?;
        Self::from_safetensors(config, &bytes, &path, device, format)
    }

    /// Builds the model from safetensors bytes (`path` only names them in errors).
    pub fn from_safetensors(
        config: InterBertConfig,
        bytes: &[u8],
        path: &Path,
        device: &Device,
        format: GgmlType,
    ) -> Result<Self> {
        config.check()?;
        let c = &config;
        let h = c.hidden_size;
        check_format(
            "InterBERT",
            format,
            &[
                h,
                c.intermediate_size,
                c.v_intermediate_size,
                c.v_feature_size,
            ],
        )?;
        let mut w = Weights::with_prefix(bytes, path, "")?;
        let t2 = |v: Vec<f32>, r: usize, k: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [r, k]), device)
        };
        let table = |w: &mut Weights, name: &str, rows: usize| -> Result<Tensor<2>> {
            Ok(t2(w.get(name, &[rows, h])?, rows, h))
        };
        let text = TextEmbeddings {
            word: table(
                &mut w,
                "bert.embeddings.word_embeddings.weight",
                c.vocab_size,
            )?,
            position: table(
                &mut w,
                "bert.embeddings.position_embeddings.weight",
                c.max_position_embeddings,
            )?,
            token_type: table(
                &mut w,
                "bert.embeddings.token_type_embeddings.weight",
                c.type_vocab_size,
            )?,
            norm: LayerNorm::load(&mut w, "bert.embeddings.LayerNorm", h, EPS, device)?,
        };
        let f32_dense = |w: &mut Weights, name: &str, out: usize, inp: usize| {
            Dense::load(w, name, out, inp, GgmlType::F32, device)
        };
        let image_feature = Dense::load(
            &mut w,
            "bert.v_embeddings.image_embeddings",
            h,
            c.v_feature_size,
            format,
            device,
        )?;
        let image_location =
            f32_dense(&mut w, "bert.v_embeddings.image_location_embeddings", h, 5)?;
        let image_norm = LayerNorm::load(&mut w, "bert.v_embeddings.LayerNorm", h, EPS, device)?;

        let text_shape = LayerShape {
            hidden: h,
            heads: c.num_attention_heads,
            ffn: c.intermediate_size,
            eps: EPS,
        };
        let image_shape = LayerShape {
            heads: c.v_num_attention_heads,
            ffn: c.v_intermediate_size,
            ..text_shape
        };
        let layers = |w: &mut Weights, range: std::ops::Range<usize>, stack: &str, shape| {
            range
                .map(|l| {
                    Layer::load(
                        w,
                        &format!("bert.encoder.{stack}.{l}"),
                        shape,
                        format,
                        device,
                    )
                })
                .collect::<Result<Vec<_>>>()
        };
        let n = c.num_hidden_layers;
        let single = layers(&mut w, 0..n, "layer", text_shape)?;
        let text_layers = layers(&mut w, n..n + c.t_num_hidden_layers, "layer", text_shape)?;
        let image_layers = layers(&mut w, 0..c.v_num_hidden_layers, "v_layer", image_shape)?;

        let bi = c.bi_hidden_size;
        let text_pooler = f32_dense(&mut w, "bert.t_pooler.dense", bi, h)?;
        let image_pooler = f32_dense(&mut w, "bert.v_pooler.dense", bi, h)?;
        let itm = w.get("cls.bi_seq_relationship.weight", &[2, bi])?;
        let itm_b = w.get("cls.bi_seq_relationship.bias", &[2])?;
        let itm_t: Vec<f32> = (0..bi).flat_map(|i| [itm[i], itm[bi + i]]).collect();

        // Pre-training and task heads the ITM score does not use.
        let unused = w.unused(|n| {
            [
                "cls.predictions.",
                "cls.imagePredictions.",
                "vil_prediction.",
                "vil_logit.",
                "vision_logit.",
                "linguisic_logit.",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                || n.ends_with("position_ids")
        });
        if !unused.is_empty() {
            return Err(ModelError::Config(format!(
                "{}: tensors InterBERT does not use (more layers than config.json says?): {}",
                path.display(),
                unused.join(", ")
            )));
        }
        Ok(Self {
            text,
            image_feature,
            image_location,
            image_norm,
            single,
            text_layers,
            image_layers,
            text_pooler,
            image_pooler,
            itm_w: t2(itm_t, bi, 2),
            itm_b: Tensor::from_data(TensorData::new(itm_b, [2]), device),
            device: device.clone(),
            config,
        })
    }

    pub fn config(&self) -> &InterBertConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks a pair against the model's limits: an error, not a panic, for bad input.
    pub fn check_pair(&self, pair: &Pair) -> Result<()> {
        let c = &self.config;
        let bad = |msg: String| Err(ModelError::Config(msg));
        if pair.text.is_empty() {
            return bad("empty caption (it needs at least [CLS])".into());
        }
        if pair.text.len() > c.max_position_embeddings {
            return bad(format!(
                "caption of {} tokens is longer than max_position_embeddings {}",
                pair.text.len(),
                c.max_position_embeddings
            ));
        }
        if let Some(&id) = pair.text.iter().find(|&&i| i as usize >= c.vocab_size) {
            return bad(format!(
                "token id {id} is outside the vocabulary ({})",
                c.vocab_size
            ));
        }
        let img = pair.image;
        if img.features.len() != img.len() * c.v_feature_size {
            return bad(format!(
                "image regions: {} feature values for {} regions of {} (v_feature_size)",
                img.features.len(),
                img.len(),
                c.v_feature_size
            ));
        }
        Ok(())
    }

    /// One forward pass over `pairs` as one batch.
    pub fn forward(&self, pairs: &[Pair]) -> Result<InterBertOutput> {
        if pairs.is_empty() {
            return Err(ModelError::Config("no pairs".into()));
        }
        for p in pairs {
            self.check_pair(p)?;
        }
        let c = &self.config;
        let (b, h) = (pairs.len(), c.hidden_size);
        let dev = &self.device;
        let index = |v: Vec<i32>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), dev)
        };
        let n_img: Vec<usize> = pairs.iter().map(|p| p.image.tokens()).collect();
        let n_txt: Vec<usize> = pairs.iter().map(|p| p.text.len()).collect();
        let img_total: usize = n_img.iter().sum();

        // Text embeddings, unpadded: [Σ tokens, h].
        let ids: Vec<i32> = pairs
            .iter()
            .flat_map(|p| p.text)
            .map(|&i| i as i32)
            .collect();
        let pos: Vec<i32> = n_txt.iter().flat_map(|&t| 0..t as i32).collect();
        let t = &self.text;
        // Token type 0 for every token: its row, broadcast.
        let text = t.word.clone().select(0, index(ids)) + t.token_type.clone().slice([0..1, 0..h]);
        let text = t
            .norm
            .forward(text, t.position.clone().select(0, index(pos)));

        // Image embeddings, unpadded: [Σ regions + 1, h].
        let mut feat = Vec::with_capacity(img_total * c.v_feature_size);
        let mut loc = Vec::with_capacity(img_total * 5);
        for p in pairs {
            p.image.reader_inputs(&mut feat, &mut loc);
        }
        let feat =
            Tensor::<2>::from_data(TensorData::new(feat, [img_total, c.v_feature_size]), dev);
        let loc = Tensor::<2>::from_data(TensorData::new(loc, [img_total, 5]), dev);
        let image = self.image_norm.forward(
            self.image_feature.forward(feat, Act::None)?,
            self.image_location.forward(loc, Act::None)?,
        );

        // Joint rows: each pair's image tokens, its text tokens, then padding (row 0, junk).
        let all = Tensor::cat(vec![image, text], 0);
        let lengths: Vec<usize> = n_img.iter().zip(&n_txt).map(|(i, t)| i + t).collect();
        let seq = *lengths.iter().max().unwrap_or(&1);
        let (mut img_at, mut txt_at) = (0usize, img_total);
        let mut joint = Vec::with_capacity(b * seq);
        for (&ni, &nt) in n_img.iter().zip(&n_txt) {
            joint.extend((img_at..img_at + ni).map(|r| r as i32));
            joint.extend((txt_at..txt_at + nt).map(|r| r as i32));
            joint.extend(std::iter::repeat_n(0, seq - ni - nt));
            img_at += ni;
            txt_at += nt;
        }
        let mut x = all.select(0, index(joint));
        for layer in &self.single {
            x = layer.forward(x, &lengths, seq)?;
        }

        // Split into the two padded streams.
        let (img_seq, txt_seq) = (
            *n_img.iter().max().unwrap_or(&1),
            *n_txt.iter().max().unwrap_or(&1),
        );
        let mut img_rows = Vec::with_capacity(b * img_seq);
        let mut txt_rows = Vec::with_capacity(b * txt_seq);
        for (r, (&ni, &nt)) in n_img.iter().zip(&n_txt).enumerate() {
            let base = (r * seq) as i32;
            img_rows.extend((0..img_seq).map(|j| base + j.min(ni - 1) as i32));
            txt_rows.extend((0..txt_seq).map(|j| base + (ni + j.min(nt - 1)) as i32));
        }
        let mut text = x.clone().select(0, index(txt_rows));
        let mut image = x.select(0, index(img_rows));
        for layer in &self.text_layers {
            text = layer.forward(text, &n_txt, txt_seq)?;
        }
        for layer in &self.image_layers {
            image = layer.forward(image, &n_img, img_seq)?;
        }

        // Poolers on each stream's first token, fusion, ITM head.
        let first = |seq: usize| index((0..b).map(|r| (r * seq) as i32).collect());
        let relu = burn::tensor::activation::relu;
        let pooled_text = relu(
            self.text_pooler
                .forward(text.clone().select(0, first(txt_seq)), Act::None)?,
        );
        let pooled_image = relu(
            self.image_pooler
                .forward(image.clone().select(0, first(img_seq)), Act::None)?,
        );
        let fused = if c.fusion_method == "sum" {
            pooled_text.clone() + pooled_image.clone()
        } else {
            pooled_text.clone() * pooled_image.clone()
        };
        let logits = fused.matmul(self.itm_w.clone()) + self.itm_b.clone().unsqueeze::<2>();
        let logits: Vec<f32> = logits
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Config(format!("reading ITM logits: {e:?}")))?;
        let itm_logits: Vec<[f32; 2]> = logits.chunks_exact(2).map(|l| [l[0], l[1]]).collect();
        let itm_scores = itm_logits.iter().map(|&l| match_probability(l)).collect();
        Ok(InterBertOutput {
            itm_logits,
            itm_scores,
            pooled_text,
            pooled_image,
            text_states: text.reshape([b, txt_seq, h]),
            image_states: image.reshape([b, img_seq, h]),
        })
    }

    /// Match probabilities for any number of pairs, in their order: pairs sorted by joint
    /// length and run `batch` at a time, so that little is padded.
    pub fn itm_scores(&self, pairs: &[Pair], batch: usize) -> Result<Vec<f32>> {
        let batch = batch.max(1);
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| pairs[i].text.len() + pairs[i].image.tokens());
        let mut scores = vec![0f32; pairs.len()];
        for chunk in order.chunks(batch) {
            let group: Vec<Pair> = chunk.iter().map(|&i| pairs[i]).collect();
            let out = self.forward(&group)?;
            for (&i, s) in chunk.iter().zip(out.itm_scores) {
                scores[i] = s;
            }
        }
        Ok(scores)
    }
}

/// `softmax([a, b])[0]`, stably.
fn match_probability([a, b]: [f32; 2]) -> f32 {
    1.0 / (1.0 + (b - a).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_reject_bad_input() {
        assert!(Regions::new(vec![], vec![], 10.0, 10.0).is_err());
        assert!(Regions::new(vec![1.0; 3], vec![[0.0; 4]; 2], 10.0, 10.0).is_err());
        assert!(Regions::new(vec![1.0; 4], vec![[0.0; 4]; 2], 0.0, 10.0).is_err());
        assert!(Regions::new(vec![f32::NAN; 4], vec![[0.0; 4]; 2], 10.0, 10.0).is_err());
        assert!(Regions::new(vec![1.0; 4], vec![[0.0; 4]; 2], 10.0, 10.0).is_ok());
    }

    #[test]
    fn reader_inputs_prepend_the_global_region() {
        let r = Regions::new(
            vec![1.0, 2.0, 3.0, 6.0],
            vec![[0.0, 0.0, 10.0, 5.0], [5.0, 5.0, 10.0, 10.0]],
            10.0,
            20.0,
        )
        .unwrap();
        let (mut f, mut l) = (vec![], vec![]);
        r.reader_inputs(&mut f, &mut l);
        assert_eq!(f, [2.0, 4.0, 1.0, 2.0, 3.0, 6.0]);
        assert_eq!(
            l,
            [
                0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.25, 0.25, 0.5, 0.25, 1.0, 0.5, 0.125
            ]
        );
    }

    #[test]
    fn match_probability_is_softmax_class_zero() {
        let p = match_probability([2.0, -1.0]);
        let e = (2f32.exp()) / (2f32.exp() + (-1f32).exp());
        assert!((p - e).abs() < 1e-7);
        assert_eq!(match_probability([0.0, 0.0]), 0.5);
        assert!(match_probability([-100.0, 100.0]).is_finite());
    }
}
