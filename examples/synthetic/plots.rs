//! The two pictures: training-loss curves and gate heat maps, as PNG files drawn
//! with plotters' bitmap backend and an embedded DejaVu Sans (no system fonts).

use std::error::Error;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use super::experiment::{Model, RunResult, show};

type Plot = Result<(), Box<dyn Error>>;

/// `(step, loss)` points.
type Curve = Vec<(usize, f64)>;

/// Registers the embedded font as plotters' `sans-serif` (once per process).
pub fn fonts() -> Plot {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the embedded DejaVu font did not load".into())
    }
}

pub fn model_color(model: Model) -> RGBColor {
    match model {
        Model::Mmoe => RGBColor(0x1f, 0x77, 0xb4),
        Model::Omoe => RGBColor(0xff, 0x7f, 0x0e),
        Model::SharedBottom => RGBColor(0x2c, 0xa0, 0x2c),
        Model::Cgc => RGBColor(0xd6, 0x27, 0x28),
        Model::Ple => RGBColor(0x94, 0x67, 0xbd),
        Model::MmoeHalves => RGBColor(0x8c, 0x56, 0x4b),
    }
}

/// Mean over runs (seeds) of the curves of `model` at `correlation`; the runs share
/// their logging steps.
fn mean_curve(results: &[RunResult], model: Model, correlation: f64) -> Curve {
    let runs: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.model == model && r.correlation == correlation)
        .collect();
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .curve
        .iter()
        .enumerate()
        .map(|(i, &(step, _))| {
            let sum: f64 = runs.iter().map(|r| r.curve[i].1).sum();
            (step, sum / runs.len() as f64)
        })
        .collect()
}

