//! Llama-architecture decoder (Llama 2/3, SmolLM, TinyLlama …) from a GGUF file: RMSNorm,
//! RoPE (adjacent pairs, as llama.cpp's converter permutes Q/K; Llama-3 and linear frequency
//! scaling), grouped-query attention over an f16 KV cache, SwiGLU, tied or separate output.
//!
//! Weights stay in their GGUF blocks ([`QTensor`]); every projection is Kiln's quantized matmul.
//! The graph follows llama.cpp `src/models/llama.cpp` (`llm_build_llama`).

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_kernels::QTensor;
use kiln_kernels::nn::{self, KvCache, Positions, Rope, Softmax, Visibility};
use kiln_kernels::qmatmul::{CubeKernel, qmatmul_with, qrows};
use kiln_quant::gguf::{GgufFile, Metadata, TensorInfo, Value};

use crate::{ModelError, Result};

/// Position scaling of RoPE frequencies.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (GGUF `rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's per-frequency scaling (HF `rope_scaling.rope_type = llama3`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: f32,
    },
    /// Explicit per-pair divisors of θ (GGUF `rope_freqs.weight`, how llama.cpp's converter
    /// stores Llama-3 scaling).
    Factors(Vec<f32>),
}

/// Hyperparameters, resolved once from GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_scaling: RopeScaling,
    /// The output projection is the token embedding matrix.
    pub tied_embeddings: bool,
    /// Parameters in the file's tensors.
    pub n_params: u64,
}

fn cfg_err(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

impl LlamaConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let meta = &gguf.metadata;
        let arch = meta.str("general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama") {
            return Err(ModelError::Architecture(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Result<usize> { Ok(meta.u32(&key(k))? as usize) };
        let n_embd = usize_of("embedding_length")?;
        let n_head = usize_of("attention.head_count")?;
        let n_head_kv = match meta.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => n_head,
        };
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(cfg_err(format!(
                "{n_head} attention heads, {n_head_kv} KV heads and width {n_embd} do not divide"
            )));
        }
        let head_dim = match meta.get(&key("attention.key_length")) {
            Some(_) => usize_of("attention.key_length")?,
            None => n_embd / n_head,
        };
        let n_rot = match meta.get(&key("rope.dimension_count")) {
            Some(_) => usize_of("rope.dimension_count")?,
            None => head_dim,
        };
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(cfg_err(format!(
                "rope.dimension_count {n_rot} with heads of {head_dim}"
            )));
        }
        let vocab_size = gguf.tensor("token_embd.weight")?.shape()[0];
        let f32_or = |k: &str, d: f32| -> Result<f32> {
            match meta.get(&key(k)) {
                Some(_) => Ok(meta.f32(&key(k))?),
                None => Ok(d),
            }
        };
        let rope_scaling = rope_scaling(gguf, meta, &arch, n_rot)?;
        let cfg = LlamaConfig {
            n_layer: usize_of("block_count")?,
            n_embd,
            n_ff: usize_of("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_rot,
            vocab_size,
            context_length: usize_of("context_length")?,
            rms_eps: f32_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_base: f32_or("rope.freq_base", 10_000.0)?,
            rope_scaling,
            tied_embeddings: gguf.tensor("output.weight").is_err(),
            n_params: gguf.tensors.iter().map(|t| t.n_elements).sum(),
            architecture: arch,
        };
        if cfg.n_layer == 0 || cfg.n_layer > 1024 || cfg.context_length == 0 {
            return Err(cfg_err(format!(
                "block_count {} / context_length {}",
                cfg.n_layer, cfg.context_length
            )));
        }
        Ok(cfg)
    }

    /// RoPE as Kiln's kernel takes it.
    pub fn rope(&self) -> Rope {
        let (freq_scale, freq_factors) = match &self.rope_scaling {
            RopeScaling::None => (1.0, Vec::new()),
            RopeScaling::Linear { factor } => (1.0 / factor, Vec::new()),
            RopeScaling::Factors(f) => (1.0, f.clone()),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => (
                1.0,
                llama3_freq_factors(
                    self.rope_base,
                    self.n_rot,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_context,
                ),
            ),
        };
        Rope {
            n_rot: self.n_rot,
            freq_base: self.rope_base,
            freq_scale,
            freq_factors,
            neox: false,
        }
    }

    /// Bytes of a KV cache of `tokens` (f16 K and V, every layer).
    pub fn kv_cache_bytes(&self, tokens: usize) -> usize {
        2 * 2 * self.n_layer * tokens * self.n_head_kv * self.head_dim
    }
}

