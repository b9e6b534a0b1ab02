//! Tokenizers from GGUF metadata (`tokenizer.ggml.*`), built with Hugging Face's `tokenizers`:
//! `gpt2` byte-level BPE with the pre-tokenizer regexes llama.cpp uses for the `pre` name
//! (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`), and `llama` SentencePiece as BPE over the
//! vocabulary's scores with byte fallback. Plus the chat template (minijinja).

use std::collections::HashMap;

use kiln_quant::gguf::Metadata;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::{ModelError, Result};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// Which algorithm the vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `gpt2`: byte-level BPE.
    Bpe,
    /// `llama`: SentencePiece BPE with byte fallback.
    SentencePiece,
}

/// A GGUF model's tokenizer: encode, decode (also incrementally), special tokens, chat template.
///
/// Decoding maps ids to bytes itself (byte-level alphabet, `<0xNN>` byte tokens, `▁` spaces), as
/// llama.cpp's `llama_token_to_piece` does, so streamed text never splits a character.
pub struct Tokenizer {
    /// Encodes with special-token text parsed as special tokens; switched to treating it as text
    /// (`set_encode_special_tokens`) under the write lock, so one copy of the vocabulary serves
    /// both (each copy is ~10 MiB for a 49k vocabulary).
    inner: std::sync::RwLock<tokenizers::Tokenizer>,
    pub kind: TokenizerKind,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// End-of-turn tokens besides EOS (`<|im_end|>`, `<|eot_id|>` …) that end a generation.
    pub stop_tokens: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
    /// Control tokens: decoded as nothing unless asked for.
    control: Vec<bool>,
    /// Every token's text, concatenated (`offsets[i]..offsets[i + 1]`): one allocation instead
    /// of one per token.
    token_text: String,
    offsets: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// llama.cpp's pre-tokenizer regexes for a `tokenizer.ggml.pre` name.
fn bpe_regexes(pre: &str) -> Result<Vec<&'static str>> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe" => vec![LLAMA3],
        "qwen2" | "stablelm2" | "hunyuan" => vec![QWEN2],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" | "trillion" => vec![GPT2],
        other => {
            return Err(ModelError::Tokenizer(format!(
                "pre-tokenizer {other:?} (tokenizer.ggml.pre) is not supported; known: llama3, qwen2, smollm, starcoder, gpt2, default"
            )));
        }
    })
}

