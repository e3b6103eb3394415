//! Hand-written AVX2/FMA kernels for Q4_1 and Q8_0 weights, the types of the default model, chosen
//! at run time. candle's own Q4_1 dot product is scalar, which is most of why stock candle decodes
//! SmolLM2 at half llama.cpp's speed.
//!
//! Activations are quantized once per product to 8 bits in blocks of 32 (with the block sum that Q4_1's
//! offset needs). A (weight row, activation row) pair's dot product is, on every AVX2 tile, each
//! block's exact integer dot product scaled and added into eight accumulators by block number mod 8,
//! then the accumulators summed: the same numbers by the same operations whatever the tile, so results
//! do not depend on how many sequences share a step.
//!
//! The row tiles take eight blocks at a time: eight blocks' integer sums are reduced into one vector
//! (lane `k` for block `k`) and scaled by one FMA, and each weight block is multiplied with up to
//! `TILE` activation rows while it sits in registers. With eight rows or more (a step of eight
//! sequences, a prompt), the rows are interleaved in groups of eight and each 4-byte group of a weight
//! block is broadcast across eight lanes, one lane per row: one byte product serves eight rows, and a
//! block's eight 16-bit partial sums add up before one widening. Three or four rows left over go to
//! four-row tiles, which do the same with two blocks side by side in place of eight rows. On a 2-core
//! Zen 3 (one thread, weights in L2), per block and activation row for Q4_1: ~0.55–0.65 ns for the
//! eight-row tile, ~0.65–0.75 for the four-row one, ~0.85–1.15 for the 4-row row tile, ~1.6–2.3 for one
//! row (whose ~2.3–2.9 ns before this layout were a float FMA per 4-byte group).

use half::f16;

use super::{GgmlDType, OutPtr, QMatrix, ThreadPool};

const QK: usize = 32;
/// Activation rows multiplied per weight-block load.
const TILE: usize = 4;
/// Output rows per pool task with one activation row (a decode step): long runs of contiguous
/// weights, which is what keeps one sequence's step fed from memory (32 rows: ~155 tokens/s on a
/// 2-core Zen 5; 128: ~175).
const ROWS_PER_TASK_ONE: usize = 128;
/// Output rows per pool task with more activation rows: as many as leave each thread two tasks of
/// the section, between these bounds. Long runs matter here too. A task's weight prefetches run
/// 2 KiB past its last row, into rows another thread may take, and at 32 rows per task (where
/// this was once fixed) that was a large share of what eight sequences' steps fetched: on a
/// 2-core Sapphire Rapids, eight sequences went 486 -> 630 -> 680 tokens/s at 16, 32 and 256
/// rows per task. The lower bound keeps many threads busy on small matrices.
const ROWS_PER_TASK_MANY: (usize, usize) = (32, 256);

#[repr(C)]
#[derive(Clone, Copy)]
struct BlockQ4_1 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct BlockQ8_0 {
    d: f16,
    qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Whether the AVX2/FMA/F16C paths run here. `CLERK_GENERIC_KERNELS=1` turns them off, to compare
/// against the portable path on the same machine; read once, since this sits on the hot path.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var_os("CLERK_GENERIC_KERNELS").is_none() && cpu_has!("avx2", "fma", "f16c")
    })
}

/// Whether the AVX-512 VNNI tiles run here (two blocks per instruction, one instruction for the
/// byte products): only where the CPU has them and `CLERK_AVX512=1` asks for them, checked once.
/// The AVX2 tiles are the default everywhere, because they batch better: an AVX-512 tile adds its
/// floats in another order, a machine must use one order for every product (so that a row's bits
/// never depend on the batch around it), and only the AVX2 tiles have eight- and four-row forms.
/// On a Sapphire Rapids machine (2026-12-02) the AVX2 tiles won everywhere: prompt 825–831 against
/// 558–583 tokens/s, decode 186–189 against 164–178, eight sequences 467–482 against 372–376.
fn avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512
        .get_or_init(|| std::env::var_os("CLERK_AVX512").is_some_and(|v| v == "1") && avx512_cpu())
}

/// Whether the CPU has what the AVX-512 tiles use.
fn avx512_cpu() -> bool {
    cpu_has!("avx512f", "avx512bw", "avx512vnni")
}

/// Whether the wide AVX2 tiles may form their byte products with VNNI's `vpdpbusd` on 256-bit
/// registers (AVX-512 VNNI with VL: Ice Lake and later Xeons, Zen 4 and 5). Same bits as without;
/// `CLERK_NO_VNNI=1` turns it off, to compare the two.
fn vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| std::env::var_os("CLERK_NO_VNNI").is_none() && vnni_cpu())
}

fn vnni_cpu() -> bool {
    cpu_has!("avx512vnni", "avx512vl")
}

/// Activation rows quantized to 8 bits: values, per-block scales, and per-block `scale * sum`.
struct Quantized {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// The first `8 * eights.groups` rows again, interleaved for the eight-row AVX2 tiles; where
    /// there are fewer rows, the last group is padded with zero rows.
    eights: Interleaved,
    /// The rows after those, in groups of four for the four-row AVX2 tiles, padded likewise.
    fours: Interleaved,
}

/// Activation rows in groups of eight or four, interleaved so that the wide tiles reach a group with
/// one load. Each slot is eight 32-byte vectors, vector `g` holding bytes `4g..4g + 4` of a block in
/// each of the group's rows, one row and block per 32-bit lane, then the lanes' scales and
/// `scale * sum`s as two vectors. A group of eight rows takes one block per slot (row `j` in lane
/// `j`); a group of four takes two blocks side by side (the first block's row `j` in lane `j`, the
/// second's in lane `4 + j`), and a row with an odd block count has a zero second block in its last
/// slot. The values are the row-major ones, moved.
#[derive(Default)]
struct Interleaved {
    /// The first row of the first group.
    first: usize,
    groups: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// `offset`: the interleaved copies hold each value plus 128, as unsigned bytes (what the Q8_0 VNNI
/// tiles multiply); the row-major values are as they are.
fn quantize_rows(x: &[f32], cols: usize, groups: usize, fours: usize, offset: bool) -> Quantized {
    let blocks = x.len() / QK;
    let mut out = Quantized {
        q: vec![0; x.len()],
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        eights: Interleaved::default(),
        fours: Interleaved::default(),
    };
    // The block quantizer is chosen once per product, not per block.
    let block: fn(&[f32], &mut [i8]) -> (f32, i32) = if cfg!(target_arch = "x86_64") && available()
    {
        avx2_quantize_block
    } else {
        portable_quantize_block
    };
    for (xb, qb) in x.chunks_exact(QK).zip(out.q.chunks_exact_mut(QK)) {
        let (d, sum) = block(xb, qb);
        out.d.push(d);
        out.s.push(d * sum as f32);
    }
    out.eights = interleave(&out, cols / QK, 8, (0, groups), offset);
    out.fours = interleave(&out, cols / QK, 4, (groups * 8, fours), offset);
    out
}

/// One block of 32 activations to 8 bits: the scale (rounded to f16 as in GGML's Q8 blocks, so
/// both paths see the same numbers) and the sum of the quantized values.
fn portable_quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, i32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qb.iter_mut().zip(xb) {
        let r = (v * id).round() as i32;
        *q = r as i8;
        sum += r;
    }
    (f16::from_f32(d).to_f32(), sum)
}

fn avx2_quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: chosen only where `available()` said AVX2 and FMA are there; both blocks are 32 long.
    unsafe {
        avx2::quantize_block(xb, qb)
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable_quantize_block(xb, qb)
}

/// `groups` groups of `per` rows (eight or four) from row `first` on, laid out as `Interleaved` says;
/// with `offset`, each value plus 128 (its top bit flipped).
fn interleave(
    xq: &Quantized,
    bpr: usize,
    per: usize,
    (first, groups): (usize, usize),
    offset: bool,
) -> Interleaved {
    let rows = xq.d.len() / bpr.max(1);
    let side = 8 / per;
    let slots = bpr.div_ceil(side);
    let flip = if offset { i8::MIN } else { 0 };
    let mut il = Interleaved {
        first,
        groups,
        // Padding is a value of 0 either way, as a missing block's activations should be.
        q: vec![flip; groups * slots * 8 * QK],
        d: vec![0.0; groups * slots * 8],
        s: vec![0.0; groups * slots * 8],
    };
    for g in 0..groups {
        let row0 = first + g * per;
        for b in 0..bpr {
            let at = g * slots + b / side;
            let dst = &mut il.q[at * 8 * QK..(at + 1) * 8 * QK];
            // A padding row stays as filled.
            for j in 0..per.min(rows.saturating_sub(row0)) {
                let lane = (b % side) * per + j;
                let xi = (row0 + j) * bpr + b;
                let src = &xq.q[xi * QK..(xi + 1) * QK];
                for (k, four) in src.chunks_exact(4).enumerate() {
                    let to = &mut dst[k * QK + lane * 4..k * QK + lane * 4 + 4];
                    to.iter_mut().zip(four).for_each(|(t, v)| *t = v ^ flip);
                }
                il.d[at * 8 + lane] = xq.d[xi];
                il.s[at * 8 + lane] = xq.s[xi];
            }
        }
    }
    il
}

