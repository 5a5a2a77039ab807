//! [`ModelConfig`] as JSON text, stable across releases: field names are spelt out
//! here rather than derived, and every `f32` is written in its shortest form that
//! parses back to the same bits.

use super::json::{self, Fields, Value};
use crate::model::{
    Architecture, BalanceLoss, Gate, GateKind, ModelConfig, Selection, TaskConfig, TaskKind,
};
use crate::shape::OptimizerConfig;

/// One line of JSON, keys in a fixed order.
pub(crate) fn encode(config: &ModelConfig) -> Result<String, String> {
    let f = json::number_f32;
    let list = |widths: &[usize]| {
        let items: Vec<String> = widths.iter().map(usize::to_string).collect();
        format!("[{}]", items.join(","))
    };
    let gate = |gate: &Gate| -> Result<String, String> {
        let kind = match gate.kind {
            GateKind::Softmax => r#""kind":"softmax""#.to_string(),
            GateKind::TopK { k } => format!(r#""kind":"top_k","k":{k}"#),
            GateKind::Static => r#""kind":"static""#.to_string(),
        };
        let loss = match gate.balance_loss {
            BalanceLoss::Importance => "importance",
            BalanceLoss::Load => "load",
        };
        let selection = match gate.selection {
            Selection::PerGate => "per_gate",
            Selection::Shared => "shared",
        };
        Ok(format!(
            r#"{{{kind},"balance_weight":{},"noisy":{},"balance_loss":"{loss}","selection":"{selection}"}}"#,
            f(gate.balance_weight)?,
            gate.noisy
        ))
    };
    let architecture = match &config.architecture {
        Architecture::Mmoe {
            experts,
            expert_layers,
            gate: g,
            task_experts,
        } => format!(
            r#"{{"kind":"mmoe","experts":{experts},"expert_layers":{},"gate":{},"task_experts":{task_experts}}}"#,
            list(expert_layers),
            gate(g)?
        ),
        Architecture::Omoe {
            experts,
            expert_layers,
            gate: g,
        } => format!(
            r#"{{"kind":"omoe","experts":{experts},"expert_layers":{},"gate":{}}}"#,
            list(expert_layers),
            gate(g)?
        ),
        Architecture::SharedBottom { bottom_layers } => format!(
            r#"{{"kind":"shared_bottom","bottom_layers":{}}}"#,
            list(bottom_layers)
        ),
    };
    let mut tasks = Vec::new();
    for task in &config.tasks {
        let kind = match task.kind {
            TaskKind::Regression => "regression",
            TaskKind::BinaryClassification => "binary_classification",
        };
        tasks.push(format!(
            r#"{{"name":{},"kind":"{kind}","weight":{}}}"#,
            json::string(&task.name),
            f(task.weight)?
        ));
    }
    let optimizer = match config.optimizer {
        OptimizerConfig::Sgd { momentum } => {
            format!(r#"{{"kind":"sgd","momentum":{}}}"#, f(momentum)?)
        }
        OptimizerConfig::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
        }
        | OptimizerConfig::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let kind = if matches!(config.optimizer, OptimizerConfig::Adam { .. }) {
                "adam"
            } else {
                "adamw"
            };
            format!(
                r#"{{"kind":"{kind}","beta1":{},"beta2":{},"eps":{},"weight_decay":{}}}"#,
                f(beta1)?,
                f(beta2)?,
                f(eps)?,
                f(weight_decay)?
            )
        }
    };
    Ok(format!(
        r#"{{"inputs":{},"shared_layers":{},"architecture":{architecture},"tower_layers":{},"tasks":[{}],"optimizer":{optimizer},"learning_rate":{},"seed":{}}}"#,
        config.inputs,
        list(&config.shared_layers),
        list(&config.tower_layers),
        tasks.join(","),
        f(config.learning_rate)?,
        config.seed
    ))
}

