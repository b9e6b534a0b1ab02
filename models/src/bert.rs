//! BERT-family encoder (BERT, MiniLM, …) from a Hugging Face model directory: absolute position
//! and token-type embeddings, post-LayerNorm blocks, exact (erf) GELU, and an attention mask so
//! that padding never changes a real token's state.
//!
//! The graph follows HF transformers `models/bert/modeling_bert.py` (`BertEmbeddings`,
//! `BertSelfAttention`, `BertSelfOutput`, `BertIntermediate`, `BertOutput`) in eval mode.
//! Written with Burn tensor ops only, so it runs on every Burn device (Flex on the CPU, wgpu,
//! CUDA).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use kiln_kernels::QTensor;
use kiln_kernels::cpu::gemm::Act;
use kiln_kernels::encoder::{self, PackedLinear};
use kiln_kernels::qmatmul::{qmatmul, qrows};
use kiln_quant::GgmlType;

use crate::{ModelError, Result};

/// Hyperparameters from `config.json`, resolved once.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        config.check()?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config(msg));
        if !matches!(self.model_type.as_str(), "bert") {
            return Err(ModelError::Architecture(self.model_type.clone()));
        }
        if self.hidden_act != "gelu" {
            return bad(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        let dims = [
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.max_position_embeddings,
            self.type_vocab_size,
        ];
        if dims.iter().any(|&d| d == 0 || d > 1 << 24) {
            return bad(format!("config.json: implausible dimensions {dims:?}"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A padded batch of token sequences, as the encoder takes it.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// Rows × `seq_len` token ids, padded with 0.
    pub ids: Vec<u32>,
    /// Token type (segment) ids, same layout.
    pub type_ids: Vec<u32>,
    /// Real tokens per row (the rest is padding).
    pub lengths: Vec<usize>,
    pub seq_len: usize,
}

impl TokenBatch {
    /// Pads `rows` (ids, type ids) to the longest row.
    pub fn pad(rows: &[(&[u32], &[u32])]) -> Self {
        let seq_len = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; rows.len() * seq_len];
        let mut type_ids = vec![0u32; rows.len() * seq_len];
        let mut lengths = Vec::with_capacity(rows.len());
        for (r, (i, t)) in rows.iter().enumerate() {
            ids[r * seq_len..r * seq_len + i.len()].copy_from_slice(i);
            type_ids[r * seq_len..r * seq_len + t.len()].copy_from_slice(t);
            lengths.push(i.len());
        }
        Self {
            ids,
            type_ids,
            lengths,
            seq_len,
        }
    }

    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Padded positions (`rows × seq_len`) minus real tokens.
    pub fn padding(&self) -> usize {
        self.rows() * self.seq_len - self.lengths.iter().sum::<usize>()
    }
}

pub(crate) struct LayerNorm {
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    /// `{name}.weight` and `{name}.bias`, `width` wide.
    pub(crate) fn load(
        w: &mut Weights,
        name: &str,
        width: usize,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        let t1 = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [width]), device);
        Ok(LayerNorm {
            gamma: t1(w.get(&format!("{name}.weight"), &[width])?),
            beta: t1(w.get(&format!("{name}.bias"), &[width])?),
            eps,
        })
    }

    /// `LayerNorm(x + residual)` over the last dimension (`torch.nn.LayerNorm`, biased
    /// variance).
    pub(crate) fn forward(&self, x: Tensor<2>, residual: Tensor<2>) -> Tensor<2> {
        encoder::add_layer_norm(x, Some(residual), &self.gamma, &self.beta, self.eps as f32)
    }

    /// `LayerNorm(x)`, no residual.
    pub(crate) fn norm(&self, x: Tensor<2>) -> Tensor<2> {
        encoder::add_layer_norm(x, None, &self.gamma, &self.beta, self.eps as f32)
    }
}

/// A dense layer, its weight laid out at load for Kiln's kernels on the model's device: f32
/// packed for the encoder's fused dense kernel, or GGUF blocks (f16, q8_0) for Kiln's
/// quantized matrix product (activations rounded to the weight's dot format, as llama.cpp
/// does), then bias and GELU.
pub(crate) enum Dense {
    Packed(PackedLinear),
    Blocks { w: QTensor, bias: Tensor<1> },
}

impl Dense {
    /// `{name}.weight` (`[out, in]`) and `{name}.bias`.
    pub(crate) fn load(
        w: &mut Weights,
        name: &str,
        out: usize,
        inp: usize,
        format: GgmlType,
        device: &Device,
    ) -> Result<Self> {
        let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
        let bias = w.get(&format!("{name}.bias"), &[out])?;
        Dense::new(&weight, bias, out, inp, format, device)
    }

    /// From PyTorch's `[out, in]` weight.
    pub(crate) fn new(
        w: &[f32],
        b: Vec<f32>,
        out: usize,
        inp: usize,
        format: GgmlType,
        device: &Device,
    ) -> Result<Self> {
        if format == GgmlType::F32 {
            let t = transpose(w, out, inp);
            return Ok(Dense::Packed(PackedLinear::new(&t, b, inp, out, device)?));
        }
        let bytes = kiln_quant::blocks::quantize_to_vec(format, w)?;
        Ok(Dense::Blocks {
            w: QTensor::from_blocks("dense", format, &[out, inp], &bytes, device)?,
            bias: Tensor::from_data(TensorData::new(b, [out]), device),
        })
    }

    pub(crate) fn forward(&self, x: Tensor<2>, act: Act) -> Result<Tensor<2>> {
        match self {
            Dense::Packed(p) => Ok(encoder::dense(x, p, act)),
            Dense::Blocks { w, bias } => {
                let y = qmatmul(x, w)? + bias.clone().unsqueeze::<2>();
                Ok(match act {
                    Act::None => y,
                    Act::Gelu => burn::tensor::activation::gelu(y),
                    Act::QuickGelu => burn::tensor::activation::sigmoid(y.clone() * 1.702) * y,
                })
            }
        }
    }
}

/// One post-LayerNorm BERT block (`BertLayer`): self-attention, residual + LayerNorm, GELU
/// feed-forward, residual + LayerNorm.
pub(crate) struct Layer {
    /// Q, K and V side by side: `[hidden, 3·hidden]`.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: LayerNorm,
    ffn_up: Dense,
    ffn_down: Dense,
    ffn_norm: LayerNorm,
    heads: usize,
}

/// A block's widths.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerShape {
    pub hidden: usize,
    pub heads: usize,
    pub ffn: usize,
    pub eps: f64,
}

