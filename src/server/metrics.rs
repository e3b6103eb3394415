//! Counters and histograms the server keeps, rendered in Prometheus' text format at `/metrics`.
//!
//! Plain atomics rather than a metrics crate: a handful of series, no registry, nothing to configure.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::EngineStats;

/// A cumulative histogram over fixed upper bounds, in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in microseconds, so it stays an integer atomic.
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if s <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const TTFT_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const TOKEN_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

pub struct Metrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Streams whose client went away before the last chunk.
    pub client_disconnects: AtomicU64,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            client_disconnects: AtomicU64::new(0),
            time_to_first_token: Histogram::new(TTFT_BOUNDS),
            time_per_output_token: Histogram::new(TOKEN_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// A stream whose client went away before its end.
    pub fn record_disconnect(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one finished generation.
    pub fn record_generation(&self, done: &crate::engine::Done) {
        self.completion_tokens
            .fetch_add(done.usage.completion_tokens as u64, Ordering::Relaxed);
        self.time_to_first_token.observe(done.time_to_first_token);
        if done.usage.completion_tokens > 1 {
            let decode = done.total.saturating_sub(done.time_to_first_token);
            self.time_per_output_token
                .observe(decode / (done.usage.completion_tokens as u32 - 1));
        }
    }

    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP clerk_http_requests_total HTTP requests by route and status.\n\
             # TYPE clerk_http_requests_total counter\n",
        );
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "clerk_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "clerk_prompt_tokens_total",
            "Prompt tokens received by the OpenAI endpoints.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "clerk_completion_tokens_total",
            "Tokens generated for the OpenAI endpoints.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "clerk_client_disconnects_total",
            "Streams whose client disconnected before the end; their generation was cancelled.",
            self.client_disconnects.load(Ordering::Relaxed),
        );
        self.time_to_first_token.render(
            &mut out,
            "clerk_time_to_first_token_seconds",
            "From request to the first generated token.",
        );
        self.time_per_output_token.render(
            &mut out,
            "clerk_time_per_output_token_seconds",
            "Mean time per generated token after the first, per request.",
        );
        if let Some(s) = engine {
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            gauge(
                &mut out,
                "clerk_queue_depth",
                "Requests waiting for the engine.",
                s.queued.load(Ordering::Relaxed) as u64,
            );
            gauge(
                &mut out,
                "clerk_active_sequences",
                "Sequences the engine is decoding.",
                s.active.load(Ordering::Relaxed) as u64,
            );
            counter(
                &mut out,
                "clerk_prefix_cache_hits_total",
                "Prompts that reused cached KV for a prefix.",
                l(&s.prefix_hits),
            );
            counter(
                &mut out,
                "clerk_prefix_cache_misses_total",
                "Prompts with no cached prefix.",
                l(&s.prefix_misses),
            );
            counter(
                &mut out,
                "clerk_cached_prompt_tokens_total",
                "Prompt tokens whose KV came from the prefix cache.",
                l(&s.cached_prompt_tokens),
            );
            counter(
                &mut out,
                "clerk_cancelled_sequences_total",
                "Sequences cancelled because their receiver went away.",
                l(&s.cancelled),
            );
            counter(
                &mut out,
                "clerk_engine_steps_total",
                "Forward steps the engine ran.",
                l(&s.steps),
            );
        }
        out
    }
}
