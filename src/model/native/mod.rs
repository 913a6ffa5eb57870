//! The native CPU kernel of fast mode for linear attention: the Gram-form forward pass and its
//! closed-form backward, K members at once, with no libtorch operation, no autograd graph and
//! no allocation per step.
//!
//! Why it exists: the libtorch fast path ([`super::fast`]) computes the same arithmetic as
//! hundreds of small tensor operations per step; with d + 1 = 6 most of its time went to
//! launching them, to large temporaries and to memory traffic, not to the multiply-adds
//! (docs/performance.md). Here every prompt's state is a handful of (d+1)×(d+1) matrices held
//! struct-of-arrays, [`LANES`] prompts side by side, so that every step of the algebra is one
//! vector multiply-add across prompts and the state of a chunk stays in the L1/L2 cache.
//!
//! The algebra (the same model as [`super::faithful::forward`], docs/spec.md):
//! per prompt, `G₀ = Σ_{i<n} z_i z_iᵀ` and `q₀ = z_n`; layer l has `R_l = I + Σ_h Q̃_h G_l P̃_hᵀ`
//! (the 1/n folded into P̃), `G_{l+1} = R_lᵀ G_l R_l` and `q_{l+1} = q_l R_l`; the prediction is
//! `−(q_L)_d` and the loss the mean of `((q_L)_d + y)²`. The last layer needs only column d of R.
//! The backward pass is the reverse-mode derivative of exactly these steps, written out
//! (`R̄ = q_lᵀ q̄ + G R (Ḡ + Ḡᵀ)`, `Ḡ_l = R Ḡ Rᵀ + Σ_h Q̃_hᵀ R̄ P̃_h`, `Q̃̄_h = R̄ (G P̃_hᵀ)ᵀ`,
//! `P̃̄_h = R̄ᵀ Q̃_h G`); tests/native_kernel.rs checks it against autograd of the faithful
//! forward and against float64 finite differences.
//!
//! Rounding: every sum runs in a fixed order within one lane, and every multiply-add is fused
//! ([`Real::mul_add`]: the FMA instruction, or libm's exactly rounded `fma` on a CPU without
//! one), so the results do not depend on which SIMD width the CPU offers, nor on how members
//! are split across threads: a run is bit-identical on any x86-64.
//!
//! SIMD: the kernels are compiled for AVX-512, AVX2+FMA and baseline x86-64, and the widest
//! the CPU supports is chosen at run time ([`multiversion`]); the binary runs on any x86-64.
//! This module has no `unsafe`.
mod softmax;

use crate::config::{Attention, Parametrization};
use crate::data::{Batch, HostRows};
use multiversion::multiversion;
use std::ops::{Add, AddAssign, Mul, Sub};
use tch::{Device, Kind, Tensor};

/// Prompts per vector: 16 float32 fill one 512-bit register (two 256-bit ones).
pub const LANES: usize = 16;

