//! The per-device table of autotuned kernel choices, kept in memory and optionally in
//! a cache file shared by every process on the machine.
//!
//! The table only stores choices; measuring candidates is the kernels' job
//! ([`crate::kernels::tune`]). A choice is a short text (a tiling's `Display`), keyed
//! by the kernel, its pass and its shape class. The file holds one line per choice,
//! `device<TAB>kernel key<TAB>choice`, where the device part names the adapter, the
//! backend, the driver with its version and this crate's version, so a driver or
//! crate upgrade tunes afresh. The file is a cache: if it cannot be read or written,
//! tuning still works in memory and training never fails because of it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{AdapterReport, Gpu};

/// Environment variable selecting the [`TuneMode`]: `off`, `fast` or `full`.
pub const TUNE_ENV: &str = "MMOE_WGPU_TUNE";
/// Environment variable naming the tuning cache file; `off` keeps choices in memory.
pub const TUNE_CACHE_ENV: &str = "MMOE_WGPU_TUNE_CACHE";

/// How kernels choose their tiling on first use. On the web tuning is always
/// [`TuneMode::Off`]: timing a candidate waits for the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TuneMode {
    /// Fixed defaults, no measuring (`MMOE_WGPU_TUNE=off`).
    Off,
    /// On a CPU adapter (lavapipe), measure only the candidates whose compile time the
    /// kernel's work can repay, which keeps a cold start within seconds; on a GPU,
    /// where pipelines compile in milliseconds, the same as [`TuneMode::Full`].
    #[default]
    Fast,
    /// Measure every tiling the device supports, whatever it costs to compile.
    Full,
}

impl TuneMode {
    /// The mode named by [`TUNE_ENV`]; unset or unrecognised means [`TuneMode::Fast`].
    pub fn from_env() -> TuneMode {
        match std::env::var(TUNE_ENV).as_deref().map(str::trim) {
            Ok("off" | "0" | "false") => TuneMode::Off,
            Ok("full" | "exhaustive") => TuneMode::Full,
            _ => TuneMode::Fast,
        }
    }
}

/// Where tuning choices persist between processes.
pub fn cache_path_from_env() -> Option<PathBuf> {
    match std::env::var_os(TUNE_CACHE_ENV) {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
            Some(base.join("mmoe-wgpu").join("tuning.tsv"))
        }
    }
}

/// How a kernel's tiling was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneSource {
    /// Tuning is off: the fixed default.
    Default,
    /// Only one candidate was worth compiling for this shape.
    Only,
    /// Measured in this process.
    Measured,
    /// Read from the cache file.
    Cached,
}

/// One tuning decision, for reports and benches.
#[derive(Clone, Debug)]
pub struct TuneRecord {
    /// Kernel, pass and shape class.
    pub key: String,
    /// The choice.
    pub chosen: String,
    /// How it was chosen.
    pub source: TuneSource,
    /// Every candidate measured, with its best time on the tuning problem.
    pub measured: Vec<(String, Duration)>,
    /// Host time spent choosing, compilation of the candidates included.
    pub spent: Duration,
}

pub(crate) struct TuneTable {
    mode: TuneMode,
    file: Option<PathBuf>,
    device_key: String,
    state: Mutex<TuneState>,
}

#[derive(Default)]
struct TuneState {
    file_loaded: bool,
    choices: HashMap<String, String>,
    records: Vec<TuneRecord>,
}

fn device_key(report: &AdapterReport) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    format!(
        "{} | {:?} | {} {} | mmoe-wgpu {}",
        clean(&report.name),
        report.backend,
        clean(&report.driver),
        clean(&report.driver_info),
        env!("CARGO_PKG_VERSION")
    )
}

impl TuneTable {
    /// On the web tuning is off: timing a candidate waits for the device.
    pub(crate) fn new(mode: TuneMode, file: Option<PathBuf>, report: &AdapterReport) -> Self {
        #[cfg(target_arch = "wasm32")]
        let (mode, file) = {
            let _ = (mode, file);
            (TuneMode::Off, None)
        };
        TuneTable {
            mode,
            file,
            device_key: device_key(report),
            state: Mutex::new(TuneState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TuneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_file(&self, state: &mut TuneState) {
        if state.file_loaded {
            return;
        }
        state.file_loaded = true;
        let Some(text) = self
            .file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
        else {
            return;
        };
        for line in text.lines() {
            let mut parts = line.split('\t');
            if let (Some(device), Some(key), Some(choice), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && device == self.device_key
            {
                state.choices.insert(key.to_owned(), choice.to_owned());
            }
        }
    }

    /// Rewrites the whole file through a temporary one, so a reader never sees half a
    /// line and concurrent writers at worst lose each other's newest entries.
    fn save_file(&self, key: &str, choice: &str) {
        let Some(path) = &self.file else { return };
        let mut lines: Vec<String> = std::fs::read_to_string(path)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let prefix = format!("{}\t{key}\t", self.device_key);
        lines.retain(|l| !l.starts_with(&prefix));
        lines.push(format!("{prefix}{choice}"));
        let text = lines.join("\n") + "\n";
        // A cache that cannot be written only costs the next process a re-tune.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = crate::atomic_file::replace(path, |file| file.write_all(text.as_bytes()));
    }
}

impl Gpu {
    /// How kernels on this device choose their tiling.
    pub fn tune_mode(&self) -> TuneMode {
        self.tuning().mode
    }

    /// The tuning cache file, if choices persist across processes.
    pub fn tune_cache_file(&self) -> Option<&Path> {
        self.tuning().file.as_deref()
    }

    /// Every tuning decision made on this device so far, in order.
    pub fn tune_records(&self) -> Vec<TuneRecord> {
        self.tuning().state().records.clone()
    }

    /// Makes `choice` the stored choice for the tuning key `key` (a
    /// [`TuneRecord::key`]), in memory only, as a cache file entry would: the next
    /// kernel built for that key uses it without measuring, if it is one of the
    /// kernel's valid tilings (otherwise it tunes as usual). For experiments and
    /// benchmarks that compare tilings inside whole programs, e.g. a training step
    /// with the naive GEMM kernels.
    pub fn pin_tuning(&self, key: &str, choice: &str) {
        let table = self.tuning();
        let mut state = table.state();
        table.load_file(&mut state);
        state.choices.insert(key.to_owned(), choice.to_owned());
    }

    /// The stored choice for `key`, from memory or the cache file.
    pub(crate) fn tuned_choice(&self, key: &str) -> Option<String> {
        let table = self.tuning();
        let mut state = table.state();
        table.load_file(&mut state);
        state.choices.get(key).cloned()
    }

    /// Remembers a decision; measured ones also go to the cache file.
    pub(crate) fn record_tuning(&self, record: TuneRecord) {
        let table = self.tuning();
        if record.source == TuneSource::Measured {
            table.save_file(&record.key, &record.chosen);
        }
        let mut state = table.state();
        state
            .choices
            .insert(record.key.clone(), record.chosen.clone());
        state.records.push(record);
    }
}
