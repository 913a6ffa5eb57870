//! Fast mode's CPU normal generator (`rng::normal`): Philox4x32-10 as Random123 defines it, and
//! normals whose moments and tails are those of N(0, 1) over 10⁷ draws, with tails at least as
//! wide as libtorch's `normal_`, which it replaces on the CPU. The paper is about tails.
use linattn::rng::normal::{self, GROUP, LARGEST, LIBTORCH_LARGEST};
use tch::{Device, Kind, Tensor};

#[test]
fn philox4x32_10_matches_random123s_known_answer_vectors() {
    let cases = [
        (
            [0u32; 4],
            [0u32; 2],
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
        ),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
        ),
        (
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
        ),
    ];
    for (ctr, key, want) in cases {
        assert_eq!(
            normal::philox4x32_10(ctr, key),
            want,
            "counter {ctr:x?}, key {key:x?}"
        );
    }
}

/// P(Z > t) for Z ~ N(0, 1), by Simpson's rule on the density (to about 1e-12 here).
fn upper_tail(t: f64) -> f64 {
    let (end, steps) = (t + 14.0, 20_000);
    let h = (end - t) / steps as f64;
    let density = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut sum = density(t) + density(end);
    for i in 1..steps {
        sum += density(t + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    sum * h / 3.0
}

struct Summary {
    mean: f64,
    var: f64,
    skew: f64,
    kurtosis: f64,
    largest: f64,
    /// How many |z| exceed each of [`THRESHOLDS`].
    beyond: Vec<usize>,
    /// How many z are at most each of [`GRID`].
    below: Vec<usize>,
}

const THRESHOLDS: [f64; 5] = [2.0, 3.0, 4.0, 4.5, 5.0];
const GRID: [f64; 9] = [-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0];

fn summarise(z: &[f32]) -> Summary {
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let moment = |k: i32| z.iter().map(|&v| (v as f64 - mean).powi(k)).sum::<f64>() / n;
    let var = moment(2);
    Summary {
        mean,
        var,
        skew: moment(3) / var.powf(1.5),
        kurtosis: moment(4) / (var * var),
        largest: z.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs())),
        beyond: THRESHOLDS
            .iter()
            .map(|&t| z.iter().filter(|&&v| (v as f64).abs() > t).count())
            .collect(),
        below: GRID
            .iter()
            .map(|&t| z.iter().filter(|&&v| (v as f64) <= t).count())
            .collect(),
    }
}

/// Ten streams of 10⁶ (seeds and iterations spread over the key and the counter), 10⁷ in all.
fn ten_million() -> Vec<f32> {
    let mut z = vec![0.0f32; 10_000_000];
    let starts: [(u32, i64); 10] = [
        (0, 0),
        (1, 0),
        (0, 1),
        (5, 9_999),
        (u32::MAX, 3),
        (7, 1 << 32),
        (123_456, 77),
        (2, i64::MAX),
        (3, 2),
        (4, 4),
    ];
    for (chunk, (seed, iter)) in z.chunks_mut(1_000_000).zip(starts) {
        normal::fill(seed, iter, chunk);
    }
    z
}

