//! The two inner loops of attention over one key-value head's cached f16 rows: the scores of the
//! query heads that share it, and their score-weighted sums of the value rows.
//!
//! With AVX2, FMA and F16C, rows are widened straight into registers and each head's output stays in
//! registers across the positions; the portable path widens a row into a buffer and adds it into the
//! output in memory, a load and a store per element and head, which at eight sequences of a few
//! hundred positions was a sixth of a decode step. Both depend only on the task's own row and head, so
//! a sequence's attention is the same alone or batched.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Rows of one key-value head: row `p` is `data[p * stride..][..hd]`.
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub data: &'a [f16],
    pub stride: usize,
    pub hd: usize,
}

impl HeadRows<'_> {
    fn row(&self, p: usize) -> &[f16] {
        &self.data[p * self.stride..p * self.stride + self.hd]
    }

    /// Whether rows `first..first + n` are all there.
    fn covers(&self, first: usize, n: usize) -> bool {
        n == 0 || self.data.len() >= (first + n - 1) * self.stride + self.hd
    }
}

/// `fast::available()` checks F16C too, which the widening from f16 needs.
fn fast() -> bool {
    cfg!(target_arch = "x86_64") && super::fast::available()
}

/// `sc[h * n + j] = (q[h] · key(first + j)) * scale` for the `q.len() / hd` heads in `q`.
/// `row` is scratch for the portable path.
pub fn scores(
    q: &[f32],
    keys: HeadRows<'_>,
    first: usize,
    n: usize,
    scale: f32,
    sc: &mut [f32],
    row: &mut Vec<f32>,
) {
    let hd = keys.hd;
    let heads = q.len() / hd;
    assert!(sc.len() >= heads * n && keys.covers(first, n));
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && fast() {
        // SAFETY: `fast()` checked AVX2, FMA and F16C; the assert above bounds every row read.
        return unsafe { x86::scores(q, keys, first, n, scale, sc) };
    }
    portable_scores(q, keys, first, n, scale, sc, row)
}

fn portable_scores(
    q: &[f32],
    keys: HeadRows<'_>,
    first: usize,
    n: usize,
    scale: f32,
    sc: &mut [f32],
    row: &mut Vec<f32>,
) {
    let hd = keys.hd;
    let heads = q.len() / hd;
    row.resize(hd, 0.0);
    for j in 0..n {
        keys.row(first + j).convert_to_f32_slice(row);
        for h in 0..heads {
            sc[h * n + j] = super::super::model::dot(&q[h * hd..(h + 1) * hd], row) * scale;
        }
    }
}

/// `out[h] = Σ_j sc[h * n + j] · value(first + j)` for the `out.len() / hd` heads in `out`.
pub fn weighted_values(
    sc: &[f32],
    vals: HeadRows<'_>,
    first: usize,
    n: usize,
    out: &mut [f32],
    row: &mut Vec<f32>,
) {
    let hd = vals.hd;
    let heads = out.len() / hd;
    assert!(sc.len() >= heads * n && vals.covers(first, n));
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && fast() {
        // SAFETY: as for `scores`.
        return unsafe { x86::weighted_values(sc, vals, first, n, out) };
    }
    portable_weighted_values(sc, vals, first, n, out, row)
}

