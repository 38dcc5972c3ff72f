//! COMMIT: the transaction's changes become audit records, are published and acknowledged, and
//! only then is COMMIT forwarded; if they cannot be, the transaction is rolled back (HS001).
//! Also the statement-level events published before a statement runs outside a transaction.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::internal::query_frame;
use super::{write_all, write_last, ClientCapture, Protocol, TxnDdl};
use crate::audit::event::{CommitStatus, TransactionRecord};
use crate::capture::publish;
use crate::capture::router::{Delivery, Reply, TxState, Unit};
use crate::capture::txn::{Change, GateMark};
use crate::config::OnSinkFailure;
use crate::statement::TxControl;
use crate::wire::error_response::{sqlstate, ErrorResponse};

/// Why a transaction's records were not published.
pub(super) enum Failure {
    /// The brokers (or the catalog lookup) failed: HS001, unless `on_sink_failure = allow`.
    Sink(String),
    /// A gate's row rule refused a change, or the transaction is over a capture limit: this
    /// ErrorResponse, always.
    Gate(Vec<u8>),
}

/// HS003: the transaction captured more than capture.max_transaction_bytes.
fn transaction_limit_error(limit: u64) -> Vec<u8> {
    ErrorResponse::error(
        sqlstate::CAPTURE_LIMIT,
        format!("hindsight: the transaction was rolled back: the rows it changed exceed capture.max_transaction_bytes ({limit} bytes of row images, held in memory until COMMIT)"),
    )
    .with_hint("Nothing was committed. Change the rows in smaller transactions, or raise capture.max_transaction_bytes.")
    .encode()
}

/// The END of a transaction whose BEGIN and events were published, waiting for the server's
/// answer to its COMMIT; in flight (see `audit::in_flight`) until it is published or dropped.
pub(super) struct PendingEnd {
    record: TransactionRecord,
    _in_flight: crate::audit::in_flight::Pending,
    /// When the brokers acknowledged a COMMIT's records (`None`: a statement-level event,
    /// announced before its statement runs): the time to the server's answer is
    /// `capture_commit_after_ack_seconds`.
    commit_acked: Option<std::time::Instant>,
}

