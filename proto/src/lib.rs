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

        use saga_core::CommandKind;

        impl StepKind {
            /// The SDK's command kind (`None` for `STEP_KIND_UNSPECIFIED`: a message of
            /// an earlier release).
            pub fn command_kind(self) -> Option<CommandKind> {
                match self {
                    Self::Action => Some(CommandKind::Action),
                    Self::Compensation => Some(CommandKind::Compensation),
                    Self::Unspecified => None,
                }
            }

            /// The kind of a message's `step_kind` field, if set and known.
            pub fn of(field: i32) -> Option<CommandKind> {
                Self::try_from(field).ok().and_then(Self::command_kind)
            }
        }

        /// The SDK command that a message's proto saga fields describe — a message of
        /// an earlier release, sent without the saga wire headers. `name` is the
        /// command's wire name (from the message's `command`).
        fn legacy(
            saga_id: &str,
            step: u32,
            step_kind: i32,
            kind: &str,
            idempotency_key: &str,
            name: &str,
        ) -> Result<saga_core::SagaCommand, String> {
            let saga_id = saga_core::uuid::Uuid::parse_str(saga_id)
                .map_err(|_| format!("saga id is not a UUID: {saga_id:?}"))?;
            let kind = match StepKind::of(step_kind) {
                Some(kind) => kind,
                None => kind.parse().map_err(|e| format!("{e}"))?,
            };
            Ok(saga_core::SagaCommand {
                saga_id: saga_core::SagaId(saga_id),
                saga_type: String::new(),
                step: step as usize,
                step_name: String::new(),
                kind,
                name: name.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
            })
        }

        impl SagaCommand {
            /// The SDK command its saga fields describe (for a message without the
            /// saga wire headers), named `name`.
            #[allow(deprecated)]
            pub fn saga_command(&self, name: &str) -> Result<saga_core::SagaCommand, String> {
                let (id, key) = (&self.saga_id, &self.idempotency_key);
                legacy(id, self.step, self.step_kind, &self.kind, key, name)
            }
        }

        impl SagaReply {
            /// The SDK command this reply answers, from its saga fields (for a message
            /// without the saga wire headers), named `name`.
            #[allow(deprecated)]
            pub fn saga_command(&self, name: &str) -> Result<saga_core::SagaCommand, String> {
                let (id, key) = (&self.saga_id, &self.idempotency_key);
                legacy(id, self.step, self.step_kind, &self.kind, key, name)
            }
        }

        impl From<CommandKind> for StepKind {
            fn from(kind: CommandKind) -> Self {
                match kind {
                    CommandKind::Action => Self::Action,
                    CommandKind::Compensation => Self::Compensation,
                }
            }
        }
    }
}
