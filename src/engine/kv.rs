//! KV caches: one per sequence, and the prefix cache that lets sequences share a computed prompt
//! prefix (the system prompt and shop context every conversation starts with).
//!
//! The prefix cache stores KV in blocks of [`BLOCK`] tokens keyed by a hash of the whole prefix up to
//! the block's end, so a lookup walks the prompt block by block and stops at the first miss. Blocks
//! are evicted least-recently-used once their bytes exceed the budget; evicting a block makes the
//! blocks after it unreachable, and they age out the same way.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::tensor_model::DeviceKv;

/// How keys and values are stored: f16, as llama.cpp stores them by default. Attention reads every
/// cached position of every sequence at each step, so with many sequences it is bound by these
/// bytes; half of f32's.
pub type KvElem = f16;

/// Tokens per prefix-cache block. Small enough that a shared prefix is reused almost whole, large
/// enough that the per-block bookkeeping stays negligible.
pub const BLOCK: usize = 16;

/// One sequence's keys and values for every layer, `[position × kv_dim]` row-major.
///
/// The CPU forward keeps them here in host memory. The tensor forward keeps them on its device (the
/// `device` part) and copies to these host rows only what the prefix cache needs: host rows that a
/// restore put here are uploaded when the sequence first runs, and a finished prompt's rows are
/// downloaded before they are offered to the cache.
#[derive(Debug)]
pub struct SeqKv {
    kv_dim: usize,
    k: Vec<Vec<KvElem>>,
    v: Vec<Vec<KvElem>>,
    len: usize,
    pub(super) device: Option<DeviceKv>,
}

impl SeqKv {
    pub fn new(n_layer: usize, kv_dim: usize) -> Self {
        Self {
            kv_dim,
            k: vec![Vec::new(); n_layer],
            v: vec![Vec::new(); n_layer],
            len: 0,
            device: None,
        }
    }

    pub(super) fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Positions computed and committed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions held in host memory: on the CPU forward all of them, including those appended by
    /// the step in progress; on the tensor forward only those a restore or a download put there.
    pub(super) fn host_len(&self) -> usize {
        self.k.first().map_or(0, |k| k.len() / self.kv_dim.max(1))
    }

    pub fn reserve(&mut self, extra: usize) {
        for (k, v) in self.k.iter_mut().zip(self.v.iter_mut()) {
            k.reserve(extra * self.kv_dim);
            v.reserve(extra * self.kv_dim);
        }
    }

    /// Appends rows for layer `il` during a step; [`commit`](Self::commit) makes them count.
    pub fn append(&mut self, il: usize, k: &[f32], v: &[f32]) {
        for (dst, src) in [(&mut self.k[il], k), (&mut self.v[il], v)] {
            let at = dst.len();
            dst.resize(at + src.len(), f16::ZERO);
            dst[at..].convert_from_f32_slice(src);
        }
    }

    /// Appends rows already stored as [`KvElem`] (a prefix-cache block, or rows downloaded from a
    /// device).
    pub(super) fn append_stored(&mut self, il: usize, k: &[KvElem], v: &[KvElem]) {
        self.k[il].extend_from_slice(k);
        self.v[il].extend_from_slice(v);
    }

    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }

    pub fn keys(&self, il: usize) -> &[KvElem] {
        &self.k[il]
    }

    pub fn values(&self, il: usize) -> &[KvElem] {
        &self.v[il]
    }

    /// Drops everything past `len` positions (the benchmarks reuse a computed prompt this way).
    pub fn truncate(&mut self, len: usize) {
        for (k, v) in self.k.iter_mut().zip(self.v.iter_mut()) {
            k.truncate(len * self.kv_dim);
            v.truncate(len * self.kv_dim);
        }
        self.len = self.len.min(len);
        if let Some(d) = &mut self.device {
            d.truncate(len);
        }
    }

    pub fn bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|x| x.capacity() * std::mem::size_of::<KvElem>())
            .sum::<usize>()
            + self.device.as_ref().map_or(0, DeviceKv::bytes)
    }
}

struct Block {
    tokens: [u32; BLOCK],
    /// Hash of the prefix before this block, to tell apart equal blocks after different prefixes.
    parent: u64,
    /// `[layer][BLOCK × kv_dim]` keys then values.
    k: Vec<Vec<KvElem>>,
    v: Vec<Vec<KvElem>>,
    last_used: u64,
    bytes: usize,
}

pub struct PrefixCache {
    blocks: HashMap<u64, Block>,
    budget: usize,
    used: usize,
    clock: u64,
    pub hits: u64,
    pub hit_tokens: u64,
    pub misses: u64,
}

fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    /// `budget` in bytes; 0 disables the cache.
    pub fn new(budget: usize) -> Self {
        Self {
            blocks: HashMap::new(),
            budget,
            used: 0,
            clock: 0,
            hits: 0,
            hit_tokens: 0,
            misses: 0,
        }
    }

    pub fn bytes_used(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Fills `kv` (which must be empty) with the longest cached prefix of `prompt`, leaving at least
    /// one prompt token to compute so the step that finishes the prompt yields logits. Returns the
    /// number of positions restored.
    pub fn restore(&mut self, prompt: &[u32], kv: &mut SeqKv) -> usize {
        if self.budget == 0 || !kv.is_empty() {
            return 0;
        }
        let usable = prompt.len().saturating_sub(1) / BLOCK;
        let mut parent = 0u64;
        let mut found = Vec::new();
        for chunk in prompt.chunks_exact(BLOCK).take(usable) {
            let h = chain_hash(parent, chunk);
            match self.blocks.get(&h) {
                Some(b) if b.parent == parent && b.tokens[..] == *chunk => found.push(h),
                _ => break,
            }
            parent = h;
        }
        if found.is_empty() {
            self.misses += 1;
            return 0;
        }
        self.clock += 1;
        kv.reserve(found.len() * BLOCK);
        for h in &found {
            if let Some(b) = self.blocks.get_mut(h) {
                b.last_used = self.clock;
                for (il, (k, v)) in b.k.iter().zip(&b.v).enumerate() {
                    kv.append_stored(il, k, v);
                }
            }
        }
        let n = found.len() * BLOCK;
        kv.commit(n);
        self.hits += 1;
        self.hit_tokens += n as u64;
        n
    }

    /// Stores the whole blocks of `tokens` (the positions already in `kv`) that are not cached yet.
    pub fn insert(&mut self, tokens: &[u32], kv: &SeqKv) {
        if self.budget == 0 {
            return;
        }
        let whole = tokens.len().min(kv.len()) / BLOCK;
        let mut parent = 0u64;
        self.clock += 1;
        for (bi, chunk) in tokens.chunks_exact(BLOCK).take(whole).enumerate() {
            let h = chain_hash(parent, chunk);
            if let Some(b) = self.blocks.get_mut(&h) {
                b.last_used = self.clock;
            } else {
                let range = bi * BLOCK * kv.kv_dim..(bi + 1) * BLOCK * kv.kv_dim;
                let k: Vec<Vec<KvElem>> = kv.k.iter().map(|l| l[range.clone()].to_vec()).collect();
                let v: Vec<Vec<KvElem>> = kv.v.iter().map(|l| l[range.clone()].to_vec()).collect();
                let bytes = 2 * k.len() * BLOCK * kv.kv_dim * std::mem::size_of::<KvElem>();
                if bytes > self.budget {
                    return;
                }
                let mut t = [0u32; BLOCK];
                t.copy_from_slice(chunk);
                self.used += bytes;
                self.blocks.insert(
                    h,
                    Block {
                        tokens: t,
                        parent,
                        k,
                        v,
                        last_used: self.clock,
                        bytes,
                    },
                );
            }
            parent = h;
        }
        self.evict();
    }

    fn evict(&mut self) {
        if self.used <= self.budget {
            return;
        }
        let mut by_age: Vec<(u64, u64)> =
            self.blocks.iter().map(|(h, b)| (b.last_used, *h)).collect();
        by_age.sort_unstable();
        for (_, h) in by_age {
            if self.used <= self.budget {
                break;
            }
            if let Some(b) = self.blocks.remove(&h) {
                self.used -= b.bytes;
            }
        }
    }
}

/// Shared, lock-protected prefix cache handle for the engine thread and its statistics readers.
pub type SharedPrefixCache = Arc<std::sync::Mutex<PrefixCache>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(n_layer: usize, kv_dim: usize, n: usize, seed: f32) -> SeqKv {
        let mut kv = SeqKv::new(n_layer, kv_dim);
        for il in 0..n_layer {
            let k: Vec<f32> = (0..n * kv_dim)
                .map(|i| seed + i as f32 + il as f32 * 1e4)
                .collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            kv.append(il, &k, &v);
        }
        kv.commit(n);
        kv
    }

    #[test]
    fn restores_the_longest_cached_prefix_and_leaves_one_token() {
        let tokens: Vec<u32> = (0..40).collect();
        let kv = filled(2, 3, 40, 0.0);
        let mut pc = PrefixCache::new(1 << 20);
        pc.insert(&tokens, &kv);
        assert_eq!(pc.len(), 2);

        let mut fresh = SeqKv::new(2, 3);
        assert_eq!(pc.restore(&tokens, &mut fresh), 32);
        assert_eq!(fresh.keys(1), &kv.keys(1)[..32 * 3]);
        assert_eq!(fresh.values(0), &kv.values(0)[..32 * 3]);

        // Exactly 32 tokens: the last block cannot be used, one token must stay to compute.
        let mut fresh = SeqKv::new(2, 3);
        assert_eq!(pc.restore(&tokens[..32], &mut fresh), 16);

        // A different first block shares nothing, even though the second block's tokens match.
        let mut other = tokens.clone();
        other[0] = 999;
        let mut fresh = SeqKv::new(2, 3);
        assert_eq!(pc.restore(&other, &mut fresh), 0);
        assert_eq!(pc.misses, 1);
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let kv = filled(1, 2, 16, 0.0);
        let block_bytes = 2 * 16 * 2 * std::mem::size_of::<KvElem>();
        let mut pc = PrefixCache::new(2 * block_bytes);
        let a: Vec<u32> = vec![1; 16];
        let b: Vec<u32> = vec![2; 16];
        let c: Vec<u32> = vec![3; 16];
        pc.insert(&a, &kv);
        pc.insert(&b, &kv);
        // Touch `a` so `b` is the oldest.
        let mut tmp = SeqKv::new(1, 2);
        assert_eq!(pc.restore(&[a.clone(), vec![0]].concat(), &mut tmp), 16);
        pc.insert(&c, &kv);
        assert!(pc.bytes_used() <= 2 * block_bytes);
        let mut t = SeqKv::new(1, 2);
        assert_eq!(
            pc.restore(&[b, vec![0]].concat(), &mut t),
            0,
            "b was evicted"
        );
        let mut t = SeqKv::new(1, 2);
        assert_eq!(pc.restore(&[a, vec![0]].concat(), &mut t), 16, "a was kept");
    }
}