impl Layer {
    /// The block under `{p}.attention.*`, `{p}.intermediate.*`, `{p}.output.*`.
    pub(crate) fn load(
        w: &mut Weights,
        p: &str,
        shape: LayerShape,
        format: GgmlType,
        device: &Device,
    ) -> Result<Self> {
        let LayerShape {
            hidden: h,
            ffn: ff,
            eps,
            ..
        } = shape;
        // Q, K, V fused into one [h, 3h] matrix: one matmul instead of three.
        let mut qkv_w = Vec::with_capacity(3 * h * h);
        let mut qkv_b = Vec::with_capacity(3 * h);
        for part in ["query", "key", "value"] {
            qkv_w.extend(w.get(&format!("{p}.attention.self.{part}.weight"), &[h, h])?);
            qkv_b.extend(w.get(&format!("{p}.attention.self.{part}.bias"), &[h])?);
        }
        Ok(Layer {
            qkv: Dense::new(&qkv_w, qkv_b, 3 * h, h, format, device)?,
            attn_out: Dense::load(
                w,
                &format!("{p}.attention.output.dense"),
                h,
                h,
                format,
                device,
            )?,
            attn_norm: LayerNorm::load(
                w,
                &format!("{p}.attention.output.LayerNorm"),
                h,
                eps,
                device,
            )?,
            ffn_up: Dense::load(w, &format!("{p}.intermediate.dense"), ff, h, format, device)?,
            ffn_down: Dense::load(w, &format!("{p}.output.dense"), h, ff, format, device)?,
            ffn_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, eps, device)?,
            heads: shape.heads,
        })
    }

    /// `x` holds `lengths.len()` rows of `seq` tokens (`[rows·seq, hidden]`); keys past a
    /// row's length are masked, so padding never changes a real token's state (padded
    /// positions come out as junk, never read).
    pub(crate) fn forward(&self, x: Tensor<2>, lengths: &[usize], seq: usize) -> Result<Tensor<2>> {
        let [_, h] = x.dims();
        let qkv = self.qkv.forward(x.clone(), Act::None)?; // [b·s, 3h]
        let ctx = encoder::self_attention(qkv, lengths, seq, self.heads, h / self.heads);
        let x = self
            .attn_norm
            .forward(self.attn_out.forward(ctx, Act::None)?, x);
        let up = self.ffn_up.forward(x.clone(), Act::Gelu)?;
        Ok(self
            .ffn_norm
            .forward(self.ffn_down.forward(up, Act::None)?, x))
    }
}

