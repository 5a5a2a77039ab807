//! A bound on how long a process waits in a collective for the others.
//!
//! MPI has no timeout: a collective whose partner died or hangs blocks for ever
//! (OpenMPI's launcher ends the job when a process dies, but not when one hangs, and
//! not every launcher does even the first). A thread of each process watches the
//! collectives: one that has waited longer than the timeout prints which wait it was
//! and ends the process, and the launcher then ends the rest of the job.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the watching thread looks.
const POLL: Duration = Duration::from_millis(200);

/// Exit status of a process the watchdog ends.
pub const WATCHDOG_EXIT_CODE: i32 = 75;

struct Shared {
    /// Milliseconds since `origin` at which the current wait began, or 0 for none.
    since: AtomicU64,
    timeout_ms: AtomicU64,
    /// What the current wait is, for the message.
    what: Mutex<String>,
    stop: AtomicBool,
}

/// The watching thread and the state of the current wait.
pub(super) struct Watchdog {
    shared: Arc<Shared>,
    origin: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watching thread of process `rank` of `ranks`.
    pub(super) fn start(rank: usize, ranks: usize, timeout: Duration) -> Watchdog {
        let shared = Arc::new(Shared {
            since: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(timeout.as_millis().max(1) as u64),
            what: Mutex::new(String::new()),
            stop: AtomicBool::new(false),
        });
        let origin = Instant::now();
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mmoe-wgpu mpi watchdog".into())
            .spawn(move || watch(&watched, origin, rank, ranks))
            .ok();
        Watchdog {
            shared,
            origin,
            thread,
        }
    }

    pub(super) fn set_timeout(&self, timeout: Duration) {
        self.shared
            .timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Runs `collective`, ending the process if it waits longer than the timeout.
    pub(super) fn guard<T>(
        &self,
        what: impl FnOnce() -> String,
        collective: impl FnOnce() -> T,
    ) -> T {
        *self.shared.what.lock().unwrap_or_else(|p| p.into_inner()) = what();
        let now = self.origin.elapsed().as_millis() as u64;
        self.shared.since.store(now.max(1), Ordering::SeqCst);
        let out = collective();
        self.shared.since.store(0, Ordering::SeqCst);
        out
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, origin: Instant, rank: usize, ranks: usize) {
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(POLL);
        let since = shared.since.load(Ordering::SeqCst);
        if since == 0 {
            continue;
        }
        let waited = (origin.elapsed().as_millis() as u64).saturating_sub(since);
        if waited > shared.timeout_ms.load(Ordering::Relaxed) {
            let what = shared
                .what
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            eprintln!(
                "mmoe-wgpu distributed training, rank {rank} of {ranks}: waited {:.1} s in \
                 {what} for the other ranks, longer than the timeout: another rank failed, \
                 died or hangs; stopping this rank (exit status {WATCHDOG_EXIT_CODE})",
                waited as f64 / 1000.0
            );
            // Not `MPI_Abort`: the main thread is inside MPI, and the library is
            // initialised for one thread. Ending the process is enough for the
            // launcher to end the others.
            std::process::exit(WATCHDOG_EXIT_CODE);
        }
    }
}
