//! MambaRec (github rkl71/MambaRec, `src/models/mambarec.py`): a multimodal recommender — the
//! MGCN graph model plus DREAM, the dilated multi-scale attention block that refines each
//! modality's item features (../shared/MODELS.md §2).
//!
//! Inference is one eval-mode forward over the whole catalogue, as the reference's
//! `forward(norm_adj)` computes it, then dot-product scores per user:
//! - item features per modality: the fine-tuned feature table → linear projection(s) to the
//!   embedding size → [`Dream`] → the shared LayerNorm → `sigmoid(Linear)` gates multiplying the
//!   item-ID embeddings;
//! - user–item view: LightGCN over `D^-½ A D^-½` of the training interactions, the mean of
//!   the `n_ui_layers + 1` layer outputs;
//! - item–item view: `n_layers` products with each modality's kNN graph, users as `R ·` items;
//! - fusion: softmax attention (`query_common`) into a common part and modality-specific parts
//!   gated by the user–item embeddings (`gate_*_prefer`); final = content + side;
//! - scores `user · itemᵀ`, training items masked, top-k.
//!
//! The kNN graphs are built at load exactly as the reference builds them when the model is
//! created ([`graph::knn_graph`]): from the ORIGINAL feature tables (the converter stores them
//! beside the fine-tuned ones), cosine top-k with the item itself included, then
//! `deg^-½ · s · deg^-½` with `deg` the row sums of the kept similarities.
//!
//! The image projection is two linear layers with nothing between them (`image_reduce`,
//! 4096 → 512, and `image_trs`, 512 → 64); Kiln folds them into one 4096 → 64 layer at load
//! (in f64, rounded once), an eighth of the work. The dense parts run on the model's device
//! through Kiln's kernels; the sparse graph products run on the CPU ([`graph::Csr`]).
//!
//! The model directory comes from `scripts/convert/mambarec.py`: `config.json`,
//! `model.safetensors` (the state dict and `original.{image,text}_feat`) and the interaction
//! file (`userID`, `itemID`, `x_label`, 0 = train; MMRec's format).

pub mod graph;

use std::path::{Path, PathBuf};

use burn::tensor::activation::{relu, sigmoid, softmax, tanh};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_kernels::dream::{Conv2dBn, DilatedConv};
use kiln_kernels::encoder;
use kiln_quant::GgmlType;
use rayon::prelude::*;
use serde::Deserialize;

use crate::bert::{Dense, Weights, read_safetensors};
use crate::{ModelError, Result};
use graph::{Csr, Interactions};

use kiln_kernels::cpu::gemm::Act;

/// More graph propagation layers than this in a config is refused (the reference uses 4 and 1;
/// a hostile config must not make a forward pass run for ever).
pub const MAX_LAYERS: usize = 64;

/// `config.json` as `scripts/convert/mambarec.py` writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct MambaRecConfig {
    pub n_users: usize,
    pub n_items: usize,
    pub embedding_size: usize,
    /// LightGCN layers over the user–item graph (`n_ui_layers`).
    pub n_ui_layers: usize,
    /// Propagation steps over the item–item kNN graphs (`n_layers`).
    pub n_layers: usize,
    pub knn_k: usize,
    /// 0 when the model has no image modality.
    pub image_feat_dim: usize,
    /// 0 when the model has no text modality.
    pub text_feat_dim: usize,
    /// The interaction file, relative to the model directory.
    pub interactions: String,
}

impl MambaRecConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        let c: Self = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        if c.n_users == 0 || c.n_items == 0 || c.embedding_size == 0 || c.knn_k == 0 {
            return Err(ModelError::Config(format!(
                "{}: users, items, embedding_size and knn_k must be positive",
                path.display()
            )));
        }
        if c.n_ui_layers > MAX_LAYERS || c.n_layers > MAX_LAYERS {
            return Err(ModelError::Config(format!(
                "{}: n_ui_layers {} / n_layers {}: at most {MAX_LAYERS} propagation layers",
                path.display(),
                c.n_ui_layers,
                c.n_layers
            )));
        }
        if c.image_feat_dim == 0 && c.text_feat_dim == 0 {
            return Err(ModelError::Config(format!(
                "{}: neither an image nor a text modality",
                path.display()
            )));
        }
        Ok(c)
    }
}