/// A converted model's `config.json`; a parse error names the converter that writes it.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    converter: &str,
) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        ModelError::Config(format!(
            "{}: {e} (convert checkpoints with {converter})",
            path.display()
        ))
    })
}

/// `dir/model.safetensors`: its path (for errors) and bytes.
pub(crate) fn read_safetensors(dir: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let path = dir.join("model.safetensors");
    let bytes =
        std::fs::read(&path).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    Ok((path, bytes))
}

/// Every width a weight format needs whole blocks of, checked before loading.
pub(crate) fn check_format(model: &str, format: GgmlType, widths: &[usize]) -> Result<()> {
    if !WEIGHT_FORMATS.contains(&format) {
        return Err(ModelError::Config(format!(
            "{model} weights as {}: Kiln runs f32, f16 or q8_0",
            format.name()
        )));
    }
    if format != GgmlType::F32
        && let Some(w) = widths
            .iter()
            .find(|w| !w.is_multiple_of(format.block_size()))
    {
        return Err(ModelError::Config(format!(
            "{model} weights as {}: width {w} is not a whole number of {}-value blocks",
            format.name(),
            format.block_size()
        )));
    }
    Ok(())
}

/// The weight formats a BERT encoder loads as (the dense weights and the word-embedding
/// table; position and token-type tables, LayerNorms and biases stay f32).
pub const WEIGHT_FORMATS: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0];

/// The word-embedding table: f32, or GGUF blocks read by row.
enum WordTable {
    F32(Tensor<2>),
    Blocks(QTensor),
}

/// A loaded BERT encoder on one device.
pub struct Bert {
    config: BertConfig,
    word: WordTable,
    position: Tensor<2>,
    token_type: Tensor<2>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

/// Named weights read from a safetensors file, as f32 with their shapes.
pub(crate) struct Weights<'a> {
    st: SafeTensors<'a>,
    /// `bert.` or `` — checkpoints saved from `BertForX` carry the prefix.
    prefix: String,
    used: HashSet<String>,
}

impl<'a> Weights<'a> {
    /// Names with `prefix` prepended (`""` for none).
    pub(crate) fn with_prefix(bytes: &'a [u8], path: &Path, prefix: &str) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        Ok(Self {
            st,
            prefix: prefix.to_string(),
            used: HashSet::new(),
        })
    }

    /// Checkpoints saved from `BertForX` carry a `bert.` prefix; found from the file.
    fn new(bytes: &'a [u8], path: &Path) -> Result<Self> {
        let mut w = Self::with_prefix(bytes, path, "")?;
        if w.st
            .names()
            .iter()
            .any(|n| n.starts_with("bert.embeddings."))
        {
            w.prefix = "bert.".to_string();
        }
        Ok(w)
    }

    /// The tensor `name` (without prefix) as f32, checked against `shape`.
    pub(crate) fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .st
            .tensor(&full)
            .map_err(|_| ModelError::MissingTensor {
                tensor: full.clone(),
            })?;
        if view.shape() != shape {
            return Err(ModelError::Shape {
                tensor: full,
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Config(format!(
                    "{full}: dtype {other:?} is not supported (F32, F16, BF16)"
                )));
            }
        };
        self.used.insert(full);
        Ok(values)
    }

    /// The shape of `name` (without prefix), if the file has it.
    pub(crate) fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let full = format!("{}{name}", self.prefix);
        self.st.tensor(&full).ok().map(|v| v.shape().to_vec())
    }

    /// Names in the file that were not read and are not `leftover`s, sorted.
    pub(crate) fn unused(&self, leftover: impl Fn(&str) -> bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(*n) && !leftover(n))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