fn int_array(meta: &Metadata, key: &str) -> Result<Option<Vec<i64>>> {
    use kiln_quant::gguf::{Array, Value};
    Ok(match meta.get(key) {
        None => None,
        Some(Value::Array(Array::I32(v))) => Some(v.iter().map(|&x| x.into()).collect()),
        Some(Value::Array(Array::U32(v))) => Some(v.iter().map(|&x| x.into()).collect()),
        Some(Value::Array(Array::I64(v))) => Some(v.clone()),
        Some(other) => {
            return Err(ModelError::Tokenizer(format!(
                "{key}: expected an integer array, found {}",
                other.type_description()
            )));
        }
    })
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(meta: &Metadata) -> Result<Self> {
        let model = meta.str("tokenizer.ggml.model")?;
        let tokens = meta.string_array("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types = int_array(meta, "tokenizer.ggml.token_type")?.unwrap_or_default();
        if !types.is_empty() && types.len() != n {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            )));
        }
        let ty = |i: usize| types.get(i).copied().unwrap_or(1) as i32;
        let id = |key: &str| -> Result<Option<u32>> {
            match meta.get(key) {
                None => Ok(None),
                Some(_) => {
                    let v = meta.u32(key)?;
                    if v as usize >= n {
                        return Err(ModelError::Tokenizer(format!(
                            "{key} = {v}, vocabulary has {n}"
                        )));
                    }
                    Ok(Some(v))
                }
            }
        };
        let flag = |key: &str, default: bool| meta.bool(key).unwrap_or(default);

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let (kind, mut special, add_bos_default) = match model {
            "gpt2" => {
                // A vocabulary without merges (placeholder vocabularies of test models) is
                // allowed: every token is then a single symbol.
                let no_merges: &[String] = &[];
                let merges: Vec<(String, String)> = match meta.get("tokenizer.ggml.merges") {
                    None => no_merges,
                    Some(_) => meta.string_array("tokenizer.ggml.merges")?,
                }
                .iter()
                .map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| ModelError::Tokenizer(format!("merge {m:?} has no space")))
                })
                .collect::<Result<_>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(false)
                    .build()
                    .map_err(tok_err)?;
                let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
                let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
                for re in bpe_regexes(pre)? {
                    let split = Split::new(
                        SplitPattern::Regex(re.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map_err(tok_err)?;
                    steps.push(split.into());
                }
                steps.push(ByteLevel::new(false, false, false).into());
                let mut t = tokenizers::Tokenizer::new(bpe);
                t.with_pre_tokenizer(Some(Sequence::new(steps)));
                (TokenizerKind::Bpe, t, false)
            }
            "llama" => {
                let scores: Vec<f32> = match meta.get("tokenizer.ggml.scores") {
                    Some(kiln_quant::gguf::Value::Array(kiln_quant::gguf::Array::F32(v))) => {
                        v.clone()
                    }
                    _ => vec![0.0; n],
                };
                if scores.len() != n {
                    return Err(ModelError::Tokenizer(format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        scores.len()
                    )));
                }
                let merges = spm_merges(tokens, &scores, |i| ty(i) == 1);
                let unk =
                    id("tokenizer.ggml.unknown_token_id")?.map(|u| tokens[u as usize].clone());
                let mut b = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true);
                if let Some(unk) = unk {
                    b = b.unk_token(unk);
                }
                let bpe = b.build().map_err(tok_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let norm: Vec<NormalizerWrapper> = vec![
                    Prepend::new("▁".into()).into(),
                    Replace::new(" ", "▁").map_err(tok_err)?.into(),
                ];
                t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(norm)))
                    .map_err(tok_err)?;
                (TokenizerKind::SentencePiece, t, true)
            }
            other => {
                return Err(ModelError::Tokenizer(format!(
                    "tokenizer model {other:?} (tokenizer.ggml.model) is not supported; known: gpt2, llama"
                )));
            }
        };

        let control: Vec<bool> = (0..n).map(|i| ty(i) == TOKEN_CONTROL).collect();
        let added: Vec<AddedToken> = (0..n)
            .filter(|&i| matches!(ty(i), TOKEN_CONTROL | TOKEN_USER_DEFINED))
            .map(|i| AddedToken::from(tokens[i].clone(), true).normalized(false))
            .collect();
        special.add_special_tokens(added).map_err(tok_err)?;

        let eos = id("tokenizer.ggml.eos_token_id")?;
        let mut stop_tokens: Vec<u32> = Vec::new();
        if let Some(e) = id("tokenizer.ggml.eot_token_id")? {
            stop_tokens.push(e);
        }
        for (i, t) in tokens.iter().enumerate() {
            // llama.cpp's end-of-generation heuristics (llama-vocab.cpp, special_eog_ids).
            if control[i]
                && matches!(
                    t.as_str(),
                    "<|eot_id|>"
                        | "<|im_end|>"
                        | "<|end|>"
                        | "<end_of_turn>"
                        | "<|endoftext|>"
                        | "<EOT>"
                )
                && !stop_tokens.contains(&(i as u32))
            {
                stop_tokens.push(i as u32);
            }
        }
        Ok(Tokenizer {
            inner: std::sync::RwLock::new(special),
            kind,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos,
            stop_tokens,
            add_bos: flag("tokenizer.ggml.add_bos_token", add_bos_default),
            add_eos: flag("tokenizer.ggml.add_eos_token", false),
            chat_template: meta.str("tokenizer.chat_template").ok().map(str::to_string),
            control,
            token_text: tokens.concat(),
            offsets: std::iter::once(0)
                .chain(tokens.iter().scan(0u32, |at, t| {
                    *at += t.len() as u32;
                    Some(*at)
                }))
                .collect(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The token's text as the vocabulary spells it.
    pub fn token(&self, id: u32) -> Option<&str> {
        let i = id as usize;
        let (a, b) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        Some(&self.token_text[a as usize..b as usize])
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.token_to_id(token)
    }

    /// Token ids of `text`. `parse_special`: special-token text (`<|im_start|>`) becomes the
    /// special token, as llama.cpp's `llama_tokenize(.., parse_special = true)`.
    /// `add_special`: BOS/EOS as the model asks (`add_bos_token`, `add_eos_token`).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let enc = if parse_special {
            let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
            t.encode_fast(text, false)
        } else {
            let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
            t.set_encode_special_tokens(true);
            let enc = t.encode_fast(text, false);
            t.set_encode_special_tokens(false);
            enc
        }
        .map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// The bytes of `ids` joined (control tokens render as nothing unless `special`). Invalid
    /// UTF-8 is kept as bytes: see [`Decoder`] for streaming text.
    pub fn decode_bytes(&self, ids: &[u32], special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend(self.piece(id, special));
        }
        out
    }

    /// Text of `ids`, with U+FFFD for invalid UTF-8. SentencePiece text loses the space its
    /// encoder put in front (as llama.cpp's `llama_detokenize`).
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let text = String::from_utf8_lossy(&self.decode_bytes(ids, special)).into_owned();
        match (self.kind, text.strip_prefix(' ')) {
            (TokenizerKind::SentencePiece, Some(rest)) => rest.to_string(),
            _ => text,
        }
    }

    /// One token's bytes (llama.cpp `llama_token_to_piece`).
    pub fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(tok) = self.token(id) else {
            return Vec::new();
        };
        if self.control[id as usize] {
            return if special {
                tok.as_bytes().to_vec()
            } else {
                Vec::new()
            };
        }
        match self.kind {
            TokenizerKind::Bpe => {
                let bytes = byte_level_bytes(tok);
                bytes.unwrap_or_else(|| tok.as_bytes().to_vec())
            }
            TokenizerKind::SentencePiece => {
                if let Some(hex) = tok.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
                    && let Ok(b) = u8::from_str_radix(hex, 16)
                {
                    return vec![b];
                }
                tok.replace('▁', " ").into_bytes()
            }
        }
    }

    /// A streaming decoder: feed tokens, get text only when whole UTF-8 characters are in.
    pub fn decoder(&self) -> Decoder<'_> {
        Decoder {
            tokenizer: self,
            pending: Vec::new(),
            started: false,
        }
    }

    /// Renders the chat template (minijinja with Python-compatible methods) for `messages`
    /// (`role`, `content` pairs), ending with the assistant's turn when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let src = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::Tokenizer("the model has no chat template (tokenizer.chat_template)".into())
        })?;
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(tok_err)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", src)
            .map_err(|e| ModelError::Tokenizer(format!("chat template: {e}")))?;
        let tmpl = env.get_template("chat").map_err(tok_err)?;
        let msgs: Vec<_> = messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => r, content => c })
            .collect();
        let name = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or("").to_string();
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => name(self.bos),
            eos_token => name(self.eos),
        })
        .map_err(|e| ModelError::Tokenizer(format!("chat template: {e}")))
    }
}

