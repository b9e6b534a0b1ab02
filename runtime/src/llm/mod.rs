//! Llama-family LLMs: loading, generation with streaming, intent classification and the
//! llama-bench-style benchmark.

pub mod bench;
pub mod classify;
pub mod sampling;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use kiln_models::llama::{Llama, Output};
use kiln_models::tokenizer::Tokenizer;
use sampling::{Sampler, SamplerConfig};

use crate::{Result, RuntimeError};

/// A loaded model with its tokenizer; `Send + Sync`, shareable across threads.
pub struct Llm {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub path: PathBuf,
    pub file_bytes: u64,
}

/// How a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model's end-of-sequence or end-of-turn token.
    Eos,
    /// One of the stop strings appeared (it is not part of the text).
    StopString,
    /// `max_tokens` reached.
    Length,
    /// The KV cache (the model's context) is full.
    Context,
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    /// Context size for the KV cache; 0: prompt + max_tokens, capped at the model's context.
    pub context: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            context: 0,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
}

impl Llm {
    /// Loads a GGUF model onto `device`.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let file_bytes = std::fs::metadata(path)
            .map_err(|source| RuntimeError::Io {
                path: path.display().to_string(),
                source,
            })?
            .len();
        let (model, tokenizer) = Llama::load(path, device)?;
        Ok(Llm {
            model,
            tokenizer,
            path: path.to_path_buf(),
            file_bytes,
        })
    }

    /// Token ids of a prompt: with `chat`, the text is the user's turn of the model's chat
    /// template (after an optional system message); without, it is tokenized as it is, special
    /// tokens included, with BOS if the model asks for it.
    pub fn prompt_tokens(
        &self,
        prompt: &str,
        chat: bool,
        system: Option<&str>,
    ) -> Result<Vec<u32>> {
        let text = if chat {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(("system".to_string(), s.to_string()));
            }
            messages.push(("user".to_string(), prompt.to_string()));
            self.tokenizer.apply_chat_template(&messages, true)?
        } else {
            prompt.to_string()
        };
        // A rendered template carries its own BOS text where the model wants one.
        let ids = self.tokenizer.encode(&text, !chat, true)?;
        if ids.is_empty() {
            return Err(RuntimeError::Usage(
                "the prompt is empty (no tokens)".into(),
            ));
        }
        Ok(ids)
    }

    /// Generates after `prompt` (token ids), calling `on_text` with each piece of text as soon as
    /// it is whole UTF-8 and cannot be the start of a stop string.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        opts.sampler.validate().map_err(RuntimeError::Usage)?;
        if prompt.is_empty() {
            return Err(RuntimeError::Usage(
                "the prompt is empty (no tokens)".into(),
            ));
        }
        let max_ctx = self.model.config.context_length;
        let ctx = if opts.context > 0 {
            opts.context
        } else {
            (prompt.len() + opts.max_tokens).min(max_ctx)
        };
        if prompt.len() >= ctx {
            return Err(RuntimeError::Usage(format!(
                "the prompt has {} tokens; the context holds {ctx}",
                prompt.len()
            )));
        }
        let mut cache = self.model.new_cache(ctx);
        let mut sampler = Sampler::new(opts.sampler.clone());
        let t0 = Instant::now();
        let n = prompt.len();
        let positions: Vec<u32> = (0..n as u32).collect();
        let logits = self.model.forward(
            prompt,
            &positions,
            &vec![0; n],
            &mut cache,
            &Output::Logits(vec![n - 1]),
        )?;
        let mut logits = floats(logits)?;
        let prompt_seconds = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let mut history: Vec<u32> = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut decoder = self.tokenizer.decoder();
        let mut text = String::new();
        let mut emitted = 0usize;
        let stops: Vec<u32> = self
            .tokenizer
            .eos
            .into_iter()
            .chain(self.tokenizer.stop_tokens.iter().copied())
            .collect();
        let stop = loop {
            if tokens.len() >= opts.max_tokens {
                break StopReason::Length;
            }
            let next = sampler.sample(&mut logits, &history);
            if stops.contains(&next) {
                break StopReason::Eos;
            }
            tokens.push(next);
            history.push(next);
            text.push_str(&decoder.push(next));
            if let Some(at) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
                if at > emitted {
                    on_text(&text[emitted..]);
                }
                emitted = text.len();
                break StopReason::StopString;
            }
            // Hold back a tail that could still become a stop string.
            let hold = opts
                .stop
                .iter()
                .map(|s| longest_prefix_suffix(&text[emitted..], s))
                .max()
                .unwrap_or(0);
            let upto = text.len() - hold;
            if upto > emitted {
                on_text(&text[emitted..upto]);
                emitted = upto;
            }
            if cache.len() >= cache.capacity() {
                break StopReason::Context;
            }
            let pos = (history.len() - 1) as u32;
            let l =
                self.model
                    .forward(&[next], &[pos], &[0], &mut cache, &Output::Logits(vec![0]))?;
            logits = floats(l)?;
        };
        if stop != StopReason::StopString {
            text.push_str(&decoder.finish());
            if text.len() > emitted {
                on_text(&text[emitted..]);
            }
        }
        Ok(Generation {
            text,
            tokens,
            stop,
            prompt_tokens: n,
            prompt_seconds,
            generate_seconds: t1.elapsed().as_secs_f64(),
        })
    }
}