/// The config in `value`, every field required and none unknown; `what` is the
/// path of `value` in error messages. The result is not yet validated.
pub(crate) fn decode(value: &Value, what: &str) -> Result<ModelConfig, String> {
    let mut fields = Fields::new(value, what)?;
    let widths = |v: &Value, path: String| -> Result<Vec<usize>, String> {
        v.items(&path)?
            .iter()
            .enumerate()
            .map(|(i, w)| w.size(&format!("{path}[{i}]")))
            .collect()
    };
    let inputs = fields.get("inputs")?.size(&fields.path("inputs"))?;
    let shared_layers = widths(fields.get("shared_layers")?, fields.path("shared_layers"))?;
    let architecture = architecture(fields.get("architecture")?, &fields.path("architecture"))?;
    let tower_layers = widths(fields.get("tower_layers")?, fields.path("tower_layers"))?;
    let tasks_path = fields.path("tasks");
    let tasks = fields
        .get("tasks")?
        .items(&tasks_path)?
        .iter()
        .enumerate()
        .map(|(i, t)| task(t, &format!("{tasks_path}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let optimizer = optimizer(fields.get("optimizer")?, &fields.path("optimizer"))?;
    let learning_rate = fields
        .get("learning_rate")?
        .float(&fields.path("learning_rate"))?;
    let seed = fields.get("seed")?.integer(&fields.path("seed"))?;
    fields.finish()?;
    Ok(ModelConfig {
        inputs,
        shared_layers,
        architecture,
        tower_layers,
        tasks,
        optimizer,
        learning_rate,
        seed,
    })
}

fn architecture(value: &Value, what: &str) -> Result<Architecture, String> {
    let mut fields = Fields::new(value, what)?;
    let kind_path = fields.path("kind");
    let kind = fields.get("kind")?.text(&kind_path)?;
    let layers = |fields: &mut Fields, key: &str| -> Result<Vec<usize>, String> {
        let path = fields.path(key);
        fields
            .get(key)?
            .items(&path)?
            .iter()
            .enumerate()
            .map(|(i, w)| w.size(&format!("{path}[{i}]")))
            .collect()
    };
    let architecture = match kind {
        "mmoe" | "omoe" => {
            let experts = fields.get("experts")?.size(&fields.path("experts"))?;
            let expert_layers = layers(&mut fields, "expert_layers")?;
            // Both absent from checkpoints written before gates had kinds.
            let gate = match fields.optional("gate") {
                Some(value) => gate(value, &fields.path("gate"))?,
                None => Gate::SOFTMAX,
            };
            if kind == "mmoe" {
                let task_experts = match fields.optional("task_experts") {
                    Some(value) => value.size(&fields.path("task_experts"))?,
                    None => 0,
                };
                Architecture::Mmoe {
                    experts,
                    expert_layers,
                    gate,
                    task_experts,
                }
            } else {
                Architecture::Omoe {
                    experts,
                    expert_layers,
                    gate,
                }
            }
        }
        "shared_bottom" => Architecture::SharedBottom {
            bottom_layers: layers(&mut fields, "bottom_layers")?,
        },
        other => {
            return Err(format!(
                "`{kind_path}` is `{other}`; expected mmoe, omoe or shared_bottom"
            ));
        }
    };
    fields.finish()?;
    Ok(architecture)
}

fn gate(value: &Value, what: &str) -> Result<Gate, String> {
    let mut fields = Fields::new(value, what)?;
    let kind_path = fields.path("kind");
    let kind = match fields.get("kind")?.text(&kind_path)? {
        "softmax" => GateKind::Softmax,
        "top_k" => GateKind::TopK {
            k: fields.get("k")?.size(&fields.path("k"))?,
        },
        "static" => GateKind::Static,
        other => {
            return Err(format!(
                "`{kind_path}` is `{other}`; expected softmax, top_k or static"
            ));
        }
    };
    let balance_weight = fields
        .get("balance_weight")?
        .float(&fields.path("balance_weight"))?;
    // Absent from checkpoints written before gates could be noisy.
    let noisy = match fields.optional("noisy") {
        Some(value) => value.boolean(&fields.path("noisy"))?,
        None => false,
    };
    // Absent from checkpoints written before the load loss: the importance loss.
    let balance_loss = match fields.optional("balance_loss") {
        Some(value) => {
            let path = fields.path("balance_loss");
            match value.text(&path)? {
                "importance" => BalanceLoss::Importance,
                "load" => BalanceLoss::Load,
                other => {
                    return Err(format!(
                        "`{path}` is `{other}`; expected importance or load"
                    ));
                }
            }
        }
        None => BalanceLoss::Importance,
    };
    // Absent from checkpoints written before gates could share a selection.
    let selection = match fields.optional("selection") {
        Some(value) => {
            let path = fields.path("selection");
            match value.text(&path)? {
                "per_gate" => Selection::PerGate,
                "shared" => Selection::Shared,
                other => {
                    return Err(format!(
                        "`{path}` is `{other}`; expected per_gate or shared"
                    ));
                }
            }
        }
        None => Selection::PerGate,
    };
    fields.finish()?;
    Ok(Gate {
        kind,
        balance_weight,
        balance_loss,
        noisy,
        selection,
    })
}

fn task(value: &Value, what: &str) -> Result<TaskConfig, String> {
    let mut fields = Fields::new(value, what)?;
    let name = fields.get("name")?.text(&fields.path("name"))?.to_string();
    let kind_path = fields.path("kind");
    let kind = match fields.get("kind")?.text(&kind_path)? {
        "regression" => TaskKind::Regression,
        "binary_classification" => TaskKind::BinaryClassification,
        other => {
            return Err(format!(
                "`{kind_path}` is `{other}`; expected regression or binary_classification"
            ));
        }
    };
    let weight = fields.get("weight")?.float(&fields.path("weight"))?;
    fields.finish()?;
    Ok(TaskConfig { name, kind, weight })
}

fn optimizer(value: &Value, what: &str) -> Result<OptimizerConfig, String> {
    let mut fields = Fields::new(value, what)?;
    let kind_path = fields.path("kind");
    let kind = fields.get("kind")?.text(&kind_path)?;
    let mut float = |key: &str| -> Result<f32, String> {
        let path = fields.path(key);
        fields.get(key)?.float(&path)
    };
    let optimizer = match kind {
        "sgd" => OptimizerConfig::Sgd {
            momentum: float("momentum")?,
        },
        "adam" | "adamw" => {
            let (beta1, beta2) = (float("beta1")?, float("beta2")?);
            let (eps, weight_decay) = (float("eps")?, float("weight_decay")?);
            if kind == "adam" {
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                }
            } else {
                OptimizerConfig::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                }
            }
        }
        other => {
            return Err(format!(
                "`{kind_path}` is `{other}`; expected sgd, adam or adamw"
            ));
        }
    };
    fields.finish()?;
    Ok(optimizer)
}

/// The first field in which `found` differs from `expected`, ignoring the learning
/// rate (the caller's schedule moves it), as `field: expected …, found …`.
pub(crate) fn mismatch(expected: &ModelConfig, found: &ModelConfig) -> Option<String> {
    let differ = |field: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        Some(format!("{field}: expected {a:?}, found {b:?}"))
    };
    if expected.inputs != found.inputs {
        return differ("inputs", &expected.inputs, &found.inputs);
    }
    if expected.shared_layers != found.shared_layers {
        return differ(
            "shared_layers",
            &expected.shared_layers,
            &found.shared_layers,
        );
    }
    if expected.architecture != found.architecture {
        return differ("architecture", &expected.architecture, &found.architecture);
    }
    if expected.tower_layers != found.tower_layers {
        return differ("tower_layers", &expected.tower_layers, &found.tower_layers);
    }
    if expected.tasks != found.tasks {
        return differ("tasks", &expected.tasks, &found.tasks);
    }
    if expected.optimizer != found.optimizer {
        return differ("optimizer", &expected.optimizer, &found.optimizer);
    }
    if expected.seed != found.seed {
        return differ("seed", &expected.seed, &found.seed);
    }
    None
}
