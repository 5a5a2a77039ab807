//! A synthetic click → conversion funnel with its ground truth kept, for ESMM (Ma et
//! al., SIGIR 2018) and the selection bias it addresses.
//!
//! Every impression has latent features `x ~ N(0, I_d)`, all of them observed (the
//! model's input). With unit directions `u1 ⟂ u2`:
//!
//! - the click probability is `pCTR(x) = sigmoid(click_bias + click_scale · u1ᵀx)`;
//! - the conversion probability given a click is
//!   `pCVR(x) = sigmoid(conversion_bias + conversion_scale · (ρ·u1 + √(1−ρ²)·u2)ᵀx)`,
//!   where `ρ` ([`FunnelConfig::correlation`]) is how much the features that drive
//!   clicks also drive conversions;
//! - a click is drawn from `pCTR(x)`, and for every impression a conversion-if-clicked
//!   from `pCVR(x)`; the observed conversion is their product (no conversion
//!   without a click).
//!
//! The clicked rows are a biased sample of the impressions: they over-represent
//! large `u1ᵀx`, so with `ρ ≠ 0` their conversion rates differ from those of all
//! impressions (with `ρ < 0`, the default, the rows that attract clicks convert
//! less). A CVR model trained on the clicked rows alone sees that sample, and few of
//! them; it is used on every impression. The ground truth kept for each impression —
//! `pCTR(x)`, `pCVR(x)` and the conversion-if-clicked draw — measures a pCVR model
//! over the entire space, which the observed labels cannot.

use crate::data::Dataset;
use crate::rng::Rng;
use crate::{Error, Result};

/// Parameters of the funnel. The defaults give about 14% clicks and a true pCVR
/// of about 0.30 over all impressions against about 0.17 over the clicked ones.
#[derive(Clone, Debug, PartialEq)]
pub struct FunnelConfig {
    /// Features per impression `d` (at least 2).
    pub inputs: usize,
    /// Bias of the click logit.
    pub click_bias: f64,
    /// Norm of the click logit's weights.
    pub click_scale: f64,
    /// Bias of the conversion logit (given a click).
    pub conversion_bias: f64,
    /// Norm of the conversion logit's weights.
    pub conversion_scale: f64,
    /// `ρ` in `[-1, 1]`: the cosine of the click and conversion weight vectors.
    pub correlation: f64,
    /// Training impressions.
    pub train_rows: usize,
    /// Test impressions.
    pub test_rows: usize,
    /// Seed of every draw.
    pub seed: u64,
}

impl Default for FunnelConfig {
    fn default() -> Self {
        FunnelConfig {
            inputs: 12,
            click_bias: -2.5,
            click_scale: 1.5,
            conversion_bias: -1.2,
            conversion_scale: 1.5,
            correlation: -0.6,
            train_rows: 20_000,
            test_rows: 10_000,
            seed: 0,
        }
    }
}

/// Impressions of the funnel: the data a model sees, and the truth it does not.
#[derive(Clone, Debug, PartialEq)]
pub struct FunnelSplit {
    /// Features `[rows, inputs]`; targets `[2, rows]`: the click, then the observed
    /// conversion (click · conversion-if-clicked), the targets of an ESMM pair.
    pub data: Dataset,
    /// The true click probability of each impression.
    pub true_ctr: Vec<f32>,
    /// The true conversion probability given a click, of each impression.
    pub true_cvr: Vec<f32>,
    /// Whether each impression would convert if clicked (drawn from `true_cvr`,
    /// for clicked and unclicked impressions alike): 0 or 1.
    pub converts_if_clicked: Vec<f32>,
}

impl FunnelSplit {
    /// The rows that were clicked.
    pub fn clicked(&self) -> Vec<usize> {
        (0..self.data.rows)
            .filter(|&r| self.data.y[r] == 1.0)
            .collect()
    }
}

/// A training and a test set of one funnel.
#[derive(Clone, Debug, PartialEq)]
pub struct Funnel {
    /// Training impressions.
    pub train: FunnelSplit,
    /// Test impressions.
    pub test: FunnelSplit,
}

impl FunnelConfig {
    /// Errors unless `inputs ≥ 2`, `correlation` is in `[-1, 1]`, the biases and
    /// scales are finite and `rows × inputs` fits in memory indexing.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid("funnel config", what));
        if self.inputs < 2 {
            return bad(format!("inputs {} < 2; u1 ⟂ u2 need d ≥ 2", self.inputs));
        }
        if !(-1.0..=1.0).contains(&self.correlation) {
            return bad(format!(
                "correlation {} is not in [-1, 1]",
                self.correlation
            ));
        }
        for (name, v) in [
            ("click_bias", self.click_bias),
            ("click_scale", self.click_scale),
            ("conversion_bias", self.conversion_bias),
            ("conversion_scale", self.conversion_scale),
        ] {
            if !v.is_finite() {
                return bad(format!("{name} {v} is not finite"));
            }
        }
        for rows in [self.train_rows, self.test_rows] {
            if rows.checked_mul(self.inputs).is_none() {
                return bad(format!("{rows} rows × {} inputs overflows", self.inputs));
            }
        }
        Ok(())
    }
}

