//! The one error type of the kernel crate.

use cudarc::driver::DriverError;

/// What can go wrong on the device.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A shared library could not be loaded (no driver, no cuBLAS).
    #[error("{0}")]
    Library(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver error while {context}: {source}")]
    Driver {
        context: String,
        #[source]
        source: DriverError,
    },
    /// A cuBLAS or cuBLASLt call failed.
    #[error("cuBLAS error while {context}: {status}")]
    Blas { context: String, status: String },
    /// Operands whose dtype or shape do not fit the operation.
    #[error("{op}: {reason}")]
    Shape { op: &'static str, reason: String },
    /// A valid request this crate does not implement.
    #[error("{0}")]
    Unsupported(String),
}

impl KernelError {
    pub(crate) fn shape(op: &'static str, reason: impl Into<String>) -> Self {
        KernelError::Shape {
            op,
            reason: reason.into(),
        }
    }
}

/// Attaches a context to driver errors.
pub(crate) trait DriverContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, DriverError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| KernelError::Driver {
            context: context(),
            source,
        })
    }
}

/// Result alias of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
