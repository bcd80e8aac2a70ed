//! The dead letters of the services of one process (the embedded mode): a consumer on
//! the in-process bus parks what it gives up on in its service's SQLite file, where it
//! survives a restart; the operator tools list and replay them from every service.

use std::sync::{Arc, Mutex};

use outbox::sqlite::{SqliteDeadLetters, SqliteOutbox};
use sqlx::SqlitePool;

/// One service's dead letters, and the outbox that replays them (in one transaction with
/// their removal: both in the service's file).
#[derive(Clone, Debug)]
pub struct Shelf {
    /// The service (`order`, `payment`).
    pub service: &'static str,
    /// Its parked messages.
    pub dead_letters: SqliteDeadLetters,
    /// Its outbox.
    pub outbox: SqliteOutbox,
}

/// The shelves of the services of one process, shared through
/// [`Messaging::Local`](crate::messaging::Messaging::Local): each service on SQLite
/// registers its own before it consumes.
#[derive(Clone, Debug, Default)]
pub struct LocalDeadLetters {
    shelves: Arc<Mutex<Vec<Shelf>>>,
}

impl LocalDeadLetters {
    /// No shelves yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `service` parks its dead letters in `pool` (migrated by the outbox migrations);
    /// a second registration of a service replaces the first.
    pub fn register(&self, service: &'static str, pool: SqlitePool) {
        let shelf = Shelf {
            service,
            dead_letters: SqliteDeadLetters::new(pool.clone()),
            outbox: SqliteOutbox::new(pool),
        };
        let mut shelves = self.shelves.lock().unwrap_or_else(|e| e.into_inner());
        shelves.retain(|s| s.service != service);
        shelves.push(shelf);
    }

    /// The shelf of `service`, if it registered one.
    pub fn of(&self, service: &str) -> Option<Shelf> {
        self.all().into_iter().find(|s| s.service == service)
    }

    /// Every shelf, in the order the services registered.
    pub fn all(&self) -> Vec<Shelf> {
        self.shelves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_service_has_one_shelf_and_everyone_sees_it() {
        let file = std::env::temp_dir().join(format!("kit-parked-{}.db", uuid::Uuid::new_v4()));
        let pool = outbox::sqlite::connect(&file).await.unwrap();
        let shared = LocalDeadLetters::new();
        let seen_by_another = shared.clone();
        assert!(shared.of("payment").is_none());
        shared.register("payment", pool.clone());
        shared.register("order", pool.clone());
        shared.register("payment", pool);
        let names: Vec<_> = seen_by_another.all().iter().map(|s| s.service).collect();
        assert_eq!(names, ["order", "payment"]);
        assert_eq!(seen_by_another.of("order").unwrap().service, "order");
        let _ = std::fs::remove_file(file);
    }
}