/// The float types the kernel runs in (the run's `train.dtype`).
pub trait Real:
    Copy
    + Default
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + 'static
{
    /// Whether [`block`] gets a copy with the paper's side d + 1 = 6 (and the large model's 21)
    /// known at compile time: its loops unroll, but each copy costs minutes of compile time
    /// (three SIMD targets each), so only the float types that train have them.
    const UNROLL_PAPER: bool = false;
    const UNROLL_LARGE: bool = false;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `self · a + b` rounded once (an FMA instruction where the CPU has one, else libm's
    /// exact `fma`): the same bits on every CPU.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Whether the value is above zero: where ReLU passes its input (and its gradient, as
    /// PyTorch's `threshold_backward` does: none at zero).
    fn positive(self) -> bool;
    /// e^self, with the same bits on every CPU and vector width ([`exp_f32`] for float32).
    fn exp(self) -> Self;
    /// 1 / self.
    fn recip(self) -> Self;
    /// `rows` as this type without a copy, where it is float32.
    fn borrow_f32(_rows: &[f32]) -> Option<&[Self]> {
        None
    }
}

impl Real for f32 {
    const UNROLL_PAPER: bool = true;
    const UNROLL_LARGE: bool = true;
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn positive(self) -> bool {
        self > 0.0
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn recip(self) -> Self {
        1.0 / self
    }
    fn borrow_f32(rows: &[f32]) -> Option<&[f32]> {
        Some(rows)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const UNROLL_PAPER: bool = true;
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    #[inline(always)]
    fn positive(self) -> bool {
        self > 0.0
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn recip(self) -> Self {
        1.0 / self
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

type Lane<T> = [T; LANES];

/// e^x in float32 from plain multiplies, adds and bit operations, so that a loop over lanes
/// vectorises on any x86-64 and gives the same bits at every vector width (a call to libm's
/// `expf` would do neither). Cephes' `expf`: x = k·ln 2 + r with |r| ≤ ln 2 / 2 (k rounded by
/// the 1.5·2²³ trick, ln 2 split in two for Cody–Waite), a degree-6 polynomial for e^r, and
/// 2^k written into the exponent bits; about 1 ulp. NaN stays NaN; arguments are clamped to
/// [−87.3, 88.3], where 2^k stays a normal number.
#[inline(always)]
// Cephes' constants as published (the last rounds to 0.5 in f32); the clamp written as
// compares, as Cephes does.
#[allow(clippy::excessive_precision, clippy::manual_clamp)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.3 {
        -87.3
    } else if x > 88.3 {
        88.3
    } else {
        x
    };
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = (x - k * 0.693_359_4) - k * -2.121_944_4e-4;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = (p * (r * r) + r) + 1.0;
    e * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// The shape of the network as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub layers: usize,
    pub heads: usize,
    /// d + 1: the side of every token and of every P̃, Q̃, G, R.
    pub side: usize,
    /// n: the context length (the query is token n).
    pub context: usize,
    /// The paper's restricted parametrization (P̃ = [[P,0],[0,1]], Q̃ = [[Q,0],[0,0]]); else
    /// P̃ = P, Q̃ = Q of side d + 1.
    pub restricted: bool,
    /// Width h of the MLP front end (App. B) that maps every token's covariates before the
    /// first layer; 0 for none.
    pub mlp_hidden: usize,
    /// Softmax attention (paper Fig. 4, [`softmax`]) instead of linear.
    pub softmax: bool,
}

impl Dims {
    /// The kernel's view of `arch`; `None` where it does not compute it ([`applies`]).
    pub fn of(arch: &super::Arch) -> Option<Dims> {
        applies(arch).then(|| Dims {
            layers: arch.layers as usize,
            heads: arch.heads as usize,
            side: arch.dim as usize + 1,
            context: arch.context as usize,
            restricted: arch.parametrization == Parametrization::Restricted,
            mlp_hidden: arch.mlp_hidden.max(0) as usize,
            softmax: arch.attention == Attention::Softmax,
        })
    }

    /// Side of each learned P and Q.
    pub fn pq(&self) -> usize {
        if self.restricted {
            self.side - 1
        } else {
            self.side
        }
    }

    /// Parameters per member: `allparam [L, H, 2, k, k]`, then the MLP's (state_dict order).
    pub fn params(&self) -> usize {
        self.attention_params() + self.mlp_params()
    }

    /// `allparam [L, H, 2, k, k]`: the first parameters of a member.
    pub fn attention_params(&self) -> usize {
        self.layers * self.heads * 2 * self.pq() * self.pq()
    }

    /// The MLP's `w0 [h, d]`, `b0 [h]`, `w2 [d, h]`, `b2 [d]`, after `allparam`.
    /// Whether a chunk's tokens are kept, not only their `G₀` and `q₀`: the MLP maps them
    /// per member, and softmax attention needs every token.
    fn keeps_tokens(&self) -> bool {
        self.mlp_hidden > 0 || self.softmax
    }

    pub fn mlp_params(&self) -> usize {
        let (d, h) = (self.side - 1, self.mlp_hidden);
        if h == 0 {
            0
        } else {
            2 * h * d + h + d
        }
    }
}

/// Prompts of one task: a block of this many chunks. The blocks are fixed by the batch size
/// alone, so a member's sums run in the same order whatever the thread count.
const BLOCK_CHUNKS: usize = 16;

/// Prompts of one task.
pub const BLOCK_PROMPTS: usize = BLOCK_CHUNKS * LANES;

/// What the kernel keeps of one data stream's batch: `G₀`, `q₀` and `y` per prompt, chunked
/// [`LANES`] prompts at a time (the last chunk padded with zero prompts, which contribute
/// nothing to the loss or the gradient). With the MLP front end the tokens themselves are kept
/// instead of `G₀` and `q₀`: each member maps them through its own MLP first.
#[derive(Debug, Default)]
pub struct Streams<T> {
    prompts: usize,
    chunks: usize,
    /// `[U, chunks, side, side, LANES]` (empty with the MLP).
    gram: Vec<T>,
    /// `[U, chunks, side, LANES]` (empty with the MLP).
    query: Vec<T>,
    /// `[U, chunks, n+1, side, LANES]` with the MLP (else empty).
    tokens: Vec<T>,
    /// `[U, chunks, LANES]`.
    target: Vec<T>,
}

/// Floats per chunk of each of [`Streams`]' buffers: gram, query, tokens.
fn chunk_sizes(dims: &Dims) -> (usize, usize, usize) {
    let (s, n) = (dims.side, dims.context);
    if dims.keeps_tokens() {
        (0, 0, (n + 1) * s * LANES)
    } else {
        (s * s * LANES, s * LANES, 0)
    }
}

/// `buf` cut into `parts` consecutive pieces of `per` floats (the last ones shorter or empty).
fn pieces<T>(buf: &mut [T], per: usize, parts: usize) -> Vec<&mut [T]> {
    let mut rest = buf;
    (0..parts)
        .map(|_| {
            let all = std::mem::take(&mut rest);
            let (head, tail) = all.split_at_mut(per.min(all.len()));
            rest = tail;
            head
        })
        .collect()
}

/// Where a batch comes from, row-major, for `streams` streams of B prompts.
#[derive(Clone, Copy)]
enum Source<'a, T> {
    /// A batch as the model reads it: `z [U, B, n+1, d+1]`, `y_query [U, B]`.
    Tokens { z: &'a [T], y_query: &'a [T] },
    /// Per prompt the rows `[w; x_1 … x_n; x_query]`, `[U, B, n+2, d]`: the tokens are
    /// `[x_i, x_i · w]` (the query's y is 0) and the target is `x_query · w`, the data of
    /// [`crate::data::DeviceStream::batch`] without its tensors. With a teacher φ*
    /// (`mlp_teacher`: its parameters as [`crate::data::HostTeacher`]'s, and its width) the
    /// labels are `φ*(x_i) · w`.
    Rows {
        rows: &'a [T],
        prompts: usize,
        teacher: Option<(&'a [T], usize)>,
    },
}

impl<T> Source<'_, T> {
    fn prompts(&self, streams: usize) -> usize {
        match self {
            Source::Tokens { y_query, .. } => y_query.len() / streams.max(1),
            Source::Rows { prompts, .. } => *prompts,
        }
    }
}

impl<T: Real> Streams<T> {
    /// Reads a batch of `streams` streams with one thread per entry of `works`. The buffers are
    /// kept between calls.
    fn load(
        &mut self,
        dims: &Dims,
        source: Source<T>,
        streams: usize,
        works: &mut [Work<T>],
        pool: Option<&rayon::ThreadPool>,
    ) {
        let (s, n) = (dims.side, dims.context);
        let prompts = source.prompts(streams);
        let size = match source {
            Source::Tokens { z, .. } => z.len() / (n + 1) / s,
            Source::Rows { rows, .. } => rows.len() / (n + 2) / (s - 1),
        };
        assert_eq!(
            size,
            streams * prompts,
            "the batch must hold U × B prompts of n+1 tokens of side d+1"
        );
        let chunks = prompts.div_ceil(LANES);
        self.prompts = prompts;
        self.chunks = chunks;
        let zero = T::default();
        let slots = streams * chunks;
        let (gs, qs, ts) = chunk_sizes(dims);
        self.gram.resize(slots * gs, zero);
        self.query.resize(slots * qs, zero);
        self.tokens.resize(slots * ts, zero);
        self.target.resize(slots * LANES, zero);
        let groups = works.len().min(slots).max(1);
        let per = slots.div_ceil(groups);
        let parts = pieces(&mut self.gram, per * gs, groups)
            .into_iter()
            .zip(pieces(&mut self.query, per * qs, groups))
            .zip(pieces(&mut self.tokens, per * ts, groups))
            .zip(pieces(&mut self.target, per * LANES, groups))
            .enumerate();
        let jobs: Vec<_> = parts
            .zip(works.iter_mut())
            .map(|((i, (((gram, query), tokens), target)), work)| {
                move || {
                    for (j, slot) in (i * per..slots.min((i + 1) * per)).enumerate() {
                        let out = Loaded {
                            gram: &mut gram[j * gs..(j + 1) * gs],
                            query: &mut query[j * qs..(j + 1) * qs],
                            tokens: &mut tokens[j * ts..(j + 1) * ts],
                            target: &mut target[j * LANES..(j + 1) * LANES],
                        };
                        load_chunk(
                            dims,
                            source,
                            (slot / chunks * prompts, prompts),
                            slot % chunks,
                            out,
                            work,
                        );
                    }
                }
            })
            .collect();
        run_all(pool, jobs);
    }
}

/// One chunk's slots of [`Streams`]' buffers.
struct Loaded<'a, T> {
    gram: &'a mut [T],
    query: &'a mut [T],
    tokens: &'a mut [T],
    target: &'a mut [T],
}

/// Runs every job, on `pool`'s threads where there is one and more than one job.
fn run_all<F: FnOnce() + Send>(pool: Option<&rayon::ThreadPool>, jobs: Vec<F>) {
    match pool {
        Some(pool) if jobs.len() > 1 => pool.scope(|scope| {
            for job in jobs {
                scope.spawn(move |_| job());
            }
        }),
        _ => jobs.into_iter().for_each(|job| job()),
    }
}

/// `G₀`, `q₀` (or the tokens, with the MLP) and `y` of prompts `[c·LANES, (c+1)·LANES)` of
/// the stream whose prompts are `[first, first + prompts)` of `source`, lane-major; `work`'s
/// token buffers are working memory.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn load_chunk<T: Real>(
    dims: &Dims,
    source: Source<T>,
    (first, prompts): (usize, usize),
    c: usize,
    out: Loaded<T>,
    work: &mut Work<T>,
) {
    let (s, n) = (dims.side, dims.context);
    let per_prompt = (n + 1) * s;
    let zero = T::default();
    let Work {
        tokens,
        raw,
        teacher_hidden,
        ..
    } = work;
    tokens.resize(per_prompt * LANES, zero);
    let target = out.target;
    target.fill(zero);
    let valid = LANES.min(prompts.saturating_sub(c * LANES));
    let base = first + c * LANES;
    match source {
        Source::Tokens { z, y_query } => {
            transpose(&z[base * per_prompt..], per_prompt, valid, tokens);
            target[..valid].copy_from_slice(&y_query[base..base + valid]);
        }
        Source::Rows { rows, teacher, .. } => {
            // rows[e] lanes: w in e < d, then x_t at (t + 1)·d; y_t = x_t · w lane-wise, or
            // φ*(x_t) · w with a teacher.
            let d = s - 1;
            let per_row = (n + 2) * d;
            raw.resize(per_row * LANES, zero);
            transpose(&rows[base * per_row..], per_row, valid, raw);
            for t in 0..=n {
                let mut y: Lane<T> = [zero; LANES];
                let x_t = &raw[(t + 1) * d * LANES..(t + 2) * d * LANES];
                match teacher {
                    None => {
                        for a in 0..d {
                            let (x, wa) = (lane(x_t, a), lane(raw, a));
                            for l in 0..LANES {
                                y[l] += x[l] * wa[l];
                            }
                        }
                    }
                    Some((params, width)) => {
                        teacher_labels(params, width, x_t, raw, teacher_hidden, &mut y);
                    }
                }
                for a in 0..d {
                    *lane_mut(tokens, t * s + a) = lane(x_t, a);
                }
                if t < n {
                    *lane_mut(tokens, t * s + d) = y;
                } else {
                    target.copy_from_slice(&y);
                }
            }
        }
    }
    if dims.keeps_tokens() {
        out.tokens.copy_from_slice(&tokens[..per_prompt * LANES]);
    } else {
        gram_and_query(s, n, tokens, out.gram, out.query);
    }
}

/// `y = φ*(x) · w` for one token of every prompt of a chunk: `x` and `w` are `d` lanes each,
/// `params` the teacher's (`w0 [h, d]`, `b0 [h]`, `w2 [d, h]`, `b2 [d]`, h = `width`);
/// `hidden` is working memory.
#[inline(always)]
fn teacher_labels<T: Real>(
    params: &[T],
    width: usize,
    x: &[T],
    w: &[T],
    hidden: &mut Vec<T>,
    y: &mut Lane<T>,
) {
    let d = x.len() / LANES;
    let (b0, w2, b2) = (width * d, width * d + width, 2 * width * d + width);
    hidden.resize(width * LANES, T::default());
    for j in 0..width {
        let mut acc: Lane<T> = [params[b0 + j]; LANES];
        for a in 0..d {
            let (xa, c) = (lane(x, a), params[j * d + a]);
            for l in 0..LANES {
                acc[l] = c.mul_add(xa[l], acc[l]);
            }
        }
        let h = lane_mut(hidden, j);
        for l in 0..LANES {
            h[l] = if acc[l].positive() {
                acc[l]
            } else {
                T::default()
            };
        }
    }
    for a in 0..d {
        let mut feature: Lane<T> = [params[b2 + a]; LANES];
        for j in 0..width {
            let (hj, c) = (lane(hidden, j), params[w2 + a * width + j]);
            for l in 0..LANES {
                feature[l] = c.mul_add(hj[l], feature[l]);
            }
        }
        let wa = lane(w, a);
        for l in 0..LANES {
            y[l] += feature[l] * wa[l];
        }
    }
}

/// `G₀ = Σ_{t<n} z_t z_tᵀ` and `q₀ = z_n` of one chunk's tokens `[n+1, s, LANES]`.
#[inline(always)]
fn gram_and_query<T: Real>(s: usize, n: usize, tokens: &[T], gram: &mut [T], query: &mut [T]) {
    let zero = T::default();
    gram[..s * s * LANES].fill(zero);
    for t in 0..n {
        let row = &tokens[t * s * LANES..(t + 1) * s * LANES];
        for a in 0..s {
            let ra = lane(row, a);
            for b in a..s {
                let rb = lane(row, b);
                let g = lane_mut(gram, a * s + b);
                for w in 0..LANES {
                    g[w] += ra[w] * rb[w];
                }
            }
        }
    }
    // The loop filled the upper triangle; G is symmetric.
    for a in 0..s {
        for b in 0..a {
            let v = lane(gram, b * s + a);
            *lane_mut(gram, a * s + b) = v;
        }
    }
    query[..s * LANES].copy_from_slice(&tokens[n * s * LANES..(n + 1) * s * LANES]);
}

/// `dst[e][w] = src[w·per + e]` for the first `valid` of [`LANES`] items of `per` values
/// each; the other lanes are zero (padding prompts).
#[inline(always)]
fn transpose<T: Real>(src: &[T], per: usize, valid: usize, dst: &mut [T]) {
    let src = &src[..valid * per];
    for (e, out) in dst[..per * LANES].chunks_exact_mut(LANES).enumerate() {
        let out: &mut Lane<T> = out.try_into().expect("a lane");
        if valid == LANES {
            for w in 0..LANES {
                out[w] = src[w * per + e];
            }
        } else {
            *out = [T::default(); LANES];
            for w in 0..valid {
                out[w] = src[w * per + e];
            }
        }
    }
}

#[inline(always)]
fn lane<T: Real>(buf: &[T], i: usize) -> Lane<T> {
    *lane_ref(buf, i)
}

/// [`lane`] in place: a lane of [`Dual`]s is several hundred bytes, and copies of them in
/// [`mm`] were 14% of a Hessian's time.
#[inline(always)]
fn lane_ref<T: Real>(buf: &[T], i: usize) -> &Lane<T> {
    buf[i * LANES..(i + 1) * LANES].try_into().expect("a lane")
}

#[inline(always)]
fn lane_mut<T: Real>(buf: &mut [T], i: usize) -> &mut Lane<T> {
    (&mut buf[i * LANES..(i + 1) * LANES])
        .try_into()
        .expect("a lane")
}

/// How a matrix operand is read: entry (i, k) is element `i·row + k·col` (a transpose swaps
/// the two strides), either one value shared by all prompts or one lane per entry.
#[derive(Clone, Copy)]
struct View {
    row: usize,
    col: usize,
}

impl View {
    fn plain(side: usize) -> View {
        View { row: side, col: 1 }
    }
    fn transposed(side: usize) -> View {
        View { row: 1, col: side }
    }
    #[inline(always)]
    fn at(&self, i: usize, k: usize) -> usize {
        i * self.row + k * self.col
    }
}

/// `out (+)= A B` with A `rows × inner` and B `inner × cols`, each either shared by all
/// prompts (`A_SHARED`, `B_SHARED`: one value per entry) or per prompt (one lane per entry).
///
/// Why blocked: with sides this small the loop is bound by loads, not by multiply-adds, so
/// each loaded lane of A serves up to six outputs of a row at once. Every output still sums
/// over k in ascending order, one fused multiply-add at a time, whatever the blocking.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn mm<T: Real, const A_SHARED: bool, const B_SHARED: bool>(
    out: &mut [T],
    a: &[T],
    av: View,
    b: &[T],
    bv: View,
    (rows, inner, cols): (usize, usize, usize),
    accumulate: bool,
) {
    let operands = Operands {
        a,
        av,
        b,
        bv,
        inner,
        cols,
        accumulate,
    };
    for i in 0..rows {
        let mut j = 0;
        while j + 6 <= cols {
            row_block::<T, A_SHARED, B_SHARED, 6>(out, &operands, i, j);
            j += 6;
        }
        while j + 3 <= cols {
            row_block::<T, A_SHARED, B_SHARED, 3>(out, &operands, i, j);
            j += 3;
        }
        while j < cols {
            row_block::<T, A_SHARED, B_SHARED, 1>(out, &operands, i, j);
            j += 1;
        }
    }
}