fn rope_scaling(gguf: &GgufFile, meta: &Metadata, arch: &str, n_rot: usize) -> Result<RopeScaling> {
    if let Ok(info) = gguf.tensor("rope_freqs.weight") {
        if info.n_elements as usize != n_rot / 2 {
            return Err(ModelError::Shape {
                tensor: info.name.clone(),
                expected: vec![n_rot / 2],
                found: info.shape(),
            });
        }
        return Ok(RopeScaling::Factors(f32_vector(gguf, info)?));
    }
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    let ty = match meta.get(&key("type")) {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(cfg_err(format!("{} is not a string", key("type")))),
        None => "none",
    };
    let f = |k: &str| -> Result<f32> { Ok(meta.f32(&key(k))?) };
    let scaling = match ty {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_context: meta.u32(&key("original_context_length"))? as f32,
        },
        other => {
            return Err(cfg_err(format!(
                "RoPE scaling {other:?} is not supported (none, linear, llama3)"
            )));
        }
    };
    match &scaling {
        RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. }
            if !factor.is_finite() || *factor <= 0.0 =>
        {
            Err(cfg_err(format!("{} = {factor}", key("factor"))))
        }
        _ => Ok(scaling),
    }
}

/// Llama 3.1's RoPE frequency scaling as divisors of θ per pair (HF
/// `_compute_llama3_parameters`; llama.cpp's converter writes the same as `rope_freqs.weight`).
pub fn llama3_freq_factors(
    base: f32,
    n_rot: usize,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_context: f32,
) -> Vec<f32> {
    let low_wavelen = original_context / low_freq_factor;
    let high_wavelen = original_context / high_freq_factor;
    (0..n_rot / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f32 / n_rot as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            let new = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (original_context / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            freq / new
        })
        .collect()
}

fn f32_vector(gguf: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>> {
    Ok(kiln_quant::blocks::dequantize_to_vec(
        info.ty,
        gguf.tensor_data(info),
    )?)
}

struct Layer {
    attn_norm: Tensor<1>,
    wq: QTensor,
    wk: QTensor,
    wv: QTensor,
    wo: QTensor,
    ffn_norm: Tensor<1>,
    gate: QTensor,
    up: QTensor,
    down: QTensor,
}

/// A loaded Llama model on one device.
pub struct Llama {
    pub config: LlamaConfig,
    tok_embd: QTensor,
    layers: Vec<Layer>,
    output_norm: Tensor<1>,
    /// `None`: tied to `tok_embd`.
    output: Option<QTensor>,
    rope: Rope,
    device: Device,
    /// Bytes of weights uploaded.
    pub weight_bytes: usize,
    /// The softmax of the Cube attention kernel (the CPU always follows ggml): the default
    /// [`Softmax::Rounded`] computes the CPU path's (llama.cpp's) arithmetic.
    pub softmax: Softmax,
    /// The Cube quantized-matmul variant: by default the CPU path's arithmetic
    /// ([`kiln_kernels::qmatmul::Arithmetic::Cpu`]), so that with the default softmax a GPU's
    /// logits are the CPU's, bit for bit.
    pub kernel: CubeKernel,
}

/// What `forward` returns for the tokens it ran.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Logits of these rows (indices into the tokens of the call): `[rows, vocab]`.
    Logits(Vec<usize>),
    /// Final hidden states (after the output norm) of these rows: `[rows, n_embd]`.
    Hidden(Vec<usize>),
}

