//! The only crate holding generated gRPC code.
//!
//! - [`reapi`], [`bytestream`], [`longrunning`]: the Remote Execution API types
//!   from the `bazel-remote-apis` crate, re-exported under short names.
//! - [`casd`]: rbe-casd's local API (`proto/rbe/casd/v1/casd.proto`).
//! - [`worker`]: the worker stream (`proto/rbe/worker/v1/worker.proto`).
//! - [`cluster`]: load reports and the peer service between hosts
//!   (`proto/rbe/cluster/v1/cluster.proto`).
//! - [`rpc`]: the `google.rpc` error details rbe attaches to statuses.
//! - [`digest`] and [`resource`]: validated digests and ByteStream resource
//!   names, so that nothing past the service edge handles raw strings.
//!
//! To add an internal protocol, put its `.proto` under `proto/rbe/` and list it
//! in `build.rs`.
#![warn(missing_docs)]

pub mod digest;
pub mod resource;
pub mod status;

pub use digest::{Digest, DigestError, DigestFunction, Hasher};

/// REAPI v2 (`build.bazel.remote.execution.v2`).
pub mod reapi {
    pub use bazel_remote_apis::build::bazel::remote::execution::v2::*;
}

/// `google.bytestream`.
pub mod bytestream {
    pub use bazel_remote_apis::google::bytestream::*;
}

/// `google.longrunning`.
pub mod longrunning {
    pub use bazel_remote_apis::google::longrunning::*;
}

/// `build.bazel.semver`.
pub mod semver {
    pub use bazel_remote_apis::build::bazel::semver::*;
}

/// `google.protobuf` well-known types as used by the REAPI types.
pub mod wkt {
    pub use bazel_remote_apis::google::protobuf::*;
}

/// `google.rpc`: the REAPI `Status` plus the error detail messages rbe sends.
#[allow(missing_docs, clippy::all)]
pub mod rpc {
    pub use bazel_remote_apis::google::rpc::Status;
    tonic::include_proto!("google.rpc");
}

/// rbe-casd's local API.
#[allow(missing_docs, clippy::all)]
pub mod casd {
    tonic::include_proto!("rbe.casd.v1");
}

/// Between the hosts of a cluster: the gossiped load report and the peer
/// service (`proto/rbe/cluster/v1/cluster.proto`).
#[allow(missing_docs, clippy::all)]
pub mod cluster {
    tonic::include_proto!("rbe.cluster.v1");
}

/// The worker stream between rbe-workerd and rbe-frontend.
#[allow(missing_docs, clippy::all)]
pub mod worker {
    tonic::include_proto!("rbe.worker.v1");
}
