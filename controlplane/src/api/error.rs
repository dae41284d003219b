//! The error both sides of the API share: a kind, which alone decides the HTTP status, and a
//! one-line message for the user. The kinds are docker's (its `errdefs` classes), so the same kind
//! of failure answers the same status on every route.
use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::ErrorResponse;

/// What kind of failure an [`ApiError`] is; [`ErrorKind::status`] is the one mapping to HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed or invalid value in the request (a bad body, name, port spec, address, an
    /// ambiguous id prefix): 400.
    InvalidParameter,
    /// The request is refused for want of a credential (a wrong join token): 403.
    Forbidden,
    /// The object the request names does not exist: 404.
    NotFound,
    /// The request conflicts with the current state: a name or address already in use, an object
    /// that already exists, a container that is (not) running, a network with active endpoints or
    /// a node with running overlay containers, a port already published, a node already in a
    /// swarm, a node still up or the swarm's last manager: 409.
    Conflict,
    /// The body is larger than the route accepts: 413.
    PayloadTooLarge,
    /// Anything else that failed in the daemon: 500.
    Internal,
    /// The daemon cannot serve the request now (it is not in the state the request needs, e.g.
    /// not a manager of a swarm): 503.
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status the daemon answers with for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidParameter => StatusCode::BAD_REQUEST,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error with the kind of failure (hence the HTTP status) and a one-line message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, m: impl Into<String>) -> ApiError {
        ApiError { kind, message: m.into() }
    }
    /// [`ErrorKind::InvalidParameter`] (400).
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidParameter, m)
    }
    /// [`ErrorKind::Forbidden`] (403).
    pub fn forbidden(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Forbidden, m)
    }
    /// [`ErrorKind::NotFound`] (404).
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, m)
    }
    /// [`ErrorKind::Conflict`] (409).
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Conflict, m)
    }
    /// [`ErrorKind::PayloadTooLarge`] (413).
    pub fn too_large(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::PayloadTooLarge, m)
    }
    /// [`ErrorKind::Unavailable`] (503): this node cannot serve the request (not a swarm
    /// manager, no cluster store), as docker answers.
    pub fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unavailable, m)
    }
    /// [`ErrorKind::Internal`] (500).
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, m)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

/// Whatever failed without a kind of its own is the daemon's fault (500).
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        if e.downcast_ref::<crate::cluster::etcd::Unreachable>().is_some() {
            return ApiError::unavailable(format!("{e:#}"));
        }
        ApiError::internal(format!("{e:#}"))
    }
}

/// An address-pool error: an address or subnet another endpoint or network holds is a conflict,
/// anything else an invalid value. (The call sites in network/ and daemon/ still build 400s from
/// the message; they move to this with the code they are in.)
impl From<crate::ipam::IpamError> for ApiError {
    fn from(e: crate::ipam::IpamError) -> ApiError {
        use crate::ipam::IpamError;
        let kind = match e {
            IpamError::InUse { .. } | IpamError::Overlap { .. } => ErrorKind::Conflict,
            _ => ErrorKind::InvalidParameter,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(%status, "{}", self.message);
        }
        (status, Json(ErrorResponse { message: self.message })).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_status() {
        let cases = [
            (ApiError::bad_request("m"), 400),
            (ApiError::forbidden("m"), 403),
            (ApiError::not_found("m"), 404),
            (ApiError::conflict("m"), 409),
            (ApiError::too_large("m"), 413),
            (ApiError::internal("m"), 500),
            (ApiError::unavailable("m"), 503),
            (ApiError::from(anyhow::anyhow!("m")), 500),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{:?}", e.kind);
            assert_eq!(e.status(), e.kind.status());
        }
    }

    #[test]
    fn address_pool_errors() {
        use crate::ipam::IpamError;
        let subnet = "10.0.0.0/24".parse().unwrap();
        let in_use = ApiError::from(IpamError::InUse { ip: "10.0.0.5".parse().unwrap(), subnet });
        assert_eq!(
            (in_use.kind, in_use.message.as_str()),
            (ErrorKind::Conflict, "address 10.0.0.5 is already in use in subnet 10.0.0.0/24")
        );
        let overlap = ApiError::from(IpamError::Overlap { subnet, network: "n".into(), existing: subnet });
        assert_eq!(overlap.kind, ErrorKind::Conflict);
        let outside = ApiError::from(IpamError::OutOfSubnet { ip: "10.1.0.5".parse().unwrap(), subnet });
        assert_eq!(outside.kind, ErrorKind::InvalidParameter);
        assert_eq!(ApiError::from(IpamError::PoolsExhausted).kind, ErrorKind::InvalidParameter);
    }

    #[test]
    fn message_is_the_display_and_the_body() {
        let e = ApiError::conflict("network with name n already exists");
        assert_eq!(e.to_string(), "network with name n already exists");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e.clone());
        assert_eq!(boxed.to_string(), e.message);
        let chained = anyhow::Error::from(e.clone()).context("outer");
        assert_eq!(format!("{chained:#}"), "outer: network with name n already exists");
    }
}
