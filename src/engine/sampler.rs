//! Turns a row of logits into the next token.
//!
//! Order: repetition/frequency/presence penalties and logit bias adjust the logits; log-probabilities
//! are reported from those adjusted logits; then greedy, or top-k → temperature → softmax → top-p →
//! min-p → a draw from a seeded generator of our own, so a seed means the same tokens whatever crate
//! versions are built.

use std::collections::HashMap;

use super::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 is off.
    pub top_k: usize,
    /// 1.0 is off.
    pub top_p: f32,
    /// 0.0 is off; relative to the most likely token's probability.
    pub min_p: f32,
    /// 1.0 is off; over every token of the context, as llama.cpp and transformers apply it.
    pub repetition_penalty: f32,
    /// OpenAI's, over generated tokens only.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Report the chosen token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
        }
    }
}

fn invalid(param: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidParameter {
        param,
        message: message.into(),
    }
}

impl SamplingParams {
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let finite_in = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        if !finite_in(self.temperature, 0.0, 2.0) {
            return Err(invalid("temperature", "must be between 0 and 2"));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid("top_p", "must be greater than 0 and at most 1"));
        }
        if !finite_in(self.min_p, 0.0, 1.0) {
            return Err(invalid("min_p", "must be between 0 and 1"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(invalid("repetition_penalty", "must be greater than 0"));
        }
        if !finite_in(self.frequency_penalty, -2.0, 2.0) {
            return Err(invalid("frequency_penalty", "must be between -2 and 2"));
        }
        if !finite_in(self.presence_penalty, -2.0, 2.0) {
            return Err(invalid("presence_penalty", "must be between -2 and 2"));
        }
        for &(id, b) in &self.logit_bias {
            if id as usize >= vocab_size {
                return Err(invalid(
                    "logit_bias",
                    format!("token {id} is outside the vocabulary ({vocab_size})"),
                ));
            }
            if !finite_in(b, -100.0, 100.0) {
                return Err(invalid(
                    "logit_bias",
                    format!("bias {b} for token {id} is outside -100..100"),
                ));
            }
        }
        if self.logprobs.is_some_and(|k| k > 20) {
            return Err(invalid("top_logprobs", "must be at most 20"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// xoshiro256** seeded through splitmix64: small, fast and fixed forever.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

fn clock_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    t ^ (&local as *const u8 as u64).rotate_left(32)
}

/// The first index of the greatest value (NaNs never win; 0 when nothing beats −∞). Eight running
/// maxima, so the comparisons vectorise: a plain scan's compare-and-branch per element was 1% of an
/// eight-sequence step, on the engine thread while the pool waited.
fn argmax(xs: &[f32]) -> usize {
    const L: usize = 8;
    let mut best = [f32::NEG_INFINITY; L];
    let mut at = [0u32; L];
    let chunks = xs.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for i in 0..L {
            if chunk[i] > best[i] {
                best[i] = chunk[i];
                at[i] = (c * L + i) as u32;
            }
        }
    }
    // Each lane kept its first maximum; across lanes the smallest index among equal maxima wins.
    let (mut value, mut index) = (f32::NEG_INFINITY, 0usize);
    for i in 0..L {
        let a = at[i] as usize;
        if best[i] > value || (best[i] == value && best[i] > f32::NEG_INFINITY && a < index) {
            (value, index) = (best[i], a);
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        if v > value {
            (value, index) = (v, xs.len() - tail.len() + i);
        }
    }
    index
}

/// Indices of the `k` largest values, largest first (ties: lower id first).
fn top_k_of(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    out.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < out.len() {
        out.select_nth_unstable_by(k, cmp);
        out.truncate(k);
    }
    out.sort_unstable_by(cmp);
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !mx.is_finite() {
        return mx;
    }
    mx + logits.iter().map(|&l| (l - mx).exp()).sum::<f32>().ln()
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(clock_seed);
        Self {
            params,
            rng: Rng::new(seed),
            candidates: Vec::new(),
        }
    }

    pub fn sample(
        &mut self,
        logits: &mut [f32],
        context: &[u32],
        generated_from: usize,
    ) -> Sampled {
        let p = &self.params;
        let n = logits.len();
        if p.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = context
                .iter()
                .copied()
                .filter(|&t| (t as usize) < n)
                .collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in context.get(generated_from..).unwrap_or(&[]) {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }

        let token = if p.temperature <= 0.0 {
            argmax(logits) as u32
        } else {
            let inv_t = 1.0 / p.temperature;
            if p.top_k > 0 {
                top_k_of(logits, p.top_k.min(n), &mut self.candidates);
                // Tokens a grammar ruled out (−∞) may fill the top k when fewer are allowed; they
                // must never be drawn, not even by the rounding fallback below.
                if self.candidates.iter().any(|c| c.1.is_finite()) {
                    self.candidates.retain(|c| c.1.is_finite());
                }
            } else {
                // Sorting a 262k vocabulary per token is too slow; tokens more than 30 nats (after
                // temperature) below the best carry less than e^-30 each and are left out.
                let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let floor = mx - 30.0 * p.temperature;
                self.candidates.clear();
                self.candidates.extend(
                    logits
                        .iter()
                        .enumerate()
                        .filter(|(_, &l)| l >= floor)
                        .map(|(i, &l)| (i as u32, l)),
                );
                self.candidates
                    .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            let mx = self.candidates.first().map_or(0.0, |c| c.1);
            let mut total = 0.0f32;
            for c in self.candidates.iter_mut() {
                c.1 = ((c.1 - mx) * inv_t).exp();
                total += c.1;
            }
            for c in self.candidates.iter_mut() {
                c.1 /= total;
            }
            if p.top_p < 1.0 {
                let mut acc = 0.0;
                let mut keep = self.candidates.len();
                for (i, c) in self.candidates.iter().enumerate() {
                    acc += c.1;
                    if acc >= p.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                self.candidates.truncate(keep.max(1));
            }
            if p.min_p > 0.0 {
                let floor = self.candidates.first().map_or(0.0, |c| c.1) * p.min_p;
                let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
                self.candidates.truncate(keep.max(1));
            }
            let mass: f32 = self.candidates.iter().map(|c| c.1).sum();
            let mut r = self.rng.next_f32() * mass;
            let mut chosen = self.candidates.last().map_or(0, |c| c.0);
            for c in &self.candidates {
                if r < c.1 {
                    chosen = c.0;
                    break;
                }
                r -= c.1;
            }
            chosen
        };

        let (logprob, top_logprobs) = match p.logprobs {
            None => (0.0, Vec::new()),
            Some(k) => {
                let lse = log_sum_exp(logits);
                let mut top = Vec::new();
                top_k_of(logits, k, &mut top);
                (
                    logits[token as usize] - lse,
                    // Ruled-out tokens (−∞) are no alternatives, and JSON can't carry −∞.
                    top.into_iter()
                        .filter(|(_, l)| l.is_finite())
                        .map(|(t, l)| (t, l - lse))
                        .collect(),
                )
            }
        };
        Sampled {
            token,
            logprob,
            top_logprobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_is_the_first_greatest_as_a_plain_scan_finds_it() {
        let scan = |xs: &[f32]| {
            let mut best = 0;
            for (i, &v) in xs.iter().enumerate() {
                if v > xs[best] || (xs[best].is_nan() && !v.is_nan()) {
                    best = i;
                }
            }
            best
        };
        let mut s = 7u64;
        for len in [1, 7, 8, 9, 63, 64, 65, 1000] {
            for ties in [false, true] {
                let xs: Vec<f32> = (0..len)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let v = (s >> 40) as f32;
                        // Few distinct values, so the greatest repeats across lanes and the tail.
                        if ties {
                            (v as u32 % 5) as f32
                        } else {
                            v
                        }
                    })
                    .collect();
                assert_eq!(argmax(&xs), scan(&xs), "{len} {ties}");
            }
        }
        assert_eq!(argmax(&[1.0, f32::NAN, 3.0, 3.0]), 2);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
        let mut late = vec![0.0f32; 21];
        late[20] = 1.0;
        assert_eq!(argmax(&late), 20);
        late[3] = 1.0;
        assert_eq!(argmax(&late), 3);
    }

    fn params() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn greedy_takes_the_argmax_and_lowest_id_on_ties() {
        let mut s = Sampler::new(params());
        assert_eq!(s.sample(&mut [0.1, 2.0, -1.0, 2.0], &[], 0).token, 1);
    }

    #[test]
    fn a_seed_reproduces_and_different_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                seed: Some(seed),
                ..params()
            });
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[], 0).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    /// A grammar's mask leaves fewer tokens than `top_k` and `top_logprobs` ask for: the ruled-out
    /// ones are never drawn and never listed (JSON can't carry −∞).
    #[test]
    fn masked_tokens_are_never_drawn_or_listed() {
        let inf = f32::NEG_INFINITY;
        let logits = vec![inf, 1.0, inf, 0.5, inf, inf];
        let mut s = Sampler::new(SamplingParams {
            temperature: 2.0,
            top_k: 5,
            logprobs: Some(4),
            seed: Some(11),
            ..params()
        });
        for _ in 0..500 {
            let out = s.sample(&mut logits.clone(), &[], 0);
            assert!(out.token == 1 || out.token == 3, "{}", out.token);
            assert_eq!(out.top_logprobs.len(), 2);
            assert!(out.top_logprobs.iter().all(|(_, l)| l.is_finite()));
        }
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = vec![0.5, 3.0, 2.9, -1.0];
        for p in [
            SamplingParams {
                temperature: 1.5,
                top_k: 1,
                seed: Some(3),
                ..params()
            },
            SamplingParams {
                temperature: 1.5,
                top_p: 1e-6,
                seed: Some(3),
                ..params()
            },
            SamplingParams {
                temperature: 1.5,
                min_p: 0.999,
                seed: Some(3),
                ..params()
            },
        ] {
            let mut s = Sampler::new(p);
            for _ in 0..50 {
                assert_eq!(s.sample(&mut logits.clone(), &[], 0).token, 1);
            }
        }
    }

    #[test]
    fn penalties_have_their_exact_effect() {
        let mut l = vec![2.0, -2.0, 1.0, 1.0];
        // Context: prompt [0, 1], generated [2, 2].
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            logprobs: Some(0),
            ..params()
        });
        s.sample(&mut l, &[0, 1, 2, 2], 2);
        assert_eq!(l, vec![1.0, -4.0, 0.5 - 2.0 * 0.5 - 0.25, 1.0]);
    }

    #[test]
    fn logit_bias_bans_and_forces() {
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(1, -100.0)],
            ..params()
        });
        assert_eq!(s.sample(&mut [0.0, 5.0, 1.0], &[], 0).token, 2);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(9),
            logit_bias: vec![(0, 100.0)],
            ..params()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 5.0, 1.0], &[], 0).token, 0);
        }
    }

    #[test]
    fn logprobs_are_log_softmax_sorted() {
        let mut s = Sampler::new(SamplingParams {
            logprobs: Some(2),
            ..params()
        });
        let out = s.sample(&mut [1.0, 3.0, 2.0], &[], 0);
        let lse = (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((out.logprob - (3.0 - lse)).abs() < 1e-5);
        assert_eq!(
            out.top_logprobs.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(out.top_logprobs[0].1 > out.top_logprobs[1].1);
    }

    #[test]
    fn temperature_sampling_follows_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..params()
        });
        let mut counts = [0usize; 3];
        let draws = 20_000;
        for _ in 0..draws {
            counts[s.sample(&mut logits.clone(), &[], 0).token as usize] += 1;
        }
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = logits[i].exp() / z;
            let got = c as f32 / draws as f32;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = |p: SamplingParams| match p.validate(10) {
            Err(EngineError::InvalidParameter { param, .. }) => param,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(
            bad(SamplingParams {
                temperature: 3.0,
                ..params()
            }),
            "temperature"
        );
        assert_eq!(
            bad(SamplingParams {
                top_p: 0.0,
                ..params()
            }),
            "top_p"
        );
        assert_eq!(
            bad(SamplingParams {
                logit_bias: vec![(10, 1.0)],
                ..params()
            }),
            "logit_bias"
        );
        assert_eq!(
            bad(SamplingParams {
                logit_bias: vec![(1, 101.0)],
                ..params()
            }),
            "logit_bias"
        );
        assert_eq!(
            bad(SamplingParams {
                presence_penalty: -2.5,
                ..params()
            }),
            "presence_penalty"
        );
        assert_eq!(
            bad(SamplingParams {
                logprobs: Some(21),
                ..params()
            }),
            "top_logprobs"
        );
        assert!(params().validate(10).is_ok());
    }
}