/// One panel per correlation, side by side: the training loss (mean of the two
/// tasks' batch MSE, averaged over seeds) against the step, log scale, one line per
/// model.
pub fn loss_curves(
    path: &Path,
    results: &[RunResult],
    models: &[Model],
    correlations: &[f64],
) -> Plot {
    fonts()?;
    let width = (480 * correlations.len() as u32).max(760);
    let root = BitMapBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let seeds = results
        .iter()
        .map(|r| r.seed)
        .collect::<std::collections::BTreeSet<_>>();
    let (title, body) = root.split_vertically(40);
    title.titled(
        &format!(
            "Training loss: mean of the two tasks' batch MSE, mean over {} seed{}",
            seeds.len(),
            if seeds.len() == 1 { "" } else { "s" }
        ),
        ("sans-serif", 20).into_font().style(FontStyle::Bold),
    )?;
    let curves: Vec<Vec<(Model, Curve)>> = correlations
        .iter()
        .map(|&c| {
            models
                .iter()
                .map(|&m| (m, mean_curve(results, m, c)))
                .collect()
        })
        .collect();
    let all = curves.iter().flatten().flat_map(|(_, c)| c.iter());
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), &(_, l)| {
        (lo.min(l), hi.max(l))
    });
    if !(lo.is_finite() && hi > 0.0) {
        return Err("no finite training loss to plot".into());
    }
    let (lo, hi) = (lo.max(1e-6) * 0.8, hi * 1.25);
    let steps = results.iter().map(|r| r.steps).max().unwrap_or(1);
    for (panel, (&correlation, lines)) in body
        .split_evenly((1, correlations.len()))
        .iter()
        .zip(correlations.iter().zip(&curves))
    {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("correlation {}", show(correlation)),
                ("sans-serif", 18).into_font(),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0..steps, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("training MSE")
            .x_labels(5)
            .y_labels(8)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .y_label_formatter(&|v| tick(*v))
            .draw()?;
        for (model, curve) in lines {
            let color = model_color(*model);
            chart
                .draw_series(LineSeries::new(
                    curve.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(model.label())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// A tick label without trailing zeros: `1`, `0.1`, `0.02`.
fn tick(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// The colour scale of the heat maps.
#[derive(Clone, Copy)]
struct Range {
    lo: f64,
    hi: f64,
}

impl Range {
    /// `v` as a fraction of the way from `lo` to `hi`.
    fn unit(self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo)
    }
}

/// White → dark blue.
fn heat(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    RGBColor(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

/// Mean over all tasks' rows of the total variation distance between task 1's and
/// task 2's gate distributions: 0 when both tasks weigh the experts alike (always,
/// under one gate), 1 when they use disjoint experts.
pub fn gate_divergence(weights: &[Vec<f64>]) -> f64 {
    match weights {
        [a, b, ..] => 0.5 * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>(),
        _ => 0.0,
    }
}

/// A grid of heat maps, one row per gated model and one column per correlation: in
/// each, task × expert cells coloured by the task's mean gate weight on that expert
/// over the test set, for the first seed (experts are not comparable across seeds).
pub fn gate_heatmaps(
    path: &Path,
    results: &[RunResult],
    models: &[Model],
    correlations: &[f64],
) -> Plot {
    fonts()?;
    let gated: Vec<Model> = models.iter().copied().filter(|m| m.has_gates()).collect();
    if gated.is_empty() {
        return Err("no model with gates was trained".into());
    }
    let seed = results.iter().map(|r| r.seed).min().unwrap_or(0);
    let panel = |model: Model, correlation: f64| {
        results
            .iter()
            .find(|r| r.model == model && r.correlation == correlation && r.seed == seed)
            .and_then(|r| r.gates.as_ref())
    };
    // One colour scale for all panels, from the smallest to the largest weight shown
    // (a uniform gate would sit at 1 / experts).
    let (lo, hi) = results
        .iter()
        .filter(|r| r.seed == seed)
        .filter_map(|r| r.gates.as_ref())
        .flatten()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return Err("no gate weights to plot".into());
    }
    let range = Range {
        lo,
        hi: hi.max(lo + 1e-3),
    };
    let (cols, rows) = (correlations.len() as u32, gated.len() as u32);
    let size = ((420 * cols).max(760) + 90, 220 * rows + 60);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title.titled(
        &format!("Mean gate weight of each task on each expert, test set, seed {seed}"),
        ("sans-serif", 20).into_font().style(FontStyle::Bold),
    )?;
    let (grid, legend) = body.split_horizontally(size.0 - 90);
    for (cell, (model, correlation)) in grid
        .split_evenly((rows as usize, cols as usize))
        .iter()
        .zip(
            gated
                .iter()
                .flat_map(|&m| correlations.iter().map(move |&c| (m, c))),
        )
    {
        let Some(weights) = panel(model, correlation) else {
            continue;
        };
        draw_heatmap(cell, model, correlation, weights, range)?;
    }
    draw_colorbar(&legend, range)?;
    root.present()?;
    Ok(())
}

fn draw_heatmap(
    area: &DrawingArea<BitMapBackend, Shift>,
    model: Model,
    correlation: f64,
    weights: &[Vec<f64>],
    range: Range,
) -> Plot {
    let tasks = weights.len();
    let experts = weights.first().map_or(0, Vec::len);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}, correlation {}: divergence {:.2}",
                model.label(),
                show(correlation),
                gate_divergence(weights)
            ),
            ("sans-serif", 15).into_font(),
        )
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(52)
        // Integer ranges are inclusive in plotters: `0..n - 1` has n segments.
        .build_cartesian_2d(
            (0..experts as i32 - 1).into_segmented(),
            (0..tasks as i32 - 1).into_segmented(),
        )?;
    let center = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => Some(*i as usize),
        _ => None,
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(experts)
        .y_labels(tasks)
        .x_desc("expert")
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 13))
        .x_label_formatter(&|v| center(v).map_or(String::new(), |i| format!("{}", i + 1)))
        .y_label_formatter(&|v| center(v).map_or(String::new(), |i| format!("task {}", tasks - i)))
        .draw()?;
    // Task 1 on top.
    for (t, row) in weights.iter().enumerate() {
        let y = (tasks - 1 - t) as i32;
        for (e, &w) in row.iter().enumerate() {
            let e = e as i32;
            chart.draw_series([Rectangle::new(
                [
                    (SegmentValue::Exact(e), SegmentValue::Exact(y)),
                    (SegmentValue::Exact(e + 1), SegmentValue::Exact(y + 1)),
                ],
                heat(range.unit(w)).filled(),
            )])?;
            let color = if range.unit(w) > 0.55 { WHITE } else { BLACK };
            chart.draw_series([Text::new(
                format!("{w:.2}"),
                (SegmentValue::CenterOf(e), SegmentValue::CenterOf(y)),
                ("sans-serif", 13)
                    .into_font()
                    .color(&color)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            )])?;
        }
    }
    Ok(())
}

fn draw_colorbar(area: &DrawingArea<BitMapBackend, Shift>, range: Range) -> Plot {
    let mut chart = ChartBuilder::on(area)
        .margin_top(30)
        .margin_bottom(40)
        .margin_right(8)
        .y_label_area_size(0)
        .right_y_label_area_size(44)
        .build_cartesian_2d(0.0..1.0, range.lo..range.hi)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .label_style(("sans-serif", 12))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()?;
    let n = 100;
    chart.draw_series((0..n).map(|i| {
        let at = |i: usize| range.lo + (range.hi - range.lo) * i as f64 / n as f64;
        let (a, b) = (at(i), at(i + 1));
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            heat(i as f64 / (n - 1) as f64).filled(),
        )
    }))?;
    Ok(())
}