#[test]
fn ten_million_normals_have_the_moments_and_tails_of_n01_and_reach_past_libtorchs_largest() {
    let ours = summarise(&ten_million());
    tch::manual_seed(0);
    let torch: Vec<f32> =
        Vec::try_from(Tensor::empty([10_000_000], (Kind::Float, Device::Cpu)).normal_(0.0, 1.0))
            .unwrap();
    let libtorch = summarise(&torch);
    let n = 1e7f64;
    for (name, s) in [("ours", &ours), ("libtorch", &libtorch)] {
        println!(
            "{name}: mean {:+.5} var {:.5} skew {:+.5} kurtosis {:.5} largest |z| {:.3} beyond {:?} {:?}",
            s.mean, s.var, s.skew, s.kurtosis, s.largest, THRESHOLDS, s.beyond
        );
    }
    // Five standard errors of each sample statistic of 10⁷ normals.
    assert!(ours.mean.abs() < 5.0 / n.sqrt(), "mean {}", ours.mean);
    assert!(
        (ours.var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(),
        "var {}",
        ours.var
    );
    assert!(
        ours.skew.abs() < 5.0 * (6.0 / n).sqrt(),
        "skew {}",
        ours.skew
    );
    assert!(
        (ours.kurtosis - 3.0).abs() < 5.0 * (24.0 / n).sqrt(),
        "kurtosis {}",
        ours.kurtosis
    );
    // The distribution function on a grid, and the tails, each within five standard errors.
    for (i, &t) in GRID.iter().enumerate() {
        let p = if t <= 0.0 {
            upper_tail(-t)
        } else {
            1.0 - upper_tail(t)
        };
        let got = ours.below[i] as f64 / n;
        let se = (p * (1.0 - p) / n).sqrt();
        assert!(
            (got - p).abs() < 5.0 * se,
            "P(z <= {t}) = {got}, want {p} ± {se:.1e}"
        );
    }
    for (i, &t) in THRESHOLDS.iter().enumerate() {
        let expected = 2.0 * upper_tail(t) * n;
        let got = ours.beyond[i] as f64;
        // Poisson: five standard deviations, and at least one count of slack where few fall.
        let allowed = 5.0 * expected.sqrt() + 1.0;
        assert!(
            (got - expected).abs() < allowed,
            "|z| > {t}: {got}, expected {expected:.1}"
        );
        // Not thinner than libtorch's: at most the sampling noise of both below it.
        assert!(
            got > libtorch.beyond[i] as f64 - 5.0 * (2.0 * expected).sqrt() - 1.0,
            "|z| > {t}: {got} against libtorch's {}",
            libtorch.beyond[i]
        );
    }
    // The largest of 10⁷ normals is below 4.9 with probability about e^-9.6 = 7e-5.
    assert!(ours.largest > 4.9, "largest |z| {}", ours.largest);
    assert!(
        ours.largest <= LARGEST,
        "largest |z| {} above the bound",
        ours.largest
    );
    // libtorch's own draws obey the bound this module states for them, which ours exceeds.
    assert!(
        libtorch.largest <= LIBTORCH_LARGEST + 1e-6,
        "libtorch {}",
        libtorch.largest
    );
    const { assert!(LARGEST > LIBTORCH_LARGEST + 0.8) };
}

#[test]
fn a_stream_is_the_same_however_much_of_it_is_drawn_and_wherever_a_fill_starts() {
    let mut long = vec![0.0f32; 10 * GROUP + 5];
    normal::fill(3, 11, &mut long);
    for len in [1, 7, GROUP - 1, GROUP, GROUP + 1, 3 * GROUP + 17] {
        let mut short = vec![0.0f32; len];
        normal::fill(3, 11, &mut short);
        assert_eq!(short[..], long[..len], "a fill of {len}");
    }
    let mut tail = vec![0.0f32; 4 * GROUP + 5];
    normal::fill_from(3, 11, 6 * GROUP, &mut tail);
    assert_eq!(tail[..], long[6 * GROUP..]);
    let mut again = vec![0.0f32; long.len()];
    normal::fill(3, 11, &mut again);
    assert_eq!(
        again, long,
        "a fill is a pure function of (seed, iteration)"
    );
}

#[test]
fn streams_of_other_seeds_and_iterations_are_uncorrelated_and_so_are_neighbours_in_a_stream() {
    let len = 1_000_000;
    let draw = |seed, iter| {
        let mut z = vec![0.0f32; len];
        normal::fill(seed, iter, &mut z);
        z
    };
    let corr = |a: &[f32], b: &[f32]| {
        let n = a.len() as f64;
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        dot / n
    };
    let base = draw(1, 0);
    let bound = 5.0 / (len as f64).sqrt();
    for (seed, iter) in [(2, 0), (1, 1), (1, 1 << 32), (0, 0)] {
        let other = draw(seed, iter);
        let c = corr(&base, &other);
        assert!(
            c.abs() < bound,
            "({seed}, {iter}) against (1, 0): correlation {c}"
        );
    }
    // Box–Muller's cos and sin of one radius are 16 apart; blocks are 1 and 64 apart.
    for lag in [1, 15, 16, 32, 48, 64] {
        let c = corr(&base[..len - lag], &base[lag..]);
        let sq: Vec<f32> = base.iter().map(|v| v * v - 1.0).collect();
        let c2 = corr(&sq[..len - lag], &sq[lag..]) / 2.0;
        assert!(c.abs() < bound, "lag {lag}: correlation {c}");
        assert!(
            c2.abs() < bound * 2.0,
            "lag {lag}: correlation of squares {c2}"
        );
    }
}
