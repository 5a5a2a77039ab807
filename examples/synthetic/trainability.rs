//! The paper's trainability experiment (Ma et al. 2018, §3.4, figure 5): many random
//! starts per model and correlation, and how their final test MSE is spread. A model
//! that trains reliably has a narrow distribution near its best; one that often stalls
//! has a long tail. The table gives mean, median, sample standard deviation and the
//! fraction of failed runs; the PNG the histogram of every run's test MSE.

use std::error::Error;
use std::io::Write;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::experiment::{Model, RunResult, show};
use super::plots::{fonts, model_color};

/// Whether a run failed: one of its tasks was left badly fit, its test MSE above
/// `threshold`. With the paper's label noise (σ² = 0.01, the error of a perfect
/// model) the default 0.05 flags a task whose error is five times the noise.
pub fn failed(run: &RunResult, threshold: f64) -> bool {
    run.test_mse_per_task.iter().any(|&mse| mse > threshold)
}

/// Mean, median and sample standard deviation of `values` (not empty).
fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    (mean, median, var.sqrt())
}

/// The trainability table: one line per model and correlation.
pub fn table(
    out: &mut dyn Write,
    results: &[RunResult],
    (models, correlations): (&[Model], &[f64]),
    threshold: f64,
) -> std::io::Result<()> {
    writeln!(
        out,
        "\ntrainability: test MSE (mean of the two tasks) over every seed; a run fails \
         when a task's test MSE exceeds {threshold}"
    )?;
    writeln!(
        out,
        "{:<15}{:>6}{:>6}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "model", "ρ", "runs", "mean", "median", "std", "worst", "failed"
    )?;
    for &correlation in correlations {
        for &model in models {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.model == model && r.correlation == correlation)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let mut mses: Vec<f64> = runs.iter().map(|r| r.test_mse()).collect();
            let (mean, median, std) = summary(&mut mses);
            let worst = mses.last().copied().unwrap_or(f64::NAN);
            let failures = runs.iter().filter(|r| failed(r, threshold)).count();
            writeln!(
                out,
                "{:<15}{:>6}{:>6}{mean:>10.4}{median:>10.4}{std:>10.4}{worst:>10.4}{:>10}",
                model.label(),
                show(correlation),
                runs.len(),
                format!("{:.0}%", 100.0 * failures as f64 / runs.len() as f64),
            )?;
        }
    }
    Ok(())
}

/// Bins per decade of test MSE.
const BINS_PER_DECADE: f64 = 8.0;

/// One panel per correlation: for each model, how many runs ended in each bin of test
/// MSE (log-spaced bins), bars of the models side by side within a bin; the failure
/// threshold as a vertical line.
pub fn histogram(
    path: &Path,
    results: &[RunResult],
    (models, correlations): (&[Model], &[f64]),
    threshold: f64,
) -> Result<(), Box<dyn Error>> {
    fonts()?;
    let finite: Vec<f64> = results
        .iter()
        .map(RunResult::test_mse)
        .filter(|m| m.is_finite() && *m > 0.0)
        .collect();
    if finite.is_empty() {
        return Err("no finite test MSE to draw".into());
    }
    let (lo, hi) = finite.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &m| {
        (lo.min(m), hi.max(m))
    });
    let lo = (lo.min(threshold).log10() * BINS_PER_DECADE).floor();
    let hi = (hi.min(1e6).max(threshold).log10() * BINS_PER_DECADE).floor() + 1.0;
    let bins = (hi - lo) as usize;
    let bin_of = |mse: f64| ((mse.log10() * BINS_PER_DECADE).floor() - lo) as usize;
    let edge = |bin: f64| 10f64.powf((lo + bin) / BINS_PER_DECADE);

    let width = (520 * correlations.len() as u32).max(760);
    let root = BitMapBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    let seeds = results
        .iter()
        .map(|r| r.seed)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    title.titled(
        &format!("Trainability: final test MSE of {seeds} random starts per model"),
        ("sans-serif", 20).into_font().style(FontStyle::Bold),
    )?;
    for (panel, &correlation) in body
        .split_evenly((1, correlations.len()))
        .iter()
        .zip(correlations)
    {
        let counts: Vec<(Model, Vec<u32>)> = models
            .iter()
            .map(|&model| {
                let mut count = vec![0u32; bins];
                results
                    .iter()
                    .filter(|r| r.model == model && r.correlation == correlation)
                    .map(RunResult::test_mse)
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .for_each(|m| count[bin_of(m).min(bins - 1)] += 1);
                (model, count)
            })
            .collect();
        let tallest = counts
            .iter()
            .flat_map(|(_, c)| c)
            .max()
            .copied()
            .unwrap_or(1);
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("correlation {}", show(correlation)),
                ("sans-serif", 18).into_font(),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d(
                (edge(0.0)..edge(bins as f64)).log_scale(),
                0u32..tallest + 1,
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(6)
            .y_labels(6)
            .x_desc("test MSE (mean of the two tasks), failure threshold in black")
            .y_desc("runs")
            .x_label_formatter(&|v| format!("{v:.3}"))
            .draw()?;
        let share = 1.0 / models.len() as f64;
        for (i, (model, count)) in counts.iter().enumerate() {
            let color = model_color(*model);
            chart
                .draw_series(
                    count
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(|(bin, &n)| {
                            let from = bin as f64 + i as f64 * share;
                            Rectangle::new(
                                [(edge(from), 0), (edge(from + share), n)],
                                color.filled(),
                            )
                        }),
                )?
                .label(model.label())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart.draw_series(std::iter::once(PathElement::new(
            [(threshold, 0), (threshold, tallest + 1)],
            BLACK.stroke_width(1),
        )))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