struct Operands<'a, T> {
    a: &'a [T],
    av: View,
    b: &'a [T],
    bv: View,
    inner: usize,
    cols: usize,
    accumulate: bool,
}

/// Outputs `(i, j0 .. j0 + J)` of [`mm`]. A shared operand is one value used in every lane (not
/// copied into a lane: for [`Dual`]s that copy cost more than the multiply-adds).
#[inline(always)]
fn row_block<T: Real, const A_SHARED: bool, const B_SHARED: bool, const J: usize>(
    out: &mut [T],
    o: &Operands<T>,
    i: usize,
    j0: usize,
) {
    let mut acc = [[T::default(); LANES]; J];
    if o.accumulate {
        for (jj, acc) in acc.iter_mut().enumerate() {
            *acc = lane(out, i * o.cols + j0 + jj);
        }
    }
    for k in 0..o.inner {
        let ai = o.av.at(i, k);
        // A per-prompt lane of A is read once per k, for all J outputs (the loop is bound by
        // loads); B's lane is read where it is used.
        if A_SHARED {
            let x = o.a[ai];
            for (jj, acc) in acc.iter_mut().enumerate() {
                let bi = o.bv.at(k, j0 + jj);
                if B_SHARED {
                    let y = o.b[bi];
                    for a in acc.iter_mut() {
                        *a = x.mul_add(y, *a);
                    }
                } else {
                    let y = lane_ref(o.b, bi);
                    for w in 0..LANES {
                        acc[w] = x.mul_add(y[w], acc[w]);
                    }
                }
            }
        } else {
            let x = lane(o.a, ai);
            for (jj, acc) in acc.iter_mut().enumerate() {
                let bi = o.bv.at(k, j0 + jj);
                if B_SHARED {
                    let y = o.b[bi];
                    for w in 0..LANES {
                        acc[w] = x[w].mul_add(y, acc[w]);
                    }
                } else {
                    let y = lane_ref(o.b, bi);
                    for w in 0..LANES {
                        acc[w] = x[w].mul_add(y[w], acc[w]);
                    }
                }
            }
        }
    }
    for (jj, acc) in acc.iter().enumerate() {
        *lane_mut(out, i * o.cols + j0 + jj) = *acc;
    }
}

/// [`mm`] with the operands that are shared (one matrix for every prompt) fixed by name:
/// `mm_pp` both per prompt, `mm_sp` a shared A, `mm_ps` a shared B.
macro_rules! mm_of {
    ($name:ident, $shared_a:literal, $shared_b:literal) => {
        #[inline(always)]
        fn $name<T: Real>(
            out: &mut [T],
            a: &[T],
            av: View,
            b: &[T],
            bv: View,
            dims: (usize, usize, usize),
            acc: bool,
        ) {
            mm::<T, $shared_a, $shared_b>(out, a, av, b, bv, dims, acc)
        }
    };
}
mm_of!(mm_pp, false, false);
mm_of!(mm_sp, true, false);
mm_of!(mm_ps, false, true);

/// P̃ (scaled by 1/n) and Q̃ of every layer and head of one member, `[L, H, side, side]`,
/// and its MLP's parameters as they are (`w0 [h, d]`, `b0 [h]`, `w2 [d, h]`, `b2 [d]`).
#[derive(Debug, Default)]
struct Embedded<T> {
    pt: Vec<T>,
    qt: Vec<T>,
    mlp: Vec<T>,
}

impl<T: Real> Embedded<T> {
    fn set(&mut self, dims: &Dims, theta: &[T]) {
        let (s, k) = (dims.side, dims.pq());
        let scale = T::from_f64(1.0 / dims.context as f64);
        let zero = T::default();
        self.pt.clear();
        self.pt.resize(dims.layers * dims.heads * s * s, zero);
        self.qt.clear();
        self.qt.resize(dims.layers * dims.heads * s * s, zero);
        for lh in 0..dims.layers * dims.heads {
            let base = lh * 2 * k * k;
            for i in 0..k {
                for j in 0..k {
                    self.pt[lh * s * s + i * s + j] = theta[base + i * k + j] * scale;
                    self.qt[lh * s * s + i * s + j] = theta[base + k * k + i * k + j];
                }
            }
            if dims.restricted {
                self.pt[lh * s * s + (s - 1) * s + (s - 1)] = scale;
            }
        }
        self.mlp.clear();
        self.mlp
            .extend_from_slice(&theta[dims.attention_params()..dims.params()]);
    }
}

/// The result of one task, one member on one block of its stream: lane sums of ∂loss/∂P̃,
/// ∂loss/∂Q̃ (`[L, H, side, side, LANES]`), of ∂loss/∂(the MLP's parameters) (`[P_mlp, LANES]`)
/// and of the squared residuals.
#[derive(Debug, Default)]
struct Partial<T> {
    member: usize,
    stream: usize,
    block: usize,
    gpt: Vec<T>,
    gqt: Vec<T>,
    gmlp: Vec<T>,
    loss: Vec<T>,
}

impl<T: Real> Partial<T> {
    /// Zero sums for `member` on `block` of `stream`.
    fn reset(&mut self, dims: &Dims, (member, stream, block): (usize, usize, usize)) {
        (self.member, self.stream, self.block) = (member, stream, block);
        let lanes = dims.layers * dims.heads * dims.side * dims.side * LANES;
        for (t, len) in [
            (&mut self.gpt, lanes),
            (&mut self.gqt, lanes),
            (&mut self.gmlp, dims.mlp_params() * LANES),
            (&mut self.loss, LANES),
        ] {
            t.clear();
            t.resize(len, T::default());
        }
    }
}