/// The KV cache of one or more sequences sharing a prefix, with each slot's position and
/// sequence id (0 = shared prefix).
#[derive(Clone, Debug)]
pub struct Cache {
    layers: Vec<KvCache>,
    key_pos: Vec<u32>,
    key_seq: Vec<u32>,
}

impl Cache {
    /// Slots in use.
    pub fn len(&self) -> usize {
        self.key_pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key_pos.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, KvCache::capacity)
    }

    /// Forgets slots from `len` on (the next call writes there again).
    pub fn truncate(&mut self, len: usize) {
        self.key_pos.truncate(len);
        self.key_seq.truncate(len);
    }
}

impl Llama {
    /// Loads a GGUF file onto `device`. The file's map is dropped after upload.
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, crate::tokenizer::Tokenizer)> {
        let mut gguf = GgufFile::open(path)?;
        let tokenizer = crate::tokenizer::Tokenizer::from_gguf(&gguf.metadata)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        // The vocabulary strings are the bulk of the metadata: freed before the weights are
        // allocated, so the allocator reuses their memory.
        gguf.metadata = Metadata::default();
        let model = Self::with_config(&gguf, config, device)?;
        if tokenizer.vocab_size() != model.config.vocab_size {
            return Err(cfg_err(format!(
                "the tokenizer has {} tokens, token_embd.weight {} rows",
                tokenizer.vocab_size(),
                model.config.vocab_size
            )));
        }
        Ok((model, tokenizer))
    }

    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<Self> {
        Self::with_config(gguf, LlamaConfig::from_gguf(gguf)?, device)
    }

    fn with_config(gguf: &GgufFile, config: LlamaConfig, device: &Device) -> Result<Self> {
        let c = &config;
        // One name table: every tensor is looked up and shape-checked here.
        let tensor = |name: &str, expected: &[usize]| -> Result<&TensorInfo> {
            let info = gguf.tensor(name).map_err(|_| ModelError::MissingTensor {
                tensor: name.to_string(),
            })?;
            if info.shape() != expected {
                return Err(ModelError::Shape {
                    tensor: name.into(),
                    expected: expected.to_vec(),
                    found: info.shape(),
                });
            }
            Ok(info)
        };
        let mut weight_bytes = 0usize;
        let mut matrix = |name: &str, rows: usize, cols: usize| -> Result<QTensor> {
            let info = tensor(name, &[rows, cols])?;
            weight_bytes += info.n_bytes as usize;
            Ok(QTensor::from_blocks(
                name,
                info.ty,
                &info.shape(),
                gguf.tensor_data(info),
                device,
            )?)
        };
        let (d, hd) = (c.n_embd, c.head_dim);
        let vector = |name: &str| -> Result<Tensor<1>> {
            let info = tensor(name, &[d])?;
            Ok(Tensor::from_data(
                TensorData::new(f32_vector(gguf, info)?, [d]),
                device,
            ))
        };
        let tok_embd = matrix("token_embd.weight", c.vocab_size, d)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(matrix("output.weight", c.vocab_size, d)?)
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm"))?,
                wq: matrix(&p("attn_q"), c.n_head * hd, d)?,
                wk: matrix(&p("attn_k"), c.n_head_kv * hd, d)?,
                wv: matrix(&p("attn_v"), c.n_head_kv * hd, d)?,
                wo: matrix(&p("attn_output"), d, c.n_head * hd)?,
                ffn_norm: vector(&p("ffn_norm"))?,
                gate: matrix(&p("ffn_gate"), c.n_ff, d)?,
                up: matrix(&p("ffn_up"), c.n_ff, d)?,
                down: matrix(&p("ffn_down"), d, c.n_ff)?,
            });
        }
        let output_norm = vector("output_norm.weight")?;
        let rope = config.rope();
        Ok(Llama {
            tok_embd,
            layers,
            output_norm,
            output,
            rope,
            device: device.clone(),
            weight_bytes,
            softmax: Softmax::default(),
            kernel: CubeKernel::default(),
            config,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for up to `capacity` tokens (all sequences together).
    pub fn new_cache(&self, capacity: usize) -> Cache {
        let c = &self.config;
        Cache {
            layers: (0..c.n_layer)
                .map(|_| KvCache::new(capacity, c.n_head_kv, c.head_dim, &self.device))
                .collect(),
            key_pos: Vec::with_capacity(capacity),
            key_seq: Vec::with_capacity(capacity),
        }
    }

    /// Runs `tokens` (token `i` at position `positions[i]` in sequence `seqs[i]`; 0 = the shared
    /// prefix) after what `cache` holds, and appends them to it.
    pub fn forward(
        &self,
        tokens: &[u32],
        positions: &[u32],
        seqs: &[u32],
        cache: &mut Cache,
        output: &Output,
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 || positions.len() != t || seqs.len() != t {
            return Err(cfg_err(format!(
                "forward: {t} tokens, {} positions, {} sequence ids",
                positions.len(),
                seqs.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(cfg_err(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let start = cache.len();
        if start + t > cache.capacity() {
            return Err(cfg_err(format!(
                "the KV cache holds {} tokens; {start} + {t} do not fit",
                cache.capacity()
            )));
        }
        let rows = match output {
            Output::Logits(r) | Output::Hidden(r) => r,
        };
        if let Some(bad) = rows.iter().find(|&&r| r >= t) {
            return Err(cfg_err(format!("output row {bad} of {t} tokens")));
        }
        cache.key_pos.extend_from_slice(positions);
        cache.key_seq.extend_from_slice(seqs);
        // Shared by every layer (the RoPE table and the mask are made once per call).
        let positions = Positions::new(positions);
        let mask = Visibility {
            query_pos: positions.pos.clone(),
            query_seq: seqs.into(),
            key_pos: cache.key_pos.as_slice().into(),
            key_seq: cache.key_seq.as_slice().into(),
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            softmax: self.softmax,
            device_copy: Default::default(),
        };
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_head_kv);

        let mut x = qrows(&self.tok_embd, tokens)?;
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = nn::rms_norm(x.clone(), &layer.attn_norm, c.rms_eps)?;
            let q = qmatmul_with(h.clone(), &layer.wq, self.kernel)?.reshape([t, nh, hd]);
            let k = qmatmul_with(h.clone(), &layer.wk, self.kernel)?.reshape([t, nkv, hd]);
            let v = qmatmul_with(h, &layer.wv, self.kernel)?.reshape([t, nkv, hd]);
            let q = nn::rope(q, &positions, &self.rope)?;
            let k = nn::rope(k, &positions, &self.rope)?;
            let a = nn::attention(q, k, v, kv, start, mask.clone())?;
            x = x + qmatmul_with(a, &layer.wo, self.kernel)?;

            let h = nn::rms_norm(x.clone(), &layer.ffn_norm, c.rms_eps)?;
            let g = qmatmul_with(h.clone(), &layer.gate, self.kernel)?;
            let u = qmatmul_with(h, &layer.up, self.kernel)?;
            x = x + qmatmul_with(nn::swiglu(g, u)?, &layer.down, self.kernel)?;
        }
        let x = if rows.len() == t && rows.iter().enumerate().all(|(i, &r)| i == r) {
            x
        } else {
            let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let n = idx.len();
            x.select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.device),
            )
        };
        let x = nn::rms_norm(x, &self.output_norm, c.rms_eps)?;
        match output {
            Output::Hidden(_) => Ok(x),
            Output::Logits(_) => Ok(qmatmul_with(
                x,
                self.output.as_ref().unwrap_or(&self.tok_embd),
                self.kernel,
            )?),
        }
    }
}
