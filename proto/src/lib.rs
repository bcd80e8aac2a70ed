//! ordersys contracts: the user, order and payment gRPC services and the saga messages
//! carried over Kafka, generated from `proto/ordersys/*.proto` at build time (no system
//! `protoc` needed).
//!
//! ```
//! use ordersys_proto::saga::v1::{CommandType, SagaCommand};
//! use prost::Message;
//!
//! let cmd = SagaCommand { saga_id: "s-1".into(), command: CommandType::Debit as i32, ..Default::default() };
//! let bytes = cmd.encode_to_vec();
//! assert_eq!(SagaCommand::decode(bytes.as_slice()).unwrap(), cmd);
//! ```

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Shared message types.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ordersys.common.v1");
    }
}

/// The user service.
pub mod user {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ordersys.user.v1");
    }
}

/// The order service.
pub mod order {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ordersys.order.v1");
    }
}

/// The payment service.
pub mod payment {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ordersys.payment.v1");
    }
}

/// Saga commands and replies (Kafka payloads).
pub mod saga {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("ordersys.saga.v1");
    }
}