/// One thread's working memory: per layer of one chunk G_l, R_l, q_l and A_{l,h} = G_l P̃_hᵀ,
/// and temporaries of side × side lanes.
#[derive(Debug, Default)]
struct Work<T> {
    g: Vec<T>,
    r: Vec<T>,
    q: Vec<T>,
    a: Vec<T>,
    t0: Vec<T>,
    t1: Vec<T>,
    gbar: Vec<T>,
    gbar_next: Vec<T>,
    rbar: Vec<T>,
    /// v_h = G p_h of the last layer, one column per head.
    v: Vec<T>,
    qbar: Vec<T>,
    qbar_next: Vec<T>,
    /// One chunk's prompts, transposed ([`load_chunk`]): tokens and prompt rows. With the MLP,
    /// `tokens` holds the mapped tokens `[n+1, side]`.
    tokens: Vec<T>,
    raw: Vec<T>,
    /// The MLP's hidden activations `[n+1, h]` and their gradient, its outputs `[n+1, d]`,
    /// and the tokens' gradient `[n+1, side]`.
    hidden: Vec<T>,
    hidden_bar: Vec<T>,
    mapped: Vec<T>,
    tokens_bar: Vec<T>,
    /// The teacher's hidden activations for one token of a chunk (`mlp_teacher` rows).
    teacher_hidden: Vec<T>,
    /// Softmax attention's per-chunk state.
    soft: softmax::Work<T>,
}

impl<T: Real> Work<T> {
    fn fit(&mut self, dims: &Dims) {
        let (l, h, s) = (dims.layers, dims.heads, dims.side);
        let m = s * s;
        let zero = T::default();
        self.g.resize(l * m * LANES, zero);
        self.r.resize(l * m * LANES, zero);
        self.q.resize(l * s * LANES, zero);
        self.a.resize(l * h * m * LANES, zero);
        for t in [
            &mut self.t0,
            &mut self.t1,
            &mut self.gbar,
            &mut self.gbar_next,
            &mut self.rbar,
        ] {
            t.resize(m * LANES, zero);
        }
        self.v.resize(h * s * LANES, zero);
        self.qbar.resize(s * LANES, zero);
        self.qbar_next.resize(s * LANES, zero);
        let (n1, width) = (dims.context + 1, dims.mlp_hidden);
        if width > 0 {
            self.tokens.resize(n1 * s * LANES, zero);
            self.hidden.resize(n1 * width * LANES, zero);
            self.hidden_bar.resize(n1 * width * LANES, zero);
            self.mapped.resize(n1 * (s - 1) * LANES, zero);
            self.tokens_bar.resize(n1 * s * LANES, zero);
        }
        if dims.softmax {
            self.soft.fit(dims);
        }
    }
}

/// Runs `job` on every task, the tasks split into contiguous groups, one per entry of
/// `works` (its working memory), on `pool`'s threads.
fn in_threads<W: Send, J: Send>(
    pool: Option<&rayon::ThreadPool>,
    works: &mut [W],
    tasks: &mut [J],
    job: impl Fn(&mut W, &mut J) + Sync,
) {
    let groups = works.len().min(tasks.len()).max(1);
    let per = tasks.len().div_ceil(groups).max(1);
    let job = &job;
    let jobs: Vec<_> = works
        .iter_mut()
        .zip(tasks.chunks_mut(per))
        .map(|(work, group)| move || group.iter_mut().for_each(|t| job(work, t)))
        .collect();
    run_all(pool, jobs);
}

/// The forward and backward pass of one member over one block of chunks of its stream.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn block<T: Real, const SIDE: usize>(
    dims: &Dims,
    params: &Embedded<T>,
    data: &Streams<T>,
    work: &mut Work<T>,
    part: &mut Partial<T>,
) {
    // SIDE > 0 is d + 1 known at compile time: the matrix loops unroll and lose their bounds
    // checks. SIDE = 0 reads it from dims. The passes below are inlined here, so they are
    // compiled with this function's target features and its constant side.
    let s = if SIDE > 0 { SIDE } else { dims.side };
    let net = Net {
        s,
        layers: dims.layers,
        heads: dims.heads,
        pt: &params.pt,
        qt: &params.qt,
    };
    let m = s * s;
    let two_inv_b = T::from_f64(2.0 / data.prompts as f64);
    let Partial {
        gpt,
        gqt,
        gmlp,
        loss,
        ..
    } = part;
    let loss: &mut Lane<T> = lane_mut(loss, 0);
    let mlp = (dims.mlp_hidden > 0).then(|| Front {
        side: s,
        context: dims.context,
        width: dims.mlp_hidden,
        params: &params.mlp,
    });
    let per_chunk = (dims.context + 1) * s * LANES;
    let first = part.block * BLOCK_CHUNKS;
    for c in first..data.chunks.min(first + BLOCK_CHUNKS) {
        let at = part.stream * data.chunks + c;
        let raw = data.tokens.get(at * per_chunk..(at + 1) * per_chunk);
        if let (Some(front), Some(raw)) = (&mlp, raw) {
            front.forward(raw, &mut work.tokens, &mut work.hidden, &mut work.mapped);
        }
        let y = lane(&data.target, at);
        // Padding prompts (past the batch's end) add nothing: with the MLP their tokens are not
        // zero (φ(0) = MLP biases), so their residual is masked here.
        let valid = LANES.min(data.prompts.saturating_sub(c * LANES));
        if dims.softmax {
            let z0: &[T] = match (&mlp, raw) {
                (Some(_), _) => &work.tokens,
                (None, raw) => raw.expect("softmax attention keeps the tokens"),
            };
            let soft = &mut work.soft;
            let out = softmax::forward(dims, s, params, z0, soft);
            let obar = residual(&out, &y, valid, two_inv_b, loss);
            softmax::backward(dims, s, params, &obar, soft, gpt, gqt);
            if let (Some(front), Some(raw)) = (&mlp, raw) {
                front.backward(raw, &work.hidden, &soft.zbar, &mut work.hidden_bar, gmlp);
            }
            continue;
        }
        match (&mlp, raw) {
            (Some(_), Some(_)) => {
                gram_and_query(s, dims.context, &work.tokens, &mut work.g, &mut work.q)
            }
            _ => {
                work.g[..m * LANES]
                    .copy_from_slice(&data.gram[at * m * LANES..(at + 1) * m * LANES]);
                work.q[..s * LANES]
                    .copy_from_slice(&data.query[at * s * LANES..(at + 1) * s * LANES]);
            }
        }
        net.forward_lower(work);
        let out = net.forward_top(work);
        let obar = residual(&out, &y, valid, two_inv_b, loss);
        net.backward_top(work, &obar, gpt, gqt);
        net.backward_lower(work, mlp.is_some(), gpt, gqt);
        // Now Ḡ₀ and q̄₀: back through the Gram matrix to the tokens, and through the MLP.
        if let (Some(front), Some(raw)) = (&mlp, raw) {
            tokens_from_gram(s, dims.context, work);
            front.backward(
                raw,
                &work.hidden,
                &work.tokens_bar,
                &mut work.hidden_bar,
                gmlp,
            );
        }
    }
}

/// What the passes of linear attention over one chunk read: the side s = d + 1, the depth,
/// the heads and the embedded parameters P̃ and Q̃ (`[L·H, s, s]` each). Each pass is inlined
/// into [`block`].
struct Net<'a, T> {
    s: usize,
    layers: usize,
    heads: usize,
    pt: &'a [T],
    qt: &'a [T],
}

