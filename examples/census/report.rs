//! What a census run reports: a table for people, or one JSON object.

use crate::args::Options;
use crate::{group_number, task_keys};

/// The results of a run, at its best epoch.
pub struct Outcome {
    pub best_epoch: usize,
    pub steps: usize,
    pub validation: [f64; 2],
    pub test: [f64; 2],
    pub load_seconds: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub seconds: f64,
}

pub fn print(o: &Options, r: &Outcome) {
    let keys = task_keys(o.group);
    println!(
        "best epoch {} of {} by validation AUC of {}; {} steps, {:.1} steps/s",
        r.best_epoch,
        o.epochs,
        keys[0],
        r.steps,
        r.steps as f64 / r.train_seconds
    );
    println!("{:<12} {:>10} {:>10}", "AUC", "validation", "test");
    for (t, key) in keys.iter().enumerate() {
        println!("{key:<12} {:>10.4} {:>10.4}", r.validation[t], r.test[t]);
    }
    println!(
        "wall time {:.1} s (device and data {:.1} s, training {:.1} s, evaluation {:.1} s)",
        r.seconds, r.load_seconds, r.train_seconds, r.eval_seconds
    );
    if let Some(path) = &o.save {
        println!("checkpoint of epoch {} in {}", r.best_epoch, path.display());
    }
}

pub fn json(o: &Options, r: &Outcome) -> String {
    let keys = task_keys(o.group);
    let mut fields = vec![
        format!("\"group\":{}", group_number(o.group)),
        format!("\"model\":\"{}\"", o.model.name()),
        format!("\"features\":\"{}\"", o.features.name()),
        format!("\"seed\":{}", o.seed),
        format!("\"epochs\":{}", o.epochs),
        format!("\"best_epoch\":{}", r.best_epoch),
        format!("\"steps\":{}", r.steps),
        format!("\"batch\":{}", o.batch),
        format!("\"experts\":{}", o.experts),
        format!("\"units\":{}", o.units),
        format!("\"tower\":{}", o.tower),
        format!("\"lr\":{}", o.lr),
        format!("\"seconds\":{:.3}", r.seconds),
        format!("\"train_seconds\":{:.3}", r.train_seconds),
        format!("\"eval_seconds\":{:.3}", r.eval_seconds),
    ];
    for (t, key) in keys.iter().enumerate() {
        fields.push(format!("\"validation_auc_{key}\":{:.6}", r.validation[t]));
        fields.push(format!("\"test_auc_{key}\":{:.6}", r.test[t]));
    }
    format!("{{{}}}", fields.join(","))
}