/// A model loaded where the dispatch plan puts it, with the plan's kernels.
pub struct Planned {
    pub llm: Llm,
    pub plan: crate::plan::Plan,
    pub device: crate::DeviceInfo,
    /// On a GPU: the mat-vec variant measured for it (now, or earlier from the cache).
    pub tuned: Option<crate::tune::Tuned>,
}

/// Loads `path` on `device` (`auto`, `cpu`, `wgpu[:N]`, `cuda[:N]`) among `devices` as
/// `kiln plan` decides: on a GPU with the plan's arithmetic and attention variant and the
/// mat-vec variant measured once for the device ([`crate::tune::tune_matvec`]). `arithmetic`
/// overrides the plan's (`None`: the CPU path's where a kernel follows it).
pub fn load_planned(
    path: &Path,
    device: &str,
    devices: &crate::Devices,
    arithmetic: Option<kiln_kernels::qmatmul::Arithmetic>,
) -> Result<Planned> {
    if !path.exists() {
        return Err(RuntimeError::Usage(format!(
            "{}: no such file",
            path.display()
        )));
    }
    let plan = crate::plan::plan_on(path, &devices.devices, device, None, arithmetic)?;
    let info = devices.find(&plan.device.to_string())?.clone();
    let crate::plan::Kernels::Gpu(kernels) = &plan.kernels else {
        let llm = Llm::load(path, &Device::flex())?;
        return Ok(Planned {
            llm,
            plan,
            device: info,
            tuned: None,
        });
    };
    let dev = info.burn_device()?;
    let mut llm = Llm::load(path, &dev)?;
    llm.model.softmax = kernels.softmax;
    llm.model.kernel.arithmetic = kernels.arithmetic;
    // The plan's mat-vec variant is the policy's guess; a measurement on this device (once,
    // then from the cache) decides.
    let tuned = crate::tune::tune_matvec(&info, &dev, &crate::tune::cache_dir())?;
    llm.model.kernel.reduction = tuned.reduction;
    Ok(Planned {
        llm,
        plan,
        device: info,
        tuned: Some(tuned),
    })
}

/// A result tensor's values on the host.
pub fn floats<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| RuntimeError::Readback(format!("{e:?}")))
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop` (on char bounds).
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&k| {
            stop.is_char_boundary(k)
                && text.is_char_boundary(text.len() - k)
                && text.ends_with(&stop[..k])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stop_string_prefixes_are_held_back() {
        assert_eq!(super::longest_prefix_suffix("hello wor", "world"), 3);
        assert_eq!(super::longest_prefix_suffix("hello", "world"), 0);
        assert_eq!(super::longest_prefix_suffix("a\n\n", "\n\nUser:"), 2);
    }
}