fn blocks<T>(w: &QMatrix) -> &[T] {
    let bytes = w.data.as_slice();
    // SAFETY: `QMatrix::new` checked the byte length for this type and 4-byte alignment; the block
    // structs are `repr(C)` plain data with alignment 2.
    unsafe {
        std::slice::from_raw_parts(
            bytes.as_ptr() as *const T,
            bytes.len() / std::mem::size_of::<T>(),
        )
    }
}

/// One weight row against up to `TILE` quantized activation rows.
type TileFn<B> = fn(&[B], &Quantized, usize, usize, usize, &mut [f32; TILE]);

/// One weight row (and its blocks' offsets, where `Wide::offsets` gave them) against the `R`
/// activation rows of one interleaved group: the same numbers as the row tiles give those rows, bit
/// for bit.
type GroupFn<B, const R: usize> = fn(&[B], &[i32], &Interleaved, usize, usize, &mut [f32; R]);

/// A block type's AVX2 tiles for many activation rows.
#[derive(Clone, Copy)]
struct Wide<B> {
    eight: GroupFn<B, 8>,
    four: GroupFn<B, 4>,
    /// Where the tiles take offset activations (`quantize_rows`), the matrix's block offsets.
    offsets: fn(&QMatrix) -> Option<&[i32]>,
}

/// Whether products with three or more activation rows use the wide (eight- and four-row) tiles.
/// The AVX-512 tiles add in another order, and a machine uses one kind of tile for every product.
fn wide_here() -> bool {
    cfg!(target_arch = "x86_64") && !avx512()
}

/// `outs[i] = x · ws[i]ᵀ` for matrices of one block type over the same input (query, key and
/// value; gate and up): the input is quantized once and one pool section covers every matrix's
/// rows, so a layer waits at fewer barriers.
fn matmul_blocks<B: Sync>(
    ws: &[&QMatrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    pool: &ThreadPool,
    tile: TileFn<B>,
    wide: Option<Wide<B>>,
) {
    // Rows go to eight-row groups, then four-row groups, each padded with zero rows where that
    // costs less than the smaller tiles: five to seven rows past the last eight ride in one more
    // eight-row group, three or four in a four-row group. One or two rows (a decode step of one
    // or two sequences) take the row tile.
    let wide = wide.filter(|_| wide_here());
    let (mut groups, mut fours) = (0, 0);
    if wide.is_some() {
        groups = if n % 8 >= 5 { n.div_ceil(8) } else { n / 8 };
        let rest = n.saturating_sub(groups * 8);
        if rest >= FOUR_FROM {
            fours = rest.div_ceil(4);
        }
    }
    // Only where a wide tile runs: one or two rows never need them (nor their memory).
    let offsets: Vec<Option<&[i32]>> = ws
        .iter()
        .map(|w| {
            wide.as_ref()
                .filter(|_| groups + fours > 0)
                .and_then(|wide| (wide.offsets)(w))
        })
        .collect();
    let xq = quantize_rows(x, ws[0].cols, groups, fours, offsets[0].is_some());
    let per_task = if n == 1 {
        ROWS_PER_TASK_ONE
    } else {
        let rows: usize = ws.iter().map(|w| w.rows).sum();
        let (least, most) = ROWS_PER_TASK_MANY;
        rows.div_ceil(2 * pool.n_threads()).clamp(least, most)
    };
    // Each matrix's first task, and where its output goes.
    let mut first = Vec::with_capacity(ws.len() + 1);
    let mut total = 0;
    for w in ws {
        first.push(total);
        total += w.rows.div_ceil(per_task);
    }
    first.push(total);
    let outp: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    pool.run(total, |t| {
        let i = first.partition_point(|&f| f <= t) - 1;
        let (w, o) = (ws[i], outp[i]);
        let (rows, bpr) = (w.rows, w.cols / QK);
        let wb = blocks::<B>(w);
        let r0 = (t - first[i]) * per_task;
        let r1 = (r0 + per_task).min(rows);
        // The tiles fetch ahead of themselves; the start of a task's rows is fetched here, since
        // the rows before them may have been another thread's.
        #[cfg(target_arch = "x86_64")]
        {
            let bytes = w.data.as_slice();
            let row_bytes = bytes.len() / rows;
            let start = r0 * row_bytes;
            let end = (r1 * row_bytes).min(start + avx2::PREFETCH);
            for off in (start..end).step_by(64) {
                // SAFETY: a prefetch of an address inside the matrix; prefetches never fault.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        bytes.as_ptr().add(off) as *const i8,
                    )
                };
            }
        }
        // Every group's results for rows `r0..r1`, padding rows left out.
        fn run<B, const R: usize>(
            tile: GroupFn<B, R>,
            il: &Interleaved,
            (wb, offsets): (&[B], Option<&[i32]>),
            (r0, r1, bpr): (usize, usize, usize),
            (n, rows, o): (usize, usize, OutPtr),
        ) {
            let mut res = [0f32; R];
            for g in 0..il.groups {
                let a = il.first + g * R;
                for row in r0..r1 {
                    let offs = offsets.map_or(&[][..], |f| &f[row * bpr..(row + 1) * bpr]);
                    tile(&wb[row * bpr..(row + 1) * bpr], offs, il, g, bpr, &mut res);
                    for (j, v) in res.iter().enumerate().take(n - a) {
                        // SAFETY: (a + j, row) of this matrix belongs to this task alone.
                        unsafe { *o.0.add((a + j) * rows + row) = *v };
                    }
                }
            }
        }
        if let Some(Wide { eight, four, .. }) = wide {
            let w = (wb, offsets[i]);
            run(eight, &xq.eights, w, (r0, r1, bpr), (n, rows, o));
            run(four, &xq.fours, w, (r0, r1, bpr), (n, rows, o));
        }
        let mut res = [0f32; TILE];
        let mut a0 = (xq.eights.groups * 8 + xq.fours.groups * 4).min(n);
        while a0 < n {
            let cnt = TILE.min(n - a0);
            for row in r0..r1 {
                tile(&wb[row * bpr..(row + 1) * bpr], &xq, a0, cnt, bpr, &mut res);
                for (j, v) in res.iter().take(cnt).enumerate() {
                    // SAFETY: (a0 + j, row) of matrix i belongs to this task alone.
                    unsafe { *o.0.add((a0 + j) * rows + row) = *v };
                }
            }
            a0 += cnt;
        }
    });
}

