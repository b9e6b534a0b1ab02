//! COPE (ICCV 2023, arXiv 2308.05550; code github adxcreative/COPE): one 128-d, L2-normalized
//! space for the three e-commerce domains — product pages (title + image), short videos and live
//! clips (frames) — so that a product can be retrieved across them by cosine.
//!
//! The graph is the one `models/shark_model.py`'s `shark.extract_features` runs in eval mode:
//! - text: `Roberta` (`models/text_relevance_model.py`), a BERT-architecture encoder (hfl rbt3
//!   or rbt6) whose `pooler_output`, `tanh(Linear([CLS]))`, is the title vector; titles are
//!   tokenized by the checkpoint's WordPiece vocabulary and truncated at 32 tokens
//!   (`datasets/shark_emb_infer.py`'s collate functions);
//! - vision: `xclip_vision` (`models/module_xclip.py`), X-CLIP's vision tower on a CLIP ViT:
//!   16×16 patches (a bias-free convolution), class token, learned positions, `ln_pre`, then
//!   `CrossFramelAttentionBlock`s — each first turns every frame's class token into a message
//!   (`message_fc`), lets the clip's frames attend to each other's messages (`message_ln`,
//!   `message_attn`, residual), appends the message as one more token to its frame for the
//!   block's pre-LN self-attention, drops it again, then the QuickGELU MLP — then `ln_post`
//!   on the class token and `proj`; the multi-frame integration transformer
//!   (`MultiframeIntegrationTransformer`: learned positions for T frames, pre-LN blocks,
//!   residual from its input, mean over the frames) gives the clip's vector. A single image
//!   (T = 1) is broadcast over all T positions, as PyTorch's broadcasting does in the
//!   reference — the quirk is reproduced, so the mean is over T rows, not one;
//! - fusion (`models/module_fusion_layer.py`, `TextVideoAttentionFusionModel`): product page
//!   = `attention_pooling.projection(concat[fc0(text), fc1(visual)])`, short video and live =
//!   their own head's `fc1(visual)`; each L2-normalized (`F.normalize`). `fc2` is never used.
//!
//! Frames for videos and live clips are picked at the centres of equal segments
//! ([`sample_frames`]); images are preprocessed by [`Cope::image_spec`] (stretch to 224×224
//! with PIL's bilinear filter, ImageNet mean/std — [`ImageSpec::cope`]).
//!
//! The weights come from the repository's training checkpoint through
//! `scripts/convert/cope.py` (model directory: `config.json`, `model.safetensors`,
//! `tokenizer.json`).

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use kiln_kernels::cpu::gemm::Act;
use kiln_kernels::encoder;
use kiln_quant::GgmlType;

use crate::bert::{
    Bert, BertConfig, Dense, LayerNorm, TokenBatch, Weights, check_format, read_config,
    read_safetensors, transpose,
};
use crate::image::{ImageSpec, Resize};
use crate::{ModelError, Result};

/// The vision tower's shape, as `scripts/convert/cope.py` reads it from the checkpoint (the
/// way `module_xclip.build_model` does).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// `proj`'s output: the visual vector's width (512 in X-CLIP B/16).
    pub embed_dim: usize,
    pub mit_layers: usize,
    pub mit_heads: usize,
    /// The integration transformer's positions (X-CLIP's T = 8).
    pub frames: usize,
    /// `nn.LayerNorm`'s default, 1e-5, everywhere in the tower.
    #[serde(default = "default_vision_eps")]
    pub layer_norm_eps: f64,
}

fn default_vision_eps() -> f64 {
    1e-5
}

/// `config.json` of a converted COPE checkpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CopeConfig {
    pub model_type: String,
    /// The text encoder's BERT config (the rbt3/rbt6 directory's `config.json`).
    pub text: BertConfig,
    pub vision: VisionConfig,
    /// The shared space's width (`--embedding_size`, 128).
    pub embedding_size: usize,
    /// Titles are truncated at this many tokens, `[CLS]` and `[SEP]` included.
    pub max_title_tokens: usize,
}

