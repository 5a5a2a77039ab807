//! Metrics against hand-computed values, a brute-force pairwise AUC, and rejection of
//! input for which a metric is undefined.

use mmoe_wgpu::Error;
use mmoe_wgpu::metrics::{auc, log_loss, mse, probability_auc};
use mmoe_wgpu::rng::Rng;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn auc_hand_computed_cases() {
    // Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered.
    assert!(close(
        auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap(),
        0.75
    ));
    assert!(close(
        auc(&[0.1, 0.2, 0.3, 0.4], &[0.0, 0.0, 1.0, 1.0]).unwrap(),
        1.0
    ));
    assert!(close(
        auc(&[0.4, 0.3, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]).unwrap(),
        0.0
    ));
    assert!(close(
        auc(&[0.5; 6], &[0.0, 1.0, 0.0, 1.0, 1.0, 0.0]).unwrap(),
        0.5
    ));
    // One tie between a positive and a negative at 0.5: pairs (0.5+, 0.2-) 1,
    // (0.5+, 0.5-) ½, (0.9+, both) 2 → 3.5 of 4.
    assert!(close(
        auc(&[0.2, 0.5, 0.5, 0.9], &[0.0, 0.0, 1.0, 1.0]).unwrap(),
        0.875
    ));
    // Input order does not matter.
    assert!(close(
        auc(&[0.9, 0.5, 0.2, 0.5], &[1.0, 1.0, 0.0, 0.0]).unwrap(),
        0.875
    ));
}

#[test]
fn auc_matches_pairwise_counting_with_many_ties() {
    let mut rng = Rng::new(9);
    let n = 500;
    // Scores on a coarse grid so that ties are frequent.
    let scores: Vec<f32> = (0..n).map(|_| rng.below(20) as f32 / 20.0).collect();
    let labels: Vec<f32> = (0..n).map(|_| (rng.unit() < 0.3) as u8 as f32).collect();
    let mut credit = 0.0;
    let mut pairs = 0.0;
    for i in (0..n).filter(|&i| labels[i] == 1.0) {
        for j in (0..n).filter(|&j| labels[j] == 0.0) {
            pairs += 1.0;
            credit += match scores[i].partial_cmp(&scores[j]).unwrap() {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    assert!(close(auc(&scores, &labels).unwrap(), credit / pairs));
}

#[test]
fn auc_rejects_undefined_cases() {
    assert!(matches!(
        auc(&[0.1, 0.2], &[1.0, 1.0]),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        auc(&[0.1, 0.2], &[0.0, 0.0]),
        Err(Error::Invalid { .. })
    ));
    assert!(auc(&[], &[]).is_err());
    assert!(matches!(auc(&[0.1, 0.2], &[0.0]), Err(Error::Shape { .. })));
    assert!(matches!(
        auc(&[0.1, f32::NAN], &[0.0, 1.0]),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        auc(&[0.1, 0.2], &[0.0, 0.5]),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn log_loss_on_logits_is_exact_and_stable() {
    let ln2 = std::f64::consts::LN_2;
    assert!(close(log_loss(&[0.0, 0.0], &[0.0, 1.0]).unwrap(), ln2));
    // z = 2, y = 1: ln(1 + e^-2); z = -1, y = 0: ln(1 + e^-1).
    let expected = ((1.0 + (-2.0f64).exp()).ln() + (1.0 + (-1.0f64).exp()).ln()) / 2.0;
    assert!(close(
        log_loss(&[2.0, -1.0], &[1.0, 0.0]).unwrap(),
        expected
    ));
    // Soft label 0.25 at z = 0 still costs ln 2.
    assert!(close(log_loss(&[0.0], &[0.25]).unwrap(), ln2));
    // A confident mistake costs about |z| rather than overflowing to infinity.
    let loss = log_loss(&[1000.0, -1000.0], &[0.0, 1.0]).unwrap();
    assert!(close(loss, 1000.0), "{loss}");
    assert!(log_loss(&[100.0], &[1.0]).unwrap() < 1e-40);
    assert!(log_loss(&[], &[]).is_err());
    assert!(log_loss(&[0.0], &[1.5]).is_err());
    assert!(log_loss(&[f32::INFINITY], &[1.0]).is_err());
    assert!(log_loss(&[0.0, 1.0], &[1.0]).is_err());
}

#[test]
fn mse_hand_computed_and_rejections() {
    assert!(close(
        mse(&[1.0, 2.0, 3.0], &[1.0, 0.0, 6.0]).unwrap(),
        13.0 / 3.0
    ));
    assert!(close(mse(&[0.5], &[0.5]).unwrap(), 0.0));
    assert!(mse(&[], &[]).is_err());
    assert!(matches!(mse(&[1.0], &[1.0, 2.0]), Err(Error::Shape { .. })));
    assert!(matches!(
        mse(&[1.0, 2.0], &[0.0, f32::NEG_INFINITY]),
        Err(Error::NonFinite { index: 1, .. })
    ));
}

#[test]
fn probability_auc_is_the_auc_on_hard_labels_and_pairwise_on_soft_ones() {
    let mut rng = Rng::new(4);
    // Scores with ties (rounded to a tenth).
    let scores: Vec<f32> = (0..60)
        .map(|_| (rng.unit() * 10.0).round() as f32 / 10.0)
        .collect();
    let hard: Vec<f32> = (0..60).map(|_| (rng.unit() < 0.4) as u8 as f32).collect();
    assert!(close(
        probability_auc(&scores, &hard).unwrap(),
        auc(&scores, &hard).unwrap()
    ));
    let soft: Vec<f32> = (0..60).map(|_| rng.unit() as f32).collect();
    // Brute force over ordered pairs of distinct items.
    let (mut wins, mut weight) = (0.0f64, 0.0f64);
    for i in 0..60 {
        for j in 0..60 {
            if i == j {
                continue;
            }
            let w = soft[i] as f64 * (1.0 - soft[j] as f64);
            weight += w;
            wins += w * match scores[i].total_cmp(&scores[j]) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    assert!(close(
        probability_auc(&scores, &soft).unwrap(),
        wins / weight
    ));
    // Scores that are the probabilities rank them perfectly but for ties.
    let perfect = probability_auc(&soft, &soft).unwrap();
    assert!(perfect > 0.5 && perfect > probability_auc(&scores, &soft).unwrap());
    for (p, needle) in [
        (vec![0.5f32, 1.5], "[0, 1]"),
        (vec![0.0f32, 0.0], "both sides"),
        (vec![f32::NAN, 0.5], "probabilities"),
    ] {
        let e = probability_auc(&[0.1, 0.2], &p).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
}