impl<T: Real> Net<'_, T> {
    /// P̃_h of layer and head `lh` (`lh = l·H + h`), s × s.
    #[inline(always)]
    fn p(&self, lh: usize) -> &[T] {
        let m = self.s * self.s;
        &self.pt[lh * m..(lh + 1) * m]
    }

    /// Q̃_h of layer and head `lh`, s × s.
    #[inline(always)]
    fn q(&self, lh: usize) -> &[T] {
        let m = self.s * self.s;
        &self.qt[lh * m..(lh + 1) * m]
    }

    /// Forward through the layers before the last: A_h = G P̃_hᵀ, R = I + Σ_h Q̃_h A_h, then
    /// the next layer's Gram matrix Rᵀ G R and query q R.
    #[inline(always)]
    fn forward_lower(&self, w: &mut Work<T>) {
        let (s, heads) = (self.s, self.heads);
        let m = s * s;
        let (plain, trans) = (View::plain(s), View::transposed(s));
        let row_vec = View { row: 0, col: 1 };
        for l in 0..self.layers - 1 {
            let (g_now, g_rest) = w.g[l * m * LANES..].split_at_mut(m * LANES);
            let r_l = &mut w.r[l * m * LANES..(l + 1) * m * LANES];
            for h in 0..heads {
                let lh = l * heads + h;
                let a_lh = &mut w.a[lh * m * LANES..(lh + 1) * m * LANES];
                mm_ps(a_lh, g_now, plain, self.p(lh), trans, (s, s, s), false);
                mm_sp(r_l, self.q(lh), plain, a_lh, plain, (s, s, s), h > 0);
            }
            for i in 0..s {
                for v in lane_mut(r_l, i * s + i).iter_mut() {
                    *v += T::from_f64(1.0);
                }
            }
            let t0 = &mut w.t0;
            mm_pp(t0, g_now, plain, r_l, plain, (s, s, s), false); // G R
            let g_next = &mut g_rest[..m * LANES];
            mm_pp(g_next, r_l, trans, t0, plain, (s, s, s), false); // Rᵀ G R
            let (q_now, q_rest) = w.q[l * s * LANES..].split_at_mut(s * LANES);
            let q_next = &mut q_rest[..s * LANES];
            mm_pp(q_next, q_now, row_vec, r_l, plain, (1, s, s), false); // q R
        }
    }

    /// The last layer's output: only column d of R is needed, from v_h = G p_h (p_h = row d
    /// of P̃_h); the column is left in `t0[..s]` and v_h in `v` for the backward pass.
    #[inline(always)]
    fn forward_top(&self, w: &mut Work<T>) -> Lane<T> {
        let s = self.s;
        let (m, d) = (s * s, s - 1);
        let zero = T::default();
        let plain = View::plain(s);
        let column = View { row: 1, col: 0 };
        let l = self.layers - 1;
        let g_last = &w.g[l * m * LANES..(l + 1) * m * LANES];
        let q_last = &w.q[l * s * LANES..(l + 1) * s * LANES];
        let col = &mut w.t0[..s * LANES];
        for (i, v) in col.chunks_exact_mut(LANES).enumerate() {
            v.fill(if i == d { T::from_f64(1.0) } else { zero });
        }
        for h in 0..self.heads {
            let lh = l * self.heads + h;
            let v_h = &mut w.v[h * s * LANES..(h + 1) * s * LANES];
            let p_row = &self.p(lh)[d * s..(d + 1) * s];
            mm_ps(v_h, g_last, plain, p_row, column, (s, s, 1), false);
            mm_sp(col, self.q(lh), plain, v_h, column, (s, s, 1), true);
        }
        let mut out: Lane<T> = [zero; LANES];
        for i in 0..s {
            let (qi, ci) = (lane(q_last, i), lane(col, i));
            for k in 0..LANES {
                out[k] += qi[k] * ci[k];
            }
        }
        out
    }

    /// Backward through the last layer from ō: q̄ = ō·col, r̄ = ō·q (column d of R̄), then
    /// Q̃̄_h, P̃̄_h's row d and Ḡ.
    #[inline(always)]
    fn backward_top(&self, w: &mut Work<T>, obar: &Lane<T>, gpt: &mut [T], gqt: &mut [T]) {
        let s = self.s;
        let (m, d) = (s * s, s - 1);
        let zero = T::default();
        let (plain, trans) = (View::plain(s), View::transposed(s));
        let column = View { row: 1, col: 0 };
        let row_vec = View { row: 0, col: 1 };
        let l = self.layers - 1;
        let g_last = &w.g[l * m * LANES..(l + 1) * m * LANES];
        let q_last = &w.q[l * s * LANES..(l + 1) * s * LANES];
        let col = &w.t0[..s * LANES];
        let rbar_col = &mut w.rbar[..s * LANES];
        for i in 0..s {
            let (qi, ci) = (lane(q_last, i), lane(col, i));
            let (qb, rb) = (lane_mut(&mut w.qbar, i), &mut [zero; LANES]);
            for k in 0..LANES {
                qb[k] = obar[k] * ci[k];
                rb[k] = obar[k] * qi[k];
            }
            *lane_mut(rbar_col, i) = *rb;
        }
        w.gbar.fill(zero);
        for h in 0..self.heads {
            let lh = l * self.heads + h;
            let v_h = &w.v[h * s * LANES..(h + 1) * s * LANES];
            // Q̃̄_h += r̄ v_hᵀ.
            let gq = &mut gqt[lh * m * LANES..(lh + 1) * m * LANES];
            mm_pp(gq, rbar_col, column, v_h, row_vec, (s, 1, s), true);
            // v̄_h = Q̃_hᵀ r̄ (qbar_next is free until the layers below).
            let vbar = &mut w.qbar_next[..s * LANES];
            mm_sp(vbar, self.q(lh), trans, rbar_col, column, (s, s, 1), false);
            // Ḡ += v̄ p_hᵀ; P̃̄_h[d, :] += (G v̄)ᵀ.
            let p_row = &self.p(lh)[d * s..(d + 1) * s];
            mm_ps(&mut w.gbar, vbar, column, p_row, row_vec, (s, 1, s), true);
            let gp_row = &mut gpt[(lh * m + d * s) * LANES..(lh * m + (d + 1) * s) * LANES];
            mm_pp(gp_row, vbar, row_vec, g_last, plain, (1, s, s), true);
        }
    }

    /// Backward through the layers before the last, from the top, leaving Ḡ₀ in `gbar` and
    /// q̄₀ in `qbar` (Ḡ₀ only when `mlp`: the MLP below needs it).
    #[inline(always)]
    fn backward_lower(&self, w: &mut Work<T>, mlp: bool, gpt: &mut [T], gqt: &mut [T]) {
        let (s, heads) = (self.s, self.heads);
        let m = s * s;
        let (plain, trans) = (View::plain(s), View::transposed(s));
        let column = View { row: 1, col: 0 };
        let row_vec = View { row: 0, col: 1 };
        for l in (0..self.layers - 1).rev() {
            let Work {
                g,
                r,
                q,
                a,
                t0,
                t1,
                gbar,
                gbar_next,
                rbar,
                qbar,
                qbar_next,
                ..
            } = &mut *w;
            let g_l = &g[l * m * LANES..(l + 1) * m * LANES];
            let r_l = &r[l * m * LANES..(l + 1) * m * LANES];
            let q_l = &q[l * s * LANES..(l + 1) * s * LANES];
            // R̄ = q_lᵀ q̄ + G R (Ḡ + Ḡᵀ).
            mm_pp(t0, g_l, plain, r_l, plain, (s, s, s), false); // G R
            symmetric_sum(s, gbar, t1);
            mm_pp(rbar, t0, plain, t1, plain, (s, s, s), false);
            mm_pp(rbar, q_l, column, qbar, row_vec, (s, 1, s), true);
            // q̄_l = q̄ Rᵀ.
            mm_pp(qbar_next, qbar, row_vec, r_l, trans, (1, s, s), false);
            // Ḡ_l = R Ḡ Rᵀ + Σ_h Q̃_hᵀ R̄ P̃_h (needed at layer 0 only for the MLP below).
            let below = l > 0 || mlp;
            if below {
                mm_pp(t0, r_l, plain, gbar, plain, (s, s, s), false);
                mm_pp(gbar_next, t0, plain, r_l, trans, (s, s, s), false);
            }
            for h in 0..heads {
                let lh = l * heads + h;
                let a_lh = &a[lh * m * LANES..(lh + 1) * m * LANES];
                // Q̃̄_h += R̄ A_hᵀ.
                let gq = &mut gqt[lh * m * LANES..(lh + 1) * m * LANES];
                mm_pp(gq, rbar, plain, a_lh, trans, (s, s, s), true);
                // W_h = Q̃_hᵀ R̄; P̃̄_h += W_hᵀ G; Ḡ_l += W_h P̃_h.
                mm_sp(t1, self.q(lh), trans, rbar, plain, (s, s, s), false);
                let gp = &mut gpt[lh * m * LANES..(lh + 1) * m * LANES];
                mm_pp(gp, t1, trans, g_l, plain, (s, s, s), true);
                if below {
                    mm_ps(gbar_next, t1, plain, self.p(lh), plain, (s, s, s), true);
                }
            }
            std::mem::swap(gbar, gbar_next);
            std::mem::swap(qbar, qbar_next);
        }
    }
}

/// Adds the chunk's squared residuals `(out + y)²` to `loss` and returns ∂loss/∂out, for the
/// first `valid` lanes (zero on padding prompts).
#[inline(always)]
fn residual<T: Real>(
    out: &Lane<T>,
    y: &Lane<T>,
    valid: usize,
    two_inv_b: T,
    loss: &mut Lane<T>,
) -> Lane<T> {
    let mut obar: Lane<T> = [T::default(); LANES];
    for w in 0..valid {
        let res = out[w] + y[w];
        loss[w] += res * res;
        obar[w] = two_inv_b * res;
    }
    obar
}

/// `out = A + Aᵀ` for per-prompt `s × s` matrices: the gradient that reaches a Gram matrix's
/// factors (G = Σ z zᵀ is symmetric in them).
#[inline(always)]
fn symmetric_sum<T: Real>(s: usize, a: &[T], out: &mut [T]) {
    for i in 0..s {
        for j in 0..s {
            let (x, y) = (lane(a, i * s + j), lane(a, j * s + i));
            let o = lane_mut(out, i * s + j);
            for w in 0..LANES {
                o[w] = x[w] + y[w];
            }
        }
    }
}

/// The tokens' gradient `tokens_bar [n+1, s]` from `Ḡ₀` (`gbar`) and `q̄₀` (`qbar`; linear
/// attention reads the tokens only through them): `z̄_t = (Ḡ₀ + Ḡ₀ᵀ) z_t` for the context
/// tokens and `z̄_n = q̄₀`; `t1` is working memory.
#[inline(always)]
fn tokens_from_gram<T: Real>(s: usize, n: usize, w: &mut Work<T>) {
    symmetric_sum(s, &w.gbar, &mut w.t1);
    let plain = View::plain(s);
    mm_pp(
        &mut w.tokens_bar,
        &w.tokens,
        plain,
        &w.t1,
        plain,
        (n, s, s),
        false,
    );
    w.tokens_bar[n * s * LANES..(n + 1) * s * LANES].copy_from_slice(&w.qbar[..s * LANES]);
}

