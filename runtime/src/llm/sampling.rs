//! Next-token sampling: repetition penalty, then temperature, top-k, top-p and min-p (the order
//! of llama.cpp's default sampler chain), with a seeded generator. Temperature 0 is greedy.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings; `Default` is greedy.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SamplerConfig {
    /// 0: greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0: all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1: all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0: none.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this; 1: off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Errors on settings outside their range.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.temperature >= 0.0
            && self.temperature.is_finite()
            && (0.0..=1.0).contains(&self.top_p)
            && (0.0..=1.0).contains(&self.min_p)
            && self.repeat_penalty > 0.0
            && self.repeat_penalty.is_finite();
        if ok {
            Ok(())
        } else {
            Err(format!(
                "sampling settings out of range: temperature {} (>= 0), top-p {} and min-p {} (0..1), repeat penalty {} (> 0)",
                self.temperature, self.top_p, self.min_p, self.repeat_penalty
            ))
        }
    }
}

pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Sampler { config, rng }
    }

    /// Picks the next token from `logits` (modified in place by the penalty), given the tokens
    /// so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        if c.repeat_penalty != 1.0 {
            let from = history.len().saturating_sub(c.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[from..] {
                if let Some(l) = logits.get_mut(t as usize)
                    && seen.insert(t)
                {
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
            }
        }
        if c.temperature == 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if c.top_k > 0 {
            cand.truncate(c.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| f64::from((l - max) / c.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // top-p: the smallest prefix reaching p.
        let mut keep = probs.len();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= f64::from(c.top_p) {
                keep = i + 1;
                break;
            }
        }
        // min-p: relative to the most likely.
        let floor = probs[0] * f64::from(c.min_p);
        keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[keep - 1].0
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let cfg = SamplerConfig {
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        let mut logits = [2.0, 1.5, -1.0];
        assert_eq!(s.sample(&mut logits, &[0]), 1);
        assert_eq!(logits, [1.0, 1.5, -1.0]);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let logits = [0.0f32, 1.0, 0.5, 0.9];
        let draw = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..200)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&cfg);
        assert_eq!(a, draw(&cfg));
        assert!(a.iter().all(|&t| t == 1 || t == 3));
        assert!(a.contains(&1) && a.contains(&3));
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let logits = [5.0f32, 0.0, 0.0, 0.0];
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        assert!((0..100).all(|_| s.sample(&mut logits.clone(), &[]) == 0));
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        assert!((0..100).all(|_| s.sample(&mut logits.clone(), &[]) == 0));
    }
}
