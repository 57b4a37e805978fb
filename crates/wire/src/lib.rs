//! The wire formats between nimbus nodes: the gRPC schemas under `proto/` (the
//! generated types and services) and the version every call carries; the mesh's
//! requests and replies ([`peer`]); and the vocabulary of deployed apps that
//! travels in them ([`apps`]).
//!
//! Owns: the schemas, the `nimbus-wire` version header, and the interceptors that
//! stamp it on calls and refuse calls without it.
//! Must not: hold connections, or know what a node does with a call.

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

pub mod apps;
pub mod peer;

/// The control plane between the planner and its nodes (`nimbus.control.v1`).
pub mod control {
    /// Version 1 of the control plane.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("nimbus.control.v1");
    }
}

/// The header naming the wire version a caller speaks.
pub const VERSION_HEADER: &str = "nimbus-wire";

/// The wire version this build speaks. Raised with every change an older node
/// would misread (and the schemas' packages move to the new version with it).
pub const VERSION: u32 = 1;

/// A client interceptor: stamps the version on every call.
pub fn stamp_version(mut request: Request<()>) -> Result<Request<()>, Status> {
    request
        .metadata_mut()
        .insert(VERSION_HEADER, MetadataValue::from(VERSION));
    Ok(request)
}

/// A server interceptor: refuses a call that does not carry this build's version,
/// with a message saying which versions meet.
pub fn require_version(request: Request<()>) -> Result<Request<()>, Status> {
    let spoken = request
        .metadata()
        .get(VERSION_HEADER)
        .and_then(|value| value.to_str().ok());
    match spoken {
        Some(version) if version == VERSION.to_string() => Ok(request),
        Some(version) => Err(Status::failed_precondition(format!(
            "this node speaks nimbus wire version {VERSION}, the caller version {version}: \
             run the same nimbus release on every node"
        ))),
        None => Err(Status::failed_precondition(format!(
            "a call without the {VERSION_HEADER} header: this node speaks nimbus wire \
             version {VERSION}"
        ))),
    }
}

/// Says what a call's failure means when the peer is of another version: an
/// `UNIMPLEMENTED` answer (the peer has no such service: it speaks another
/// package version) or the peer's own refusal. `None` for any other failure.
pub fn version_mismatch(status: &Status) -> Option<String> {
    match status.code() {
        tonic::Code::Unimplemented => Some(format!(
            "the peer does not speak nimbus wire version {VERSION} ({}): run the same \
             nimbus release on every node",
            status.message()
        )),
        tonic::Code::FailedPrecondition if status.message().contains("wire version") => {
            Some(status.message().to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_call_passes_and_others_are_refused_clearly() {
        let stamped = stamp_version(Request::new(())).unwrap();
        assert!(require_version(stamped).is_ok());

        let bare = require_version(Request::new(())).unwrap_err();
        assert_eq!(bare.code(), tonic::Code::FailedPrecondition);
        assert!(bare.message().contains("nimbus-wire"), "{}", bare.message());

        let mut other = Request::new(());
        other
            .metadata_mut()
            .insert(VERSION_HEADER, MetadataValue::from(VERSION + 1));
        let refused = require_version(other).unwrap_err();
        assert!(
            refused
                .message()
                .contains(&format!("caller version {}", VERSION + 1)),
            "{}",
            refused.message()
        );
        assert!(version_mismatch(&refused).is_some());
        assert!(version_mismatch(&Status::unimplemented("no such service")).is_some());
        assert!(version_mismatch(&Status::unavailable("down")).is_none());
    }
}
