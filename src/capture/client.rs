//! The client side of a capturing session: decides, per request, what goes upstream and pushes
//! the matching [`Unit`]s for the router; holds COMMIT until the transaction's audit records
//! are acknowledged by the brokers.
//!
//! Simple-query protocol:
//! - reads (fast path or analysis) go through unchanged;
//! - writes are rewritten (`rewrite`) and, outside a transaction block, wrapped in
//!   `BEGIN; …` so that hindsight, not the server, ends the implicit transaction: it publishes
//!   the changes and only then sends COMMIT;
//! - an explicit COMMIT waits for the publish; if publishing fails the transaction is rolled
//!   back and the client gets SQLSTATE HS001 (unless `on_sink_failure = "allow"`).
//!
//! Extended protocol: relayed; statements that write rows are refused with SQLSTATE HS002
//! until extended-protocol capture exists (nothing is written unaudited).

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::publish::{self, SessionInfo};
use super::rewrite::{rewrite, Rewritten};
use super::router::{Collect, Reply, Shared, Unit};
use super::txn::StatementCtx;
use crate::audit::kafka::KafkaSink;
use crate::proxy::relay::{Inspector, Verdict};
use crate::statement::cache::{AnalysisCache, Statement};
use crate::statement::{fast_path, sqlcommenter, Kind, TxControl};
use crate::telemetry::Metrics;
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::{put_frame, FrameError, Header, HEADER_LEN};
use crate::wire::frontend::{parse_statement, query_text, FrontendTag};

/// What to do when the audit records of a transaction cannot be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnSinkFailure {
    /// Roll the transaction back and tell the client (the default: nothing unaudited commits).
    #[default]
    Deny,
    /// Commit anyway, with an error log and the `audit_publish_failures_total` metric.
    Allow,
}

/// Client-side inspector of a capturing session.
pub struct ClientCapture {
    pub shared: Arc<Shared>,
    pub sink: Arc<KafkaSink>,
    pub cache: Arc<AnalysisCache>,
    pub session: SessionInfo,
    pub metrics: Metrics,
    pub on_sink_failure: OnSinkFailure,
    /// Statements seen (numbering for events).
    seq: u64,
    /// Transactions published (numbering for transaction ids).
    tx_seq: u64,
}

impl ClientCapture {
    pub fn new(
        shared: Arc<Shared>,
        sink: Arc<KafkaSink>,
        cache: Arc<AnalysisCache>,
        session: SessionInfo,
        metrics: Metrics,
        on_sink_failure: OnSinkFailure,
    ) -> Self {
        ClientCapture {
            shared,
            sink,
            cache,
            session,
            metrics,
            on_sink_failure,
            seq: 0,
            tx_seq: 0,
        }
    }

    fn push(&self, units: impl IntoIterator<Item = Unit>) {
        self.shared.lock().units.extend(units);
    }
}

fn frame_of(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 5);
    put_frame(&mut f, tag, body);
    f
}

fn query_frame(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame_of(b'Q', &body)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A text the server rejects at once; its ErrorResponse is replaced by hindsight's own, so the
/// session and transaction end up exactly as after any failed statement.
const REFUSED_SQL: &str = "hindsight refused this statement";

impl Inspector for ClientCapture {
    fn on_frame(&mut self, header: Header, frame: &[u8], complete: bool) -> Verdict {
        let Some(tag) = FrontendTag::from_byte(header.tag) else {
            return Verdict::Reject {
                reason: "unknown_message_type",
                error: FrameError::UnknownFrontendTag { byte: header.tag },
            };
        };
        let body = &frame[HEADER_LEN.min(frame.len())..];
        match tag {
            FrontendTag::Query => {
                let text = query_text(body);
                self.metrics
                    .statement(crate::statement::classify(text))
                    .inc();
                if fast_path::certainly_read(text) {
                    self.push([Unit::pass(b"Z")]);
                    return Verdict::Forward;
                }
                Verdict::Defer
            }
            FrontendTag::Parse => {
                let sql = parse_statement(body).map(|(_, s)| s).unwrap_or_default();
                self.metrics
                    .statement(crate::statement::classify(sql))
                    .inc();
                if complete && !fast_path::certainly_read(sql) {
                    return Verdict::Defer;
                }
                self.push([Unit::pass(b"1")]);
                Verdict::Forward
            }
            FrontendTag::Bind => {
                self.push([Unit::pass(b"2")]);
                Verdict::Forward
            }
            FrontendTag::Describe => {
                self.push([Unit::pass(b"Tn")]);
                Verdict::Forward
            }
            FrontendTag::Execute => {
                self.push([Unit::pass(b"CIs")]);
                Verdict::Forward
            }
            FrontendTag::Close => {
                self.push([Unit::pass(b"3")]);
                Verdict::Forward
            }
            FrontendTag::Sync | FrontendTag::FunctionCall => {
                self.push([Unit::pass(b"Z")]);
                Verdict::Forward
            }
            FrontendTag::Flush
            | FrontendTag::CopyData
            | FrontendTag::CopyDone
            | FrontendTag::CopyFail
            | FrontendTag::Password
            | FrontendTag::Terminate => Verdict::Forward,
        }
    }

    fn must_buffer(&self, tag: u8) -> bool {
        matches!(tag, b'Q' | b'P')
    }

    async fn resolve<'a, W: AsyncWrite + Unpin + Send>(
        &'a mut self,
        frame: &'a [u8],
        w: &'a mut W,
    ) -> std::io::Result<()> {
        match frame[0] {
            b'Q' => self.on_query(frame, w).await,
            _ => self.on_parse(frame, w).await,
        }
    }
}