/// The MLP front end of App. B on one chunk: `φ(x) = W₂ relu(W₀ x + b₀) + b₂` replaces the
/// covariates of every token (`params`: `w0 [h, d]`, `b0 [h]`, `w2 [d, h]`, `b2 [d]`).
struct Front<'a, T> {
    side: usize,
    context: usize,
    width: usize,
    params: &'a [T],
}

impl<T: Real> Front<'_, T> {
    /// Offsets of `w0`, `b0`, `w2`, `b2` in the MLP's parameters.
    fn offsets(&self) -> [usize; 4] {
        let (d, h) = (self.side - 1, self.width);
        [0, h * d, h * d + h, 2 * h * d + h]
    }

    /// `tokens [n+1, side]` from the chunk's `raw` tokens: φ of the covariates, the label
    /// column as it is; `hidden [n+1, h]` keeps relu(W₀ x + b₀) for the backward pass.
    #[inline(always)]
    fn forward(&self, raw: &[T], tokens: &mut [T], hidden: &mut [T], mapped: &mut [T]) {
        let (s, n1, h) = (self.side, self.context + 1, self.width);
        let d = s - 1;
        let [w0, b0, w2, b2] = self.offsets();
        let p = self.params;
        mm_ps(
            hidden,
            raw,
            View::plain(s),
            &p[w0..],
            View { row: 1, col: d },
            (n1, d, h),
            false,
        );
        for t in 0..n1 {
            for j in 0..h {
                let x = lane_mut(hidden, t * h + j);
                for v in x.iter_mut() {
                    let pre = *v + p[b0 + j];
                    *v = if pre.positive() { pre } else { T::default() };
                }
            }
        }
        mm_ps(
            mapped,
            hidden,
            View::plain(h),
            &p[w2..],
            View { row: 1, col: h },
            (n1, h, d),
            false,
        );
        for t in 0..n1 {
            for a in 0..d {
                let phi = lane(mapped, t * d + a);
                let out = lane_mut(tokens, t * s + a);
                for w in 0..LANES {
                    out[w] = phi[w] + p[b2 + a];
                }
            }
            *lane_mut(tokens, t * s + d) = lane(raw, t * s + d);
        }
    }

    /// Adds the chunk's ∂loss/∂(w0, b0, w2, b2) to `grad [P_mlp, LANES]`, from the mapped
    /// tokens' gradient `tokens_bar [n+1, side]`; `hidden_bar` is working memory.
    #[inline(always)]
    fn backward(
        &self,
        raw: &[T],
        hidden: &[T],
        tokens_bar: &[T],
        hidden_bar: &mut [T],
        grad: &mut [T],
    ) {
        let (s, n, h) = (self.side, self.context, self.width);
        let d = s - 1;
        let [w0, b0, w2, b2] = self.offsets();
        let p = self.params;
        let plain = View::plain(s);
        // w2̄ += Φ̄ᵀ H, b2̄ += Σ_t Φ̄_t (Φ̄: the first d columns of z̄).
        let column_major = View { row: 1, col: s };
        mm_pp(
            &mut grad[w2 * LANES..b2 * LANES],
            tokens_bar,
            column_major,
            hidden,
            View::plain(h),
            (d, n + 1, h),
            true,
        );
        for t in 0..=n {
            for a in 0..d {
                let x = lane(tokens_bar, t * s + a);
                let o = lane_mut(grad, b2 + a);
                for w in 0..LANES {
                    o[w] += x[w];
                }
            }
        }
        // H̄ = Φ̄ W₂, zero where ReLU cut; w0̄ += H̄ᵀ X, b0̄ += Σ_t H̄_t.
        mm_ps(
            hidden_bar,
            tokens_bar,
            plain,
            &p[w2..],
            View::plain(h),
            (n + 1, d, h),
            false,
        );
        for t in 0..=n {
            for j in 0..h {
                let (act, o) = (lane(hidden, t * h + j), lane_mut(hidden_bar, t * h + j));
                // A new lane from values already loaded: written as a store where ReLU cut
                // (or as a select of o's own entries), LLVM made it a branch per prompt, a
                // third of the MLP variant's step.
                let kept: Lane<T> = std::array::from_fn(|w| {
                    if act[w].positive() {
                        o[w]
                    } else {
                        T::default()
                    }
                });
                *o = kept;
                let g = lane_mut(grad, b0 + j);
                for w in 0..LANES {
                    g[w] += o[w];
                }
            }
        }
        mm_pp(
            &mut grad[w0 * LANES..b0 * LANES],
            hidden_bar,
            View { row: 1, col: h },
            raw,
            plain,
            (h, n + 1, d),
            true,
        );
    }
}

/// The tangent count as the optimiser sees it: hidden (`black_box`), so that each loop over a
/// [`Dual`]'s tangents stays a loop, vectorised across the tangents. With the count known, LLVM
/// unrolls those loops and vectorises the kernel's loops over prompts around them instead,
/// every tangent a gather and a scatter at the struct's stride: the MLP variant's Hessian
/// took twice as long (a micro-benchmark of the lane loop: 4.9 against 10.2 GFLOP/s). The
/// arithmetic is the same either way (one fused multiply-add per tangent, in one order).
#[inline(always)]
fn tangents<const N: usize>() -> usize {
    std::hint::black_box(N).min(N)
}

/// A number carrying N tangents: forward-mode derivatives along N directions at once. The
/// kernel run on it computes, beside the gradient, the gradient's derivative along each
/// direction: N Hessian-vector products in one pass, exact (no finite differences).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dual<T, const N: usize> {
    pub v: T,
    pub t: [T; N],
}

impl<T: Real, const N: usize> Default for Dual<T, N> {
    fn default() -> Self {
        Dual {
            v: T::default(),
            t: [T::default(); N],
        }
    }
}

impl<T: Real, const N: usize> Add for Dual<T, N> {
    type Output = Self;
    #[inline(always)]
    fn add(mut self, o: Self) -> Self {
        self += o;
        self
    }
}

impl<T: Real, const N: usize> AddAssign for Dual<T, N> {
    #[inline(always)]
    fn add_assign(&mut self, o: Self) {
        self.v += o.v;
        for i in 0..tangents::<N>() {
            self.t[i] += o.t[i];
        }
    }
}

impl<T: Real, const N: usize> Sub for Dual<T, N> {
    type Output = Self;
    #[inline(always)]
    fn sub(mut self, o: Self) -> Self {
        self.v = self.v - o.v;
        for i in 0..tangents::<N>() {
            self.t[i] = self.t[i] - o.t[i];
        }
        self
    }
}

// The index loops below are what the compiler vectorises; `std::array::from_fn` made the
// forward-mode Hessian 1.5× slower (a Setting 1 Hessian: 321 → 495 ms).
impl<T: Real, const N: usize> Mul for Dual<T, N> {
    type Output = Self;
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn mul(self, o: Self) -> Self {
        let mut t = [T::default(); N];
        for i in 0..tangents::<N>() {
            t[i] = self.v.mul_add(o.t[i], self.t[i] * o.v);
        }
        Dual { v: self.v * o.v, t }
    }
}

impl<T: Real, const N: usize> Real for Dual<T, N> {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        let mut t = [T::default(); N];
        for i in 0..tangents::<N>() {
            t[i] = self.v.mul_add(a.t[i], self.t[i].mul_add(a.v, b.t[i]));
        }
        Dual {
            v: self.v.mul_add(a.v, b.v),
            t,
        }
    }
    #[inline(always)]
    fn positive(self) -> bool {
        self.v.positive()
    }
    #[inline(always)]
    fn exp(self) -> Self {
        let e = self.v.exp();
        Dual {
            v: e,
            t: self.t.map(|t| t * e),
        }
    }
    #[inline(always)]
    fn recip(self) -> Self {
        let r = self.v.recip();
        let zero = T::default();
        Dual {
            v: r,
            t: self.t.map(|t| zero - t * r * r),
        }
    }
    fn from_f64(x: f64) -> Self {
        Dual {
            v: T::from_f64(x),
            t: [T::default(); N],
        }
    }
    fn to_f64(self) -> f64 {
        self.v.to_f64()
    }
}

/// The gradient of one member's mean loss at one point, and its derivatives along up to
/// [`TANGENTS`] directions per pass: forward mode over the closed-form gradient. The data's
/// Gram matrices are formed once for all passes.
struct ForwardMode<T: Real> {
    dims: Dims,
    theta: Vec<T>,
    streams: Streams<Dual<T, TANGENTS>>,
    works: Vec<Work<Dual<T, TANGENTS>>>,
    pool: Option<rayon::ThreadPool>,
    parts: Vec<Partial<Dual<T, TANGENTS>>>,
    embedded: Embedded<Dual<T, TANGENTS>>,
    grad: Vec<Dual<T, TANGENTS>>,
}

