//! Evaluation metrics: ROC AUC for the classification tasks (the paper's census
//! metric), log loss on logits, and mean squared error for the regression tasks
//! (the paper's synthetic metric). All accumulate in `f64` and reject empty,
//! mismatched or non-finite input with an error instead of returning NaN.

use crate::{Error, Result};

/// Exact area under the ROC curve: the probability that a random positive scores
/// above a random negative, a tie counting one half.
///
/// `labels` must be 0 or 1. Computed from average ranks (Mann–Whitney U), so tied
/// scores get half credit and the result does not depend on the input order.
/// Errors if the lengths differ, a value is non-finite, a label is not 0 or 1, or
/// there is no positive or no negative (the AUC is then undefined).
pub fn auc(scores: &[f32], labels: &[f32]) -> Result<f64> {
    check_pair("auc", "scores", scores, "labels", labels)?;
    if let Some(index) = labels.iter().position(|&y| y != 0.0 && y != 1.0) {
        return Err(Error::invalid(
            "auc labels",
            format!("label {index} is {}, expected 0 or 1", labels[index]),
        ));
    }
    let positives = labels.iter().filter(|&&y| y == 1.0).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(Error::invalid(
            "auc labels",
            format!(
                "{positives} positives and {negatives} negatives; AUC needs at least one of each"
            ),
        ));
    }

    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' 1-based ranks, each tie group sharing its average rank.
    let (mut positive_rank_sum, mut start) = (0.0f64, 0);
    for group in order.chunk_by(|&a, &b| scores[a] == scores[b]) {
        let end = start + group.len();
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = group.iter().filter(|&&i| labels[i] == 1.0).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let p = positives as f64;
    let u = positive_rank_sum - p * (p + 1.0) / 2.0;
    Ok(u / (p * negatives as f64))
}

/// Mean binary cross-entropy of `logits` against `labels` in `[0, 1]`.
///
/// Takes logits rather than probabilities so that a confident wrong prediction
/// costs its true, large loss instead of `ln(0)`: computed as
/// `max(z, 0) − z·y + ln(1 + e^−|z|)`, which never overflows. Errors on empty,
/// mismatched or non-finite input and on labels outside `[0, 1]`.
pub fn log_loss(logits: &[f32], labels: &[f32]) -> Result<f64> {
    check_pair("log_loss", "logits", logits, "labels", labels)?;
    if let Some(index) = labels.iter().position(|y| !(0.0..=1.0).contains(y)) {
        return Err(Error::invalid(
            "log_loss labels",
            format!(
                "label {index} is {}, expected a value in [0, 1]",
                labels[index]
            ),
        ));
    }
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| {
            let (z, y) = (f64::from(z), f64::from(y));
            z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
        })
        .sum();
    Ok(total / logits.len() as f64)
}

/// Mean squared error of `predictions` against `targets`. Errors on empty,
/// mismatched or non-finite input.
pub fn mse(predictions: &[f32], targets: &[f32]) -> Result<f64> {
    check_pair("mse", "predictions", predictions, "targets", targets)?;
    let total: f64 = predictions
        .iter()
        .zip(targets)
        .map(|(&p, &t)| (f64::from(p) - f64::from(t)).powi(2))
        .sum();
    Ok(total / predictions.len() as f64)
}

/// The AUC of `scores` against soft labels: each item is a positive of weight
/// `probabilities[i]` and a negative of weight `1 − probabilities[i]`, so the result
/// is the probability that an item drawn in proportion to its probability outranks
/// one drawn in proportion to its complement (a tie counting one half). With 0/1
/// probabilities it is [`auc`]; with true probabilities it is the AUC that labels
/// drawn from them tend to as items grow, without the draw's noise: how well the
/// scores rank the true probabilities.
///
/// Errors if the lengths differ, a value is non-finite, a probability is outside
/// `[0, 1]`, or the positives' or the negatives' total weight is 0.
pub fn probability_auc(scores: &[f32], probabilities: &[f32]) -> Result<f64> {
    check_pair(
        "probability_auc",
        "scores",
        scores,
        "probabilities",
        probabilities,
    )?;
    if let Some(index) = probabilities.iter().position(|p| !(0.0..=1.0).contains(p)) {
        return Err(Error::invalid(
            "probability_auc probabilities",
            format!(
                "probability {index} is {}, expected a value in [0, 1]",
                probabilities[index]
            ),
        ));
    }
    let positive = |i: usize| probabilities[i] as f64;
    let (total_positive, total_negative) = (0..scores.len()).fold((0.0, 0.0), |(p, n), i| {
        (p + positive(i), n + 1.0 - positive(i))
    });
    if total_positive == 0.0 || total_negative == 0.0 {
        return Err(Error::invalid(
            "probability_auc probabilities",
            "all 0 or all 1; the AUC needs weight on both sides".to_string(),
        ));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // For each tie group from the lowest score up: its positives beat the
    // negatives below it, and half its own negatives.
    let (mut wins, mut negatives_below) = (0.0f64, 0.0f64);
    for group in order.chunk_by(|&a, &b| scores[a] == scores[b]) {
        let p: f64 = group.iter().map(|&i| positive(i)).sum();
        let n: f64 = group.iter().map(|&i| 1.0 - positive(i)).sum();
        wins += p * (negatives_below + 0.5 * n);
        negatives_below += n;
    }
    // Each item paired with itself is a tie of weight p(1 − p): leave those out.
    let own: f64 = (0..scores.len())
        .map(|i| positive(i) * (1.0 - positive(i)))
        .sum();
    Ok((wins - 0.5 * own) / (total_positive * total_negative - own))
}

/// Equal, non-zero lengths and finite values: a mean over nothing or over a NaN
/// would silently poison a reported result.
fn check_pair(context: &str, a_name: &str, a: &[f32], b_name: &str, b: &[f32]) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::shape(
            context,
            b_name,
            format!("{} values (as many as `{a_name}`)", a.len()),
            format!("{} values", b.len()),
        ));
    }
    if a.is_empty() {
        return Err(Error::invalid(
            context,
            format!("`{a_name}` and `{b_name}` are empty"),
        ));
    }
    for (name, values) in [(a_name, a), (b_name, b)] {
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{context} {name}"),
                index,
                value: values[index],
            });
        }
    }
    Ok(())
}
