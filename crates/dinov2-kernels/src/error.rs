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
    /// An environment switch set to a value it does not take.
    #[error("{0}")]
    Switch(String),
}

impl KernelError {
    /// Whether the device ran out of memory (an allocation by the driver, or inside cuBLAS): the
    /// same work may fit in smaller pieces.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            KernelError::Driver { source, .. } => {
                source.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
            }
            KernelError::Blas { status, .. } => status.contains("ALLOC_FAILED"),
            _ => false,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cublas::sys::cublasStatus_t;
    use cudarc::driver::sys::CUresult;

    #[test]
    fn out_of_memory_is_told_apart_from_other_failures() {
        let driver = |code| KernelError::Driver {
            context: "allocating".into(),
            source: DriverError(code),
        };
        let blas = |status: cublasStatus_t| KernelError::Blas {
            context: "running a GEMM".into(),
            // As `gemm.rs` writes it.
            status: format!("{status:?}"),
        };
        assert!(driver(CUresult::CUDA_ERROR_OUT_OF_MEMORY).is_out_of_memory());
        assert!(!driver(CUresult::CUDA_ERROR_LAUNCH_FAILED).is_out_of_memory());
        assert!(blas(cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED).is_out_of_memory());
        assert!(!blas(cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED).is_out_of_memory());
        assert!(!KernelError::Unsupported("x".into()).is_out_of_memory());
    }
}
