//! The MMoE paper's synthetic data with a controllable task correlation (Ma et al.,
//! KDD 2018, §3.2).
//!
//! Two regression tasks share the input `x ~ N(0, I_d)`. Their weight vectors are
//! `w1 = c·u1` and `w2 = c·(p·u1 + √(1−p²)·u2)` for orthonormal `u1, u2`, so the
//! cosine of `w1` and `w2` is exactly `p`; the targets are
//!
//! `y_k = w_kᵀx + Σ_{i=1..m} sin(α_i·w_kᵀx + β_i) + ε_k`, `α_i, β_i ~ N(0, 1)`,
//! `ε_k ~ N(0, σ²)`,
//!
//! with the same `α, β` for both tasks, so that `p` alone sets how related the tasks
//! are (the non-linear part keeps the label correlation from being simply `p`).

use crate::data::{Dataset, Splits};
use crate::rng::Rng;
use crate::{Error, Result};

/// Parameters of the synthetic data. [`Default`] follows the paper (`d = 100`,
/// `c = 1`, `m = 10`, `σ = 0.1`) with correlation 0.5; the row counts and seed are
/// this crate's choice.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Input dimension `d` (at least 2, for two orthogonal directions).
    pub inputs: usize,
    /// Task correlation `p`: the cosine of the two tasks' weight vectors, in `[-1, 1]`.
    pub correlation: f64,
    /// Scale `c` of the weight vectors.
    pub scale: f64,
    /// Number `m` of sinusoids in each target.
    pub sinusoids: usize,
    /// Standard deviation `σ` of the label noise (the paper's `N(0, 0.01)` is a
    /// variance, so `σ = 0.1`).
    pub noise_std: f64,
    /// Training rows.
    pub train_rows: usize,
    /// Validation rows.
    pub validation_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            inputs: 100,
            correlation: 0.5,
            scale: 1.0,
            sinusoids: 10,
            noise_std: 0.1,
            train_rows: 10_000,
            validation_rows: 1_000,
            test_rows: 1_000,
            seed: 0,
        }
    }
}

impl SyntheticConfig {
    /// Errors unless `inputs ≥ 2`, `correlation` is in `[-1, 1]`, `scale` is finite,
    /// `noise_std` is finite and non-negative, and every split's `rows × inputs`
    /// fits in memory indexing.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str, message: String| Err(Error::invalid(what, message));
        if self.inputs < 2 {
            return invalid(
                "synthetic inputs",
                format!("{} < 2; two orthogonal directions need d ≥ 2", self.inputs),
            );
        }
        if !(-1.0..=1.0).contains(&self.correlation) {
            return invalid(
                "synthetic correlation",
                format!("{} is not in [-1, 1]", self.correlation),
            );
        }
        if !self.scale.is_finite() {
            return invalid("synthetic scale", format!("{} is not finite", self.scale));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return invalid(
                "synthetic noise_std",
                format!("{} is not a finite, non-negative number", self.noise_std),
            );
        }
        for rows in [self.train_rows, self.validation_rows, self.test_rows] {
            if rows.checked_mul(self.inputs).is_none() {
                return invalid(
                    "synthetic rows",
                    format!("{rows} rows × {} inputs overflows usize", self.inputs),
                );
            }
        }
        Ok(())
    }
}

/// The fixed part of a synthetic problem: directions, weights and sinusoid
/// parameters, from which any number of rows can be drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticProblem {
    /// First unit direction `u1`.
    pub u1: Vec<f64>,
    /// Second unit direction `u2`, orthogonal to `u1`.
    pub u2: Vec<f64>,
    /// Task 1 weights `c·u1`.
    pub w1: Vec<f64>,
    /// Task 2 weights `c·(p·u1 + √(1−p²)·u2)`.
    pub w2: Vec<f64>,
    /// Sinusoid frequencies `α_i`, shared by both tasks.
    pub alpha: Vec<f64>,
    /// Sinusoid phases `β_i`, shared by both tasks.
    pub beta: Vec<f64>,
    /// Label noise standard deviation.
    pub noise_std: f64,
}

impl SyntheticProblem {
    /// Draws the directions and sinusoids from `rng` (after validating `config`).
    pub fn new(config: &SyntheticConfig, rng: &mut Rng) -> Result<SyntheticProblem> {
        config.validate()?;
        let d = config.inputs;
        let (p, c) = (config.correlation, config.scale);
        // Gram–Schmidt on two Gaussian vectors; they are linearly dependent with
        // probability 0, but redraw rather than divide by a vanishing norm.
        let u1 = loop {
            if let Some(u) = normalized((0..d).map(|_| rng.normal()).collect()) {
                break u;
            }
        };
        let u2 = loop {
            let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let along = dot(&v, &u1);
            v.iter_mut().zip(&u1).for_each(|(vi, ui)| *vi -= along * ui);
            if let Some(u) = normalized(v) {
                break u;
            }
        };
        let q = (1.0 - p * p).max(0.0).sqrt();
        let w2 = u1
            .iter()
            .zip(&u2)
            .map(|(a, b)| c * (p * a + q * b))
            .collect();
        Ok(Self::with_directions(config, rng, (u1, u2), w2))
    }

