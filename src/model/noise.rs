//! The draws `ε` of a noisy gate's training steps, made on the host from the model's
//! seed and the step number alone: the same model and steps see the same noise on
//! every run (and after resuming from a checkpoint), and the CPU reference can be fed
//! exactly the noise the device saw.

use crate::rng::Rng;

/// Sub-stream of the model's seed the noise comes from, far from the parameters'
/// streams (numbered from 0).
const NOISE_STREAM: u64 = 0x6e6f_6973_655f_6570; // "noise_ep"

/// `len` standard normal draws for training step `step` (1-based) of a model seeded
/// with `seed`, in the order of the noise tensor `[gates, rows, experts]`.
pub(crate) fn draws(seed: u64, step: u32, len: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed).fork(NOISE_STREAM).fork(step as u64);
    (0..len).map(|_| rng.normal() as f32).collect()
}
