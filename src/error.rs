//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in mmoe-wgpu. Each variant says what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No GPU adapter matched the request.
    #[error(
        "no GPU adapter found{detail}. Install a GPU driver with Vulkan, Metal or DX12 support, \
         or, on a machine without a GPU, Mesa's software Vulkan driver lavapipe \
         (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)"
    )]
    NoAdapter {
        /// What was asked for (backend or name filter), if anything.
        detail: String,
    },

    /// The adapter refused to open a device.
    #[error("could not open a device on adapter `{adapter}`: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },

    /// The device reported a validation, out-of-memory or internal error.
    #[error("GPU error during {during}: {message}")]
    Gpu {
        /// The operation that failed.
        during: String,
        /// wgpu's message.
        message: String,
    },

    /// The device was lost (driver reset, removal or destruction).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// A tensor or buffer has the wrong shape or size.
    #[error("{context}: `{operand}` has {actual} but {expected} was expected")]
    Shape {
        /// The kernel, node or call that checked it.
        context: String,
        /// The operand's name.
        operand: String,
        /// What was required.
        expected: String,
        /// What was given.
        actual: String,
    },

    /// A buffer binding cannot be used as given (usage flags, alignment, aliasing).
    #[error("{context}: buffer for `{operand}` {problem}")]
    Binding {
        /// The kernel that checked it.
        context: String,
        /// The operand's name.
        operand: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A size exceeds what the device allows.
    #[error("{context}: {what} is {value}, over the device limit of {limit}")]
    Limit {
        /// The kernel or call that checked it.
        context: String,
        /// Which quantity.
        what: String,
        /// The requested value.
        value: u64,
        /// The device's limit.
        limit: u64,
    },

    /// A feature the call needs is missing on this adapter.
    #[error("{what} needs the adapter feature {feature}, which `{adapter}` does not have")]
    MissingFeature {
        /// What was asked for.
        what: String,
        /// The missing wgpu feature.
        feature: String,
        /// Adapter name.
        adapter: String,
    },

    /// An invalid configuration or argument.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The configuration item or argument.
        what: String,
        /// Why it is invalid.
        message: String,
    },

    /// A NaN or infinity where finite values are required.
    #[error("{what} holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// The input that holds it.
        what: String,
        /// Flat index of the first non-finite value.
        index: usize,
        /// The value.
        value: f32,
    },

    /// Training diverged: the loss became NaN or infinite.
    #[error("loss of task {task} became non-finite ({value}) at step {step}")]
    NonFiniteLoss {
        /// The optimizer step (1-based) whose forward pass produced it.
        step: u64,
        /// The task whose loss is non-finite.
        task: usize,
        /// The loss value.
        value: f32,
    },

    /// A data file is malformed.
    #[error("{}:{line}: field {field}: {message}", file.display())]
    Data {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field (name or 1-based column).
        field: String,
        /// What is wrong.
        message: String,
    },

    /// A checkpoint cannot be read, or does not fit the model it is restored into.
    #[error("checkpoint {origin}: {what}: {message}")]
    Checkpoint {
        /// The file, or `<in memory>`.
        origin: String,
        /// The part at fault: a tensor (by name), the metadata, the config or the file.
        what: String,
        /// What is wrong.
        message: String,
    },

    /// A call that waits for the device, made where nothing may wait: in a browser,
    /// WebGPU answers only once control returns to the event loop.
    #[error("{call} waits for the device, which WebGPU in a browser cannot do; {instead}")]
    Blocking {
        /// The call.
        call: String,
        /// What to use instead.
        instead: String,
    },

    /// Data-parallel training ([`crate::distributed`]): the processes disagree (on
    /// the config, the parameters or the data) or another process failed.
    #[cfg(feature = "mpi")]
    #[error("distributed training, rank {rank} of {ranks}: {message}")]
    Distributed {
        /// This process's rank.
        rank: usize,
        /// Processes in the job.
        ranks: usize,
        /// What went wrong, naming the ranks involved.
        message: String,
    },

    /// An I/O error, with the path it happened on.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(
        context: impl Into<String>,
        operand: impl Into<String>,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> Self {
        Error::Shape {
            context: context.into(),
            operand: operand.into(),
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    /// The [`Error::Blocking`] of `call` on the web.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn blocking(call: &str, instead: &str) -> Self {
        Error::Blocking {
            call: call.into(),
            instead: instead.into(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// `Ok` when `data` holds `len` values, otherwise an [`Error::Shape`] naming `name`
/// in `context`.
pub(crate) fn check_len<T>(context: &str, name: &str, data: &[T], len: usize) -> Result<()> {
    if data.len() == len {
        return Ok(());
    }
    Err(Error::shape(
        context,
        name,
        format!("{len} values"),
        format!("{} values", data.len()),
    ))
}