impl<T: Real> ForwardMode<T> {
    /// At `theta [P]` on one batch, `z [B, n+1, d+1]` and `y_query [B]`.
    fn new(dims: &Dims, theta: &[T], z: &[T], y_query: &[T], threads: usize) -> Self {
        assert_eq!(
            theta.len(),
            dims.params(),
            "theta must hold one member's allparam"
        );
        let constant = |x: &[T]| -> Vec<Dual<T, TANGENTS>> {
            x.iter()
                .map(|&v| Dual {
                    v,
                    t: [T::default(); TANGENTS],
                })
                .collect()
        };
        let (z, y_query) = (constant(z), constant(y_query));
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .ok()
            })
            .flatten();
        let mut works: Vec<Work<_>> = (0..threads.max(1)).map(|_| Work::default()).collect();
        works.iter_mut().for_each(|w| w.fit(dims));
        let mut streams = Streams::default();
        let source = Source::Tokens {
            z: &z,
            y_query: &y_query,
        };
        streams.load(dims, source, 1, &mut works, pool.as_ref());
        let blocks = streams.chunks.div_ceil(BLOCK_CHUNKS);
        ForwardMode {
            dims: *dims,
            theta: theta.to_vec(),
            streams,
            works,
            pool,
            parts: (0..blocks).map(|_| Partial::default()).collect(),
            embedded: Embedded::default(),
            grad: vec![Dual::default(); dims.params()],
        }
    }

    /// One pass: tangent c of parameter i is `seed(i, c)`; returns the gradient, whose tangent
    /// c is H·u_c.
    fn pass(&mut self, seed: impl Fn(usize, usize) -> T) -> &[Dual<T, TANGENTS>] {
        let dims = &self.dims;
        let seeded: Vec<Dual<T, TANGENTS>> = self
            .theta
            .iter()
            .enumerate()
            .map(|(i, &v)| Dual {
                v,
                t: std::array::from_fn(|c| seed(i, c)),
            })
            .collect();
        self.embedded.set(dims, &seeded);
        for (b, part) in self.parts.iter_mut().enumerate() {
            part.reset(dims, (0, 0, b));
        }
        let (embedded, streams) = (&self.embedded, &self.streams);
        in_threads(
            self.pool.as_ref(),
            &mut self.works,
            &mut self.parts,
            |work, part| block_of_side(dims, embedded, streams, work, part),
        );
        reduce(dims, &self.parts, self.streams.prompts, &mut self.grad);
        &self.grad
    }
}

/// Hessian-vector products per pass of [`ForwardMode`]: 8 float32 tangents fill one 256-bit
/// register.
const TANGENTS: usize = 8;

/// The exact Hessian `[P, P]` (row-major) of the mean loss of one member at `theta` on one
/// batch (`z [B, n+1, d+1]`, `y_query [B]`): ⌈P / 8⌉ forward-mode passes, each giving 8 rows.
pub fn hessian<T: Real>(
    dims: &Dims,
    theta: &[T],
    z: &[T],
    y_query: &[T],
    threads: usize,
) -> Vec<T> {
    let p = dims.params();
    let mut fm = ForwardMode::new(dims, theta, z, y_query, threads);
    let mut h = vec![T::default(); p * p];
    for first in (0..p).step_by(TANGENTS) {
        let one = T::from_f64(1.0);
        let grad = fm.pass(|i, c| if i == first + c { one } else { T::default() });
        for (j, g) in grad.iter().enumerate() {
            for c in 0..TANGENTS.min(p - first) {
                h[(first + c) * p + j] = g.t[c];
            }
        }
    }
    h
}

/// H·u `[P]` at `theta` on one batch, in one forward-mode pass.
pub fn hvp<T: Real>(
    dims: &Dims,
    theta: &[T],
    z: &[T],
    y_query: &[T],
    u: &[T],
    threads: usize,
) -> Vec<T> {
    assert_eq!(u.len(), dims.params(), "u must hold one member's allparam");
    let mut fm = ForwardMode::new(dims, theta, z, y_query, threads);
    let grad = fm.pass(|i, c| if c == 0 { u[i] } else { T::default() });
    grad.iter().map(|g| g.t[0]).collect()
}

/// [`block`] with the side known at compile time where it is one of the paper's (d = 5, and
/// the large model's d = 20) and `T` asks for it ([`Real::UNROLL_PAPER`]). The tests on the
/// constants come first, so that a type without the copy never instantiates it.
fn block_of_side<T: Real>(
    dims: &Dims,
    params: &Embedded<T>,
    data: &Streams<T>,
    work: &mut Work<T>,
    part: &mut Partial<T>,
) {
    if T::UNROLL_PAPER && dims.side == 6 {
        block::<T, 6>(dims, params, data, work, part)
    } else if T::UNROLL_LARGE && dims.side == 21 {
        block::<T, 21>(dims, params, data, work, part)
    } else {
        block::<T, 0>(dims, params, data, work, part)
    }
}

/// The Hessian `[P, P]` of the mean loss at `flat [P]` on `batch` (`z [B, n+1, d+1]`) by
/// [`hessian`], in the dtype of `flat`; `None` where the kernel does not compute `arch` (or the
/// dtype is neither float32 nor float64).
pub fn hessian_tensor(
    arch: &super::Arch,
    flat: &Tensor,
    batch: &Batch,
    threads: usize,
) -> Option<Tensor> {
    let dims = Dims::of(arch)?;
    let p = dims.params() as i64;
    on_host(flat, &[flat, &batch.z, &batch.y_query], |v| match v {
        Host2::F32(v) => Tensor::from_slice(&hessian(&dims, &v[0], &v[1], &v[2], threads)),
        Host2::F64(v) => Tensor::from_slice(&hessian(&dims, &v[0], &v[1], &v[2], threads)),
    })
    .map(|h| h.view([p, p]))
}

/// H·u `[P]` at `flat [P]` on `batch` by [`hvp`]; `None` as for [`hessian_tensor`].
pub fn hvp_tensor(
    arch: &super::Arch,
    flat: &Tensor,
    batch: &Batch,
    u: &Tensor,
    threads: usize,
) -> Option<Tensor> {
    let dims = Dims::of(arch)?;
    let u = u.to_kind(flat.kind());
    on_host(flat, &[flat, &batch.z, &batch.y_query, &u], |v| match v {
        Host2::F32(v) => Tensor::from_slice(&hvp(&dims, &v[0], &v[1], &v[2], &v[3], threads)),
        Host2::F64(v) => Tensor::from_slice(&hvp(&dims, &v[0], &v[1], &v[2], &v[3], threads)),
    })
}

/// Tensors copied to host vectors in the dtype of `like`.
enum Host2 {
    F32(Vec<Vec<f32>>),
    F64(Vec<Vec<f64>>),
}

fn on_host(like: &Tensor, tensors: &[&Tensor], f: impl FnOnce(Host2) -> Tensor) -> Option<Tensor> {
    fn read<T: Real + tch::kind::Element>(tensors: &[&Tensor], kind: Kind) -> Vec<Vec<T>> {
        tensors
            .iter()
            .map(|t| {
                let t = t.detach().to_device(Device::Cpu).to_kind(kind).contiguous();
                let mut v = vec![T::default(); t.numel()];
                t.copy_data(&mut v, t.numel());
                v
            })
            .collect()
    }
    let out = match like.kind() {
        Kind::Float => f(Host2::F32(read(tensors, Kind::Float))),
        Kind::Double => f(Host2::F64(read(tensors, Kind::Double))),
        _ => return None,
    };
    Some(out.to_device(like.device()))
}

/// The kernel behind fast mode's stepper on a CPU: host buffers kept between steps, the
/// batch and parameters read from libtorch tensors, the losses and gradients handed back as
/// tensors.
pub struct NativeFast {
    dims: Dims,
    members: usize,
    /// The kernel's threads when it has more than one (not libtorch's, which stay as set).
    pool: Option<rayon::ThreadPool>,
    state: Buffers,
}

/// A step's data: a batch of tensors, or the prompt rows drawn on the host.
enum Input<'a> {
    Batch(&'a Batch),
    Rows(&'a HostRows<'a>),
}

enum Buffers {
    F32(Host<f32>),
    F64(Host<f64>),
}

/// Everything a step needs, in one float type.
#[derive(Default)]
struct Host<T> {
    z: Vec<T>,
    y: Vec<T>,
    /// The teacher's parameters in `T` (`mlp_teacher` rows).
    teacher: Vec<T>,
    theta: Vec<T>,
    grad: Vec<T>,
    losses: Vec<T>,
    streams: Streams<T>,
    embedded: Vec<Embedded<T>>,
    partials: Vec<Partial<T>>,
    works: Vec<Work<T>>,
}

impl<T: Real + tch::kind::Element> Host<T> {
    /// Reads a batch's tensors (z, y_query) into host buffers, and host rows that are not
    /// already in `T`.
    fn read(&mut self, input: &Input) {
        let zero = T::default();
        match input {
            Input::Batch(b) => {
                let tensors = [b.z.contiguous(), b.y_query.contiguous()];
                for (buf, t) in [&mut self.z, &mut self.y].into_iter().zip(&tensors) {
                    buf.resize(t.numel(), zero);
                    t.copy_data(buf, t.numel());
                }
            }
            Input::Rows(r) => {
                if T::borrow_f32(r.rows).is_none() {
                    self.z.clear();
                    self.z.extend(r.rows.iter().map(|&v| T::from_f64(v as f64)));
                }
                self.teacher.clear();
                if let Some(t) = &r.teacher {
                    let params = t.params.iter();
                    self.teacher.extend(params.map(|&v| T::from_f64(v as f64)));
                }
            }
        }
    }