impl CopeConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_config(path, "scripts/convert/cope.py")?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if self.model_type != "cope" {
            return Err(ModelError::Architecture(self.model_type.clone()));
        }
        self.text.check()?;
        let v = &self.vision;
        let dims = [
            v.image_size,
            v.patch_size,
            v.width,
            v.heads,
            v.embed_dim,
            v.mit_heads,
            v.frames,
            self.embedding_size,
            self.max_title_tokens,
        ];
        if dims.iter().any(|&d| d == 0 || d > 1 << 16)
            || v.layers > 256
            || v.mit_layers > 256
            || v.frames > 1024
        {
            return bad(format!(
                "config.json: implausible dimensions {dims:?}, layers {} + {}",
                v.layers, v.mit_layers
            ));
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        for (width, heads, what) in [
            (v.width, v.heads, "vision width/heads"),
            (v.embed_dim, v.mit_heads, "embed_dim/mit_heads"),
        ] {
            if !width.is_multiple_of(heads) {
                return bad(format!("{what}: {width} is not a multiple of {heads}"));
            }
        }
        if self.max_title_tokens < 2 || self.max_title_tokens > self.text.max_position_embeddings {
            return bad(format!(
                "max_title_tokens {} outside 2..={} (max_position_embeddings)",
                self.max_title_tokens, self.text.max_position_embeddings
            ));
        }
        Ok(())
    }

    /// Patch tokens per frame plus the class token.
    pub fn tokens_per_frame(&self) -> usize {
        let g = self.vision.image_size / self.vision.patch_size;
        g * g + 1
    }
}

/// Which of the three domains an embedding is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A product page: title + one image.
    Product,
    /// A short video: frames.
    Video,
    /// A live-stream clip: frames.
    Live,
}

impl Domain {
    pub fn name(self) -> &'static str {
        match self {
            Domain::Product => "product",
            Domain::Video => "video",
            Domain::Live => "live",
        }
    }

    /// `product`, `video` or `live`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "product" => Ok(Domain::Product),
            "video" => Ok(Domain::Video),
            "live" => Ok(Domain::Live),
            other => Err(ModelError::Config(format!(
                "domain {other:?}: COPE has product, video and live"
            ))),
        }
    }
}

/// The frames a clip of `available` frames contributes, `clip_length` of them at the centres
/// of equal segments: `int((2i + 1) · L / 2)` with `L = available / clip_length`
/// (`shark_emb_infer.py`). Fewer available frames than `clip_length` repeat some.
pub fn sample_frames(available: usize, clip_length: usize) -> Vec<usize> {
    if available == 0 {
        return Vec::new();
    }
    let l = available as f64 / clip_length as f64;
    (0..clip_length)
        .map(|i| (((2 * i + 1) as f64 * l / 2.0) as usize).min(available - 1))
        .collect()
}

/// `nn.MultiheadAttention` (batch_first = False, no mask): `in_proj` Q, K, V side by side,
/// `out_proj`.
struct Mha {
    qkv: Dense,
    out: Dense,
    heads: usize,
}

impl Mha {
    fn load(
        w: &mut Weights,
        p: &str,
        width: usize,
        heads: usize,
        format: GgmlType,
        device: &Device,
    ) -> Result<Self> {
        let qkv_w = w.get(&format!("{p}.in_proj_weight"), &[3 * width, width])?;
        let qkv_b = w.get(&format!("{p}.in_proj_bias"), &[3 * width])?;
        Ok(Self {
            qkv: Dense::new(&qkv_w, qkv_b, 3 * width, width, format, device)?,
            out: Dense::load(w, &format!("{p}.out_proj"), width, width, format, device)?,
            heads,
        })
    }

    /// `x` holds `rows` sequences of `seq` tokens, all real.
    fn forward(&self, x: Tensor<2>, rows: usize, seq: usize) -> Result<Tensor<2>> {
        let ctx = self.context(x, rows, seq)?;
        self.out.forward(ctx, Act::None)
    }

    /// The heads' attention output before `out_proj`.
    fn context(&self, x: Tensor<2>, rows: usize, seq: usize) -> Result<Tensor<2>> {
        let [_, width] = x.dims();
        let qkv = self.qkv.forward(x, Act::None)?;
        let lengths = vec![seq; rows];
        Ok(encoder::self_attention(
            qkv,
            &lengths,
            seq,
            self.heads,
            width / self.heads,
        ))
    }
}

