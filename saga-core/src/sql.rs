//! The SQL shared by the MySQL and SQLite saga stores (they differ in the row-lock
//! clause and in how the version column is typed).

/// Implement [`SagaStore`](crate::SagaStore) for `$store` (with a `pool` field and a
/// `decode(&Row)` function in scope) over transaction type `$tx`.
/// The columns every SQL saga store reads.
pub(crate) const SELECT_SAGA: &str =
    "SELECT id, saga_type, definition_version, state, data, deadlines, version, \
     created_at_ms, updated_at_ms FROM saga_instances WHERE id = ?";

macro_rules! sql_saga_store {
    ($store:ident, $tx:ty, $version:ty, $for_update:literal) => {
        impl SagaStore for $store {
            async fn insert(&self, tx: &mut $tx, saga: &SagaInstance) -> Result<()> {
                let (state, deadlines) = saga.json_columns()?;
                sqlx::query(
                    "INSERT INTO saga_instances (id, saga_type, definition_version, status, state, data, \
                     deadlines, next_deadline, version, created_at_ms, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(saga.id.0.as_bytes().as_slice())
                .bind(&saga.saga_type)
                .bind(i64::from(saga.definition_version))
                .bind(saga.state.status.as_str())
                .bind(state)
                .bind(saga.data.as_ref())
                .bind(deadlines)
                .bind(saga.next_deadline())
                .bind(saga.version as $version)
                .bind(saga.created_at)
                .bind(saga.updated_at)
                .execute(&mut **tx)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => Error::AlreadyExists(saga.id),
                    _ => Error::storage(e),
                })?;
                Ok(())
            }

            async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>> {
                let row = sqlx::query(crate::sql::SELECT_SAGA)
                    .bind(id.0.as_bytes().as_slice())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(Error::storage)?;
                row.as_ref().map(decode).transpose()
            }

            async fn load(&self, tx: &mut $tx, id: SagaId) -> Result<Option<SagaInstance>> {
                let row = sqlx::query(&format!("{}{}", crate::sql::SELECT_SAGA, $for_update))
                .bind(id.0.as_bytes().as_slice())
                .fetch_optional(&mut **tx)
                .await
                .map_err(Error::storage)?;
                row.as_ref().map(decode).transpose()
            }

            async fn update(&self, tx: &mut $tx, saga: &SagaInstance) -> Result<()> {
                let expected = saga.version.checked_sub(1).ok_or(Error::Conflict(saga.id))?;
                let (state, deadlines) = saga.json_columns()?;
                let done = sqlx::query(
                    "UPDATE saga_instances SET status = ?, state = ?, data = ?, deadlines = ?, next_deadline = ?, \
                     version = ?, updated_at_ms = ? WHERE id = ? AND version = ?",
                )
                .bind(saga.state.status.as_str())
                .bind(state)
                .bind(saga.data.as_ref())
                .bind(deadlines)
                .bind(saga.next_deadline())
                .bind(saga.version as $version)
                .bind(saga.updated_at)
                .bind(saga.id.0.as_bytes().as_slice())
                .bind(expected as $version)
                .execute(&mut **tx)
                .await
                .map_err(Error::storage)?
                .rows_affected();
                if done == 1 {
                    return Ok(());
                }
                let exists: Option<$version> = sqlx::query_scalar("SELECT version FROM saga_instances WHERE id = ?")
                    .bind(saga.id.0.as_bytes().as_slice())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(Error::storage)?;
                Err(match exists {
                    None => Error::NotFound(saga.id),
                    Some(_) => Error::Conflict(saga.id),
                })
            }

            async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<SagaId>> {
                let rows: Vec<Vec<u8>> = sqlx::query_scalar(
                    "SELECT id FROM saga_instances WHERE next_deadline IS NOT NULL AND next_deadline <= ? \
                     ORDER BY next_deadline LIMIT ?",
                )
                .bind(now_ms)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::storage)?;
                rows.iter()
                    .map(|b| Uuid::from_slice(b).map(SagaId).map_err(Error::storage))
                    .collect()
            }

            async fn append_history(
                &self,
                tx: &mut $tx,
                saga_id: SagaId,
                version: u64,
                entries: &[crate::HistoryEntry],
            ) -> Result<()> {
                if entries.is_empty() {
                    return Ok(());
                }
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO saga_history (saga_id, version, idx, at_ms, kind, name, detail, trace_id) ",
                );
                q.push_values(entries.iter().enumerate(), |mut b, (i, e)| {
                    b.push_bind(saga_id.0.as_bytes().to_vec())
                        .push_bind(version as $version)
                        .push_bind(i as i64)
                        .push_bind(e.at_ms)
                        .push_bind(e.kind.clone())
                        .push_bind(e.name.clone())
                        .push_bind(e.detail.clone())
                        .push_bind(e.trace_id.clone());
                });
                q.build().execute(&mut **tx).await.map_err(Error::storage)?;
                Ok(())
            }

            async fn history(&self, saga_id: SagaId) -> Result<Option<Vec<crate::HistoryEntry>>> {
                let rows: Vec<($version, i64, String, String, String, String)> = sqlx::query_as(
                    "SELECT version, at_ms, kind, name, detail, trace_id FROM saga_history \
                     WHERE saga_id = ? ORDER BY version, idx",
                )
                .bind(saga_id.0.as_bytes().as_slice())
                .fetch_all(&self.pool)
                .await
                .map_err(Error::storage)?;
                Ok(Some(
                    rows.into_iter()
                        .map(|(version, at_ms, kind, name, detail, trace_id)| crate::HistoryEntry {
                            version: version as u64,
                            at_ms,
                            kind,
                            name,
                            detail,
                            trace_id,
                        })
                        .collect(),
                ))
            }

            async fn find(&self, query: &crate::SagaQuery) -> Result<Option<Vec<SagaInstance>>> {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, saga_type, definition_version, state, data, deadlines, version, \
                     created_at_ms, updated_at_ms FROM saga_instances WHERE 1 = 1",
                );
                if let Some(status) = query.status {
                    q.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(t) = query.updated_before_ms {
                    q.push(" AND updated_at_ms <= ").push_bind(t);
                }
                if let Some(t) = query.deadline_before_ms {
                    q.push(" AND next_deadline IS NOT NULL AND next_deadline <= ").push_bind(t);
                }
                q.push(" ORDER BY updated_at_ms LIMIT ")
                    .push_bind(query.effective_limit() as i64);
                let rows = q.build().fetch_all(&self.pool).await.map_err(Error::storage)?;
                rows.iter().map(decode).collect::<Result<Vec<_>>>().map(Some)
            }

            async fn census(&self) -> Result<Option<Vec<crate::Census>>> {
                let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
                    "SELECT saga_type, status, COUNT(*), MIN(updated_at_ms) FROM saga_instances \
                     WHERE status IN ('STARTED', 'RUNNING', 'COMPENSATING') \
                     GROUP BY saga_type, status",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(Error::storage)?;
                rows.into_iter()
                    .map(|(saga_type, status, count, oldest_update_ms)| {
                        Ok(crate::Census {
                            saga_type,
                            status: crate::SagaStatus::parse(&status).ok_or_else(|| {
                                Error::storage(format!("unknown saga status {status:?}"))
                            })?,
                            count: count.max(0) as u64,
                            oldest_update_ms,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
        }
    };
}

pub(crate) use sql_saga_store;