/// How a COMMIT happens once the records are published.
pub(super) enum CommitBy<'a> {
    /// The client's own COMMIT (simple Query frame).
    ClientSimple(&'a [u8]),
    /// hindsight wrapped an autocommit simple Query in BEGIN.
    ImplicitSimple,
    /// The client's Execute of a COMMIT portal.
    ClientExtended(&'a [u8]),
    /// hindsight opened the transaction for an extended batch; this is the client's Sync.
    ImplicitExtended(&'a [u8]),
    /// A COMMIT inside a query string hindsight runs in parts (`run_segments`): its text,
    /// and whether it ends the string (then the client gets its ReadyForQuery).
    InQuery { sql: &'a str, last: bool },
    /// The same, ending an implicit transaction hindsight opened with its own BEGIN for the
    /// writes before it (`simple::implicit_blocks`): hindsight commits, then the client's COMMIT
    /// runs on its own, so the client gets what the server says of a COMMIT in an implicit
    /// transaction (`WARNING: there is no transaction in progress`) and its tag.
    InQueryImplicit { sql: &'a str, last: bool },
}

/// What [`ClientCapture::publish`] publishes.
pub(super) enum Publishing {
    /// A transaction's changes at its COMMIT, with its id when a captured row brought it
    /// (`txn::TxnBuffer::txid`; else the catalog query asks).
    Commit { txid: Option<i64> },
    /// Refused changes (op `blocked`, END `aborted`).
    Refused,
}

impl ClientCapture {
    /// Publish statement-level events *before* the statement runs (outside a transaction
    /// block, where hindsight cannot hold a COMMIT), then forward `frame`. The END record
    /// follows with the outcome. If the events cannot be published the statement does not run
    /// and the client gets HS001 (unless `on_sink_failure = "allow"`).
    pub(super) async fn announce<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
        changes: Vec<Change>,
        ends: &'static [u8],
    ) -> std::io::Result<()> {
        self.tx_seq += 1;
        let (records, end) = publish::build(
            &self.session,
            self.tx_seq,
            None,
            changes,
            &HashMap::new(),
            &self.parts.redactor,
        );
        let in_flight = self.session.in_flight.enter(&end.id);
        match self.parts.sink.publish(&records).await {
            Ok(()) => self
                .parts
                .metrics
                .audit_events
                .inc_by(records.len() as u64 - 1),
            Err(e) => {
                self.parts.metrics.audit_publish_failures.inc();
                if self.parts.on_sink_failure == OnSinkFailure::Deny {
                    tracing::error!(error = %e, "statement event not recorded: statement refused");
                    let err = ErrorResponse::error(
                        sqlstate::AUDIT_NOT_RECORDED,
                        format!("hindsight: the statement was not run because its audit record could not be recorded: {e}"),
                    )
                    .with_hint("Retry when the audit broker is reachable; see hindsight's log and /readyz.");
                    return if ends == b"Z" {
                        self.refuse(w, err).await
                    } else {
                        self.refused_parse(w, b"__hindsight_refused", err.encode())
                            .await
                    };
                }
                tracing::error!(error = %e, "statement event not recorded; running it anyway because capture.on_sink_failure = \"allow\"");
            }
        }
        let mut u = Unit::pass(ends);
        u.reply = Some(self.end_on_outcome(PendingEnd {
            record: end,
            _in_flight: in_flight,
            commit_acked: None,
        }));
        self.push([u]);
        write_all(w, frame).await
    }

    /// Publish the transaction's changes, then COMMIT (see [`CommitBy`]); if they cannot be
    /// published, roll back and fail the COMMIT with HS001 (unless `on_sink_failure = allow`).
    /// `Ok(false)`: the transaction was rolled back, or (`InQuery`) its COMMIT failed.
    pub(super) async fn commit<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        by: CommitBy<'_>,
    ) -> std::io::Result<bool> {
        self.pending_end = None;
        // Replies that could still add changes (a pipelined write before the COMMIT) are
        // awaited; the COMMIT's own Bind and Describe are not: they go with its Execute.
        if matches!(by, CommitBy::ClientExtended(_)) && !self.shared.lock().settled_for_commit() {
            self.flush_and_drain(w).await?;
        }
        self.own_queries = match by {
            CommitBy::ClientExtended(_) | CommitBy::ImplicitExtended(_) => Protocol::Extended,
            CommitBy::ClientSimple(_)
            | CommitBy::ImplicitSimple
            | CommitBy::InQuery { .. }
            | CommitBy::InQueryImplicit { .. } => Protocol::Simple,
        };
        if let CommitBy::ClientSimple(frame) | CommitBy::ClientExtended(frame) = by {
            let aborted = {
                let st = self.shared.lock();
                st.status != TxState::InBlock || st.batch_failed
            };
            if aborted {
                // An aborted transaction: its COMMIT is a ROLLBACK (or, after an error earlier
                // in its batch, skipped by the server); nothing to publish.
                self.shared.lock().txn.clear();
                let ends: &'static [u8] = if frame[0] == b'Q' { b"Z" } else { b"CIs" };
                self.push([Unit::pass(ends)]);
                return write_all(w, frame).await.map(|()| false);
            }
        }
        let error = self.record_transaction(w).await?;
        if std::mem::take(&mut self.txn_ddl) == TxnDdl::Ran {
            // Lookups other sessions made while this DDL was uncommitted saw the old catalog.
            self.parts.tables.invalidate(&self.session.database);
        }
        let committed = error.is_none();
        if committed && self.pending_end.is_some() {
            crate::fault::point(crate::fault::CrashPoint::AfterPublish);
        }
        match self.emit_commit(w, by, error).await? {
            Some(outcome) => Ok(outcome),
            None => Ok(committed),
        }
    }

    /// Publish the transaction's changes (taken from the buffer) and acknowledge them, or the
    /// client's error: over `capture.max_transaction_bytes` (HS003), rows that could not be
    /// captured or records that could not be published (HS001, unless `on_sink_failure =
    /// allow`).
    async fn record_transaction<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let (over_limit, txid, changes, capture_errors) = {
            let mut st = self.shared.lock();
            let over = st.txn.over_limit().then_some(st.txn.byte_limit);
            let txid = st.txn.txid();
            (
                over,
                txid,
                st.txn.take(),
                std::mem::take(&mut st.capture_errors),
            )
        };
        let uncaptured = !capture_errors.is_empty();
        let failure = if let Some(limit) = over_limit {
            Some(Failure::Gate(transaction_limit_error(limit)))
        } else if uncaptured {
            Some(Failure::Sink(format!(
                "the rows it changed could not all be captured: {}",
                capture_errors.join("; ")
            )))
        } else if changes.is_empty() {
            None
        } else {
            self.publish(w, changes, Publishing::Commit { txid })
                .await?
                .err()
        };
        let mut error = None;
        if let Some(Failure::Gate(err)) = failure {
            error = Some(err);
        } else if let Some(Failure::Sink(why)) = failure {
            self.parts.metrics.audit_publish_failures.inc();
            if self.parts.on_sink_failure == OnSinkFailure::Deny {
                tracing::error!(%why, "audit records not recorded: rolling the transaction back");
                error = Some(
                    ErrorResponse::error(
                        sqlstate::AUDIT_NOT_RECORDED,
                        format!("hindsight: the transaction was rolled back because its audit records could not be recorded: {why}"),
                    )
                    .with_hint(if uncaptured {
                        "Nothing was committed. See the message for what could not be captured, and hindsight's log."
                    } else {
                        "Nothing was committed. Retry when the audit broker is reachable; see hindsight's log and /readyz."
                    })
                    .encode(),
                );
            } else {
                tracing::error!(%why, "audit records not recorded; committing anyway because capture.on_sink_failure = \"allow\"");
            }
        }
        Ok(error)
    }

    /// Send the COMMIT `by` calls for (or, with `error`, the ROLLBACK and the client's
    /// error). `Some(outcome)`: a COMMIT in the middle of a query string, whose own outcome is
    /// known once its part ran.
    async fn emit_commit<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        by: CommitBy<'_>,
        error: Option<Vec<u8>>,
    ) -> std::io::Result<Option<bool>> {
        match (by, error) {
            (CommitBy::ClientSimple(frame), None) => {
                let mut u = Unit::pass(b"Z");
                u.reply = self.pending_end_reply();
                self.push([u]);
                write_all(w, frame).await?;
            }
            (CommitBy::ImplicitSimple, None) => {
                let reply = self.pending_end_reply();
                self.internal_end(w, "COMMIT", None, reply).await?
            }
            (CommitBy::ClientExtended(frame), None) => {
                let mut u = Unit::pass(b"CIs");
                u.txctl = Some((TxControl::Commit, String::new()));
                u.reply = self.pending_end_reply();
                self.push([u]);
                // The client's Sync follows in its batch: one write for both.
                write_last(w, frame).await?;
            }
            (CommitBy::ImplicitExtended(sync), None) => {
                let mut u = Unit::with(Delivery::Errors, b"Z");
                u.reply = self.pending_end_reply();
                self.send_internal(w, "COMMIT", u).await?;
                self.push([Unit::pass(b"Z")]);
                write_all(w, sync).await?;
            }
            (CommitBy::InQueryImplicit { sql, last }, None) => {
                let mut ours = Unit::with(Delivery::Errors, b"C");
                ours.txctl = Some((TxControl::Commit, String::new()));
                ours.reply = self.pending_end_reply();
                self.push([ours, Unit::pass(b"C"), super::simple::end_unit(last)]);
                write_all(w, &query_frame(&format!("COMMIT;\n{sql}"))).await?;
                if !last {
                    self.shared.drained().await;
                    return Ok(Some(!self.shared.lock().last_failed));
                }
            }
            (CommitBy::InQuery { sql, last }, None) => {
                let mut u = Unit::pass(b"C");
                u.txctl = Some((TxControl::Commit, String::new()));
                u.reply = self.pending_end_reply();
                self.push([u, super::simple::end_unit(last)]);
                write_all(w, &query_frame(sql)).await?;
                if !last {
                    // The COMMIT itself can still fail (a deferred constraint).
                    self.shared.drained().await;
                    return Ok(Some(!self.shared.lock().last_failed));
                }
            }
            (
                CommitBy::ClientSimple(_)
                | CommitBy::ImplicitSimple
                | CommitBy::InQuery { .. }
                | CommitBy::InQueryImplicit { .. },
                Some(err),
            ) => self.internal_end(w, "ROLLBACK", Some(err), None).await?,
            (CommitBy::ClientExtended(_), Some(err)) => {
                // Roll back, then fail the client's Execute: the server skips to its Sync.
                self.swallowed_query(w, "ROLLBACK").await?;
                self.refused_parse(w, b"__hindsight_refused", err).await?;
            }
            (CommitBy::ImplicitExtended(sync), Some(err)) => {
                self.swallowed_query(w, "ROLLBACK").await?;
                let mut u = Unit::pass(b"Z");
                u.prefix = Some(err);
                self.push([u]);
                write_all(w, sync).await?;
            }
        }
        Ok(None)
    }

    /// The reply channel for the COMMIT of a transaction whose records were just published:
    /// its END record follows the server's answer (see `end_on_outcome`).
    fn pending_end_reply(&mut self) -> Option<oneshot::Sender<Reply>> {
        let end = self.pending_end.take()?;
        Some(self.end_on_outcome(end))
    }

    /// Publish `end` once the server has answered the statement that ends the transaction
    /// (its unit gets the returned sender): `committed`, or `aborted` if it failed — a COMMIT
    /// can still fail after the events were published (a deferred constraint, a serialization
    /// failure). If the connection is lost first, the outcome is unknown: no END is published,
    /// and consumers resolve the transaction with `txid_status(txId)`.
    fn end_on_outcome(&self, pending: PendingEnd) -> oneshot::Sender<Reply> {
        let (tx, rx) = oneshot::channel();
        let sink = Arc::clone(&self.parts.sink);
        let session = self.session.clone();
        let after_ack = self.parts.metrics.commit_after_ack.clone();
        tokio::spawn(async move {
            // In flight until this task ends, whatever the outcome.
            let PendingEnd {
                record: mut end,
                _in_flight,
                commit_acked,
            } = pending;
            match rx.await {
                Ok(Reply { error: None, .. }) => {
                    if let Some(acked) = commit_acked {
                        after_ack.observe(acked.elapsed().as_secs_f64());
                    }
                }
                Ok(_) => end.commit_status = Some(CommitStatus::Aborted),
                Err(_) => {
                    tracing::warn!(transaction = %end.id, "the server connection closed before the transaction's outcome was known: no END record yet (in-doubt healing resolves it with txid_status when configured)");
                    return;
                }
            }
            crate::fault::point(crate::fault::CrashPoint::BeforeEnd);
            if let Err(e) = sink.publish(&[publish::end_record(&session, &end)]).await {
                tracing::warn!(error = %e, "publishing a transaction END record failed");
            }
        });
        tx
    }

    /// Resolve tables and the transaction id, check the gates' row rules, then publish.
    /// `what`: a transaction's changes at its COMMIT, or refused changes (op `blocked`: no
    /// row rules, END `aborted`).
    pub(super) async fn publish<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        changes: Vec<crate::capture::txn::Change>,
        what: Publishing,
    ) -> std::io::Result<Result<(), Failure>> {
        let (blocked, known_txid) = match what {
            Publishing::Commit { txid } => (false, txid),
            Publishing::Refused => (true, None),
        };
        let mut oids: Vec<u32> = changes
            .iter()
            .filter(|c| !c.is_statement())
            .map(|c| c.table_oid)
            .collect();
        oids.sort_unstable();
        oids.dedup();
        let (txid, tables) = if blocked && oids.is_empty() {
            (None, HashMap::new())
        } else {
            match self.lookup_tables(w, &oids, known_txid).await? {
                Some(found) => found,
                None => {
                    return Ok(Err(Failure::Sink(
                        "looking up the changed tables in the catalog failed".into(),
                    )))
                }
            }
        };
        let mut changes = publish::pair_pre_reads(changes, &tables);
        if !blocked {
            if let Some(err) = self.row_rules(&mut changes, &tables) {
                let refused: Vec<_> = changes
                    .into_iter()
                    .filter(|c| matches!(c.gate, Some(GateMark::Blocked(_))))
                    .collect();
                self.publish_refused(txid, refused, &tables).await;
                return Ok(Err(Failure::Gate(err)));
            }
            self.nulling(&changes, &tables);
        }
        self.tx_seq += 1;
        let (records, mut end) = publish::build(
            &self.session,
            self.tx_seq,
            txid,
            changes,
            &tables,
            &self.parts.redactor,
        );
        let events = records.len() - 1;
        if blocked {
            end.commit_status = Some(CommitStatus::Aborted);
            let mut all = records;
            all.push(publish::end_record(&self.session, &end));
            return Ok(self
                .parts
                .sink
                .publish(&all)
                .await
                .map_err(|e| Failure::Sink(e.to_string())));
        }
        let in_flight = self.session.in_flight.enter(&end.id);
        let timer = self.parts.metrics.audit_publish_latency.start_timer();
        let published = self.parts.sink.publish(&records).await;
        let acked = std::time::Instant::now();
        timer.observe_duration();
        match published {
            Ok(()) => {
                self.parts.metrics.audit_events.inc_by(events as u64);
                let application = self.shared.lock().application_name.clone();
                for d in &end.data_collections {
                    self.parts
                        .metrics
                        .changes
                        .with_label_values(&[application.as_str(), d.data_collection.as_str()])
                        .inc_by(d.event_count);
                }
                // END waits for the server's answer to the COMMIT (see `end_on_outcome`).
                self.pending_end = Some(PendingEnd {
                    record: end,
                    _in_flight: in_flight,
                    commit_acked: Some(acked),
                });
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(Failure::Sink(e.to_string()))),
        }
    }

    /// Publish refused changes (op `blocked`, END `aborted`); a failure is logged, the refusal
    /// stands either way.
    pub(super) async fn publish_refused(
        &mut self,
        txid: Option<i64>,
        changes: Vec<crate::capture::txn::Change>,
        tables: &HashMap<u32, publish::TableInfo>,
    ) {
        self.tx_seq += 1;
        let (mut records, mut end) = publish::build(
            &self.session,
            self.tx_seq,
            txid,
            changes,
            tables,
            &self.parts.redactor,
        );
        end.commit_status = Some(CommitStatus::Aborted);
        records.push(publish::end_record(&self.session, &end));
        if let Err(e) = self.parts.sink.publish(&records).await {
            self.parts.metrics.audit_publish_failures.inc();
            tracing::error!(error = %e, "the record of a refused write could not be published");
        }
    }
}