/// DREAM (`DREAM(dim, dim)` in the reference) on a height-1 map `[B, S, C]`; the `[N, C]` input
/// is `S = 1` (the point form). Branches 1–4 (1×1 and three dilated 3×3 convolutions,
/// BatchNorm folded, ReLU) are one [`DilatedConv`]; branch 5 is the global mean through a
/// 1×1 conv + BN + ReLU, broadcast back over S (bilinear upsampling of a 1×1 map); the fusion is
/// `max(U · relu(fc(mean_S U)), U · sigmoid(conv(U)))`, multiplied by `U` again, then `conv_cat`
/// (1×1 conv + BN + ReLU).
pub struct Dream {
    branches: DilatedConv,
    global: DilatedConv,
    conv_cat: DilatedConv,
    /// `fusion.channel.fc`: `[5C, 1]`.
    channel_fc: Tensor<2>,
    /// `fusion.spatial.Conv1x1`: `[5C, 1]`.
    spatial: Tensor<2>,
    dim: usize,
}

/// PyTorch's `BatchNorm2d` eps.
const BN_EPS: f32 = 1e-5;

struct ConvBn {
    weight: Vec<f32>,
    bias: Vec<f32>,
    bn: [Vec<f32>; 4],
    kernel: usize,
    dilation: usize,
}

impl ConvBn {
    fn load(
        w: &mut Weights,
        conv: &str,
        bn: &str,
        shape: [usize; 4],
        dilation: usize,
    ) -> Result<Self> {
        let c_out = shape[0];
        let get = |w: &mut Weights, n: &str| w.get(&format!("{bn}.{n}"), &[c_out]);
        Ok(ConvBn {
            weight: w.get(&format!("{conv}.weight"), &shape)?,
            bias: w.get(&format!("{conv}.bias"), &[c_out])?,
            bn: [
                get(w, "weight")?,
                get(w, "bias")?,
                get(w, "running_mean")?,
                get(w, "running_var")?,
            ],
            kernel: shape[2],
            dilation,
        })
    }

    fn view(&self) -> Conv2dBn<'_> {
        Conv2dBn {
            weight: &self.weight,
            bias: Some(&self.bias),
            kernel: self.kernel,
            dilation: self.dilation,
            bn_gamma: &self.bn[0],
            bn_beta: &self.bn[1],
            bn_mean: &self.bn[2],
            bn_var: &self.bn[3],
            bn_eps: BN_EPS,
        }
    }
}

impl Dream {
    /// The reference's `DREAM(dim, dim, rate = 1)` under `prefix` (e.g. `dream_image`).
    pub(crate) fn load(w: &mut Weights, prefix: &str, dim: usize, device: &Device) -> Result<Self> {
        let c = dim;
        let mut branches = Vec::new();
        for (i, (k, d)) in [(1, 1), (3, 6), (3, 12), (3, 18)].into_iter().enumerate() {
            let name = format!("{prefix}.branch{}", i + 1);
            branches.push(ConvBn::load(
                w,
                &format!("{name}.0"),
                &format!("{name}.1"),
                [c, c, k, k],
                d,
            )?);
        }
        let global = ConvBn::load(
            w,
            &format!("{prefix}.branch5_conv"),
            &format!("{prefix}.branch5_bn"),
            [c, c, 1, 1],
            1,
        )?;
        let cat = ConvBn::load(
            w,
            &format!("{prefix}.conv_cat.0"),
            &format!("{prefix}.conv_cat.1"),
            [c, 5 * c, 1, 1],
            1,
        )?;
        let col = |w: &mut Weights, n: &str| -> Result<Tensor<2>> {
            let v = w.get(&format!("{prefix}.fusion.{n}.weight"), &[1, 5 * c, 1, 1])?;
            Ok(Tensor::from_data(TensorData::new(v, [5 * c, 1]), device))
        };
        let views: Vec<Conv2dBn> = branches.iter().map(ConvBn::view).collect();
        Ok(Dream {
            branches: DilatedConv::from_conv2d(&views, c, c, device)?,
            global: DilatedConv::from_conv2d(&[global.view()], c, c, device)?,
            conv_cat: DilatedConv::from_conv2d(&[cat.view()], 5 * c, c, device)?,
            channel_fc: col(w, "channel.fc")?,
            spatial: col(w, "spatial.Conv1x1")?,
            dim: c,
        })
    }

