//! Accuracy of a variant against the reference variant, as llama-perplexity's KL-divergence
//! mode defines it: over the same text, each position's next-token distribution is compared
//! with the reference's (`KL(P_ref ‖ P)`, and whether the top tokens are the same), and the
//! variant's own perplexity is reported beside the reference's. Pure functions over log-probs,
//! so the measurement is testable on cases with known answers.

use serde::{Deserialize, Serialize};

/// `log_softmax(logits)`, accumulated in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = f64::from(max)
        + logits
            .iter()
            .map(|&v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln();
    logits
        .iter()
        .map(|&v| (f64::from(v) - lse) as f32)
        .collect()
}

/// `KL(P_ref ‖ P)` in nats from the two distributions' log-probs.
pub fn kl_divergence(reference: &[f32], logp: &[f32]) -> f64 {
    reference
        .iter()
        .zip(logp)
        .map(|(&r, &p)| {
            let pr = f64::from(r).exp();
            if pr == 0.0 {
                0.0
            } else {
                pr * (f64::from(r) - f64::from(p))
            }
        })
        .sum::<f64>()
        .max(0.0)
}

/// Index of the largest value (the first of equals).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Collects positions one at a time.
#[derive(Clone, Debug, Default)]
pub struct TextAccumulator {
    nll: f64,
    kl: Vec<f64>,
    same_top: usize,
    positions: usize,
}

impl TextAccumulator {
    /// One position: the variant's log-probs, the token that came next in the text, and the
    /// reference's log-probs at the same position (`None` for the reference itself).
    pub fn add(&mut self, logp: &[f32], next: u32, reference: Option<&[f32]>) {
        self.positions += 1;
        self.nll -= f64::from(logp[next as usize]);
        match reference {
            Some(r) => {
                self.kl.push(kl_divergence(r, logp));
                self.same_top += usize::from(argmax(r) == argmax(logp));
            }
            None => {
                self.kl.push(0.0);
                self.same_top += 1;
            }
        }
    }

    pub fn finish(mut self, tokens: usize) -> TextMetrics {
        self.kl.sort_by(f64::total_cmp);
        let n = self.positions.max(1) as f64;
        let pct = |p: f64| {
            self.kl
                .get(((self.kl.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        TextMetrics {
            tokens,
            positions: self.positions,
            perplexity: (self.nll / n).exp(),
            kl_mean: self.kl.iter().sum::<f64>() / n,
            kl_median: pct(0.5),
            kl_p99: pct(0.99),
            kl_max: self.kl.last().copied().unwrap_or(0.0),
            top1_agreement: self.same_top as f64 / n,
        }
    }
}

/// Accuracy over a text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextMetrics {
    /// Tokens of text read.
    pub tokens: usize,
    /// Positions scored (the second half of each context window, as llama-perplexity does).
    pub positions: usize,
    /// This variant's perplexity on the text.
    pub perplexity: f64,
    /// `KL(P_ref ‖ P)`, nats: mean, median, 99th percentile and largest over positions.
    pub kl_mean: f64,
    pub kl_median: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Share of positions whose most likely next token is the reference's.
    pub top1_agreement: f64,
}

/// Intent classification against the labeled set and the reference variant's predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentAgreement {
    pub accuracy: f64,
    /// Share of queries given the reference variant's label.
    pub agreement: f64,
}

/// Accuracy over `expected` labels and agreement with `reference` predictions (the
/// predictions themselves when `None`).
pub fn intent_agreement(
    predicted: &[String],
    expected: &[String],
    reference: Option<&[String]>,
) -> IntentAgreement {
    let n = predicted.len().max(1) as f64;
    let hits =
        |other: &[String]| predicted.iter().zip(other).filter(|(a, b)| a == b).count() as f64 / n;
    IntentAgreement {
        accuracy: hits(expected),
        agreement: reference.map_or(1.0, hits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_distributions_and_matches_a_hand_computed_case() {
        let a = log_softmax(&[1.0, 2.0, 3.0]);
        assert_eq!(kl_divergence(&a, &a), 0.0);
        // P = (0.5, 0.5), Q = (0.9, 0.1): KL(P‖Q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1).
        let p = [0.5f32.ln(), 0.5f32.ln()];
        let q = [0.9f32.ln(), 0.1f32.ln()];
        let want = 0.5 * (0.5f64 / 0.9).ln() + 0.5 * (0.5f64 / 0.1).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-6);
    }

    #[test]
    fn perplexity_of_a_uniform_model_is_the_vocabulary_size() {
        let mut acc = TextAccumulator::default();
        let uniform = log_softmax(&[0.0; 8]);
        for t in 0..5 {
            acc.add(&uniform, t, Some(&uniform));
        }
        let m = acc.finish(6);
        assert!((m.perplexity - 8.0).abs() < 1e-4);
        assert_eq!((m.kl_mean, m.top1_agreement, m.positions), (0.0, 1.0, 5));
    }

    #[test]
    fn a_changed_top_token_counts_as_disagreement() {
        let r = log_softmax(&[3.0, 1.0, 0.0]);
        let v = log_softmax(&[1.0, 3.0, 0.0]);
        let mut acc = TextAccumulator::default();
        acc.add(&v, 0, Some(&r));
        acc.add(&r, 0, Some(&r));
        let m = acc.finish(3);
        assert_eq!(m.top1_agreement, 0.5);
        assert!(m.kl_max > 1.0 && m.kl_median >= 0.0);
    }

    #[test]
    fn intent_accuracy_and_agreement() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let m = intent_agreement(
            &s(&["a", "b", "c", "a"]),
            &s(&["a", "b", "b", "b"]),
            Some(&s(&["a", "c", "c", "a"])),
        );
        assert_eq!((m.accuracy, m.agreement), (0.5, 0.75));
    }
}