    fn step(
        &mut self,
        dims: &Dims,
        pool: Option<&rayon::ThreadPool>,
        theta: &Tensor,
        input: &Input,
        rows: &[usize],
    ) -> (Tensor, Tensor) {
        let threads = pool.map_or(1, |p| p.current_num_threads());
        let (members, p) = (rows.len(), dims.params());
        let zero = T::default();
        self.read(input);
        self.theta.resize(members * p, zero);
        self.grad.resize(members * p, zero);
        self.losses.resize(members, zero);
        theta
            .detach()
            .contiguous()
            .copy_data(&mut self.theta, members * p);
        self.works.resize_with(threads, Work::default);
        self.works.iter_mut().for_each(|w| w.fit(dims));
        let (streams, source) = match input {
            Input::Batch(b) => (
                b.z.size()[0] as usize,
                Source::Tokens {
                    z: &self.z,
                    y_query: &self.y,
                },
            ),
            Input::Rows(r) => (
                r.streams,
                Source::Rows {
                    rows: T::borrow_f32(r.rows).unwrap_or(&self.z),
                    prompts: r.prompts,
                    teacher: r.teacher.map(|t| (&self.teacher[..], t.hidden)),
                },
            ),
        };
        self.streams
            .load(dims, source, streams, &mut self.works, pool);
        self.embedded.resize_with(members, Embedded::default);
        for (k, e) in self.embedded.iter_mut().enumerate() {
            e.set(dims, &self.theta[k * p..(k + 1) * p]);
        }
        let blocks = self.streams.chunks.div_ceil(BLOCK_CHUNKS);
        self.partials
            .resize_with(members * blocks, Partial::default);
        for (i, part) in self.partials.iter_mut().enumerate() {
            let member = i / blocks;
            part.reset(dims, (member, rows[member], i % blocks));
        }
        let (data, embedded) = (&self.streams, &self.embedded);
        in_threads(pool, &mut self.works, &mut self.partials, |work, part| {
            block_of_side(dims, &embedded[part.member], data, work, part)
        });
        for k in 0..members {
            let parts = &self.partials[k * blocks..(k + 1) * blocks];
            self.losses[k] = reduce(
                dims,
                parts,
                self.streams.prompts,
                &mut self.grad[k * p..(k + 1) * p],
            );
        }
        (
            Tensor::from_slice(&self.losses),
            Tensor::from_slice(&self.grad).view([members as i64, p as i64]),
        )
    }
}

/// One member's loss (the mean over its `prompts`) and gradient `[P]` from its blocks' partial sums: the blocks in order,
/// then the lanes in order; P̃̄ and Q̃̄ back to the learned P and Q (P̃ = embed(P)/n).
fn reduce<T: Real>(dims: &Dims, parts: &[Partial<T>], prompts: usize, grad: &mut [T]) -> T {
    let (s, k) = (dims.side, dims.pq());
    let m = s * s;
    let zero = T::default();
    let scale = T::from_f64(1.0 / dims.context as f64);
    let sum = |pick: &dyn Fn(&Partial<T>) -> &[T], i: usize| {
        let mut acc: Lane<T> = [zero; LANES];
        for part in parts {
            let l = lane(pick(part), i);
            for w in 0..LANES {
                acc[w] += l[w];
            }
        }
        let mut total = zero;
        for v in acc {
            total += v;
        }
        total
    };
    for lh in 0..dims.layers * dims.heads {
        let base = lh * 2 * k * k;
        for i in 0..k {
            for j in 0..k {
                grad[base + i * k + j] = sum(&|p| &p.gpt, lh * m + i * s + j) * scale;
                grad[base + k * k + i * k + j] = sum(&|p| &p.gqt, lh * m + i * s + j);
            }
        }
    }
    let first = dims.attention_params();
    for i in 0..dims.mlp_params() {
        grad[first + i] = sum(&|p| &p.gmlp, i);
    }
    sum(&|p| &p.loss, 0) * T::from_f64(1.0 / prompts as f64)
}

/// The floating-point operations of one training step of the kernel: `members` members on
/// `streams` streams of `prompts` prompts each (a multiply-add counts two). It counts what the
/// algorithm of this module does (docs/performance.md), not what a cleverer one would need.
pub fn flops_per_step(dims: &Dims, prompts: usize, members: usize, streams: usize) -> f64 {
    let (l, h, s, n) = (
        dims.layers as f64,
        dims.heads as f64,
        dims.side as f64,
        dims.context as f64,
    );
    let (s2, s3) = (s * s, s * s * s);
    // Per stream and prompt: y = x·w for n + 1 tokens, G₀'s upper triangle.
    // (With the MLP, G₀ is each member's: counted below; softmax attention has none.)
    let data = if dims.keeps_tokens() {
        0.0
    } else {
        (n + 1.0) * (s - 1.0) + n * s * (s + 1.0) / 2.0
    };
    // Per member and prompt: the layers before the last, forward (A_h, T, G R, Rᵀ(G R), q R)
    // and backward (G R, R̄, q̄, R Ḡ Rᵀ above layer 0, and per head Q̄, W, P̄, Ḡ);
    // the last layer's column of R, forward and backward.
    let mid_forward = (l - 1.0) * (h * 2.0 * s3 + 2.0 * s3 + s2);
    let mid_backward =
        (l - 1.0) * (2.0 * s3 + 2.0 * s2 + h * 3.0 * s3) + (l - 2.0).max(0.0) * (2.0 * s3 + h * s3);
    let last = h * 2.0 * s2 + s + h * 4.0 * s2 + 2.0 * s;
    // The MLP front end per member and prompt: its forward on n + 1 tokens (two products) and
    // G₀, then z̄ = (Ḡ₀ + Ḡ₀ᵀ) z and three products back.
    let width = dims.mlp_hidden as f64;
    let gram = if dims.softmax {
        0.0
    } else {
        n * s * (s + 1.0) / 2.0 + n * s2
    };
    let mlp = if width > 0.0 {
        let product = (n + 1.0) * width * (s - 1.0);
        2.0 * product + gram + 3.0 * product
    } else {
        0.0
    };
    let attention = if dims.softmax {
        // Per head of a layer before the last: U, S, V, Π M V forward; Π̄, V̄, Ū, S̄ᵀU, ŪQ̃ᵀ,
        // V̄P̃, Q̃̄, P̃̄ and U, V again backward (a multiply-add counts two, below).
        let n1 = n + 1.0;
        let (ns2, n2s) = (n1 * s2, n1 * n1 * s);
        let forward = 2.0 * ns2 + n2s + n * n1 * s;
        let backward = 4.0 * ns2 + 3.0 * n2s + n * n1 * s + 2.0 * n * s2;
        // The last layer: u, the query's scores, v, and their backward.
        let last = h * (s2 + 2.0 * n1 * s + n) + h * (3.0 * n1 * s + 2.0 * s2 + n1 * s);
        (l - 1.0) * h * (forward + backward) + last
    } else {
        mid_forward + mid_backward + last
    };
    let per_member = attention + mlp;
    2.0 * prompts as f64 * (streams as f64 * data + members as f64 * per_member)
}

/// Whether the kernel computes `arch`: every model of the paper (linear or softmax attention,
/// with or without the MLP front end).
pub fn applies(arch: &super::Arch) -> bool {
    matches!(arch.attention, Attention::Linear | Attention::Softmax)
}

impl NativeFast {
    /// The kernel for `members` members of `arch` in `kind` on `threads` threads, where it
    /// applies: linear attention (the MLP front end included), on the CPU, in float32 or float64. `None`
    /// elsewhere (the libtorch fast path then runs, as on CUDA).
    pub fn new(
        arch: &super::Arch,
        members: usize,
        kind: Kind,
        device: Device,
        threads: usize,
    ) -> Option<NativeFast> {
        if device != Device::Cpu {
            return None;
        }
        let dims = Dims::of(arch)?;
        let state = match kind {
            Kind::Float => Buffers::F32(Host::default()),
            Kind::Double => Buffers::F64(Host::default()),
            _ => return None,
        };
        let threads = threads.max(1);
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .ok()
            })
            .flatten();
        Some(NativeFast {
            dims,
            members,
            pool,
            state,
        })
    }

    /// Every member's loss `[K]` and gradient `[K, P]` at `theta [K, P]` on `batch` (U
    /// streams; member i reads stream `rows[i]`, or stream i when `rows` is `None`).
    pub fn losses_and_gradients(
        &mut self,
        theta: &Tensor,
        batch: &Batch,
        rows: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        self.step(theta, &Input::Batch(batch), rows)
    }

    /// As [`NativeFast::losses_and_gradients`], on the batch whose prompt rows were drawn on
    /// the host ([`crate::data::DeviceStream::host_rows`]).
    pub fn losses_and_gradients_from_rows(
        &mut self,
        theta: &Tensor,
        prompt_rows: &HostRows,
        rows: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        self.step(theta, &Input::Rows(prompt_rows), rows)
    }

    fn step(&mut self, theta: &Tensor, input: &Input, rows: Option<&Tensor>) -> (Tensor, Tensor) {
        let rows: Vec<usize> = match rows {
            Some(r) => Vec::<i64>::try_from(r)
                .expect("member rows are int64")
                .into_iter()
                .map(|r| r as usize)
                .collect(),
            None => (0..self.members).collect(),
        };
        match &mut self.state {
            Buffers::F32(h) => h.step(&self.dims, self.pool.as_ref(), theta, input, &rows),
            Buffers::F64(h) => h.step(&self.dims, self.pool.as_ref(), theta, input, &rows),
        }
    }
}
