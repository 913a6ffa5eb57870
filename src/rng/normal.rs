//! Fast mode's normal generator on the CPU: Philox4x32-10 (Salmon et al., "Parallel random
//! numbers: as easy as 1, 2, 3", SC 2011) through Box–Muller, 16 streams of counters side by
//! side so that every step is one vector operation.
//!
//! Why: libtorch's CPU `normal_` is serial, one Mersenne Twister draw at a time. A fast Setting 1
//! step draws 110 000 normals, and that draw cost as much as the native kernel's whole forward
//! and backward pass (docs/performance.md). A counter-based generator has no state to carry: the
//! value at position i of stream (seed, iteration) is a pure function of the three, so any slice
//! of a stream can be drawn on its own, in any order, with any vector width.
//!
//! The stream (docs/spec.md, "Fast mode's data"): Philox's key is `[seed, KEY_TAG]` and the
//! counter of block j is `[j, iter mod 2³², iter div 2³², 0]`. A block's four 32-bit words
//! (a, b, c, e) give four normals by Box–Muller: `r(a)·cos θ(b)`, `r(a)·sin θ(b)`, `r(c)·cos θ(e)`,
//! `r(c)·sin θ(e)` with `r(a) = √(−2 ln u)`, `u = (⌊a/2⌋ + ½)·2⁻³¹ ∈ (0, 1]`, and θ(b) = 2π·b/2³².
//! Blocks go in groups of [`LANES`]: normal k of block `16g + l` is element `64g + 16k + l`.
//!
//! Tails: the smallest u is 2⁻³², so |z| reaches √(64 ln 2) = 6.66. libtorch's float `normal_`
//! takes u from 24 bits, so its |z| stops at √(48 ln 2) = 5.77 ([`LARGEST`],
//! [`LIBTORCH_LARGEST`]): this generator's tails are wider, never narrower.
//!
//! Rounding: ln, sin and cos are Cephes' single-precision polynomials, written as separate
//! multiplies and adds (never fused), and the angle is reduced to an octant in exact integer
//! arithmetic. So every lane computes the same bits whatever the vector width: the same numbers on
//! every x86-64, chosen at run time ([`multiversion`]). This module has no `unsafe`.
use multiversion::multiversion;

/// Blocks computed side by side: 16 × 32 bits fill one 512-bit register.
pub const LANES: usize = 16;
/// Normals per group of [`LANES`] blocks.
pub const GROUP: usize = 4 * LANES;
/// The second word of every key: a fixed tag, so that these streams share no key with another
/// use of Philox that keys on the seed alone.
pub const KEY_TAG: u32 = 0x6c69_6e61; // "lina"
/// The largest |z| this generator can give (u = 2⁻³²).
pub const LARGEST: f64 = 6.660_436_889_261_582; // √(64 ln 2)
/// The largest |z| libtorch's float32 `normal_` can give (u = 2⁻²⁴).
pub const LIBTORCH_LARGEST: f64 = 5.768_107_546_403_532; // √(48 ln 2)

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

type Words = [u32; LANES];
type Floats = [f32; LANES];

/// Philox4x32 with ten rounds on [`LANES`] counters at once (Random123's `philox4x32_R`).
#[inline(always)]
fn philox_lanes(mut ctr: [Words; 4], key: [u32; 2]) -> [Words; 4] {
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let mut next = [[0u32; LANES]; 4];
        for l in 0..LANES {
            let p0 = M0 as u64 * ctr[0][l] as u64;
            let p1 = M1 as u64 * ctr[2][l] as u64;
            next[0][l] = (p1 >> 32) as u32 ^ ctr[1][l] ^ k[0];
            next[1][l] = p1 as u32;
            next[2][l] = (p0 >> 32) as u32 ^ ctr[3][l] ^ k[1];
            next[3][l] = p0 as u32;
        }
        ctr = next;
    }
    ctr
}

/// One Philox4x32-10 block: the generator itself, for its known-answer test.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let out = philox_lanes(ctr.map(|c| [c; LANES]), key);
    out.map(|w| w[0])
}

/// Cephes' `logf` for x in (0, 1] (normal floats only), its constants as Cephes prints them.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    // x = m·2^e with m in [1/2, 1).
    let mut e = (bits >> 23) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let f = if m < SQRT_HALF {
        e -= 1;
        m + m - 1.0
    } else {
        m - 1.0
    };
    let z = f * f;
    let mut y = 7.037_683_629_2e-2_f32;
    for c in [
        -1.151_461_031_0e-1,
        1.167_699_874_0e-1,
        -1.242_014_084_6e-1,
        1.424_932_278_7e-1,
        -1.666_805_766_5e-1,
        2.000_071_476_5e-1,
        -2.499_999_399_3e-1,
        3.333_333_117_4e-1,
    ] {
        y = y * f + c;
    }
    y = y * f * z;
    let e = e as f32;
    y += -2.121_944_40e-4 * e;
    y += -0.5 * z;
    let r = f + y;
    r + 0.693_359_375 * e
}

/// Cephes' `sinf` and `cosf` polynomials for x in [0, π/4].
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn sin_cos(x: f32) -> (f32, f32) {
    let z = x * x;
    let s = ((-1.951_529_589_1e-4 * z + 8.332_160_873_6e-3) * z - 1.666_665_461_1e-1) * z * x + x;
    let c = ((2.443_315_711_809_948e-5 * z - 1.388_731_625_493_765e-3) * z
        + 4.166_664_568_298_827e-2)
        * z
        * z
        - 0.5 * z
        + 1.0;
    (s, c)
}