    /// `x[b, s, c]` → `[b, s, c]` (the reference returns `[b, c, 1, s]`).
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        let [b, s, c] = x.dims();
        if c != self.dim {
            return Err(ModelError::Config(format!(
                "DREAM: {c} input channels, the block takes {}",
                self.dim
            )));
        }
        let four = self.branches.forward(x.clone())?;
        let global = self
            .global
            .forward(x.mean_dim(1))?
            .expand([b as i64, s as i64, c as i64]);
        let u = Tensor::cat(vec![four, global], 2);
        let c5 = 5 * c;
        let spatial =
            sigmoid(u.clone().reshape([b * s, c5]).matmul(self.spatial.clone())).reshape([b, s, 1]);
        let channel = relu(
            u.clone()
                .mean_dim(1)
                .reshape([b, c5])
                .matmul(self.channel_fc.clone()),
        )
        .reshape([b, 1, 1]);
        let attention = (u.clone() * channel).max_pair(u.clone() * spatial);
        Ok(self.conv_cat.forward(attention * u)?)
    }

    /// The point form: `x[n, c]` (each row a 1 × 1 map) → `[n, c]`.
    pub fn forward_points(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let [n, c] = x.dims();
        Ok(self.forward(x.reshape([n, 1, c]))?.reshape([n, c]))
    }
}

/// One modality's item branch.
struct Modality {
    /// The fine-tuned feature table `[items, feat]` (`image_embedding` / `text_embedding`).
    table: Tensor<2>,
    /// Feature → embedding size (image: `image_trs ∘ image_reduce` folded).
    proj: Dense,
    dream: Dream,
    /// `gate_v` / `gate_t`.
    gate: Dense,
    /// The kNN item graph, built from the original features.
    adj: Csr,
}

/// Final embeddings of every user and item (row-major, `dim` wide).
#[derive(Clone, Debug)]
pub struct Embeddings {
    pub users: Vec<f32>,
    pub items: Vec<f32>,
    pub dim: usize,
}

impl Embeddings {
    pub fn user(&self, u: usize) -> &[f32] {
        &self.users[u * self.dim..][..self.dim]
    }
    pub fn item(&self, i: usize) -> &[f32] {
        &self.items[i * self.dim..][..self.dim]
    }
    pub fn n_users(&self) -> usize {
        self.users.len() / self.dim
    }
    pub fn n_items(&self) -> usize {
        self.items.len() / self.dim
    }
}

/// A loaded MambaRec model with its graphs, on one device.
pub struct MambaRec {
    config: MambaRecConfig,
    users: Tensor<2>,
    items: Tensor<2>,
    image: Option<Modality>,
    text: Option<Modality>,
    norm_gamma: Tensor<1>,
    norm_beta: Tensor<1>,
    query: Dense,
    /// `query_common.2` (no bias): `[dim, 1]`.
    query_out: Tensor<2>,
    prefer_image: Dense,
    prefer_text: Dense,
    /// `D^-½ A D^-½` over users ++ items.
    norm_adj: Csr,
    /// Its user × item block; row `u`'s columns are user `u`'s training items.
    r: Csr,
    device: Device,
}