/// `[out, in]` row-major to `[in, out]` (with the arguments swapped, the way back).
pub(crate) fn transpose(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    t
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face model directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_as(dir, device, GgmlType::F32)
    }

    /// [`Bert::load`] with the dense weights and the word-embedding table converted to
    /// `format` ([`WEIGHT_FORMATS`]: f32, f16, q8_0) as they load.
    pub fn load_as(dir: &Path, device: &Device, format: GgmlType) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let (path, bytes) = read_safetensors(dir)?;
        Self::from_safetensors_as(config, &bytes, &path, device, format)
    }

    /// Builds the encoder from safetensors bytes (`path` only names them in errors).
    pub fn from_safetensors(
        config: BertConfig,
        bytes: &[u8],
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        Self::from_safetensors_as(config, bytes, path, device, GgmlType::F32)
    }

    /// [`Bert::from_safetensors`] with weights in `format` (see [`Bert::load_as`]).
    pub fn from_safetensors_as(
        config: BertConfig,
        bytes: &[u8],
        path: &Path,
        device: &Device,
        format: GgmlType,
    ) -> Result<Self> {
        config.check()?;
        check_format(
            "BERT",
            format,
            &[config.hidden_size, config.intermediate_size],
        )?;
        let mut w = Weights::new(bytes, path)?;
        let bert = Self::from_weights(config, &mut w, device, format)?;
        let unused = w.unused(|n| n.ends_with("position_ids") || n.contains("pooler."));
        if !unused.is_empty() {
            return Err(ModelError::Config(format!(
                "{}: tensors the BERT encoder does not use: {}",
                path.display(),
                unused.join(", ")
            )));
        }
        Ok(bert)
    }

    /// The encoder under `w`'s prefix (`embeddings.*`, `encoder.layer.N.*`); the caller
    /// checks `config` and the format, and what is left unread.
    pub(crate) fn from_weights(
        config: BertConfig,
        w: &mut Weights,
        device: &Device,
        format: GgmlType,
    ) -> Result<Self> {
        let h = config.hidden_size;
        let t2 = |v: Vec<f32>, r: usize, c: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [r, c]), device)
        };

        let word_f32 = w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let word = if format == GgmlType::F32 {
            WordTable::F32(t2(word_f32, config.vocab_size, h))
        } else {
            let bytes = kiln_quant::blocks::quantize_to_vec(format, &word_f32)?;
            WordTable::Blocks(QTensor::from_blocks(
                "embeddings.word_embeddings.weight",
                format,
                &[config.vocab_size, h],
                &bytes,
                device,
            )?)
        };
        let position = t2(
            w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            config.max_position_embeddings,
            h,
        );
        let token_type = t2(
            w.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            config.type_vocab_size,
            h,
        );
        let emb_norm =
            LayerNorm::load(w, "embeddings.LayerNorm", h, config.layer_norm_eps, device)?;
        let shape = LayerShape {
            hidden: h,
            heads: config.num_attention_heads,
            ffn: config.intermediate_size,
            eps: config.layer_norm_eps,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|l| Layer::load(w, &format!("encoder.layer.{l}"), shape, format, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks a batch against the model's limits: an error, not a panic, for bad input.
    pub fn check_batch(&self, batch: &TokenBatch) -> Result<()> {
        let c = &self.config;
        if batch.seq_len > c.max_position_embeddings {
            return Err(ModelError::Config(format!(
                "sequence of {} tokens is longer than max_position_embeddings {}",
                batch.seq_len, c.max_position_embeddings
            )));
        }
        if let Some(&id) = batch.ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(ModelError::Config(format!(
                "token id {id} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
        if let Some(&t) = batch
            .type_ids
            .iter()
            .find(|&&t| t as usize >= c.type_vocab_size)
        {
            return Err(ModelError::Config(format!(
                "token type id {t} is outside type_vocab_size {}",
                c.type_vocab_size
            )));
        }
        Ok(())
    }

    /// Final hidden states `[rows, seq_len, hidden]` (padded positions hold junk, never read).
    pub fn forward(&self, batch: &TokenBatch) -> Result<Tensor<3>> {
        self.check_batch(batch)?;
        let (b, s) = (batch.rows(), batch.seq_len);
        let c = &self.config;
        let h = c.hidden_size;
        let ids = |v: &[u32]| {
            let v: Vec<i32> = v.iter().map(|&i| i as i32).collect();
            Tensor::<1, Int>::from_data(TensorData::new(v, [b * s]), &self.device)
        };
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..s as u32).collect();
        let rows = |table: &Tensor<2>, idx: &[u32]| table.clone().select(0, ids(idx));

        // Embeddings: LayerNorm(word + token type + position).
        let word = match &self.word {
            WordTable::F32(t) => rows(t, &batch.ids),
            WordTable::Blocks(q) => qrows(q, &batch.ids)?,
        };
        let x = word + rows(&self.token_type, &batch.type_ids);
        let mut x = self.emb_norm.forward(x, rows(&self.position, &positions));

        for layer in &self.layers {
            x = layer.forward(x, &batch.lengths, s)?;
        }
        Ok(x.reshape([b, s, h]))
    }
}

/// How token states become one vector (sentence-transformers `Pooling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    Mean,
    Max,
    MeanSqrtLen,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// Pools `[rows, seq_len, hidden]` states over each row's real tokens; optionally L2-normalizes
/// (sentence-transformers `Normalize`, which divides by `max(‖v‖, 1e-12)`).
pub fn pool(states: Tensor<3>, lengths: &[usize], modes: &[Pooling], normalize: bool) -> Tensor<2> {
    let [b, s, h] = states.dims();
    let device = states.device();
    let keep: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..s).map(move |j| if j < len { 1.0 } else { 0.0 }))
        .collect();
    let keep = Tensor::<3>::from_data(TensorData::new(keep, [b, s, 1]), &device);
    let lens: Vec<f32> = lengths.iter().map(|&l| l.max(1) as f32).collect();
    let lens = Tensor::<2>::from_data(TensorData::new(lens, [b, 1]), &device);
    let mut parts = Vec::with_capacity(modes.len());
    for &mode in modes {
        let v = match mode {
            Pooling::Cls => states.clone().narrow(1, 0, 1).reshape([b, h]),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let sum = (states.clone() * keep.clone()).sum_dim(1).reshape([b, h]);
                if mode == Pooling::Mean {
                    sum / lens.clone()
                } else {
                    sum / lens.clone().sqrt()
                }
            }
            Pooling::Max => {
                // Padding set to -1e9 as sentence-transformers does.
                let pad = (keep.clone() - 1.0) * 1e9;
                (states.clone() * keep.clone() + pad)
                    .max_dim(1)
                    .reshape([b, h])
            }
        };
        parts.push(v);
    }
    let v = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 1)
    };
    if normalize {
        let norm = (v.clone() * v.clone()).sum_dim(1).sqrt().clamp_min(1e-12);
        v / norm
    } else {
        v
    }
}