/// GPT-2 byte-level alphabet back to bytes (`bytes_to_unicode` inverted).
fn byte_level_bytes(token: &str) -> Option<Vec<u8>> {
    token.chars().map(byte_of_char).collect()
}

fn byte_of_char(c: char) -> Option<u8> {
    let c = c as u32;
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if c < 256 && printable(c) {
        return Some(c as u8);
    }
    // The other 68 bytes map to U+0100.. in byte order.
    let mut n = 256u32;
    for b in 0u32..256 {
        if !printable(b) {
            if n == c {
                return Some(b as u8);
            }
            n += 1;
        }
    }
    None
}

/// SentencePiece vocabularies carry scores instead of merges: every split of a token into two
/// vocabulary pieces is a merge, ranked by the token's score (what llama.cpp's SPM tokenizer
/// does greedily, and HF's `SentencePieceExtractor` writes out).
fn spm_merges(
    tokens: &[String],
    scores: &[f32],
    normal: impl Fn(usize) -> bool,
) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, String, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !normal(i) || t.chars().count() < 2 {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((scores[i], ia, ib, a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges.into_iter().map(|m| (m.3, m.4)).collect()
}

/// Incremental detokenizer: never emits half a UTF-8 character.
pub struct Decoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    /// Text has been emitted (SentencePiece drops the space in front of the first piece).
    started: bool,
}

impl Decoder<'_> {
    /// Adds a token; returns the text that is now complete.
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend(self.tokenizer.piece(id, false));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence (not just an unfinished one): flush it lossily.
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid);
        let mut text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        if !self.started && !text.is_empty() {
            self.started = true;
            if self.tokenizer.kind == TokenizerKind::SentencePiece && text.starts_with(' ') {
                text.remove(0);
            }
        }
        text
    }

    /// Whatever is left (lossy).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips() {
        assert_eq!(byte_of_char('A'), Some(b'A'));
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_of_char('\u{0100}'), Some(0));
        assert_eq!(byte_of_char('中'), None);
    }
}