/// The matrices `matmul_many` can serve together: one fast block type, one input width.
pub fn can_share(ws: &[&QMatrix]) -> bool {
    available()
        && ws.iter().all(|w| {
            w.cols == ws[0].cols
                && w.dtype == ws[0].dtype
                && matches!(w.dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
        })
}

/// Several products over the same input; the caller checked `can_share`.
pub fn matmul_many(
    ws: &[&QMatrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    pool: &ThreadPool,
) {
    match ws[0].dtype {
        GgmlDType::Q4_1 => matmul_blocks(ws, x, n, outs, pool, q4_1_tile, q4_1_wide()),
        _ => matmul_blocks(ws, x, n, outs, pool, q8_0_tile, q8_0_wide()),
    }
}

/// Rows left after the eight-row groups that take a (padded) four-row group rather than row tiles:
/// in isolation a four-row group cost about what two rows' row tile did, and less than three rows'.
const FOUR_FROM: usize = 3;

/// The Q4_1 wide tiles this CPU runs, chosen once per product: VNNI's where `vnni()` says so.
#[cfg(target_arch = "x86_64")]
fn q4_1_wide() -> Option<Wide<BlockQ4_1>> {
    // SAFETY (all): the caller chose the fast path because `available()` said AVX2, FMA and F16C
    // are there; the VNNI tiles are picked only where `vnni()` said its features are.
    Some(if vnni() {
        Wide {
            eight: |wr, _, e, group, bpr, res| unsafe {
                avx2::q4_1_eight_vnni(wr, e, group, bpr, res)
            },
            four: |wr, _, f, group, bpr, res| unsafe {
                avx2::q4_1_four_vnni(wr, f, group, bpr, res)
            },
            offsets: |_| None,
        }
    } else {
        Wide {
            eight: |wr, _, e, group, bpr, res| unsafe { avx2::q4_1_eight(wr, e, group, bpr, res) },
            four: |wr, _, f, group, bpr, res| unsafe { avx2::q4_1_four(wr, f, group, bpr, res) },
            offsets: |_| None,
        }
    })
}

/// The Q8_0 wide tiles this CPU runs, as `q4_1_wide`; the VNNI ones with the matrix's offsets.
#[cfg(target_arch = "x86_64")]
fn q8_0_wide() -> Option<Wide<BlockQ8_0>> {
    // SAFETY (all): as for Q4_1; the VNNI tiles get the row's offsets, and `quantize_rows` offset
    // activations, because their `offsets` gave them.
    Some(if vnni() {
        Wide {
            eight: |wr, offs, e, group, bpr, res| unsafe {
                avx2::q8_0_eight_vnni(wr, offs, e, group, bpr, res)
            },
            four: |wr, offs, f, group, bpr, res| unsafe {
                avx2::q8_0_four_vnni(wr, offs, f, group, bpr, res)
            },
            offsets: |w| Some(q8_0_offsets(w)),
        }
    } else {
        Wide {
            eight: |wr, offs, e, group, bpr, res| unsafe {
                avx2::q8_0_eight(wr, offs, e, group, bpr, res)
            },
            four: |wr, offs, f, group, bpr, res| unsafe {
                avx2::q8_0_four(wr, offs, f, group, bpr, res)
            },
            offsets: |_| None,
        }
    })
}

/// A Q8_0 matrix's `-128 · Σ q` per block, computed once. With VNNI the wide Q8_0 tiles multiply
/// unsigned activations by signed weights directly (`vpdpbusd` takes one unsigned operand), so they
/// take each activation plus 128 and subtract `128 · Σ q` again: exact integer sums, as before, for
/// a third of the instructions the sign trick took (it moved each weight's sign onto its activation,
/// two instructions per byte product).
#[cfg(target_arch = "x86_64")]
fn q8_0_offsets(w: &QMatrix) -> &[i32] {
    w.offsets.get_or_init(|| {
        blocks::<BlockQ8_0>(w)
            .iter()
            .map(|b| -128 * b.qs.iter().map(|&q| q as i32).sum::<i32>())
            .collect()
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn q4_1_wide() -> Option<Wide<BlockQ4_1>> {
    None
}
#[cfg(not(target_arch = "x86_64"))]
fn q8_0_wide() -> Option<Wide<BlockQ8_0>> {
    None
}

/// Defines a block type's tile: the AVX-512 one where the CPU has it, else AVX2 (else, off x86,
/// the scalar one).
macro_rules! tile_for_this_cpu {
    ($name:ident, $block:ty, $scalar:ident) => {
        fn $name(
            wr: &[$block],
            xq: &Quantized,
            a0: usize,
            cnt: usize,
            bpr: usize,
            res: &mut [f32; TILE],
        ) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller chose this path because `available()` said AVX2 and FMA are
            // there, and `avx512()` checked for the AVX-512 features.
            unsafe {
                if avx512() {
                    avx512::$name(wr, xq, a0, cnt, bpr, res)
                } else {
                    avx2::$name(wr, xq, a0, cnt, bpr, res)
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            $scalar(wr, xq, a0, cnt, bpr, res)
        }
    };
}
tile_for_this_cpu!(q4_1_tile, BlockQ4_1, scalar_q4_1_tile);
tile_for_this_cpu!(q8_0_tile, BlockQ8_0, scalar_q8_0_tile);

/// The plain versions of the tiles: the reference the AVX2 code is tested against.
#[allow(dead_code)]
fn scalar_q4_1_tile(
    wr: &[BlockQ4_1],
    xq: &Quantized,
    a0: usize,
    cnt: usize,
    bpr: usize,
    res: &mut [f32; TILE],
) {
    for (j, out) in res.iter_mut().enumerate().take(cnt) {
        let a = a0 + j;
        let mut acc = 0f32;
        for (b, blk) in wr.iter().enumerate() {
            let xi = a * bpr + b;
            let xs = &xq.q[xi * QK..(xi + 1) * QK];
            let mut sum = 0i32;
            for k in 0..16 {
                sum += (blk.qs[k] & 0x0F) as i32 * xs[k] as i32;
                sum += (blk.qs[k] >> 4) as i32 * xs[k + 16] as i32;
            }
            acc += blk.d.to_f32() * xq.d[xi] * sum as f32 + blk.m.to_f32() * xq.s[xi];
        }
        *out = acc;
    }
}

#[allow(dead_code)]
fn scalar_q8_0_tile(
    wr: &[BlockQ8_0],
    xq: &Quantized,
    a0: usize,
    cnt: usize,
    bpr: usize,
    res: &mut [f32; TILE],
) {
    for (j, out) in res.iter_mut().enumerate().take(cnt) {
        let a = a0 + j;
        let mut acc = 0f32;
        for (b, blk) in wr.iter().enumerate() {
            let xi = a * bpr + b;
            let xs = &xq.q[xi * QK..(xi + 1) * QK];
            let sum: i32 = blk
                .qs
                .iter()
                .zip(xs)
                .map(|(&w, &x)| w as i32 * x as i32)
                .sum();
            acc += blk.d.to_f32() * xq.d[xi] * sum as f32;
        }
        *out = acc;
    }
}

/// Defines `$name(.., cnt, ..)` for a module's tiles: it dispatches to the tile whose row count is a
/// constant, so that tile's accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! by_count {
    ($features:literal, $name:ident, $tile:ident, $block:ty) => {
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name(
            wr: &[$block],
            xq: &Quantized,
            a0: usize,
            cnt: usize,
            bpr: usize,
            res: &mut [f32; TILE],
        ) {
            const _: () = assert!(TILE == 4);
            match cnt {
                1 => $tile::<1>(wr, xq, a0, bpr, res),
                2 => $tile::<2>(wr, xq, a0, bpr, res),
                3 => $tile::<3>(wr, xq, a0, bpr, res),
                _ => $tile::<4>(wr, xq, a0, bpr, res),
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8_0, Interleaved, Quantized, QK, TILE};

    /// Runs `$body` for each chunk of eight blocks of a row of `$bpr`, `$b` its first block and `$n`
    /// its block count. `$n` is the constant 8 in every chunk but a row's last, so that the full
    /// chunks' products stay in registers.
    macro_rules! by_chunk {
        ($bpr:expr, |$b:ident, $n:ident| $body:block) => {
            let bpr = $bpr;
            let mut b0 = 0;
            while b0 + 8 <= bpr {
                let ($b, $n) = (b0, 8);
                $body
                b0 += 8;
            }
            if b0 < bpr {
                let ($b, $n) = (b0, bpr - b0);
                $body
            }
        };
    }

    /// Runs `$body` for `$i` in `0..$count` with `$a` bound to accumulator `$i % N` of the
    /// `N`-array `$acc`, `$k` listing `0..N`. The body is written out once per accumulator, so each
    /// stays in its register: left to a loop, the compiler kept them on the stack (a load and a
    /// store per block).
    macro_rules! by_class {
        ($count:expr, $acc:ident, [$($k:literal),+], |$i:ident, $a:ident| $body:block) => {
            let count = $count;
            let n = $acc.len();
            debug_assert_eq!([$($k),+].len(), n);
            let mut i0 = 0;
            while i0 + n <= count {
                $({
                    let $i = i0 + $k;
                    let $a = &mut $acc[$k];
                    $body
                })+
                i0 += n;
            }
            for (k, $a) in $acc.iter_mut().enumerate().take(count - i0) {
                let $i = i0 + k;
                $body
            }
        };
    }

    /// How far ahead of the block being multiplied the weight stream is fetched, in bytes. The
    /// model's weights don't fit in the cache, and the hardware prefetcher stops at every 4 KiB
    /// page and at every task's first row; fetching ahead by hand keeps the loads from stalling.
    /// Rows of one matrix lie end to end, so this reaches into the task's next rows; a prefetch
    /// past the matrix's end is harmless (prefetches never fault).
    pub(super) const PREFETCH: usize = 2048;

    #[inline(always)]
    pub(super) unsafe fn prefetch<B>(blk: &B) {
        let p = (blk as *const B as *const i8).wrapping_add(PREFETCH);
        _mm_prefetch::<_MM_HINT_T0>(p);
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// A Q4_1 block's 32 nibbles as bytes: low nibbles first, then high, the activations' order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4_1_nibbles(blk: &BlockQ4_1) -> __m256i {
        let mask = _mm_set1_epi8(0x0F);
        let raw = _mm_loadu_si128(blk.qs.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// One block of 32 activations to 8 bits, as `quantize_rows`'s portable loop does it, except
    /// that halves round to even (one instruction) instead of away from zero: the scale rounded to
    /// f16, and the sum of the quantized values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        debug_assert!(x.len() == QK && q.len() == QK);
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let i: [__m256i; 4] = [
            _mm256_cvtps_epi32(_mm256_round_ps::<ROUND>(_mm256_mul_ps(v[0], id))),
            _mm256_cvtps_epi32(_mm256_round_ps::<ROUND>(_mm256_mul_ps(v[1], id))),
            _mm256_cvtps_epi32(_mm256_round_ps::<ROUND>(_mm256_mul_ps(v[2], id))),
            _mm256_cvtps_epi32(_mm256_round_ps::<ROUND>(_mm256_mul_ps(v[3], id))),
        ];
        let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)));
        // The packs work within 128-bit lanes; the permute puts the 4-byte groups back in order.
        let p16 = [
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        ];
        let p8 = _mm256_packs_epi16(p16[0], p16[1]);
        let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p8);
        (half::f16::from_f32(d).to_f32(), sum)
    }

    by_count!("avx2,fma,f16c", q4_1_tile, q4_1_tile_n, BlockQ4_1);
    by_count!("avx2,fma,f16c", q8_0_tile, q8_0_tile_n, BlockQ8_0);

    /// Lane `k` of the result is the sum of `p[k]`'s eight lanes. Integer sums are exact, so the
    /// order they add in does not matter.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn lane_sums(p: &[__m256i; 8]) -> __m256i {
        let pair = |a: __m256i, b: __m256i| {
            _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b))
        };
        let quad = |a: __m256i, b: __m256i| {
            _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b))
        };
        let u0 = quad(pair(p[0], p[1]), pair(p[2], p[3]));
        let u1 = quad(pair(p[4], p[5]), pair(p[6], p[7]));
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(u0, u1),
            _mm256_permute2x128_si256::<0x31>(u0, u1),
        )
    }

    /// Eight f16s, one in the low half of each 32-bit lane, as f32s.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn low_halves(v: __m256i) -> __m256 {
        let pick = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3,
            6, 7, 10, 11, 14, 15,
        );
        let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, pick));
        _mm256_cvtph_ps(_mm256_castsi256_si128(v))
    }

    /// Lanes `0..n` set, for the blocks of a chunk that are there: a row's last chunk may be short.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn first_lanes(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// The `d` and `m` of up to eight consecutive Q4_1 blocks (the lanes `mask` sets), block `k`
    /// in lane `k`, zeros elsewhere: each block starts with its two f16s, so one 32-bit gather
    /// fetches both.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_scales(blks: *const BlockQ4_1, mask: __m256i) -> (__m256, __m256) {
        let idx = _mm256_setr_epi32(0, 5, 10, 15, 20, 25, 30, 35);
        let zero = _mm256_setzero_si256();
        let dm = _mm256_mask_i32gather_epi32::<4>(zero, blks as *const i32, idx, mask);
        (low_halves(dm), low_halves(_mm256_srli_epi32(dm, 16)))
    }

    /// The `d` of up to eight consecutive Q8_0 blocks (34 bytes apart), as `q4_1_scales`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_scales(blks: *const BlockQ8_0, mask: __m256i) -> __m256 {
        let idx = _mm256_setr_epi32(0, 17, 34, 51, 68, 85, 102, 119);
        let zero = _mm256_setzero_si256();
        low_halves(_mm256_mask_i32gather_epi32::<2>(
            zero,
            blks as *const i32,
            idx,
            mask,
        ))
    }

    // Every AVX2 tile computes the same thing for a (weight row, activation row) pair, so a row's
    // bits never depend on the tile: each block's integer dot product, exact; then, block `b`
    // going to accumulator `b % 8`, `acc = fma(dw * dx, sum, acc)` and for Q4_1
    // `acc = fma(mw, sx, acc)`; then the eight accumulators added as `hsum` adds. The row tiles
    // hold the accumulators as one vector (lane `k`) and take eight blocks at a time; the
    // eight-row tiles hold eight vectors (lane `j` for row `j`) and take one block at a time.
    // A block past the row's end contributes `fma(0, 0, acc)`, which leaves `acc` as it is (an
    // accumulator is never -0).

    /// `CNT` dot products of one Q4_1 weight row with consecutive quantized activation rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_tile_n<const CNT: usize>(
        wr: &[BlockQ4_1],
        xq: &Quantized,
        a0: usize,
        bpr: usize,
        res: &mut [f32; TILE],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); CNT];
        let xqp = xq.q.as_ptr();
        by_chunk!(bpr, |b, n| {
            let mask = first_lanes(n);
            let (dw, mw) = q4_1_scales(wr.as_ptr().add(b), mask);
            let mut wv = [_mm256_setzero_si256(); 8];
            for (k, wk) in wv.iter_mut().enumerate() {
                if k < n {
                    let blk = wr.get_unchecked(b + k);
                    prefetch(blk);
                    *wk = q4_1_nibbles(blk);
                }
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let xi = (a0 + j) * bpr + b;
                let mut p = [_mm256_setzero_si256(); 8];
                for (k, pk) in p.iter_mut().enumerate() {
                    if k < n {
                        let xv = _mm256_loadu_si256(xqp.add((xi + k) * QK) as *const __m256i);
                        *pk = _mm256_madd_epi16(_mm256_maddubs_epi16(wv[k], xv), ones);
                    }
                }
                let sums = _mm256_cvtepi32_ps(lane_sums(&p));
                let dx = _mm256_maskload_ps(xq.d.as_ptr().add(xi), mask);
                let sx = _mm256_maskload_ps(xq.s.as_ptr().add(xi), mask);
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), sums, *acc);
                *acc = _mm256_fmadd_ps(mw, sx, *acc);
            }
        });
        for j in 0..CNT {
            res[j] = hsum(acc[j]);
        }
    }

    /// The wide tiles' Q4_1 products: `raw` holds a weight block's 16 bytes in each 128-bit half
    /// (the same block in both for eight rows, two blocks for four), `xb` the eight interleaved
    /// activation vectors. Each 4-byte group is broadcast across its half by an in-lane shuffle, and
    /// the eight groups' 16-bit pair sums add up before widening (at most 8 * 2 * 15 * 128 = 30720,
    /// no overflow): lane `l` gets the exact dot product of its row and block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_interleaved(raw: __m256i, xb: *const __m256i) -> __m256 {
        let mask = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(raw, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
        macro_rules! four {
            ($src:ident, $imm:literal, $g:literal) => {
                _mm256_maddubs_epi16(
                    _mm256_shuffle_epi32::<$imm>($src),
                    _mm256_loadu_si256(xb.add($g)),
                )
            };
        }
        let s01 = _mm256_add_epi16(four!(lo, 0x00, 0), four!(lo, 0x55, 1));
        let s23 = _mm256_add_epi16(four!(lo, 0xAA, 2), four!(lo, 0xFF, 3));
        let s45 = _mm256_add_epi16(four!(hi, 0x00, 4), four!(hi, 0x55, 5));
        let s67 = _mm256_add_epi16(four!(hi, 0xAA, 6), four!(hi, 0xFF, 7));
        let s16 = _mm256_add_epi16(_mm256_add_epi16(s01, s23), _mm256_add_epi16(s45, s67));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)))
    }

    /// `q4_1_interleaved` with VNNI's byte dot product (`vpdpbusd`, on 256-bit registers): each
    /// 4-byte group's products go straight into the 32-bit lanes, so the 16-bit sums and their
    /// widening go. Integer sums are exact, so the lanes hold the same numbers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn q4_1_interleaved_vnni(raw: __m256i, xb: *const __m256i) -> __m256 {
        let mask = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(raw, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
        macro_rules! four {
            ($acc:expr, $src:ident, $imm:literal, $g:literal) => {
                _mm256_dpbusd_epi32(
                    $acc,
                    _mm256_shuffle_epi32::<$imm>($src),
                    _mm256_loadu_si256(xb.add($g)),
                )
            };
        }
        // Two chains, so that each dot product waits on one of its own kind only every other time.
        let zero = _mm256_setzero_si256();
        let a = four!(four!(zero, lo, 0x00, 0), lo, 0x55, 1);
        let a = four!(four!(a, lo, 0xAA, 2), lo, 0xFF, 3);
        let b = four!(four!(zero, hi, 0x00, 4), hi, 0x55, 5);
        let b = four!(four!(b, hi, 0xAA, 6), hi, 0xFF, 7);
        _mm256_cvtepi32_ps(_mm256_add_epi32(a, b))
    }

    /// `hsum` lane by lane: the row tiles' last step, for eight rows at once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn eight_sums(a: &[__m256; 8]) -> __m256 {
        let s0 = _mm256_add_ps(a[0], a[4]);
        let s1 = _mm256_add_ps(a[1], a[5]);
        let s2 = _mm256_add_ps(a[2], a[6]);
        let s3 = _mm256_add_ps(a[3], a[7]);
        _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3))
    }

    /// `hsum` for the four rows of a four-row tile, whose accumulator `c` holds block classes
    /// `2c` (low half) and `2c + 1` (high half): the same additions in the same order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn four_sums(a: &[__m256; 4]) -> __m128 {
        // [c0 + c4 | c1 + c5] + [c2 + c6 | c3 + c7], then the halves: hsum's order.
        let b = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
        _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps::<1>(b))
    }

    /// Two blocks' 16 bytes from `at`, the first block's in the low half; a missing second block
    /// reads as zeros.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn two_halves(first: *const u8, second: Option<*const u8>) -> __m256i {
        let lo = _mm_loadu_si128(first as *const __m128i);
        let hi = match second {
            Some(p) => _mm_loadu_si128(p as *const __m128i),
            None => _mm_setzero_si128(),
        };
        _mm256_set_m128i(hi, lo)
    }

    /// A pair of blocks' scales, four lanes each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn two_scales(first: f32, second: f32) -> __m256 {
        _mm256_set_m128(_mm_set1_ps(second), _mm_set1_ps(first))
    }

    /// Group `group` of `il`, whose groups are `slots` slots long: where its values, its scales and
    /// its `scale * sum`s start.
    #[inline(always)]
    unsafe fn group_at(
        il: &Interleaved,
        group: usize,
        slots: usize,
    ) -> (*const i8, *const f32, *const f32) {
        debug_assert!(group < il.groups && il.d.len() >= il.groups * slots * 8);
        let at = group * slots;
        (
            il.q.as_ptr().add(at * 8 * QK),
            il.d.as_ptr().add(at * 8),
            il.s.as_ptr().add(at * 8),
        )
    }

    /// Defines the Q4_1 wide tiles over the given byte products (`$interleaved`): plain AVX2 and
    /// VNNI give the same bits, since they differ only in how the exact integer sums are formed.
    macro_rules! q4_1_wide_tiles {
        ($features:literal, $interleaved:ident, $q4_1_eight:ident, $q4_1_four:ident) => {
            /// One Q4_1 weight row against interleaved group `group` of eight activation rows: the bits
            /// `q4_1_tile_n` gives each of them. Each 4-byte group of a weight block is broadcast to all
            /// lanes, so one byte product serves eight rows; the eight groups' 16-bit pair sums add up
            /// before widening (at most 8 * 2 * 15 * 128 = 30720, no overflow).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q4_1_eight(
                wr: &[BlockQ4_1],
                e: &Interleaved,
                group: usize,
                bpr: usize,
                res: &mut [f32; 8],
            ) {
                debug_assert_eq!(wr.len(), bpr);
                let (q, d, s) = group_at(e, group, bpr);
                let mut acc = [_mm256_setzero_ps(); 8];
                by_class!(bpr, acc, [0, 1, 2, 3, 4, 5, 6, 7], |b, acc| {
                    let blk = wr.get_unchecked(b);
                    prefetch(blk);
                    // Both halves of the register hold the block, so an in-lane shuffle broadcasts.
                    let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        blk.qs.as_ptr() as *const __m128i
                    ));
                    let sums = $interleaved(raw, q.add(b * 8 * QK) as *const __m256i);
                    let scale = _mm256_mul_ps(
                        _mm256_set1_ps(blk.d.to_f32()),
                        _mm256_loadu_ps(d.add(b * 8)),
                    );
                    *acc = _mm256_fmadd_ps(scale, sums, *acc);
                    let m = _mm256_set1_ps(blk.m.to_f32());
                    *acc = _mm256_fmadd_ps(m, _mm256_loadu_ps(s.add(b * 8)), *acc);
                });
                _mm256_storeu_ps(res.as_mut_ptr(), eight_sums(&acc));
            }

            /// One Q4_1 weight row against four-row group `group`: the bits `q4_1_tile_n` gives each of
            /// the four rows. As the eight-row tile, with two blocks side by side in place of eight rows:
            /// the in-lane shuffles broadcast each block's 4-byte groups across its own half. Pair `p`'s
            /// blocks are classes `2p % 8` and `2p % 8 + 1`, so accumulator `p % 4` holds both.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q4_1_four(
                wr: &[BlockQ4_1],
                f: &Interleaved,
                group: usize,
                bpr: usize,
                res: &mut [f32; 4],
            ) {
                let pairs = bpr.div_ceil(2);
                debug_assert_eq!(wr.len(), bpr);
                let (q, d, s) = group_at(f, group, pairs);
                let mut acc = [_mm256_setzero_ps(); 4];
                by_class!(pairs, acc, [0, 1, 2, 3], |p, acc| {
                    let b0 = wr.get_unchecked(2 * p);
                    let b1 = wr.get(2 * p + 1);
                    prefetch(b0);
                    let raw = two_halves(b0.qs.as_ptr(), b1.map(|b| b.qs.as_ptr()));
                    let sums = $interleaved(raw, q.add(p * 8 * QK) as *const __m256i);
                    let (d1, m1) = b1.map_or((0.0, 0.0), |b| (b.d.to_f32(), b.m.to_f32()));
                    let dw = two_scales(b0.d.to_f32(), d1);
                    let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(d.add(p * 8)));
                    *acc = _mm256_fmadd_ps(scale, sums, *acc);
                    let mw = two_scales(b0.m.to_f32(), m1);
                    *acc = _mm256_fmadd_ps(mw, _mm256_loadu_ps(s.add(p * 8)), *acc);
                });
                _mm_storeu_ps(res.as_mut_ptr(), four_sums(&acc));
            }
        };
    }
    q4_1_wide_tiles!("avx2,fma,f16c", q4_1_interleaved, q4_1_eight, q4_1_four);
    q4_1_wide_tiles!(
        "avx2,fma,f16c,avx512vnni,avx512vl",
        q4_1_interleaved_vnni,
        q4_1_eight_vnni,
        q4_1_four_vnni
    );

    /// The wide Q8_0 tiles' integer products, plus `init`: `wv[g]` holds weight bytes `4g..4g + 4` of
    /// each lane's block, `xb` the eight interleaved activation vectors; lane `l` gets the exact dot
    /// product of its row and block. maddubs multiplies unsigned by signed, so the weight's sign
    /// moves onto the activation, as in the row tile; a Q8_0 pair sum can reach 2 * 128 * 127, so
    /// each group widens to 32 bits before adding.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_interleaved(wv: &[__m256i; 8], xb: *const __m256i, init: __m256i) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let p: [__m256i; 8] = std::array::from_fn(|g| {
            let xv = _mm256_loadu_si256(xb.add(g));
            let aw = _mm256_sign_epi8(wv[g], wv[g]);
            let sx = _mm256_sign_epi8(xv, wv[g]);
            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones)
        });
        let p01 = _mm256_add_epi32(p[0], p[1]);
        let p23 = _mm256_add_epi32(p[2], p[3]);
        let p45 = _mm256_add_epi32(p[4], p[5]);
        let p67 = _mm256_add_epi32(p[6], p[7]);
        let s = _mm256_add_epi32(_mm256_add_epi32(p01, p23), _mm256_add_epi32(p45, p67));
        _mm256_add_epi32(s, init)
    }

    /// As `q8_0_interleaved`, with `vpdpbusd` on activations offset by 128 (`quantize_rows`), whose
    /// `128 · Σ q` the caller's `init` takes off again: lane `l` gets the same exact sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn q8_0_offset_vnni(wv: &[__m256i; 8], xb: *const __m256i, init: __m256i) -> __m256i {
        // Two chains, so that each dot product waits on one of its own kind only every other time.
        let mut chains = [init, _mm256_setzero_si256()];
        for (g, w) in wv.iter().enumerate() {
            let c = &mut chains[g % 2];
            *c = _mm256_dpbusd_epi32(*c, _mm256_loadu_si256(xb.add(g)), *w);
        }
        _mm256_add_epi32(chains[0], chains[1])
    }

    /// Defines the Q8_0 wide tiles over the given integer products, as `q4_1_wide_tiles`; with
    /// `$offset` the activations are offset and `offs` holds the row's block offsets (`init`).
    macro_rules! q8_0_wide_tiles {
        ($features:literal, $interleaved:ident, $offset:literal, $q8_0_eight:ident, $q8_0_four:ident) => {
            /// One Q8_0 weight row against interleaved group `group`: the bits `q8_0_tile_n` gives.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q8_0_eight(
                wr: &[BlockQ8_0],
                offs: &[i32],
                e: &Interleaved,
                group: usize,
                bpr: usize,
                res: &mut [f32; 8],
            ) {
                debug_assert!(wr.len() == bpr && (!$offset || offs.len() == bpr));
                let (q, d, _) = group_at(e, group, bpr);
                let mut acc = [_mm256_setzero_ps(); 8];
                by_class!(bpr, acc, [0, 1, 2, 3, 4, 5, 6, 7], |b, acc| {
                    let blk = wr.get_unchecked(b);
                    prefetch(blk);
                    let xb = q.add(b * 8 * QK) as *const __m256i;
                    let wq = blk.qs.as_ptr() as *const i32;
                    let wv: [__m256i; 8] =
                        std::array::from_fn(|g| _mm256_set1_epi32(wq.add(g).read_unaligned()));
                    let init = if $offset {
                        _mm256_set1_epi32(*offs.get_unchecked(b))
                    } else {
                        _mm256_setzero_si256()
                    };
                    let sum = $interleaved(&wv, xb, init);
                    let scale = _mm256_mul_ps(
                        _mm256_set1_ps(blk.d.to_f32()),
                        _mm256_loadu_ps(d.add(b * 8)),
                    );
                    *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), *acc);
                });
                _mm256_storeu_ps(res.as_mut_ptr(), eight_sums(&acc));
            }

            /// One Q8_0 weight row against four-row group `group`: the bits `q8_0_tile_n` gives, as
            /// `q4_1_four` does for Q4_1.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q8_0_four(
                wr: &[BlockQ8_0],
                offs: &[i32],
                f: &Interleaved,
                group: usize,
                bpr: usize,
                res: &mut [f32; 4],
            ) {
                let pairs = bpr.div_ceil(2);
                debug_assert!(wr.len() == bpr && (!$offset || offs.len() == bpr));
                let (q, d, _) = group_at(f, group, pairs);
                let mut acc = [_mm256_setzero_ps(); 4];
                by_class!(pairs, acc, [0, 1, 2, 3], |p, acc| {
                    let b0 = wr.get_unchecked(2 * p);
                    let b1 = wr.get(2 * p + 1);
                    prefetch(b0);
                    let xb = q.add(p * 8 * QK) as *const __m256i;
                    let half = |h: usize| {
                        two_halves(
                            b0.qs.as_ptr().add(16 * h) as *const u8,
                            b1.map(|b| b.qs.as_ptr().add(16 * h) as *const u8),
                        )
                    };
                    let (lo, hi) = (half(0), half(1));
                    // Each half's 4-byte groups, broadcast across it by in-lane shuffles.
                    let wv = [
                        _mm256_shuffle_epi32::<0x00>(lo),
                        _mm256_shuffle_epi32::<0x55>(lo),
                        _mm256_shuffle_epi32::<0xAA>(lo),
                        _mm256_shuffle_epi32::<0xFF>(lo),
                        _mm256_shuffle_epi32::<0x00>(hi),
                        _mm256_shuffle_epi32::<0x55>(hi),
                        _mm256_shuffle_epi32::<0xAA>(hi),
                        _mm256_shuffle_epi32::<0xFF>(hi),
                    ];
                    let init = if $offset {
                        // A missing second block's activations read as 0 (offset 128): no offset.
                        let o1 = if b1.is_some() {
                            *offs.get_unchecked(2 * p + 1)
                        } else {
                            0
                        };
                        _mm256_set_m128i(
                            _mm_set1_epi32(o1),
                            _mm_set1_epi32(*offs.get_unchecked(2 * p)),
                        )
                    } else {
                        _mm256_setzero_si256()
                    };
                    let sum = $interleaved(&wv, xb, init);
                    let d1 = b1.map_or(0.0, |b| b.d.to_f32());
                    let scale =
                        _mm256_mul_ps(two_scales(b0.d.to_f32(), d1), _mm256_loadu_ps(d.add(p * 8)));
                    *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), *acc);
                });
                _mm_storeu_ps(res.as_mut_ptr(), four_sums(&acc));
            }
        };
    }
    q8_0_wide_tiles!(
        "avx2,fma,f16c",
        q8_0_interleaved,
        false,
        q8_0_eight,
        q8_0_four
    );
    q8_0_wide_tiles!(
        "avx2,fma,f16c,avx512vnni,avx512vl",
        q8_0_offset_vnni,
        true,
        q8_0_eight_vnni,
        q8_0_four_vnni
    );

    /// One Q8_0 block's integer dot product with one activation block, in eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_dot(blk: &BlockQ8_0, x: *const i8) -> __m256i {
        let wv = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
        let xv = _mm256_loadu_si256(x as *const __m256i);
        // maddubs multiplies unsigned by signed: move the weight's sign onto the activation.
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }

    /// `CNT` dot products of one Q8_0 weight row with consecutive quantized activation rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    // `j` picks the activation row as well as its accumulator.
    #[allow(clippy::needless_range_loop)]
    unsafe fn q8_0_tile_n<const CNT: usize>(
        wr: &[BlockQ8_0],
        xq: &Quantized,
        a0: usize,
        bpr: usize,
        res: &mut [f32; TILE],
    ) {
        let mut acc = [_mm256_setzero_ps(); CNT];
        let xqp = xq.q.as_ptr();
        by_chunk!(bpr, |b, n| {
            let mask = first_lanes(n);
            let dw = q8_0_scales(wr.as_ptr().add(b), mask);
            for (j, acc) in acc.iter_mut().enumerate() {
                let xi = (a0 + j) * bpr + b;
                let mut p = [_mm256_setzero_si256(); 8];
                for (k, pk) in p.iter_mut().enumerate() {
                    if k < n {
                        let blk = wr.get_unchecked(b + k);
                        if j == 0 {
                            prefetch(blk);
                        }
                        *pk = q8_0_dot(blk, xqp.add((xi + k) * QK));
                    }
                }
                let sums = _mm256_cvtepi32_ps(lane_sums(&p));
                let dx = _mm256_maskload_ps(xq.d.as_ptr().add(xi), mask);
                *acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), sums, *acc);
            }
        });
        for j in 0..CNT {
            res[j] = hsum(acc[j]);
        }
    }
}