fn portable_weighted_values(
    sc: &[f32],
    vals: HeadRows<'_>,
    first: usize,
    n: usize,
    out: &mut [f32],
    row: &mut Vec<f32>,
) {
    let hd = vals.hd;
    let heads = out.len() / hd;
    row.resize(hd, 0.0);
    out.iter_mut().for_each(|o| *o = 0.0);
    for j in 0..n {
        vals.row(first + j).convert_to_f32_slice(row);
        for h in 0..heads {
            let w = sc[h * n + j];
            for (o, v) in out[h * hd..(h + 1) * hd].iter_mut().zip(row.iter()) {
                *o += w * v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::HeadRows;

    /// Eight elements of a row, widened.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(row: *const half::f16, i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(row.add(i) as *const __m128i))
    }

    /// Up to four query heads at a time: each key row is widened once, 64 columns at a time,
    /// for all of them, and their four sums are reduced together.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores(
        q: &[f32],
        keys: HeadRows<'_>,
        first: usize,
        n: usize,
        scale: f32,
        sc: &mut [f32],
    ) {
        let heads = q.len() / keys.hd;
        let mut h0 = 0;
        while h0 < heads {
            let hn = 4.min(heads - h0);
            match hn {
                1 => scores_heads::<1>(q, keys, first, n, scale, sc, h0),
                2 => scores_heads::<2>(q, keys, first, n, scale, sc, h0),
                3 => scores_heads::<3>(q, keys, first, n, scale, sc, h0),
                _ => scores_heads::<4>(q, keys, first, n, scale, sc, h0),
            }
            h0 += hn;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_heads<const HN: usize>(
        q: &[f32],
        keys: HeadRows<'_>,
        first: usize,
        n: usize,
        scale: f32,
        sc: &mut [f32],
        h0: usize,
    ) {
        let hd = keys.hd;
        let qp = q.as_ptr().add(h0 * hd);
        let sp = sc.as_mut_ptr().add(h0 * n);
        let scale = _mm_set1_ps(scale);
        for j in 0..n {
            let k = keys.data.as_ptr().add((first + j) * keys.stride);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c0 = 0;
            while c0 + CHUNK <= hd {
                let mut kv = [_mm256_setzero_ps(); CHUNK / 8];
                for (c, v) in kv.iter_mut().enumerate() {
                    *v = load8(k, c0 + c * 8);
                }
                for (h, a) in acc.iter_mut().take(HN).enumerate() {
                    for (c, v) in kv.iter().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * hd + c0 + c * 8)), *v, *a);
                    }
                }
                c0 += CHUNK;
            }
            while c0 < hd {
                let v = load8(k, c0);
                for (h, a) in acc.iter_mut().take(HN).enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * hd + c0)), v, *a);
                }
                c0 += 8;
            }
            // [Σa0, Σa1, Σa2, Σa3]: pairwise adds within lanes, then the two halves.
            let s = _mm256_hadd_ps(
                _mm256_hadd_ps(acc[0], acc[1]),
                _mm256_hadd_ps(acc[2], acc[3]),
            );
            let s = _mm_mul_ps(
                _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)),
                scale,
            );
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), s);
            for (h, v) in out.iter().take(HN).enumerate() {
                *sp.add(h * n + j) = *v;
            }
        }
    }

    /// Columns kept in registers at once: of a head's output, or of a widened key row.
    const CHUNK: usize = 64;

    /// Up to three heads at a time, `VCHUNK` columns at a time: each value row's chunk is widened
    /// once for all of them (before, once per head; at eight sequences the widening was most of
    /// this loop). Three heads' accumulators, their weights and the widened chunk fill the sixteen
    /// registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_values(
        sc: &[f32],
        vals: HeadRows<'_>,
        first: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let heads = out.len() / vals.hd;
        let mut h0 = 0;
        while h0 < heads {
            let hn = 3.min(heads - h0);
            match hn {
                1 => values_heads::<1>(sc, vals, first, n, out, h0),
                2 => values_heads::<2>(sc, vals, first, n, out, h0),
                _ => values_heads::<3>(sc, vals, first, n, out, h0),
            }
            h0 += hn;
        }
    }

    /// Columns of a value row widened at once in `weighted_values`.
    const VCHUNK: usize = 32;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values_heads<const HN: usize>(
        sc: &[f32],
        vals: HeadRows<'_>,
        first: usize,
        n: usize,
        out: &mut [f32],
        h0: usize,
    ) {
        let hd = vals.hd;
        let base = vals.data.as_ptr().add(first * vals.stride);
        let w = sc.as_ptr().add(h0 * n);
        let mut c0 = 0;
        while c0 < hd {
            let width = VCHUNK.min(hd - c0);
            let mut acc = [[_mm256_setzero_ps(); VCHUNK / 8]; HN];
            // One position's weights for the heads, then its widened chunk into each head's sums.
            macro_rules! position {
                ($j:expr, $cols:expr) => {{
                    let v = base.add($j * vals.stride + c0);
                    let s: [__m256; HN] =
                        std::array::from_fn(|h| _mm256_set1_ps(*w.add(h * n + $j)));
                    for c in 0..$cols {
                        let x = load8(v, c * 8);
                        for (a, s) in acc.iter_mut().zip(&s) {
                            a[c] = _mm256_fmadd_ps(*s, x, a[c]);
                        }
                    }
                }};
            }
            if width == VCHUNK {
                for j in 0..n {
                    position!(j, VCHUNK / 8);
                }
            } else {
                for j in 0..n {
                    position!(j, width / 8);
                }
            }
            for (h, a) in acc.iter().enumerate() {
                let o = out.as_mut_ptr().add((h0 + h) * hd + c0);
                for (c, v) in a.iter().take(width / 8).enumerate() {
                    _mm256_storeu_ps(o.add(c * 8), *v);
                }
            }
            c0 += width;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::test_random as random;

    /// Both loops against plain f64 sums, for head widths with and without a partial chunk and
    /// rows at an offset inside a wider stride (one key-value head among several).
    #[test]
    fn scores_and_weighted_values_match_plain_sums() {
        for (hd, heads, stride) in [
            (64, 3, 192),
            (256, 4, 256),
            (40, 2, 80),
            (72, 1, 144),
            (64, 6, 128),
        ] {
            let (first, n) = (3, 29);
            let data: Vec<f16> = random((first + n) * stride, hd as u64)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let off = stride - hd;
            let rows = HeadRows {
                data: &data[off..],
                stride,
                hd,
            };
            let q = random(heads * hd, 7);
            let mut row = Vec::new();
            let (mut sc, mut out) = (vec![0f32; heads * n], vec![0f32; heads * hd]);
            scores(&q, rows, first, n, 0.125, &mut sc, &mut row);
            weighted_values(&sc, rows, first, n, &mut out, &mut row);
            // The portable path as well, on the same scores.
            let (mut psc, mut pout) = (vec![0f32; heads * n], vec![0f32; heads * hd]);
            portable_scores(&q, rows, first, n, 0.125, &mut psc, &mut row);
            portable_weighted_values(&sc, rows, first, n, &mut pout, &mut row);
            for (got, want) in psc.iter().zip(&sc).chain(pout.iter().zip(&out)) {
                assert!(
                    (got - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{hd}: {got} {want}"
                );
            }
            for h in 0..heads {
                for j in 0..n {
                    let k = rows.row(first + j);
                    let want: f64 = (0..hd)
                        .map(|i| q[h * hd + i] as f64 * k[i].to_f64())
                        .sum::<f64>()
                        * 0.125;
                    let got = sc[h * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{hd} score {got} {want}"
                    );
                }
                for i in 0..hd {
                    let want: f64 = (0..n)
                        .map(|j| sc[h * n + j] as f64 * rows.row(first + j)[i].to_f64())
                        .sum();
                    let got = out[h * hd + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{hd} value {got} {want}"
                    );
                }
            }
        }
    }
}