/// `modules.json` + `1_Pooling/config.json`: the pooling modes and whether vectors are
/// normalized.
pub fn read_pipeline(dir: &Path) -> Result<(Vec<Pooling>, bool)> {
    #[derive(Deserialize)]
    struct Module {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        path: String,
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| ModelError::Config(format!("{}: {e}", p.display())))
    };
    let modules_path = dir.join("modules.json");
    if !modules_path.exists() {
        // A plain BertModel directory: mean pooling, no normalization.
        return Ok((vec![Pooling::Mean], false));
    }
    let modules: Vec<Module> = serde_json::from_str(&read(&modules_path)?)
        .map_err(|e| ModelError::Config(format!("{}: {e}", modules_path.display())))?;
    let mut pooling = None;
    let mut normalize = false;
    for m in &modules {
        match m.kind.rsplit('.').next().unwrap_or("") {
            "Transformer" => {}
            "Pooling" => {
                let p = dir.join(&m.path).join("config.json");
                let cfg: HashMap<String, serde_json::Value> = serde_json::from_str(&read(&p)?)
                    .map_err(|e| ModelError::Config(format!("{}: {e}", p.display())))?;
                let on = |k: &str| cfg.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                let mut modes = Vec::new();
                // sentence-transformers concatenates in this order.
                if on("pooling_mode_cls_token") {
                    modes.push(Pooling::Cls);
                }
                if on("pooling_mode_max_tokens") {
                    modes.push(Pooling::Max);
                }
                if on("pooling_mode_mean_tokens") {
                    modes.push(Pooling::Mean);
                }
                if on("pooling_mode_mean_sqrt_len_tokens") {
                    modes.push(Pooling::MeanSqrtLen);
                }
                for k in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
                    if on(k) {
                        return Err(ModelError::Config(format!(
                            "{}: {k} is not supported",
                            p.display()
                        )));
                    }
                }
                if modes.is_empty() {
                    return Err(ModelError::Config(format!(
                        "{}: no pooling mode is on",
                        p.display()
                    )));
                }
                pooling = Some(modes);
            }
            "Normalize" => normalize = true,
            other => {
                return Err(ModelError::Config(format!(
                    "{}: module {other:?} is not supported (Transformer, Pooling, Normalize)",
                    modules_path.display()
                )));
            }
        }
    }
    Ok((pooling.unwrap_or_else(|| vec![Pooling::Mean]), normalize))
}