/// `c_fc`, QuickGELU (`x · σ(1.702 x)`, fused into `c_fc`), `c_proj`.
struct Mlp {
    fc: Dense,
    proj: Dense,
}

impl Mlp {
    fn load(
        w: &mut Weights,
        p: &str,
        width: usize,
        format: GgmlType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            fc: Dense::load(w, &format!("{p}.c_fc"), 4 * width, width, format, device)?,
            proj: Dense::load(w, &format!("{p}.c_proj"), width, 4 * width, format, device)?,
        })
    }

    fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let up = self.fc.forward(x, Act::QuickGelu)?;
        self.proj.forward(up, Act::None)
    }
}

/// One `CrossFramelAttentionBlock`.
struct CrossFrameBlock {
    message_fc: Dense,
    message_ln: LayerNorm,
    message_attn: Mha,
    attn: Mha,
    ln_1: LayerNorm,
    mlp: Mlp,
    ln_2: LayerNorm,
}

/// One pre-LN `ResidualAttentionBlock` of the integration transformer.
struct MitBlock {
    attn: Mha,
    ln_1: LayerNorm,
    mlp: Mlp,
    ln_2: LayerNorm,
}

impl MitBlock {
    /// `x`: `rows` sequences of `seq` tokens.
    fn forward(&self, x: Tensor<2>, rows: usize, seq: usize) -> Result<Tensor<2>> {
        let x = x.clone() + self.attn.forward(self.ln_1.norm(x), rows, seq)?;
        Ok(x.clone() + self.mlp.forward(self.ln_2.norm(x))?)
    }
}

/// X-CLIP's vision tower and integration transformer.
struct Vision {
    /// The patch convolution as a dense layer over `[c, kh, kw]`-ordered patches (no bias).
    patch: Dense,
    class: Tensor<1>,
    /// `[tokens, width]`.
    positions: Tensor<2>,
    ln_pre: LayerNorm,
    blocks: Vec<CrossFrameBlock>,
    ln_post: LayerNorm,
    /// `x @ proj` (no bias).
    proj: Dense,
    /// `[frames, embed_dim]`.
    mit_positions: Tensor<2>,
    mit: Vec<MitBlock>,
}

/// The product-page fusion head (`item_fusion_model`, a `TextVideoAttentionFusionModel`):
/// `fc0` on the text vector, `fc1` on the visual one, the pooling projection on both.
struct ProductHead {
    fc0: Dense,
    fc1: Dense,
    projection: Dense,
}

/// A loaded COPE model on one device.
pub struct Cope {
    config: CopeConfig,
    text: Bert,
    pooler: Dense,
    tokenizer: Tokenizer,
    vision: Vision,
    product: ProductHead,
    /// `photo_fusion_model.fc1` and `live_fusion_model.fc1`: the clip heads use only that.
    video: Dense,
    live: Dense,
    device: Device,
}

/// The formats COPE's dense weights load as (LayerNorms, biases, embeddings' positions stay
/// f32).
pub const WEIGHT_FORMATS: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0];

