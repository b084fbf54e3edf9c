//! The one error type at the HTTP edge. Its status is the contract with the host: non-2xx means "not done, retry"
//! (and the host drops `Outputs` and `Logs`), so this is the one place a failed invocation is logged, with its cause
//! chain, to stdout where the host still sees it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::protocol::InvokeResponse;

/// A failed invocation that the host should retry.
#[derive(Debug)]
pub struct FunctionError {
    status: StatusCode,
    error: anyhow::Error,
}

/// `Result` with [`FunctionError`] as the default error.
pub type Result<T, E = FunctionError> = std::result::Result<T, E>;

impl FunctionError {
    /// The request itself could not be understood (400). The host retries it like any failure and eventually
    /// dead-letters the trigger (poison queue), which is what should happen to an envelope we cannot read.
    pub fn bad_envelope(error: impl Into<anyhow::Error>) -> Self {
        FunctionError { status: StatusCode::BAD_REQUEST, error: error.into() }
    }

    /// A dependency failed in a way that may pass (503).
    pub fn unavailable(error: impl Into<anyhow::Error>) -> Self {
        FunctionError { status: StatusCode::SERVICE_UNAVAILABLE, error: error.into() }
    }

    /// The HTTP status sent to the host.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl<E: Into<anyhow::Error>> From<E> for FunctionError {
    fn from(error: E) -> Self {
        FunctionError { status: StatusCode::INTERNAL_SERVER_ERROR, error: error.into() }
    }
}

impl IntoResponse for FunctionError {
    fn into_response(self) -> Response {
        // `{:#}` is the whole chain on one line ("a: b: c"); `{:?}` would add a multi-line backtrace whenever
        // RUST_BACKTRACE is set, which many development shells do.
        tracing::error!(
            status = self.status.as_u16(),
            error = %format_args!("{:#}", self.error),
            "invocation failed; the host will retry it"
        );
        InvokeResponse::default().into_response_with(self.status)
    }
}
