//! What the example prints: the table of test MSE and the JSON lines.

use std::io::Write;

use clap::ValueEnum;

use super::experiment::{Model, RunResult, show};
use super::plots::gate_divergence;
use super::{Args, GateChoice};

/// One run as a JSON object: `model`, `correlation`, `seed`, `test_mse` (mean of the
/// two tasks), `steps`, `seconds`, and the settings that produced it.
pub fn json_line(r: &RunResult, args: &Args) -> serde_json::Value {
    serde_json::json!({
        "model": r.model.key(),
        "correlation": r.correlation,
        "seed": r.seed,
        "test_mse": r.test_mse(),
        "test_mse_per_task": r.test_mse_per_task,
        "steps": r.steps,
        "seconds": r.seconds,
        "batch_size": args.batch_size,
        // Through the shortest decimal of the f32, not its f64 widening.
        "learning_rate": args.learning_rate.to_string().parse::<f64>().ok(),
        "schedule": format!("{:?}", args.schedule).to_lowercase(),
        "train_rows": args.train_rows,
        "parameters": r.parameters,
        "gate_divergence": r.gates.as_deref().map(gate_divergence),
        "experts_per_row": r.experts_per_row,
        "gate": format!("{:?}", args.gate).to_lowercase(),
        "k": (args.gate == super::GateChoice::Topk).then_some(args.k),
        "noise": args.noise,
        "selection": format!("{:?}", args.selection).to_lowercase(),
        "balance": args.balance,
        "balance_loss": format!("{:?}", args.balance_loss).to_lowercase(),
        "expert_init": args.expert_init.to_possible_value().map(|v| v.get_name().to_string()),
        "data": args.data.to_possible_value().map(|v| v.get_name().to_string()),
    })
}

/// The gates of the run when they are not the paper's: `; top-2 gates`, `; noisy
/// top-2 shared-selection gates`, `; static gates, balance 0.01`.
fn gate_note(args: &Args) -> String {
    let kind = match args.gate {
        GateChoice::Softmax => "softmax".to_string(),
        GateChoice::Topk if args.noise => format!("noisy top-{}", args.k),
        GateChoice::Topk => format!("top-{}", args.k),
        GateChoice::Static => "static".to_string(),
    };
    let kind = match args.selection {
        super::SelectionChoice::Own => kind,
        super::SelectionChoice::Shared => format!("{kind} shared-selection"),
    };
    if args.balance != 0.0 && args.balance_loss == super::BalanceChoice::Load {
        format!("; {kind} gates, load balance {}", args.balance)
    } else if args.balance != 0.0 {
        format!("; {kind} gates, balance {}", args.balance)
    } else if args.gate != GateChoice::Softmax {
        format!("; {kind} gates")
    } else {
        String::new()
    }
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Mean and sample standard deviation of `f` over the seeds of one cell.
fn cell(
    results: &[RunResult],
    model: Model,
    correlation: f64,
    f: fn(&RunResult) -> f64,
) -> (f64, f64) {
    let values: Vec<f64> = results
        .iter()
        .filter(|r| r.model == model && r.correlation == correlation)
        .map(f)
        .collect();
    mean_std(&values)
}

/// Prints the test-MSE table, the gate divergence of the gated models and whether
/// the paper's ordering holds on these numbers.
pub fn table(out: &mut dyn Write, results: &[RunResult], args: &Args) -> std::io::Result<()> {
    let width = 19;
    writeln!(
        out,
        "\ntest MSE, mean of the two tasks (mean ± std over {} seed{}, {} test rows{})",
        args.seeds,
        if args.seeds == 1 { "" } else { "s" },
        args.test_rows,
        gate_note(args)
    )?;
    write!(out, "{:<15}{:>7}", "model", "params")?;
    for c in &args.correlations {
        write!(out, "{:>width$}", format!("ρ = {}", show(*c)))?;
    }
    writeln!(out)?;
    for &model in &args.models {
        let params = results
            .iter()
            .find(|r| r.model == model)
            .map_or(0, |r| r.parameters);
        write!(out, "{:<15}{params:>7}", model.label())?;
        for &c in &args.correlations {
            let (mean, std) = cell(results, model, c, RunResult::test_mse);
            write!(out, "{:>width$}", format!("{mean:.4} ± {std:.4}"))?;
        }
        writeln!(out)?;
    }
    let gated: Vec<Model> = args
        .models
        .iter()
        .copied()
        .filter(|m| m.has_gates())
        .collect();
    if !gated.is_empty() {
        writeln!(
            out,
            "\ngate divergence between the tasks (total variation of their mean gate \
             weights on the test set; 0 = same experts)"
        )?;
        for &model in &gated {
            write!(out, "{:<22}", model.label())?;
            for &c in &args.correlations {
                let (mean, std) = cell(results, model, c, |r| {
                    r.gates.as_deref().map_or(0.0, gate_divergence)
                });
                write!(out, "{:>width$}", format!("{mean:.2} ± {std:.2}"))?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "\nexperts computed per row (weighed by some task's gate, mean over the test set)"
        )?;
        for &model in &gated {
            write!(out, "{:<22}", model.label())?;
            for &c in &args.correlations {
                let (mean, std) = cell(results, model, c, |r| r.experts_per_row.unwrap_or(0.0));
                write!(out, "{:>width$}", format!("{mean:.2} ± {std:.2}"))?;
            }
            writeln!(out)?;
        }
    }
    // The models by mean test MSE at each correlation: the paper has MMoE lowest
    // everywhere, OMoE next at low correlation (matching MMoE at 1) and shared-bottom
    // highest. Reported, not enforced.
    writeln!(out, "\nranking by mean test MSE, lowest first")?;
    for &c in &args.correlations {
        let mut ranked: Vec<(f64, Model)> = args
            .models
            .iter()
            .map(|&m| (cell(results, m, c, RunResult::test_mse).0, m))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ranked: Vec<String> = ranked
            .iter()
            .map(|(mse, m)| format!("{} {mse:.4}", m.label()))
            .collect();
        writeln!(out, "ρ = {}: {}", show(c), ranked.join(" < "))?;
    }
    Ok(())
}