/// How a simple Query is handled, decided from its analysis.
enum Plan {
    /// Relay as is (units per statement when transaction control is involved).
    Relay,
    /// A lone COMMIT / END with changes to publish first.
    Commit,
    /// Writes to capture.
    Capture(Vec<Option<Rewritten>>),
    /// Refuse with this error.
    Refuse(ErrorResponse),
}

impl ClientCapture {
    async fn on_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let full = String::from_utf8_lossy(query_text(&frame[HEADER_LEN..])).into_owned();
        let (text, tags) = sqlcommenter::split(&full);
        let entry = self.cache.get(text);
        let statements: &[Statement] = match entry.as_ref() {
            Ok(a) => &a.statements,
            // The server will report the syntax error itself.
            Err(_) => {
                self.push([Unit::pass(b"Z")]);
                return write_all(w, frame).await;
            }
        };
        let writes = statements
            .iter()
            .any(|s| s.located.analysis.kind.writes_rows());
        let commit = statements.iter().any(|s| {
            matches!(
                s.located.analysis.kind,
                Kind::Transaction(TxControl::Commit | TxControl::PrepareTransaction)
            )
        });
        let txctl = statements
            .iter()
            .any(|s| matches!(s.located.analysis.kind, Kind::Transaction(_)));
        // Decisions below depend on the transaction state: let earlier replies arrive first.
        if writes || commit {
            self.flush_and_drain(w).await?;
        }
        let (status, pending) = {
            let st = self.shared.lock();
            (
                st.status,
                !st.txn.is_empty() || !st.capture_errors.is_empty(),
            )
        };
        let plan = if writes && txctl {
            Plan::Refuse(ErrorResponse::error(
                sqlstate::CAPTURE_UNSUPPORTED,
                "hindsight: a query string that both writes rows and controls the transaction (BEGIN/COMMIT/SAVEPOINT …) cannot be captured; the query was not run",
            ).with_hint("Send transaction control statements as separate queries."))
        } else if writes {
            let major = self.shared.lock().server_major;
            match statements.iter().map(|s| rewrite(text, &s.located, major)).collect::<Result<Vec<_>, _>>() {
                Ok(v) => Plan::Capture(v),
                Err(refusal) => Plan::Refuse(
                    ErrorResponse::error(sqlstate::CAPTURE_UNSUPPORTED, format!("hindsight: {refusal}"))
                        .with_hint("Run it through a session of a proxy started with --no-capture if it must run unaudited."),
                ),
            }
        } else if commit && pending && status == b'T' {
            if statements.len() == 1 {
                Plan::Commit
            } else {
                Plan::Refuse(ErrorResponse::error(
                    sqlstate::CAPTURE_UNSUPPORTED,
                    "hindsight: COMMIT must be sent as a query of its own when the transaction has captured changes; the query was not run",
                ))
            }
        } else {
            Plan::Relay
        };
        match plan {
            Plan::Relay => {
                let mut units: Vec<Unit> = Vec::new();
                if txctl {
                    for s in statements {
                        let mut u = Unit::pass(b"CI");
                        if let Kind::Transaction(ctl) = s.located.analysis.kind {
                            u.txctl = Some((ctl, s.located.analysis.savepoint.clone()));
                        }
                        units.push(u);
                    }
                }
                units.push(Unit::pass(b"Z"));
                self.push(units);
                write_all(w, frame).await
            }
            Plan::Refuse(err) => self.refuse(w, err).await,
            Plan::Commit => self.commit(w, Some(frame)).await,
            Plan::Capture(rewrites) => {
                self.capture(w, text, &tags, statements, rewrites, status)
                    .await
            }
        }
    }

    /// Send a text the server rejects and replace its error with `err`.
    async fn refuse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        err: ErrorResponse,
    ) -> std::io::Result<()> {
        tracing::warn!(message = %err.message, "statement refused");
        let mut unit = Unit::pass(b"Z");
        unit.error_replacement = Some(err.encode());
        self.push([unit]);
        write_all(w, &query_frame(REFUSED_SQL)).await
    }

    async fn capture<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        rewrites: Vec<Option<Rewritten>>,
        status: u8,
    ) -> std::io::Result<()> {
        let implicit = status == b'I';
        let mut sql = String::new();
        let mut units = Vec::new();
        if implicit {
            sql.push_str("BEGIN;\n");
            units.push(Unit::new(b"C"));
        }
        let application_name = self.shared.lock().application_name.clone();
        for (s, rw) in statements.iter().zip(rewrites) {
            self.seq += 1;
            let original = &text[s.located.span.clone()];
            match rw {
                None => {
                    sql.push_str(original);
                    units.push(Unit::pass(b"CI"));
                }
                Some(rw) => {
                    let ctx = Arc::new(StatementCtx {
                        text: original.trim().to_string(),
                        fingerprint: s.fingerprint.clone(),
                        tags: tags.clone(),
                        seq: self.seq,
                        ts_ms: now_ms(),
                        application_name: application_name.clone(),
                        shape: Arc::clone(&rw.shape),
                    });
                    if let Some(pre) = &rw.pre_read {
                        sql.push_str(pre);
                        sql.push_str(";\n");
                        let mut u = Unit::new(b"C");
                        u.collect = Collect::PreRead(Arc::clone(&ctx), Vec::new());
                        units.push(u);
                    }
                    sql.push_str(&rw.text);
                    let mut u = Unit::pass(b"CI");
                    u.collect = Collect::Capture(ctx, Vec::new());
                    units.push(u);
                }
            }
            sql.push_str(";\n");
        }
        // Outside a transaction block hindsight ends the transaction itself: the client's
        // ReadyForQuery is held back until the outcome is known.
        units.push(if implicit {
            Unit::new(b"Z")
        } else {
            Unit::pass(b"Z")
        });
        self.push(units);
        write_all(w, &query_frame(&sql)).await?;
        if !implicit {
            return Ok(());
        }
        self.shared.drained().await;
        if self.shared.lock().status == b'E' {
            // The client already has the statement's error; end the transaction as the server
            // would have, and hand over the ReadyForQuery of the ROLLBACK (status I).
            return self.internal_end(w, "ROLLBACK", None).await;
        }
        self.commit(w, None).await
    }

    /// Publish the transaction's changes, then COMMIT: the client's own COMMIT frame
    /// (`client_commit`), or hindsight's for a transaction it opened.
    async fn commit<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        client_commit: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let (changes, capture_errors) = {
            let mut st = self.shared.lock();
            (st.txn.take(), std::mem::take(&mut st.capture_errors))
        };
        let failure = if !capture_errors.is_empty() {
            Some(format!(
                "captured rows could not be decoded: {}",
                capture_errors.join("; ")
            ))
        } else if changes.is_empty() {
            None
        } else {
            self.publish(w, changes).await?
        };
        if let Some(why) = failure {
            self.metrics.audit_publish_failures.inc();
            if self.on_sink_failure == OnSinkFailure::Deny {
                tracing::error!(%why, "audit records not recorded: rolling the transaction back");
                let err = ErrorResponse::error(
                    sqlstate::AUDIT_NOT_RECORDED,
                    format!("hindsight: the transaction was rolled back because its audit records could not be recorded: {why}"),
                )
                .with_hint("Nothing was committed. Retry when the audit broker is reachable; see hindsight's log and /readyz.");
                return self.internal_end(w, "ROLLBACK", Some(err.encode())).await;
            }
            tracing::error!(%why, "audit records not recorded; committing anyway because capture.on_sink_failure = \"allow\"");
        }
        match client_commit {
            Some(frame) => {
                self.push([Unit::pass(b"Z")]);
                write_all(w, frame).await
            }
            None => self.internal_end(w, "COMMIT", None).await,
        }
    }

    /// Send `sql` (COMMIT/ROLLBACK) as hindsight's own query; the client receives `prefix`
    /// (if any), any error of it, and its ReadyForQuery.
    async fn internal_end<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        prefix: Option<Vec<u8>>,
    ) -> std::io::Result<()> {
        let mut u = Unit::new(b"Z");
        u.forward_errors = true;
        u.forward_end = true;
        u.prefix = prefix;
        self.push([u]);
        write_all(w, &query_frame(sql)).await
    }

    /// Resolve tables and the transaction id, then publish. `Ok(Some(why))` on failure.
    async fn publish<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        changes: Vec<super::txn::Change>,
    ) -> std::io::Result<Option<String>> {
        let mut oids: Vec<u32> = changes.iter().map(|c| c.table_oid).collect();
        oids.sort_unstable();
        oids.dedup();
        let reply = self
            .internal_query(w, &publish::catalog_query(&oids))
            .await?;
        if reply.error.is_some() {
            return Ok(Some(
                "looking up the changed tables in the catalog failed".into(),
            ));
        }
        let (txid, tables) = publish::parse_catalog(&reply.rows);
        self.tx_seq += 1;
        let (records, end) = publish::build(&self.session, self.tx_seq, txid, changes, &tables);
        let events = records.len() - 1;
        match self.sink.publish(&records).await {
            Ok(()) => {
                self.metrics.audit_events.inc_by(events as u64);
                // END is published after the commit outcome is known (committed, normally).
                let sink = Arc::clone(&self.sink);
                let end = publish::end_record(&self.session, &end);
                tokio::spawn(async move {
                    if let Err(e) = sink.publish(&[end]).await {
                        tracing::warn!(error = %e, "publishing a transaction END record failed");
                    }
                });
                Ok(None)
            }
            Err(e) => Ok(Some(e.to_string())),
        }
    }

    /// Run a query of hindsight's own and wait for its rows.
    async fn internal_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
    ) -> std::io::Result<Reply> {
        let (tx, rx) = oneshot::channel();
        let mut u = Unit::new(b"Z");
        u.collect = Collect::Rows(Vec::new());
        u.reply = Some(tx);
        self.push([u]);
        write_all(w, &query_frame(sql)).await?;
        rx.await.map_err(|_| {
            std::io::Error::other("the server connection closed during an internal query")
        })
    }

    /// Ask the server to flush what it has, and wait until every pending reply arrived.
    async fn flush_and_drain<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
    ) -> std::io::Result<()> {
        if !self.shared.lock().units.is_empty() {
            write_all(w, &frame_of(b'H', &[])).await?;
            self.shared.drained().await;
        }
        Ok(())
    }

    /// Extended protocol: statements that write rows are refused until extended-protocol
    /// capture exists; a COMMIT of a transaction with captured changes is refused too (the
    /// client must commit with a simple query).
    async fn on_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let body = &frame[HEADER_LEN..];
        let (name, sql) = parse_statement(body).unwrap_or_default();
        let text = String::from_utf8_lossy(sql).into_owned();
        let (text, _) = sqlcommenter::split(&text);
        let entry = self.cache.get(text);
        let mut refusal = None;
        if let Ok(a) = entry.as_ref() {
            for s in &a.statements {
                match s.located.analysis.kind {
                    k if k.writes_rows() => {
                        refusal = Some(format!(
                            "hindsight: {} through the extended query protocol (Parse/Bind/Execute) is not captured yet; the statement was not prepared",
                            k.label().to_uppercase()
                        ));
                    }
                    Kind::Transaction(TxControl::Commit | TxControl::PrepareTransaction) => {
                        self.flush_and_drain(w).await?;
                        if !self.shared.lock().txn.is_empty() {
                            refusal = Some("hindsight: this transaction has captured changes; commit it with a simple query (COMMIT), not a prepared statement".into());
                        }
                    }
                    _ => {}
                }
            }
        }
        match refusal {
            None => {
                self.push([Unit::pass(b"1")]);
                write_all(w, frame).await
            }
            Some(msg) => {
                tracing::warn!(%msg, "statement refused");
                let mut u = Unit::pass(b"1");
                u.error_replacement = Some(
                    ErrorResponse::error(sqlstate::CAPTURE_UNSUPPORTED, msg)
                        .with_hint("Use the simple query protocol for writes, or a proxy started with --no-capture.")
                        .encode(),
                );
                self.push([u]);
                let mut b = name.to_vec();
                b.push(0);
                b.extend_from_slice(REFUSED_SQL.as_bytes());
                b.extend_from_slice(&[0, 0, 0]);
                write_all(w, &frame_of(b'P', &b)).await
            }
        }
    }
}

async fn write_all<W: AsyncWrite + Unpin + Send>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