/// The radius `√(−2 ln u)` of the 32-bit word `a`.
#[inline(always)]
fn radius(a: u32) -> f32 {
    // ⌊a/2⌋ < 2³¹ converts exactly through i32 on every vector width; + ½ keeps u > 0.
    let u = ((a >> 1) as i32 as f32 + 0.5) * (1.0 / 2_147_483_648.0);
    (-2.0 * ln(u)).sqrt()
}

/// (cos θ, sin θ) for θ = 2π·b/2³²: the octant from the top three bits, the angle within it from
/// the rest, reflected in odd octants so that the polynomial argument stays in [0, π/4].
#[inline(always)]
fn cos_sin(b: u32) -> (f32, f32) {
    const FRACTION: u32 = (1 << 29) - 1;
    let octant = b >> 29;
    let within = b & FRACTION;
    let odd = octant & 1 == 1;
    // Odd octant o: θ = (o+1)·π/4 − ψ with ψ = (1 − fraction)·π/4, exact in integers.
    let steps = if odd { (1 << 29) - within } else { within };
    let (s, c) = sin_cos(steps as i32 as f32 * (std::f32::consts::FRAC_PI_4 / 536_870_912.0));
    let s = if odd { -s } else { s };
    // Rotate by q quarter turns: q = ⌈o/2⌉ mod 4.
    let q = ((octant + 1) >> 1) & 3;
    let (x, y) = if q & 1 == 1 { (-s, c) } else { (c, s) };
    if q & 2 == 2 {
        (-x, -y)
    } else {
        (x, y)
    }
}

/// The normals of group `g` of stream (`seed`, `iter`), in the group's order.
#[inline(always)]
fn group(seed: u32, iter: i64, g: usize, out: &mut [f32; GROUP]) {
    let mut first: Words = [0; LANES];
    for (l, c) in first.iter_mut().enumerate() {
        *c = (g * LANES + l) as u32;
    }
    let it = iter as u64;
    let ctr = [
        first,
        [it as u32; LANES],
        [(it >> 32) as u32; LANES],
        [0; LANES],
    ];
    let w = philox_lanes(ctr, [seed, KEY_TAG]);
    for pair in 0..2 {
        let (mut cos, mut sin): (Floats, Floats) = ([0.0; LANES], [0.0; LANES]);
        for l in 0..LANES {
            let r = radius(w[2 * pair][l]);
            let (c, s) = cos_sin(w[2 * pair + 1][l]);
            cos[l] = r * c;
            sin[l] = r * s;
        }
        out[2 * pair * LANES..(2 * pair + 1) * LANES].copy_from_slice(&cos);
        out[(2 * pair + 1) * LANES..(2 * pair + 2) * LANES].copy_from_slice(&sin);
    }
}

/// Fills `out` with elements `[first, first + out.len())` of stream (`seed`, `iter`); `first`
/// is a multiple of [`GROUP`]. A stream's prefix does not depend on how much of it is drawn.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub fn fill_from(seed: u32, iter: i64, first: usize, out: &mut [f32]) {
    assert!(first.is_multiple_of(GROUP), "a fill starts at a group");
    let mut buf = [0.0f32; GROUP];
    for (i, chunk) in out.chunks_mut(GROUP).enumerate() {
        group(seed, iter, first / GROUP + i, &mut buf);
        chunk.copy_from_slice(&buf[..chunk.len()]);
    }
}

/// Fills `out` with the start of stream (`seed`, `iter`): standard normals.
pub fn fill(seed: u32, iter: i64, out: &mut [f32]) {
    fill_from(seed, iter, 0, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cephes_ln_is_within_two_float_ulps_of_f64_ln_on_the_generators_inputs() {
        let mut worst = 0.0f64;
        for a in (0..u32::MAX).step_by(65_537).chain([0, 1, 2, 3, u32::MAX]) {
            let u = ((a >> 1) as f32 + 0.5) / 2_147_483_648.0;
            let want = (u as f64).ln();
            let err = (ln(u) as f64 - want).abs();
            // Relative where ln is large, absolute (in f32 ulps of 1) near u = 1.
            worst = worst.max(err / want.abs().max(1.0) / f32::EPSILON as f64);
        }
        assert!(worst < 2.0, "worst error {worst} ulps");
    }

    #[test]
    fn octant_reduction_gives_cos_and_sin_of_the_full_turn_to_float_accuracy() {
        let mut worst = 0.0f64;
        for b in (0..u32::MAX)
            .step_by(9_973)
            .chain([0, 1 << 29, 1 << 30, 3 << 30, u32::MAX])
        {
            let theta = b as f64 / 4_294_967_296.0 * std::f64::consts::TAU;
            let (c, s) = cos_sin(b);
            worst = worst.max(
                (c as f64 - theta.cos())
                    .abs()
                    .max((s as f64 - theta.sin()).abs()),
            );
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "worst error {worst}");
    }

    #[test]
    fn the_extreme_words_give_the_largest_radius_and_radius_zero() {
        assert!((radius(0) as f64 - LARGEST).abs() < 1e-5, "{}", radius(0));
        assert!(radius(u32::MAX) < 1e-3, "{}", radius(u32::MAX));
        const { assert!(LARGEST > LIBTORCH_LARGEST) };
        assert!((LIBTORCH_LARGEST - (48.0 * 2f64.ln()).sqrt()).abs() < 1e-12);
        assert!((LARGEST - (64.0 * 2f64.ln()).sqrt()).abs() < 1e-12);
    }
}