/// What [`MambaRec::load`] took, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadTimes {
    pub read: f64,
    pub graphs: f64,
}

impl MambaRec {
    /// `dir/config.json`, `dir/model.safetensors` and the interaction file the config names.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self::load_timed(dir, device)?.0)
    }

    /// [`MambaRec::load`], also saying how long reading and graph building took.
    pub fn load_timed(dir: &Path, device: &Device) -> Result<(Self, LoadTimes)> {
        let t0 = std::time::Instant::now();
        let config = MambaRecConfig::from_file(&dir.join("config.json"))?;
        let (path, bytes) = read_safetensors(dir)?;
        let mut w = Weights::with_prefix(&bytes, &path, "")?;
        let (d, nu, ni) = (config.embedding_size, config.n_users, config.n_items);
        let t2 = |v: Vec<f32>, r: usize, c: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [r, c]), device)
        };
        let users = t2(w.get("user_embedding.weight", &[nu, d])?, nu, d);
        let items = t2(w.get("item_id_embedding.weight", &[ni, d])?, ni, d);
        // After the tables: the counts the interactions are checked against are now the file's.
        let inter_path: PathBuf = dir.join(&config.interactions);
        let interactions = Interactions::read(&inter_path, nu, ni)?;
        let dense = |w: &mut Weights, name: &str, out: usize, inp: usize| {
            Dense::load(w, name, out, inp, GgmlType::F32, device)
        };
        // Every weight is read and checked first; the (slow) graphs are built after.
        let mut pending = [None, None];
        for (slot, (name, feat)) in [
            ("image", config.image_feat_dim),
            ("text", config.text_feat_dim),
        ]
        .into_iter()
        .enumerate()
        {
            if feat == 0 {
                continue;
            }
            let table = w.get(&format!("{name}_embedding.weight"), &[ni, feat])?;
            let proj = if name == "image" {
                let mid = match w.shape("image_reduce.weight").as_deref() {
                    Some([mid, f]) if *f == feat && *mid > 0 => *mid,
                    other => {
                        return Err(ModelError::Shape {
                            tensor: "image_reduce.weight".into(),
                            expected: vec![0, feat],
                            found: other.unwrap_or_default().to_vec(),
                        });
                    }
                };
                let w1 = w.get("image_reduce.weight", &[mid, feat])?;
                let b1 = w.get("image_reduce.bias", &[mid])?;
                let w2 = w.get("image_trs.weight", &[d, mid])?;
                let b2 = w.get("image_trs.bias", &[d])?;
                let (wf, bf) = fold_linear(&w1, &b1, &w2, &b2, feat, mid, d);
                Dense::new(&wf, bf, d, feat, GgmlType::F32, device)?
            } else {
                dense(&mut w, "text_trs", d, feat)?
            };
            let dream = Dream::load(&mut w, &format!("dream_{name}"), d, device)?;
            let gate = dense(
                &mut w,
                if name == "image" {
                    "gate_v.0"
                } else {
                    "gate_t.0"
                },
                d,
                d,
            )?;
            let original = w.get(&format!("original.{name}_feat"), &[ni, feat])?;
            pending[slot] = Some((name, feat, original, t2(table, ni, feat), proj, dream, gate));
        }
        let norm_gamma =
            Tensor::from_data(TensorData::new(w.get("norm.weight", &[d])?, [d]), device);
        let norm_beta = Tensor::from_data(TensorData::new(w.get("norm.bias", &[d])?, [d]), device);
        let query = dense(&mut w, "query_common.0", d, d)?;
        let query_out = t2(w.get("query_common.2.weight", &[1, d])?, d, 1);
        let prefer_image = dense(&mut w, "gate_image_prefer.0", d, d)?;
        let prefer_text = dense(&mut w, "gate_text_prefer.0", d, d)?;
        let unused = w.unused(|_| false);
        if !unused.is_empty() {
            return Err(ModelError::Config(format!(
                "{}: tensors Kiln's MambaRec does not know: {}",
                path.display(),
                unused.join(", ")
            )));
        }
        let read = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let (norm_adj, r) = interactions.normalized_adjacency();
        let mut modalities = pending.into_iter().map(|p| {
            p.map(
                |(name, feat, original, table, proj, dream, gate)| -> Result<Modality> {
                    let adj = graph::knn_graph(&original, ni, feat, config.knn_k)
                        .map_err(|e| ModelError::Config(format!("{name} kNN graph: {e}")))?;
                    Ok(Modality {
                        table,
                        proj,
                        dream,
                        gate,
                        adj,
                    })
                },
            )
            .transpose()
        });
        let image = modalities.next().expect("two slots")?;
        let text = modalities.next().expect("two slots")?;
        let model = MambaRec {
            image,
            text,
            config,
            users,
            items,
            norm_gamma,
            norm_beta,
            query,
            query_out,
            prefer_image,
            prefer_text,
            norm_adj,
            r,
            device: device.clone(),
        };
        let graphs = t1.elapsed().as_secs_f64();
        Ok((model, LoadTimes { read, graphs }))
    }

    pub fn config(&self) -> &MambaRecConfig {
        &self.config
    }

    /// User `u`'s training items (the ones `recommend` leaves out), sorted.
    pub fn train_items(&self, u: usize) -> &[u32] {
        self.r.row(u).0
    }

    fn modality(&self, name: &str) -> Option<&Modality> {
        match name {
            "image" => self.image.as_ref(),
            "text" => self.text.as_ref(),
            _ => None,
        }
    }

    /// The DREAM block of a modality (`"image"` or `"text"`), for running it on its own.
    pub fn dream(&self, modality: &str) -> Option<&Dream> {
        self.modality(modality).map(|m| &m.dream)
    }

    /// The kNN item graph of a modality (`"image"` or `"text"`), as built at load.
    pub fn knn_graph(&self, modality: &str) -> Option<&Csr> {
        self.modality(modality).map(|m| &m.adj)
    }

    fn to_host(&self, t: Tensor<2>) -> Result<Vec<f32>> {
        t.into_data()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Config(format!("reading a tensor back: {e:?}")))
    }

    fn to_device(&self, v: Vec<f32>, cols: usize) -> Tensor<2> {
        let rows = v.len() / cols;
        Tensor::from_data(TensorData::new(v, [rows, cols]), &self.device)
    }

    /// The reference's shared LayerNorm (eps 1e-5), on `x` alone.
    fn layer_norm(&self, x: Tensor<2>) -> Tensor<2> {
        encoder::add_layer_norm(x, None, &self.norm_gamma, &self.norm_beta, 1e-5)
    }

    /// One modality's user ++ item embeddings of the item–item view.
    fn item_view(&self, m: &Modality) -> Result<Vec<f32>> {
        let d = self.config.embedding_size;
        let feats = m.proj.forward(m.table.clone(), Act::None)?;
        let feats = self.layer_norm(m.dream.forward_points(feats)?);
        let gate = sigmoid(m.gate.forward(feats, Act::None)?);
        let mut items = self.to_host(self.items.clone() * gate)?;
        for _ in 0..self.config.n_layers {
            items = m.adj.spmm(&items, d);
        }
        let mut all = self.r.spmm(&items, d);
        all.extend_from_slice(&items);
        Ok(all)
    }

    /// The final user and item embeddings (the reference's `forward(norm_adj)`, eval mode).
    pub fn forward(&self) -> Result<Embeddings> {
        let d = self.config.embedding_size;
        let nu = self.config.n_users;
        // User–item view: the mean of the LightGCN layer outputs.
        let mut ego = self.to_host(Tensor::cat(vec![self.users.clone(), self.items.clone()], 0))?;
        let mut sum = ego.clone();
        for _ in 0..self.config.n_ui_layers {
            ego = self.norm_adj.spmm(&ego, d);
            sum.iter_mut().zip(&ego).for_each(|(s, e)| *s += e);
        }
        let layers = (self.config.n_ui_layers + 1) as f32;
        sum.iter_mut().for_each(|s| *s /= layers);
        let content = self.to_device(sum, d);
        let views: Vec<Tensor<2>> = [&self.image, &self.text]
            .into_iter()
            .flatten()
            .map(|m| Ok(self.to_device(self.item_view(m)?, d)))
            .collect::<Result<_>>()?;
        let side = if let [image, text] = &views[..] {
            let q = |x: &Tensor<2>| -> Result<Tensor<2>> {
                Ok(tanh(self.query.forward(x.clone(), Act::None)?).matmul(self.query_out.clone()))
            };
            let weights = softmax(Tensor::cat(vec![q(image)?, q(text)?], 1), 1);
            let w0 = weights.clone().narrow(1, 0, 1);
            let w1 = weights.narrow(1, 1, 1);
            let common = image.clone() * w0 + text.clone() * w1;
            let prefer_i = sigmoid(self.prefer_image.forward(content.clone(), Act::None)?);
            let prefer_t = sigmoid(self.prefer_text.forward(content.clone(), Act::None)?);
            let sep_i = prefer_i * (image.clone() - common.clone());
            let sep_t = prefer_t * (text.clone() - common.clone());
            (sep_i + sep_t + common) / 3.0
        } else {
            views[0].clone()
        };
        let all = self.to_host(content + side)?;
        let (users, items) = all.split_at(nu * d);
        Ok(Embeddings {
            users: users.to_vec(),
            items: items.to_vec(),
            dim: d,
        })
    }

    /// Top-`k` items per user by `user · item`, the user's training items left out (the
    /// reference's evaluation masks them), best first; ties go to the lower item id.
    pub fn recommend(
        &self,
        emb: &Embeddings,
        users: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        if let Some(&u) = users.iter().find(|&&u| u >= emb.n_users()) {
            return Err(ModelError::Config(format!(
                "user {u}: the model has users 0..{}",
                emb.n_users()
            )));
        }
        let n_items = emb.n_items();
        Ok(users
            .par_iter()
            .map(|&u| {
                let q = emb.user(u);
                let seen = self.train_items(u);
                let mut scores: Vec<(u32, f32)> = (0..n_items)
                    .filter(|i| seen.binary_search(&(*i as u32)).is_err())
                    .map(|i| (i as u32, dot(q, emb.item(i))))
                    .collect();
                let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                if scores.len() > k {
                    scores.select_nth_unstable_by(k, by);
                    scores.truncate(k);
                }
                scores.sort_by(by);
                scores
            })
            .collect())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: vectorized, and closer to a BLAS dot than one running sum.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `W2 (W1 x + b1) + b2` as one layer: `W2·W1` (`[out, in]`) and `W2·b1 + b2`, summed in f64.
fn fold_linear(
    w1: &[f32],
    b1: &[f32],
    w2: &[f32],
    b2: &[f32],
    inp: usize,
    mid: usize,
    out: usize,
) -> (Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..out)
        .into_par_iter()
        .flat_map_iter(|o| {
            let mut row = vec![0f64; inp];
            for m in 0..mid {
                let a = w2[o * mid + m] as f64;
                for (r, &x) in row.iter_mut().zip(&w1[m * inp..][..inp]) {
                    *r += a * x as f64;
                }
            }
            row.into_iter().map(|v| v as f32)
        })
        .collect();
    let b = (0..out)
        .map(|o| {
            let s: f64 = (0..mid)
                .map(|m| w2[o * mid + m] as f64 * b1[m] as f64)
                .sum();
            (s + b2[o] as f64) as f32
        })
        .collect();
    (w, b)
}
