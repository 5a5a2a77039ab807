//! ESMM pairs of tasks (Ma et al., SIGIR 2018): which tasks pair up, the loss each
//! task of a pair trains with, and the extra pCTCVR output per pair.

use super::config::{HeadKind, ModelConfig, TaskConfig, TaskKind};
use crate::shape::{LossKind, TaskLoss};
use crate::{Error, Result};

/// An ESMM pair of a model: indices of its CTR and CVR tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EsmmPair {
    /// The CTR task (its target: the click).
    pub ctr: usize,
    /// The CVR task (its target: the conversion), whose head is
    /// [`HeadKind::EsmmCvr`].
    pub cvr: usize,
}

impl ModelConfig {
    /// The ESMM pairs, in the order of their CVR tasks (empty for a model without
    /// [`HeadKind::EsmmCvr`] tasks). The config must be valid.
    pub fn esmm_pairs(&self) -> Vec<EsmmPair> {
        pairs(&self.tasks)
    }

    /// The names of the outputs [`Trainer::predict`](super::Trainer::predict)
    /// returns, in order: every task's name (its value, or its probability: pCTR
    /// and pCVR for an ESMM pair's tasks), then one `"{ctr}_and_{cvr}"` per ESMM
    /// pair in [`esmm_pairs`](Self::esmm_pairs) order, its pCTCVR `pCTR · pCVR`.
    pub fn output_names(&self) -> Vec<String> {
        let tasks = self.tasks.iter().map(|t| t.name.clone());
        let products = self
            .esmm_pairs()
            .into_iter()
            .map(|p| format!("{}_and_{}", self.tasks[p.ctr].name, self.tasks[p.cvr].name));
        tasks.chain(products).collect()
    }
}

/// The pairs of valid `tasks`.
pub(super) fn pairs(tasks: &[TaskConfig]) -> Vec<EsmmPair> {
    tasks
        .iter()
        .enumerate()
        .filter_map(|(cvr, task)| match &task.head {
            HeadKind::EsmmCvr { ctr } => Some(EsmmPair {
                ctr: tasks.iter().position(|t| &t.name == ctr)?,
                cvr,
            }),
            HeadKind::Own => None,
        })
        .collect()
}

/// Each task's loss kind and weight: an ESMM pair's tasks name each other.
pub(super) fn task_losses(tasks: &[TaskConfig]) -> Vec<TaskLoss> {
    let mut kinds: Vec<LossKind> = tasks.iter().map(|t| t.kind.loss()).collect();
    for pair in pairs(tasks) {
        kinds[pair.ctr] = LossKind::EsmmCtr { cvr: pair.cvr };
        kinds[pair.cvr] = LossKind::EsmmCtcvr { ctr: pair.ctr };
    }
    kinds
        .into_iter()
        .zip(tasks)
        .map(|(kind, t)| TaskLoss {
            kind,
            weight: t.weight,
        })
        .collect()
}

/// Checks every ESMM pair: the CTR task it names exists (once), is another task,
/// and both are binary classification tasks in no other pair.
pub(super) fn validate(tasks: &[TaskConfig]) -> Result<()> {
    let mut paired: Vec<Option<&str>> = vec![None; tasks.len()];
    for (cvr, task) in tasks.iter().enumerate() {
        let HeadKind::EsmmCvr { ctr: ctr_name } = &task.head else {
            continue;
        };
        let bad = |what: String| {
            Err(Error::invalid(
                "model config",
                format!("ESMM pair of CVR task `{}`: {what}", task.name),
            ))
        };
        let named: Vec<usize> = (0..tasks.len())
            .filter(|&t| tasks[t].name == *ctr_name)
            .collect();
        let ctr = match named[..] {
            [] => {
                return bad(format!(
                    "its CTR task `{ctr_name}` is not a task of this model"
                ));
            }
            [t] => t,
            _ => {
                return bad(format!(
                    "{} tasks are called `{ctr_name}`, its CTR task",
                    named.len()
                ));
            }
        };
        if ctr == cvr {
            return bad("it names itself as its CTR task; a pair is two tasks".into());
        }
        for t in [ctr, cvr] {
            if tasks[t].kind != TaskKind::BinaryClassification {
                return bad(format!(
                    "task `{}` is {:?}; ESMM pairs two binary classification tasks",
                    tasks[t].name, tasks[t].kind
                ));
            }
        }
        let same_name = tasks.iter().filter(|t| t.name == task.name).count();
        if same_name > 1 {
            return bad(format!("{same_name} tasks are called `{}`", task.name));
        }
        for t in [ctr, cvr] {
            if let Some(other) = paired[t] {
                return bad(format!(
                    "task `{}` is already in the pair of CVR task `{other}`; a task is \
                     in at most one pair",
                    tasks[t].name
                ));
            }
            paired[t] = Some(&task.name);
        }
    }
    Ok(())
}
