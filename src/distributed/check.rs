//! Fingerprints that every process must agree on, compared across the job.

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::watchdog::Watchdog;
use crate::model::Trainer;
use crate::{Error, Result};

/// A 64-bit FNV-1a hash: a fingerprint for comparing processes, not for security.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Adds `bytes`.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Adds `values`, bit for bit.
    pub fn add_f32(&mut self, values: &[f32]) -> &mut Self {
        self.add(&(values.len() as u64).to_le_bytes());
        self.add(bytemuck::cast_slice(values))
    }

    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The trainer's config (and the global batch) as one fingerprint.
pub(super) fn config_fingerprint(trainer: &Trainer, global_batch: usize) -> u64 {
    let mut f = Fingerprint::default();
    f.add(format!("{:?}", trainer.config()).as_bytes())
        .add(&(global_batch as u64).to_le_bytes());
    f.value()
}

/// The trainer's state: parameters, tables, optimizer state, step count and
/// learning rate.
pub(super) fn state_fingerprint(trainer: &Trainer) -> Result<u64> {
    let executor = trainer.executor();
    let mut f = Fingerprint::default();
    f.add_f32(&executor.parameters()?);
    for state in executor.optimizer_state()? {
        f.add_f32(&state);
    }
    for t in 0..trainer.model().graph.tables().len() {
        f.add_f32(&executor.table(t)?);
        for state in executor.table_state(t)? {
            f.add_f32(&state);
        }
    }
    f.add(&trainer.steps().to_le_bytes())
        .add(&trainer.learning_rate().to_le_bytes());
    Ok(f.value())
}

/// Err naming the ranks whose fingerprints of `names[i]` differ from rank 0's.
pub(super) fn check_same(
    world: &SimpleCommunicator,
    watchdog: &Watchdog,
    when: &str,
    names: &[&str],
    mine: &[u64],
) -> Result<()> {
    let ranks = world.size() as usize;
    let mut all = vec![0u64; ranks * mine.len()];
    watchdog.guard(
        || format!("the check of {names:?} {when}"),
        || world.all_gather_into(mine, &mut all[..]),
    );
    let mut problems = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let of = |r: usize| all[r * mine.len() + i];
        let differ: Vec<usize> = (1..ranks).filter(|&r| of(r) != of(0)).collect();
        if !differ.is_empty() {
            problems.push(format!(
                "the {name} of rank(s) {differ:?} differ(s) from rank 0's (fingerprints {:016x?})",
                (0..ranks).map(of).collect::<Vec<_>>()
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Distributed {
        rank: world.rank() as usize,
        ranks,
        message: format!(
            "{when}: {}; every rank must build the same model from the same config, seed or \
             checkpoint, and read the same data",
            problems.join("; ")
        ),
    })
}
