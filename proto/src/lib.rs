//! Wire types of wxgate, generated from `proto/wxgate/v1/*.proto`: the `Event` published to
//! RabbitMQ (docs/contract.md §4) and the gRPC services (docs/contract.md §5).
//!
//! Nothing but generated code lives here; conversions to and from domain types live in the
//! crate that owns the domain type.

/// Package `wxgate.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("wxgate.v1");
}

/// The encoded `FileDescriptorSet` of every `wxgate.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wxgate_v1");

/// The AMQP `type` property of an event.
pub const EVENT_TYPE: &str = "wxgate.v1.Event";
/// The AMQP `content_type` property of an event.
pub const EVENT_CONTENT_TYPE: &str = "application/x-protobuf";