/// The same tiles with AVX-512: two blocks per 512-bit register, `vpdpbusd` for the byte products.
/// Integer sums are exact either way; only the order of the float additions differs from AVX2.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{prefetch, q4_1_nibbles};
    use super::{BlockQ4_1, BlockQ8_0, Quantized, QK, TILE};

    by_count!(
        "avx512f,avx512bw,avx512vnni,avx2,fma",
        q4_1_tile,
        q4_1_tile_n,
        BlockQ4_1
    );
    by_count!(
        "avx512f,avx512bw,avx512vnni,avx2,fma",
        q8_0_tile,
        q8_0_tile_n,
        BlockQ8_0
    );

    /// `[a × 8, b × 8]`: one scale per block of a pair, across the lanes that block's sums land in.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn pair(a: f32, b: f32) -> __m512 {
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_set_ps(0.0, 0.0, b, a)))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn q4_1_tile_n<const CNT: usize>(
        wr: &[BlockQ4_1],
        xq: &Quantized,
        a0: usize,
        bpr: usize,
        res: &mut [f32; TILE],
    ) {
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); CNT];
        let mut offs = [0f32; CNT];
        let xqp = xq.q.as_ptr();
        let xd = xq.d.as_ptr();
        let xs = xq.s.as_ptr();
        let mut b = 0;
        while b + 2 <= bpr {
            let (b0, b1) = (wr.get_unchecked(b), wr.get_unchecked(b + 1));
            prefetch(b0);
            let raw = _mm256_loadu2_m128i(
                b1.qs.as_ptr() as *const __m128i,
                b0.qs.as_ptr() as *const __m128i,
            );
            let lo = _mm256_and_si256(raw, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
            // [lo0 | lo1 | hi0 | hi1] → [lo0 | hi0 | lo1 | hi1], the activations' order.
            let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let w = _mm512_shuffle_i64x2::<0b11_01_10_00>(w, w);
            let dw = pair(b0.d.to_f32(), b1.d.to_f32());
            let (m0, m1) = (b0.m.to_f32(), b1.m.to_f32());
            for j in 0..CNT {
                let xi = (a0 + j) * bpr + b;
                let xv = _mm512_loadu_si512(xqp.add(xi * QK) as *const _);
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
                let scale = _mm512_mul_ps(dw, pair(*xd.add(xi), *xd.add(xi + 1)));
                acc[j] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), acc[j]);
                offs[j] += m0 * *xs.add(xi) + m1 * *xs.add(xi + 1);
            }
            b += 2;
        }
        if b < bpr {
            let blk = wr.get_unchecked(b);
            let w = _mm512_zextsi256_si512(q4_1_nibbles(blk));
            let (dw, mw) = (blk.d.to_f32(), blk.m.to_f32());
            for j in 0..CNT {
                let xi = (a0 + j) * bpr + b;
                let xv =
                    _mm512_zextsi256_si512(_mm256_loadu_si256(xqp.add(xi * QK) as *const __m256i));
                let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
                let scale = _mm512_set1_ps(dw * *xd.add(xi));
                acc[j] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(p), acc[j]);
                offs[j] += mw * *xs.add(xi);
            }
        }
        for j in 0..CNT {
            res[j] = _mm512_reduce_add_ps(acc[j]) + offs[j];
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    // `j` picks the activation row as well as its accumulator.
    #[allow(clippy::needless_range_loop)]
    unsafe fn q8_0_tile_n<const CNT: usize>(
        wr: &[BlockQ8_0],
        xq: &Quantized,
        a0: usize,
        bpr: usize,
        res: &mut [f32; TILE],
    ) {
        let mut acc = [_mm512_setzero_ps(); CNT];
        let xqp = xq.q.as_ptr();
        let xd = xq.d.as_ptr();
        let zero = _mm512_setzero_si512();
        let mut b = 0;
        while b < bpr {
            let two = b + 2 <= bpr;
            let b0 = wr.get_unchecked(b);
            prefetch(b0);
            let w0 = _mm256_loadu_si256(b0.qs.as_ptr() as *const __m256i);
            let (w, dw) = if two {
                let b1 = wr.get_unchecked(b + 1);
                let w1 = _mm256_loadu_si256(b1.qs.as_ptr() as *const __m256i);
                (
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(w0), w1),
                    pair(b0.d.to_f32(), b1.d.to_f32()),
                )
            } else {
                (_mm512_zextsi256_si512(w0), _mm512_set1_ps(b0.d.to_f32()))
            };
            // vpdpbusd multiplies unsigned by signed: move the weight's sign onto the activation.
            let neg = _mm512_movepi8_mask(w);
            let aw = _mm512_abs_epi8(w);
            for j in 0..CNT {
                let xi = (a0 + j) * bpr + b;
                let (xv, xs) = if two {
                    (
                        _mm512_loadu_si512(xqp.add(xi * QK) as *const _),
                        pair(*xd.add(xi), *xd.add(xi + 1)),
                    )
                } else {
                    // The row's last block: the upper half stays zero (and is not read).
                    (
                        _mm512_zextsi256_si512(_mm256_loadu_si256(
                            xqp.add(xi * QK) as *const __m256i
                        )),
                        _mm512_set1_ps(*xd.add(xi)),
                    )
                };
                let sx = _mm512_mask_sub_epi8(xv, neg, zero, xv);
                let p = _mm512_dpbusd_epi32(zero, aw, sx);
                acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(dw, xs), _mm512_cvtepi32_ps(p), acc[j]);
            }
            b += if two { 2 } else { 1 };
        }
        for j in 0..CNT {
            res[j] = _mm512_reduce_add_ps(acc[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gguf::Bytes;
    use crate::engine::kernels::test_random as random;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn matrix(dtype: GgmlDType, rows: usize, cols: usize) -> QMatrix {
        let t = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let bytes = q.data().unwrap().to_vec();
        QMatrix::new(dtype, rows, cols, Bytes::Owned(bytes.into())).unwrap()
    }

    /// Exact f32 product with the dequantized weights.
    fn reference(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * w.rows()];
        let mut row = vec![0f32; w.cols()];
        for r in 0..w.rows() {
            w.dequantize_row(r, &mut row);
            for a in 0..n {
                out[a * w.rows() + r] =
                    row.iter().zip(&x[a * w.cols()..]).map(|(p, q)| p * q).sum();
            }
        }
        out
    }

    fn rel_err(got: &[f32], want: &[f32]) -> f32 {
        let num: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f32 = want.iter().map(|b| b * b).sum();
        (num / den).sqrt()
    }

    #[test]
    fn fast_paths_match_the_reference_and_the_generic_path() {
        if !available() {
            return;
        }
        let pool = ThreadPool::new(2);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            for (rows, cols) in [(37, 64), (576, 576), (100, 1536)] {
                let w = matrix(dtype, rows, cols);
                for n in [1, 3, 8, 67] {
                    let x = random(n * cols, n as u64);
                    let mut fast = vec![0f32; n * rows];
                    w.matmul(&x, n, &mut fast, &pool);
                    let mut generic = vec![0f32; n * rows];
                    w.matmul_generic(&x, n, &mut generic, &pool);
                    let want = reference(&w, &x, n);
                    assert!(
                        rel_err(&fast, &want) < 0.01,
                        "{dtype:?} {rows}x{cols} n={n}: {}",
                        rel_err(&fast, &want)
                    );
                    assert!(rel_err(&fast, &generic) < 0.01, "{dtype:?} vs generic");
                }
            }
        }
    }

    #[test]
    fn the_avx2_quantizer_matches_the_portable_one() {
        if !available() {
            return;
        }
        let mut x = random(64 * QK, 9);
        // A zero block, a block with one huge value, and one whose scaled values are exact halves
        // (its largest value is 127, so the scale is 1).
        x[..QK].iter_mut().for_each(|v| *v = 0.0);
        x[QK + 5] = 1e30;
        for (k, v) in x[2 * QK..3 * QK].iter_mut().enumerate() {
            *v = if k == 0 { 127.0 } else { k as f32 - 16.5 };
        }
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let mut q = [0i8; QK];
            let (d, sum) = unsafe { avx2::quantize_block(xb, &mut q) };
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let want_d = f16::from_f32(amax / 127.0).to_f32();
            assert_eq!(d.to_bits(), want_d.to_bits(), "block {b}");
            let id = if amax > 0.0 {
                1.0 / (amax / 127.0)
            } else {
                0.0
            };
            for k in 0..QK {
                // Halves may round either way; nothing else may differ.
                let exact = xb[k] * id;
                assert!(
                    (q[k] as f32 - exact).abs() <= 0.5,
                    "block {b} value {k}: {} vs {exact}",
                    q[k]
                );
            }
            assert_eq!(sum, q.iter().map(|&v| v as i32).sum::<i32>(), "block {b}");
        }
    }

    #[test]
    fn avx2_matches_the_scalar_tiles() {
        if !available() {
            return;
        }
        let w4 = matrix(GgmlDType::Q4_1, 8, 256);
        let w8 = matrix(GgmlDType::Q8_0, 8, 256);
        let x = random(5 * 256, 3);
        let xq = quantize_rows(&x, 256, 0, 0, false);
        for row in 0..8 {
            let (mut a, mut b) = ([0f32; TILE], [0f32; TILE]);
            let r4 = &blocks::<BlockQ4_1>(&w4)[row * 8..(row + 1) * 8];
            unsafe { avx2::q4_1_tile(r4, &xq, 1, 4, 8, &mut a) };
            scalar_q4_1_tile(r4, &xq, 1, 4, 8, &mut b);
            for j in 0..4 {
                assert!(
                    (a[j] - b[j]).abs() <= 1e-4 * b[j].abs().max(1.0),
                    "q4_1 {a:?} {b:?}"
                );
            }
            let r8 = &blocks::<BlockQ8_0>(&w8)[row * 8..(row + 1) * 8];
            unsafe { avx2::q8_0_tile(r8, &xq, 1, 4, 8, &mut a) };
            scalar_q8_0_tile(r8, &xq, 1, 4, 8, &mut b);
            for j in 0..4 {
                assert!(
                    (a[j] - b[j]).abs() <= 1e-4 * b[j].abs().max(1.0),
                    "q8_0 {a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn the_wide_tiles_give_the_row_tiles_bits() {
        if !available() {
            return;
        }
        // Rows of whole eight-block chunks, of a short chunk alone, and of both; odd block counts
        // leave the four-row tile's last pair half empty.
        for bpr in [1, 2, 7, 8, 9, 18, 48] {
            let cols = bpr * QK;
            let w4 = matrix(GgmlDType::Q4_1, 5, cols);
            let w8 = matrix(GgmlDType::Q8_0, 5, cols);
            // -128, which a file may hold though quantizing never writes it: the extreme for the
            // sign trick and for the offsets.
            let mut bytes = w8.bytes().to_vec();
            bytes
                .chunks_exact_mut(34)
                .step_by(3)
                .for_each(|b| b[2 + bpr % 32] = 0x80);
            let w8 = QMatrix::new(GgmlDType::Q8_0, 5, cols, Bytes::Owned(bytes.into())).unwrap();
            // Two groups of eight, then two of four.
            let x = random(24 * cols, bpr as u64);
            let xq = quantize_rows(&x, cols, 2, 2, false);
            // The VNNI Q8_0 tiles' activations, offset by 128.
            let xo = quantize_rows(&x, cols, 2, 2, true);
            let offsets = q8_0_offsets(&w8);
            for row in 0..5 {
                let o8 = &offsets[row * bpr..(row + 1) * bpr];
                let r4 = &blocks::<BlockQ4_1>(&w4)[row * bpr..(row + 1) * bpr];
                let r8 = &blocks::<BlockQ8_0>(&w8)[row * bpr..(row + 1) * bpr];
                let mut wide = Vec::new();
                for group in 0..2 {
                    let (mut e4, mut e8) = ([0f32; 8], [0f32; 8]);
                    unsafe { avx2::q4_1_eight(r4, &xq.eights, group, bpr, &mut e4) };
                    unsafe { avx2::q8_0_eight(r8, &[], &xq.eights, group, bpr, &mut e8) };
                    if vnni_cpu() {
                        let mut v4 = [0f32; 8];
                        unsafe { avx2::q4_1_eight_vnni(r4, &xq.eights, group, bpr, &mut v4) };
                        assert_eq!(v4.map(f32::to_bits), e4.map(f32::to_bits), "VNNI, {bpr}");
                        let mut v8 = [0f32; 8];
                        unsafe { avx2::q8_0_eight_vnni(r8, o8, &xo.eights, group, bpr, &mut v8) };
                        assert_eq!(v8.map(f32::to_bits), e8.map(f32::to_bits), "VNNI, {bpr}");
                    }
                    wide.extend(e4.iter().zip(e8).map(|(a, b)| (*a, b)));
                }
                for group in 0..2 {
                    let (mut f4, mut f8) = ([0f32; 4], [0f32; 4]);
                    unsafe { avx2::q4_1_four(r4, &xq.fours, group, bpr, &mut f4) };
                    unsafe { avx2::q8_0_four(r8, &[], &xq.fours, group, bpr, &mut f8) };
                    if vnni_cpu() {
                        let mut v4 = [0f32; 4];
                        unsafe { avx2::q4_1_four_vnni(r4, &xq.fours, group, bpr, &mut v4) };
                        assert_eq!(v4.map(f32::to_bits), f4.map(f32::to_bits), "VNNI, {bpr}");
                        let mut v8 = [0f32; 4];
                        unsafe { avx2::q8_0_four_vnni(r8, o8, &xo.fours, group, bpr, &mut v8) };
                        assert_eq!(v8.map(f32::to_bits), f8.map(f32::to_bits), "VNNI, {bpr}");
                    }
                    wide.extend(f4.iter().zip(f8).map(|(a, b)| (*a, b)));
                }
                for (a, (w4, w8)) in wide.into_iter().enumerate() {
                    let (mut o4, mut o8) = ([0f32; TILE], [0f32; TILE]);
                    unsafe { avx2::q4_1_tile(r4, &xq, a, 1, bpr, &mut o4) };
                    unsafe { avx2::q8_0_tile(r8, &xq, a, 1, bpr, &mut o8) };
                    let at = format!("{bpr} blocks, row {row}, activation row {a}");
                    assert_eq!(w4.to_bits(), o4[0].to_bits(), "Q4_1 {at}");
                    assert_eq!(w8.to_bits(), o8[0].to_bits(), "Q8_0 {at}");
                }
            }
        }
    }

    #[test]
    fn avx512_matches_the_scalar_tiles() {
        if !available() || !avx512_cpu() {
            return;
        }
        // An odd block count too, for the last unpaired block.
        for blocks_per_row in [8, 7, 1] {
            let cols = blocks_per_row * QK;
            let w4 = matrix(GgmlDType::Q4_1, 8, cols);
            let w8 = matrix(GgmlDType::Q8_0, 8, cols);
            let x = random(5 * cols, 3);
            let xq = quantize_rows(&x, cols, 0, 0, false);
            let bpr = blocks_per_row;
            for row in 0..8 {
                for cnt in 1..=4 {
                    let (mut a, mut b) = ([0f32; TILE], [0f32; TILE]);
                    let r4 = &blocks::<BlockQ4_1>(&w4)[row * bpr..(row + 1) * bpr];
                    unsafe { avx512::q4_1_tile(r4, &xq, 1, cnt, bpr, &mut a) };
                    scalar_q4_1_tile(r4, &xq, 1, cnt, bpr, &mut b);
                    for j in 0..cnt {
                        assert!(
                            (a[j] - b[j]).abs() <= 1e-4 * b[j].abs().max(1.0),
                            "q4_1 {bpr} blocks, {cnt} rows: {a:?} {b:?}"
                        );
                    }
                    let r8 = &blocks::<BlockQ8_0>(&w8)[row * bpr..(row + 1) * bpr];
                    unsafe { avx512::q8_0_tile(r8, &xq, 1, cnt, bpr, &mut a) };
                    scalar_q8_0_tile(r8, &xq, 1, cnt, bpr, &mut b);
                    for j in 0..cnt {
                        assert!(
                            (a[j] - b[j]).abs() <= 1e-4 * b[j].abs().max(1.0),
                            "q8_0 {bpr} blocks, {cnt} rows: {a:?} {b:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn several_matrices_over_one_input_match_separate_products() {
        let pool = ThreadPool::new(2);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
            let (a, b, c) = (
                matrix(dtype, 300, 256),
                matrix(dtype, 70, 256),
                matrix(dtype, 129, 256),
            );
            for n in [1, 5] {
                let x = random(n * 256, 5);
                let mut together = [vec![0f32; n * 300], vec![0f32; n * 70], vec![0f32; n * 129]];
                let [ta, tb, tc] = &mut together;
                QMatrix::matmul_many(
                    &[&a, &b, &c],
                    &x,
                    n,
                    &mut [&mut ta[..], &mut tb[..], &mut tc[..]],
                    &pool,
                );
                for (w, t) in [&a, &b, &c].iter().zip(&together) {
                    let mut alone = vec![0f32; n * w.rows()];
                    w.matmul(&x, n, &mut alone, &pool);
                    assert_eq!(&alone, t, "{dtype:?} n={n} {}x{}", w.rows(), w.cols());
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_batch() {
        let pool = ThreadPool::new(2);
        for dtype in [
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            // Two groups of eight and three rows more (a padded four-row group); eight and six (a
            // padded eight-row group); eight and four; two (row tiles).
            let w = matrix(dtype, 70, 256);
            for n in [19, 14, 12, 2] {
                let x = random(n * 256, 11);
                let mut all = vec![0f32; n * 70];
                w.matmul(&x, n, &mut all, &pool);
                for a in 0..n {
                    let mut one = vec![0f32; 70];
                    w.matmul(&x[a * 256..(a + 1) * 256], 1, &mut one, &pool);
                    assert_eq!(one, all[a * 70..(a + 1) * 70], "{dtype:?} row {a} of {n}");
                }
            }
        }
    }
}