    /// The problem on directions `u1`, `u2` with task 2's weights `w2` (task 1's are
    /// `c·u1`), drawing the sinusoids from `rng`.
    fn with_directions(
        config: &SyntheticConfig,
        rng: &mut Rng,
        (u1, u2): (Vec<f64>, Vec<f64>),
        w2: Vec<f64>,
    ) -> SyntheticProblem {
        let w1 = u1.iter().map(|a| config.scale * a).collect();
        let alpha = (0..config.sinusoids).map(|_| rng.normal()).collect();
        let beta = (0..config.sinusoids).map(|_| rng.normal()).collect();
        SyntheticProblem {
            u1,
            u2,
            w1,
            w2,
            alpha,
            beta,
            noise_std: config.noise_std,
        }
    }

    /// A problem whose tasks read disjoint halves of the input: `u1` is a random
    /// unit direction on the first `⌊d/2⌋` inputs, `u2` one on the others, so task 1
    /// depends on the first half only and task 2 on the second (their cosine is 0
    /// whatever `config.correlation`). The sinusoids are drawn as in [`new`](Self::new).
    /// The setting of experts on feature subsets: experts that read one half each
    /// see all a task needs and nothing it does not.
    pub fn on_halves(config: &SyntheticConfig, rng: &mut Rng) -> Result<SyntheticProblem> {
        config.validate()?;
        let d = config.inputs;
        let c = config.scale;
        let mut draw_on = |range: std::ops::Range<usize>| loop {
            let v = (0..d)
                .map(|i| {
                    if range.contains(&i) {
                        rng.normal()
                    } else {
                        0.0
                    }
                })
                .collect();
            if let Some(u) = normalized(v) {
                break u;
            }
        };
        let u1 = draw_on(0..d / 2);
        let u2 = draw_on(d / 2..d);
        let w2 = u2.iter().map(|b| c * b).collect();
        Ok(Self::with_directions(config, rng, (u1, u2), w2))
    }

    /// Draws `rows` examples (`x ~ N(0, I)`, two targets with fresh noise) from `rng`.
    pub fn sample(&self, rows: usize, rng: &mut Rng) -> Result<Dataset> {
        let d = self.w1.len();
        // d ≥ 2 for any problem from `new`, so this also bounds the 2·rows targets.
        if rows.checked_mul(d.max(2)).is_none() {
            return Err(Error::invalid(
                "synthetic rows",
                format!("{rows} rows × {d} inputs overflows usize"),
            ));
        }
        let mut x = Vec::with_capacity(rows * d);
        let mut y = vec![0.0f32; 2 * rows];
        let mut row = vec![0.0f64; d];
        for r in 0..rows {
            row.iter_mut().for_each(|v| *v = rng.normal());
            for (k, w) in [&self.w1, &self.w2].into_iter().enumerate() {
                let linear = dot(w, &row);
                let waves: f64 = self
                    .alpha
                    .iter()
                    .zip(&self.beta)
                    .map(|(a, b)| (a * linear + b).sin())
                    .sum();
                y[k * rows + r] = (linear + waves + self.noise_std * rng.normal()) as f32;
            }
            x.extend(row.iter().map(|&v| v as f32));
        }
        Dataset::new(d, 2, rows, x, y)
    }
}

/// Generates train, validation and test sets for `config` (2 tasks).
///
/// The problem and each split draw from their own fork of `Rng::new(seed)`, so
/// changing one split's size leaves the other splits' rows unchanged.
pub fn generate(config: &SyntheticConfig) -> Result<Splits> {
    let root = Rng::new(config.seed);
    let problem = SyntheticProblem::new(config, &mut root.fork(0))?;
    splits(config, &problem, &root)
}

/// [`generate`] on the problem of [`SyntheticProblem::on_halves`]: task 1 on the
/// first half of the inputs, task 2 on the second.
pub fn generate_on_halves(config: &SyntheticConfig) -> Result<Splits> {
    let root = Rng::new(config.seed);
    let problem = SyntheticProblem::on_halves(config, &mut root.fork(0))?;
    splits(config, &problem, &root)
}

fn splits(config: &SyntheticConfig, problem: &SyntheticProblem, root: &Rng) -> Result<Splits> {
    Ok(Splits {
        train: problem.sample(config.train_rows, &mut root.fork(1))?,
        validation: problem.sample(config.validation_rows, &mut root.fork(2))?,
        test: problem.sample(config.test_rows, &mut root.fork(3))?,
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalized(mut v: Vec<f64>) -> Option<Vec<f64>> {
    let norm = dot(&v, &v).sqrt();
    (norm > 1e-6).then(|| {
        v.iter_mut().for_each(|x| *x /= norm);
        v
    })
}