/// Draws a funnel: the weights from one fork of `Rng::new(seed)`, each split from
/// its own.
pub fn generate(config: &FunnelConfig) -> Result<Funnel> {
    config.validate()?;
    let root = Rng::new(config.seed);
    let d = config.inputs;
    let mut rng = root.fork(0);
    let u1 = unit((0..d).map(|_| rng.normal()).collect(), &[]);
    let u2 = unit((0..d).map(|_| rng.normal()).collect(), &u1);
    let rho = config.correlation;
    let q = (1.0 - rho * rho).max(0.0).sqrt();
    let click: Vec<f64> = u1.iter().map(|a| config.click_scale * a).collect();
    let conversion: Vec<f64> = u1
        .iter()
        .zip(&u2)
        .map(|(a, b)| config.conversion_scale * (rho * a + q * b))
        .collect();
    let split = |rows: usize, mut rng: Rng| -> Result<FunnelSplit> {
        let mut x = Vec::with_capacity(rows * d);
        let (mut clicks, mut converted) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        let (mut true_ctr, mut true_cvr) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        let mut converts_if_clicked = vec![0.0f32; rows];
        let mut row = vec![0.0f64; d];
        for r in 0..rows {
            row.iter_mut().for_each(|v| *v = rng.normal());
            let ctr = sigmoid(config.click_bias + dot(&click, &row));
            let cvr = sigmoid(config.conversion_bias + dot(&conversion, &row));
            let clicked = rng.unit() < ctr;
            let converts = rng.unit() < cvr;
            clicks[r] = clicked as u8 as f32;
            converted[r] = (clicked && converts) as u8 as f32;
            true_ctr[r] = ctr as f32;
            true_cvr[r] = cvr as f32;
            converts_if_clicked[r] = converts as u8 as f32;
            x.extend(row.iter().map(|&v| v as f32));
        }
        clicks.extend(converted);
        Ok(FunnelSplit {
            data: Dataset::new(d, 2, rows, x, clicks)?,
            true_ctr,
            true_cvr,
            converts_if_clicked,
        })
    };
    Ok(Funnel {
        train: split(config.train_rows, root.fork(1))?,
        test: split(config.test_rows, root.fork(2))?,
    })
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` less its component along the unit vector `along` (if any), normalised; a
/// Gaussian draw is degenerate with probability 0, and then a basis vector serves.
fn unit(mut v: Vec<f64>, along: &[f64]) -> Vec<f64> {
    if !along.is_empty() {
        let a = dot(&v, along);
        v.iter_mut().zip(along).for_each(|(x, u)| *x -= a * u);
    }
    let norm = dot(&v, &v).sqrt();
    if norm > 1e-6 {
        v.iter_mut().for_each(|x| *x /= norm);
        return v;
    }
    // Degenerate: the first basis vector orthogonal to `along`.
    let mut e = vec![0.0; v.len()];
    let i = along.iter().position(|u| u.abs() < 0.5).unwrap_or(0);
    e[i] = 1.0;
    unit(e, along)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicked_rows_convert_differently_from_all_impressions() {
        let funnel = generate(&FunnelConfig::default()).unwrap();
        let train = &funnel.train;
        let rows = train.data.rows;
        let clicked = train.clicked();
        let mean = |v: &[f32], rows: &[usize]| {
            rows.iter().map(|&r| v[r] as f64).sum::<f64>() / rows.len() as f64
        };
        let all: Vec<usize> = (0..rows).collect();
        let ctr = clicked.len() as f64 / rows as f64;
        assert!((0.08..0.2).contains(&ctr), "{ctr}");
        // The clicked rows convert less than the impressions would: the bias.
        let (on_clicks, everywhere) =
            (mean(&train.true_cvr, &clicked), mean(&train.true_cvr, &all));
        assert!(on_clicks < everywhere - 0.05, "{on_clicks} vs {everywhere}");
        // Observed conversions only on clicks, and as drawn there.
        for r in 0..rows {
            let (click, converted) = (train.data.y[r], train.data.y[rows + r]);
            assert_eq!(converted, click * train.converts_if_clicked[r]);
        }
        // The draws follow the true probabilities.
        let drawn = mean(&train.converts_if_clicked, &all);
        assert!((drawn - everywhere).abs() < 0.02, "{drawn} vs {everywhere}");
        assert_eq!(generate(&FunnelConfig::default()).unwrap(), funnel);
    }

    #[test]
    fn bad_configs_are_errors() {
        for bad in [
            FunnelConfig {
                inputs: 1,
                ..Default::default()
            },
            FunnelConfig {
                correlation: 1.5,
                ..Default::default()
            },
            FunnelConfig {
                click_bias: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(generate(&bad).is_err(), "{bad:?}");
        }
    }
}