fn zeros(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

impl Cope {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from a directory written
    /// by `scripts/convert/cope.py`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, GgmlType::F32)
    }

    /// [`Cope::load`] with the dense weights converted to `format` ([`WEIGHT_FORMATS`]).
    pub fn load_as(dir: &Path, device: &Device, format: GgmlType) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Config(format!(
                "{}: not a model directory",
                dir.display()
            )));
        }
        let config = CopeConfig::from_file(&dir.join("config.json"))?;
        let (path, bytes) = read_safetensors(dir)?;
        let tk_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tk_path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tk_path.display())))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_title_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        Self::from_safetensors(config, &bytes, &path, tokenizer, device, format)
    }

    /// Builds the model from safetensors bytes (`path` only names them in errors).
    pub fn from_safetensors(
        config: CopeConfig,
        bytes: &[u8],
        path: &Path,
        tokenizer: Tokenizer,
        device: &Device,
        format: GgmlType,
    ) -> Result<Self> {
        config.check()?;
        let (v, e) = (&config.vision, config.embedding_size);
        let th = config.text.hidden_size;
        let patch_in = 3 * v.patch_size * v.patch_size;
        check_format(
            "COPE",
            format,
            &[
                th,
                config.text.intermediate_size,
                v.width,
                patch_in,
                v.embed_dim,
                2 * e,
            ],
        )?;
        let mut w = Weights::with_prefix(bytes, path, "")?;

        let mut tw = Weights::with_prefix(bytes, path, "text_encoder.bert_model.")?;
        let text = Bert::from_weights(config.text.clone(), &mut tw, device, format)?;
        let pooler = Dense::load(&mut tw, "pooler.dense", th, th, format, device)?;
        let text_unused = tw
            .unused(|n| !n.starts_with("text_encoder.bert_model.") || n.ends_with("position_ids"));

        let vision = Self::load_vision(&mut w, &config, format, device)?;
        let fc1 = |w: &mut Weights, name: &str| {
            Dense::load(w, &format!("{name}.fc1"), e, v.embed_dim, format, device)
        };
        let product = ProductHead {
            fc0: Dense::load(&mut w, "item_fusion_model.fc0", e, th, format, device)?,
            fc1: fc1(&mut w, "item_fusion_model")?,
            projection: Dense::load(
                &mut w,
                "item_fusion_model.attention_pooling.projection",
                e,
                2 * e,
                format,
                device,
            )?,
        };
        let video = fc1(&mut w, "photo_fusion_model")?;
        let live = fc1(&mut w, "live_fusion_model")?;

        // Everything else must be something extract_features does not read either.
        let mut unused = w.unused(|n| {
            n.starts_with("text_encoder.")
                || n.contains("_fusion_model.fc2.")
                || n.starts_with("photo_fusion_model.attention_pooling.")
                || n.starts_with("live_fusion_model.attention_pooling.")
        });
        unused.extend(text_unused);
        if !unused.is_empty() {
            return Err(ModelError::Config(format!(
                "{}: tensors COPE's extract_features does not use: {}",
                path.display(),
                unused.join(", ")
            )));
        }
        Ok(Self {
            config,
            text,
            pooler,
            tokenizer,
            vision,
            product,
            video,
            live,
            device: device.clone(),
        })
    }

    fn load_vision(
        w: &mut Weights,
        config: &CopeConfig,
        format: GgmlType,
        device: &Device,
    ) -> Result<Vision> {
        let v = &config.vision;
        let (width, p, eps) = (v.width, v.patch_size, v.layer_norm_eps);
        let tokens = config.tokens_per_frame();
        let t1 = |x: Vec<f32>, n: usize| Tensor::<1>::from_data(TensorData::new(x, [n]), device);
        let t2 = |x: Vec<f32>, r: usize, c: usize| {
            Tensor::<2>::from_data(TensorData::new(x, [r, c]), device)
        };
        let vp = "visual_encoder.visual";
        let conv = w.get(&format!("{vp}.conv1.weight"), &[width, 3, p, p])?;
        let patch = Dense::new(&conv, zeros(width), width, 3 * p * p, format, device)?;
        let class = t1(w.get(&format!("{vp}.class_embedding"), &[width])?, width);
        let positions = t2(
            w.get(&format!("{vp}.positional_embedding"), &[tokens, width])?,
            tokens,
            width,
        );
        let ln = |w: &mut Weights, name: &str, n: usize| LayerNorm::load(w, name, n, eps, device);
        let ln_pre = ln(w, &format!("{vp}.ln_pre"), width)?;
        let blocks = (0..v.layers)
            .map(|l| {
                let b = format!("{vp}.transformer.resblocks.{l}");
                Ok(CrossFrameBlock {
                    message_fc: Dense::load(
                        w,
                        &format!("{b}.message_fc"),
                        width,
                        width,
                        format,
                        device,
                    )?,
                    message_ln: ln(w, &format!("{b}.message_ln"), width)?,
                    message_attn: Mha::load(
                        w,
                        &format!("{b}.message_attn"),
                        width,
                        v.heads,
                        format,
                        device,
                    )?,
                    attn: Mha::load(w, &format!("{b}.attn"), width, v.heads, format, device)?,
                    ln_1: ln(w, &format!("{b}.ln_1"), width)?,
                    mlp: Mlp::load(w, &format!("{b}.mlp"), width, format, device)?,
                    ln_2: ln(w, &format!("{b}.ln_2"), width)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_post = ln(w, &format!("{vp}.ln_post"), width)?;
        let proj_w = w.get(&format!("{vp}.proj"), &[width, v.embed_dim])?;
        // `x @ proj`: the parameter is `[in, out]`, Dense takes PyTorch's `[out, in]`.
        let proj = Dense::new(
            &transpose(&proj_w, width, v.embed_dim),
            zeros(v.embed_dim),
            v.embed_dim,
            width,
            format,
            device,
        )?;
        let mp = "visual_encoder.mit";
        let mit_positions = t2(
            w.get(
                &format!("{mp}.positional_embedding"),
                &[1, v.frames, v.embed_dim],
            )?,
            v.frames,
            v.embed_dim,
        );
        let mit = (0..v.mit_layers)
            .map(|l| {
                let b = format!("{mp}.resblocks.{l}");
                Ok(MitBlock {
                    attn: Mha::load(
                        w,
                        &format!("{b}.attn"),
                        v.embed_dim,
                        v.mit_heads,
                        format,
                        device,
                    )?,
                    ln_1: ln(w, &format!("{b}.ln_1"), v.embed_dim)?,
                    mlp: Mlp::load(w, &format!("{b}.mlp"), v.embed_dim, format, device)?,
                    ln_2: ln(w, &format!("{b}.ln_2"), v.embed_dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Vision {
            patch,
            class,
            positions,
            ln_pre,
            blocks,
            ln_post,
            proj,
            mit_positions,
            mit,
        })
    }

    pub fn config(&self) -> &CopeConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The width of the shared space.
    pub fn dim(&self) -> usize {
        self.config.embedding_size
    }

    /// How images are preprocessed for this model: [`ImageSpec::cope`] at the checkpoint's
    /// image size.
    pub fn image_spec(&self) -> ImageSpec {
        let n = self.config.vision.image_size as u32;
        ImageSpec {
            resize: Resize::Exact {
                width: n,
                height: n,
            },
            crop: [n, n],
            ..ImageSpec::cope()
        }
    }

    /// Floats in one preprocessed frame (`3 × size × size`).
    pub fn frame_len(&self) -> usize {
        let n = self.config.vision.image_size;
        3 * n * n
    }

    /// A title's token ids, `[CLS] … [SEP]`, truncated at `max_title_tokens`.
    pub fn tokenize(&self, title: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(title, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The titles' pooler outputs `[titles, hidden]` (the text vector before fusion).
    pub fn text_features(&self, titles: &[&str]) -> Result<Tensor<2>> {
        let ids = titles
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<Vec<u32>> = ids.iter().map(|i| vec![0; i.len()]).collect();
        let rows: Vec<(&[u32], &[u32])> = ids
            .iter()
            .zip(&types)
            .map(|(i, t)| (i.as_slice(), t.as_slice()))
            .collect();
        let batch = TokenBatch::pad(&rows);
        let b = batch.rows();
        let h = self.config.text.hidden_size;
        let states = self.text.forward(&batch)?; // [b, s, h]
        let cls = states.slice([0..b, 0..1, 0..h]).reshape([b, h]);
        Ok(self.pooler.forward(cls, Act::None)?.tanh())
    }

    /// Checks `clips` (each a list of preprocessed frames) and stacks them into one
    /// `[clips · t, 3, size, size]` tensor; every clip must have the same frame count `t`.
    fn stack_frames(&self, clips: &[Vec<&[f32]>]) -> Result<(Tensor<4>, usize)> {
        let t = clips.first().map_or(0, Vec::len);
        let frames = self.config.vision.frames;
        if t == 0 {
            return Err(ModelError::Config("a clip without frames".into()));
        }
        if t != 1 && t != frames {
            return Err(ModelError::Config(format!(
                "a clip of {t} frames: this model integrates {frames} (or one image, broadcast \
                 over its {frames} positions as the reference does)"
            )));
        }
        let len = self.frame_len();
        let mut data = Vec::with_capacity(clips.len() * t * len);
        for clip in clips {
            if clip.len() != t {
                return Err(ModelError::Config(format!(
                    "clips of {} and {t} frames in one batch",
                    clip.len()
                )));
            }
            for f in clip {
                if f.len() != len {
                    return Err(ModelError::Config(format!(
                        "a frame of {} floats, expected 3 × {n} × {n} = {len}",
                        f.len(),
                        n = self.config.vision.image_size
                    )));
                }
                if f.iter().any(|x| !x.is_finite()) {
                    return Err(ModelError::Config("a frame value is not finite".into()));
                }
                data.extend_from_slice(f);
            }
        }
        let n = self.config.vision.image_size;
        let x = Tensor::<4>::from_data(
            TensorData::new(data, [clips.len() * t, 3, n, n]),
            &self.device,
        );
        Ok((x, t))
    }

    /// The visual vectors `[clips, embed_dim]` (the vision tower and integration transformer's
    /// output, before fusion) of clips of equally many frames (1 or `vision.frames`).
    pub fn visual_features(&self, clips: &[Vec<&[f32]>]) -> Result<Tensor<2>> {
        let (frames, t) = self.stack_frames(clips)?;
        self.vision_forward(frames, clips.len(), t)
    }

    fn vision_forward(&self, frames: Tensor<4>, b: usize, t: usize) -> Result<Tensor<2>> {
        let v = &self.config.vision;
        let vis = &self.vision;
        let (p, width, e) = (v.patch_size, v.width, v.embed_dim);
        let g = v.image_size / p;
        let l = g * g + 1;
        let n = b * t;

        // Patches as rows of [c, kh, kw] (the convolution's weight layout).
        let patches = frames
            .reshape([n, 3, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n * g * g, 3 * p * p]);
        let x = vis
            .patch
            .forward(patches, Act::None)?
            .reshape([n, g * g, width]);
        let class = vis.class.clone().reshape([1, 1, width]).repeat_dim(0, n);
        let x = Tensor::cat(vec![class, x], 1).reshape([n * l, width]);
        let pos = vis
            .positions
            .clone()
            .unsqueeze::<3>()
            .repeat_dim(0, n)
            .reshape([n * l, width]);
        let mut x = vis.ln_pre.forward(x, pos);

        // Only the class tokens are read after the last block (extract_features uses neither
        // the patch tokens nor their projection), so that block stops at them once its
        // attention has read every token.
        let cls = match vis.blocks.split_last() {
            None => x
                .reshape([n, l, width])
                .slice([0..n, 0..1, 0..width])
                .reshape([n, width]),
            Some((last, rest)) => {
                for blk in rest {
                    x = self.cross_frame(blk, x, b, t, l, false)?;
                }
                self.cross_frame(last, x, b, t, l, true)?
            }
        };
        let cls = vis.ln_post.norm(cls);
        let cls = vis.proj.forward(cls, Act::None)?; // [n, e]

        // Integration over the clip's frames; one image is broadcast over every position.
        let pn = v.frames;
        let x0 = cls.reshape([b, t, e]);
        let x0 = if t == 1 { x0.repeat_dim(1, pn) } else { x0 };
        let pos = vis.mit_positions.clone().unsqueeze::<3>().repeat_dim(0, b);
        let x0 = x0.reshape([b * pn, e]);
        let mut x = x0.clone() + pos.reshape([b * pn, e]);
        for blk in &vis.mit {
            x = blk.forward(x, b, pn)?;
        }
        let x = x + x0;
        Ok(x.reshape([b, pn, e]).mean_dim(1).reshape([b, e]))
    }

    fn cross_frame(
        &self,
        blk: &CrossFrameBlock,
        x: Tensor<2>,
        b: usize,
        t: usize,
        l: usize,
        class_only: bool,
    ) -> Result<Tensor<2>> {
        let width = self.config.vision.width;
        let n = b * t;
        let x3 = x.clone().reshape([n, l, width]);
        // Messages: each frame's class token, attended across the clip's frames.
        let cls = x3.clone().slice([0..n, 0..1, 0..width]).reshape([n, width]);
        let msg = blk.message_fc.forward(cls, Act::None)?;
        let msg = msg.clone() + blk.message_attn.forward(blk.message_ln.norm(msg), b, t)?;
        // The frame's tokens and its message; the message is dropped after the attention.
        let xm = Tensor::cat(vec![x3, msg.reshape([n, 1, width])], 1).reshape([n * (l + 1), width]);
        let ctx = blk.attn.context(blk.ln_1.norm(xm), n, l + 1)?;
        // The block's output rows: every frame token, or (class_only) each frame's first.
        let (keep, x) = if class_only {
            (0..1, x.reshape([n, l, width]).slice([0..n, 0..1, 0..width]))
        } else {
            (0..l, x.reshape([n, l, width]))
        };
        let rows = n * keep.len();
        let ctx = ctx
            .reshape([n, l + 1, width])
            .slice([0..n, keep, 0..width])
            .reshape([rows, width]);
        let x = x.reshape([rows, width]) + blk.attn.out.forward(ctx, Act::None)?;
        Ok(x.clone() + blk.mlp.forward(blk.ln_2.norm(x))?)
    }

    /// Product-page embeddings (title + image), L2-normalized, `[pages, embedding_size]`
    /// row-major. `images[i]` is page `i`'s preprocessed image ([`Cope::image_spec`]).
    pub fn embed_products(&self, titles: &[&str], images: &[&[f32]]) -> Result<Vec<f32>> {
        if titles.len() != images.len() {
            return Err(ModelError::Config(format!(
                "{} titles for {} images",
                titles.len(),
                images.len()
            )));
        }
        if titles.is_empty() {
            return Ok(Vec::new());
        }
        let text = self.text_features(titles)?;
        let clips: Vec<Vec<&[f32]>> = images.iter().map(|&i| vec![i]).collect();
        let visual = self.visual_features(&clips)?;
        let head = &self.product;
        let t = head.fc0.forward(text, Act::None)?;
        let v = head.fc1.forward(visual, Act::None)?;
        let emb = head
            .projection
            .forward(Tensor::cat(vec![t, v], 1), Act::None)?;
        read_normalized(emb)
    }

    /// Video or live-clip embeddings from frames, L2-normalized, `[clips, embedding_size]`
    /// row-major. Each clip has `vision.frames` frames (or one image); clips of both kinds may
    /// be mixed.
    pub fn embed_clips(&self, domain: Domain, clips: &[Vec<&[f32]>]) -> Result<Vec<f32>> {
        let head = match domain {
            Domain::Video => &self.video,
            Domain::Live => &self.live,
            Domain::Product => {
                return Err(ModelError::Config(
                    "product pages have a title: use embed_products".into(),
                ));
            }
        };
        let e = self.dim();
        let mut out = vec![0f32; clips.len() * e];
        // One batch per frame count (the integration transformer needs one count per batch).
        for single in [true, false] {
            let idx: Vec<usize> = (0..clips.len())
                .filter(|&i| (clips[i].len() == 1) == single)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let group: Vec<Vec<&[f32]>> = idx.iter().map(|&i| clips[i].clone()).collect();
            let visual = self.visual_features(&group)?;
            let rows = read_normalized(head.forward(visual, Act::None)?)?;
            for (k, &i) in idx.iter().enumerate() {
                out[i * e..(i + 1) * e].copy_from_slice(&rows[k * e..(k + 1) * e]);
            }
        }
        Ok(out)
    }
}

/// `F.normalize(x, dim=-1)` (`x / max(‖x‖, 1e-12)`), read back row-major.
fn read_normalized(x: Tensor<2>) -> Result<Vec<f32>> {
    let [_, d] = x.dims();
    let mut v: Vec<f32> = x
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Config(format!("reading embeddings back: {e:?}")))?;
    for row in v.chunks_exact_mut(d) {
        let n = row
            .iter()
            .map(|&a| f64::from(a) * f64::from(a))
            .sum::<f64>()
            .sqrt();
        let n = n.max(1e-12) as f32;
        row.iter_mut().for_each(|a| *a /= n);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sampled_at_segment_centres() {
        // int((2i + 1) · L / 2), L = n / 8, as shark_emb_infer.py picks them.
        assert_eq!(sample_frames(16, 8), vec![1, 3, 5, 7, 9, 11, 13, 15]);
        assert_eq!(sample_frames(8, 8), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(sample_frames(3, 8), vec![0, 0, 0, 1, 1, 2, 2, 2]);
        assert_eq!(sample_frames(100, 8), vec![6, 18, 31, 43, 56, 68, 81, 93]);
        assert!(sample_frames(0, 8).is_empty());
    }

    #[test]
    fn domains_parse() {
        for d in [Domain::Product, Domain::Video, Domain::Live] {
            assert_eq!(Domain::parse(d.name()).unwrap(), d);
        }
        assert!(Domain::parse("photo").is_err());
    }
}
