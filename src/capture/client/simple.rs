//! The simple-query protocol: a Query is analysed, relayed, refused, or rewritten for capture
//! (wrapped in hindsight's own BEGIN outside a transaction block, ended at `finish_query`).

use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::bound;
use super::commit::CommitBy;
use super::encoding::may_change_encoding;
use super::front::{FrontText, Planned};
use super::internal::query_frame;
use super::unparsed::Unreadable;
use super::{now_ms, uncapturable, write_all, ClientCapture, NextEncoding, Protocol};
use crate::capture::expect;
use crate::capture::expect::{Audience, Step};
use crate::capture::positions::SentRange;
use crate::capture::rewrite::{Rewritten, Shape};
use crate::capture::router::{Collect, Delivery, TxState, Unit};
use crate::capture::txn::{Change, GateInfo, StatementCtx};
use crate::statement::cache::Statement;
use crate::statement::{sqlcommenter, Kind, TxControl};
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::HEADER_LEN;
use crate::wire::frontend::query_text;

/// How a simple Query is handled, decided from its analysis.
pub(super) enum Plan {
    /// Relay as is.
    Relay(RelayUnits),
    /// A lone COMMIT / END with changes to publish first.
    Commit,
    /// Writes to capture, in a transaction in this state.
    Capture(Vec<Option<Rewritten>>, TxState),
    /// Writes mixed with transaction control (`BEGIN; UPDATE …; COMMIT`): run in parts, so
    /// that each COMMIT waits for its transaction's records (see `run_segments`).
    Segments(Vec<Option<Rewritten>>, Vec<Role>),
    /// Refuse with this error.
    Refuse(ErrorResponse),
    /// Fail with this ErrorResponse frame (the server's own, or hindsight's encoded).
    Fail(Vec<u8>),
    /// DDL or opaque statements outside a transaction block: their statement-level events
    /// are published before they run (hindsight cannot wrap them in a transaction: VACUUM,
    /// CREATE INDEX CONCURRENTLY and procedures that COMMIT refuse to run inside one).
    Announce,
}

/// The units of a relayed query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayUnits {
    /// One for the whole reply, up to its ReadyForQuery.
    Whole,
    /// One per statement, then the ReadyForQuery's: transaction control or statement events
    /// are involved.
    PerStatement,
}

/// What a query string's statements do, as far as its handling depends on it.
#[derive(Debug, Clone, Copy)]
struct QueryFacts {
    /// One of them writes rows.
    writes: bool,
    /// One of them is a COMMIT (or PREPARE TRANSACTION).
    commit: bool,
    /// One of them is transaction control.
    txctl: bool,
    /// One of them has a statement-level event (DDL, opaque).
    stmt_events: bool,
}

impl QueryFacts {
    fn of(statements: &[Statement]) -> Self {
        let any = |f: fn(Kind) -> bool| statements.iter().any(|s| f(s.located.analysis.kind));
        QueryFacts {
            writes: any(Kind::writes_rows),
            commit: any(|k| {
                matches!(
                    k,
                    Kind::Transaction(TxControl::Commit | TxControl::PrepareTransaction)
                )
            }),
            txctl: any(|k| matches!(k, Kind::Transaction(_))),
            stmt_events: any(Kind::statement_event),
        }
    }
}

impl ClientCapture {
    pub(super) async fn on_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let full = match self.front_text(query_text(&frame[HEADER_LEN..])) {
            FrontText::Text(text) => text,
            FrontText::ServerDecides => {
                self.push([Unit::pass(b"Z")]);
                return write_all(w, frame).await;
            }
            FrontText::Refused(e) => return self.refuse(w, e).await,
        };
        let (text, tags) = sqlcommenter::split(&full);
        self.prepare_waiting(w).await?;
        let entry = self.parts.cache.get(text);
        let unreadable;
        let statements: &[Statement] = match entry.as_ref() {
            Ok(a) => &a.statements,
            // A server newer than the parser may accept what the parser cannot read.
            Err(_) if self.parser_may_lag() => match self.read_unparsed(w, &full, text).await? {
                Unreadable::Statements(v) => {
                    unreadable = v;
                    &unreadable
                }
                Unreadable::Answered => return Ok(()),
                Unreadable::Relay => {
                    self.push([Unit::pass(b"Z")]);
                    return write_all(w, frame).await;
                }
            },
            // The server will report the syntax error itself.
            Err(_) => {
                self.push([Unit::pass(b"Z")]);
                return write_all(w, frame).await;
            }
        };
        let resolved = self.resolve(w, text, statements, Protocol::Simple).await?;
        let statements = &resolved.statements[..];
        if statements
            .iter()
            .any(|s| s.located.analysis.kind == Kind::Session)
        {
            // SET search_path and the like: names may resolve differently from now on.
            self.targets.clear();
            if statements
                .iter()
                .any(|s| bound::drops_prepared(&text[s.located.span.clone()]))
            {
                self.bound.forget();
            }
        }
        for s in statements {
            self.statement_runs(s.located.analysis.kind);
        }
        let facts = QueryFacts::of(statements);
        // Decisions below depend on the transaction state: let earlier replies arrive first.
        if facts.writes || facts.commit || facts.stmt_events {
            self.flush_and_drain(w).await?;
        }
        let (status, pending) = {
            let st = self.shared.lock();
            (
                st.status,
                !st.txn.is_empty() || !st.capture_errors.is_empty(),
            )
        };
        if let Err((i, hit)) = self.gate_query(text, statements, &tags) {
            return self
                .deny_query(w, text, &tags, &statements[i], status, hit)
                .await;
        }
        if let [s] = statements {
            if s.located.analysis.kind == Kind::CopyIn && !s.located.analysis.explain_analyze {
                return self.capture_copy(w, frame, text, &tags, s, status).await;
            }
        }
        let plan = self
            .plan_query(w, text, statements, &facts, status, pending)
            .await?;
        self.emit_query(w, frame, text, &tags, statements, plan)
            .await
    }

    /// How to handle a Query, from its statements' facts and the transaction state.
    async fn plan_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        statements: &[Statement],
        facts: &QueryFacts,
        status: TxState,
        pending: bool,
    ) -> std::io::Result<Plan> {
        let QueryFacts {
            writes,
            commit,
            txctl,
            stmt_events,
        } = *facts;
        // A COMMIT of captured changes must wait for their publication: a query string with
        // one among other statements is run in parts.
        let segmented = ((writes || stmt_events) && txctl)
            || (commit && pending && status == TxState::InBlock && statements.len() > 1);
        Ok(if segmented {
            match implicit_blocks(statements, status) {
                Err(why) => Plan::Refuse(
                    ErrorResponse::error(
                        sqlstate::CAPTURE_UNSUPPORTED,
                        format!("hindsight: {why}; the query was not run"),
                    )
                    .with_hint("Start the transaction with BEGIN before the first write of the query string, or send the statements as separate queries."),
                ),
                Ok(roles) => match self.rewrites(w, text, statements).await? {
                    Ok(v) => Plan::Segments(v, roles),
                    Err(e) => Plan::Fail(e),
                },
            }
        } else if writes {
            match self.rewrites(w, text, statements).await? {
                Ok(v) => Plan::Capture(v, status),
                Err(e) => Plan::Fail(e),
            }
        } else if stmt_events && status == TxState::Idle {
            Plan::Announce
        } else if commit && pending && status == TxState::InBlock {
            Plan::Commit
        } else {
            Plan::Relay(match txctl || stmt_events {
                true => RelayUnits::PerStatement,
                false => RelayUnits::Whole,
            })
        })
    }

    /// Carry out a Query's plan: the only place a Query's frames are written.
    async fn emit_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        plan: Plan,
    ) -> std::io::Result<()> {
        match plan {
            Plan::Relay(relay) => {
                let mut units = match relay {
                    RelayUnits::PerStatement => self.relay_units(text, tags, statements),
                    RelayUnits::Whole => Vec::new(),
                };
                units.push(Unit::pass(b"Z"));
                self.push(units);
                write_all(w, frame).await
            }
            Plan::Announce => {
                let changes = statements
                    .iter()
                    .filter(|s| s.located.analysis.kind.statement_event())
                    .map(|s| {
                        self.seq += 1;
                        let stmt = text[s.located.span.clone()].trim();
                        Change::statement(self.statement_ctx(stmt, s, tags))
                    })
                    .collect();
                self.announce(w, frame, changes, b"Z").await
            }
            Plan::Refuse(err) => self.refuse(w, err).await,
            Plan::Fail(frame) => self.refuse_frame(w, frame).await,
            Plan::Commit => self
                .commit(w, CommitBy::ClientSimple(frame))
                .await
                .map(drop),
            Plan::Capture(rewrites, status) => {
                self.capture(w, text, tags, statements, rewrites, status)
                    .await
            }
            Plan::Segments(rewrites, roles) => {
                self.run_segments(w, text, tags, statements, rewrites, &roles)
                    .await
            }
        }
    }

    /// One unit per statement of a relayed query string that controls the transaction or has
    /// statement-level events (recorded with the transaction once it completes).
    fn relay_units(
        &mut self,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
    ) -> Vec<Unit> {
        let mut units = Vec::with_capacity(statements.len() + 1);
        for s in statements {
            let a = &s.located.analysis;
            let mut u = Unit::pass(b"CI");
            if let Kind::Transaction(ctl) = a.kind {
                u.txctl = Some((ctl, a.savepoint.clone()));
            }
            if a.kind.statement_event() {
                self.seq += 1;
                let stmt = text[s.located.span.clone()].trim();
                u.collect = Collect::Statement(self.statement_ctx(stmt, s, tags));
            }
            units.push(u);
        }
        units
    }

    /// Attribution of the current statement (`self.seq`) for a statement-level event.
    pub(super) fn statement_ctx(
        &self,
        text: &str,
        s: &Statement,
        tags: &sqlcommenter::Tags,
    ) -> Arc<StatementCtx> {
        self.statement_ctx_with(text, s, tags, self.gate_for(s))
    }

    /// [`Self::statement_ctx`] with the gates' outcome `gate` (a refused statement's).
    pub(super) fn statement_ctx_with(
        &self,
        text: &str,
        s: &Statement,
        tags: &sqlcommenter::Tags,
        gate: GateInfo,
    ) -> Arc<StatementCtx> {
        let a = &s.located.analysis;
        let table = a
            .writes
            .first()
            .map(|w| w.table.clone())
            .unwrap_or_default();
        let shape = Arc::new(Shape::statement(a.kind, table));
        self.event_ctx(text, &s.fingerprint, tags, shape, gate)
    }

    pub(super) fn event_ctx(
        &self,
        text: &str,
        fingerprint: &str,
        tags: &sqlcommenter::Tags,
        shape: Arc<Shape>,
        gate: GateInfo,
    ) -> Arc<StatementCtx> {
        Arc::new(StatementCtx {
            text: text.to_string(),
            fingerprint: fingerprint.to_string(),
            tags: tags.clone(),
            seq: self.seq,
            ts_ms: now_ms(),
            application_name: self.shared.lock().application_name.clone(),
            shape,
            binary: false,
            gate,
        })
    }

    /// Run a Query's statements with its writes rewritten for capture; outside a transaction
    /// block inside hindsight's own BEGIN, ended by `finish_query` (publish, then COMMIT).
    pub(super) async fn capture<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        rewrites: Vec<Option<Rewritten>>,
        status: TxState,
    ) -> std::io::Result<()> {
        if let Some(b) = self.bound_write(text, statements, &rewrites, status) {
            if let (Some(rw), [s]) = (&rewrites[0], statements) {
                return self.capture_bound(w, text, tags, s, rw, b, status).await;
            }
        }
        let implicit = status == TxState::Idle;
        let (sql, mut units) = self.composed(text, tags, statements, rewrites, implicit);
        // Outside a transaction block hindsight ends the transaction itself: the client's
        // ReadyForQuery is held back until the outcome is known.
        units.push(if implicit {
            Unit::new(b"Z")
        } else {
            Unit::pass(b"Z")
        });
        self.push(units);
        write_all(w, &query_frame(&sql)).await?;
        self.finish_query(w, implicit).await
    }

    /// hindsight's query string for `statements` (each rewritten for capture, or as sent),
    /// after its own BEGIN when it `opens` the transaction, with one unit per statement the
    /// server will answer (the ReadyForQuery's is the caller's).
    fn composed(
        &mut self,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        rewrites: Vec<Option<Rewritten>>,
        opens: bool,
    ) -> (String, Vec<Unit>) {
        let mut sql = String::new();
        let mut units = Vec::new();
        if opens {
            open_own_transaction(&mut sql, &mut units);
        }
        self.add_statements(&mut sql, &mut units, text, tags, statements, rewrites);
        maps_whole_string(&mut units);
        (sql, units)
    }

    /// Append `statements` (each rewritten for capture, or as sent) to hindsight's query
    /// string `sql`, with one unit per statement the server will answer.
    fn add_statements(
        &mut self,
        sql: &mut String,
        units: &mut Vec<Unit>,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        rewrites: Vec<Option<Rewritten>>,
    ) {
        for (s, rw) in statements.iter().zip(rewrites) {
            self.seq += 1;
            let original = &text[s.located.span.clone()];
            let before = text[..s.located.span.start].chars().count() as i64;
            match rw {
                None => {
                    let sent_at = sql.chars().count() as i64;
                    sql.push_str(original);
                    let mut u = Unit::pass(b"CI");
                    u.positions.shift = sent_at - before;
                    u.positions.sent = Some(SentRange {
                        start: sent_at + 1,
                        end: sql.chars().count() as i64 + 1,
                    });
                    if let Kind::Transaction(ctl) = s.located.analysis.kind {
                        u.txctl = Some((ctl, s.located.analysis.savepoint.clone()));
                    }
                    if s.located.analysis.kind.statement_event() {
                        u.collect =
                            Collect::Statement(self.statement_ctx(original.trim(), s, tags));
                    }
                    units.push(u);
                }
                Some(rw) => {
                    let ctx = self.write_ctx(original, s, tags, &rw);
                    let client = Audience::Client { ends: b"CI" };
                    for (i, (step, step_sql)) in rw.steps().enumerate() {
                        if i > 0 {
                            sql.push_str(";\n");
                        }
                        let sent_at = sql.chars().count() as i64;
                        sql.push_str(step_sql);
                        let mut u = expect::unit(&step, &ctx, &client);
                        match step {
                            Step::Guard(_) | Step::PostRead => {}
                            // The pre-read evaluates the statement's own FROM/WHERE: its
                            // errors point into the client's text.
                            Step::PreRead(_) => {
                                u.positions.pieces =
                                    rw.pre_read_segments(sent_at, original, before);
                            }
                            Step::Main => {
                                u.positions.shift = sent_at - before;
                                u.positions.inserts = rw.position_inserts(sent_at);
                            }
                        }
                        if matches!(step, Step::PreRead(_) | Step::Main) {
                            u.positions.sent = Some(SentRange {
                                start: sent_at + 1,
                                end: sql.chars().count() as i64 + 1,
                            });
                        }
                        units.push(u);
                    }
                }
            }
            sql.push_str(";\n");
        }
    }

    /// A query string that mixes writes with transaction control, run as the server would
    /// run it but in parts: the statements up to each COMMIT as one query, then the COMMIT
    /// itself once the transaction's records are published (see `commit`). The client sees
    /// one reply stream and one ReadyForQuery; after an error the rest is skipped, as the
    /// server skips the rest of a query string. Every write runs inside a transaction block:
    /// the client's, or one hindsight opens where `roles` says (`implicit_blocks`).
    async fn run_segments<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        rewrites: Vec<Option<Rewritten>>,
        roles: &[Role],
    ) -> std::io::Result<()> {
        let opens = |i: usize| roles[i] == Role::Opens;
        let mut rewrites = rewrites.into_iter();
        let mut start = 0;
        for (i, s) in statements.iter().enumerate() {
            let last = i + 1 == statements.len();
            let ends_opened = roles[i] == Role::EndsOpened;
            if !splits_at(s) && !ends_opened {
                if last {
                    let part: Vec<_> = rewrites.by_ref().take(i + 1 - start).collect();
                    let open = opens(start);
                    return self
                        .run_segment(w, text, tags, &statements[start..], part, true, open)
                        .await
                        .map(drop);
                }
                continue;
            }
            if start < i {
                let part: Vec<_> = rewrites.by_ref().take(i - start).collect();
                if !self
                    .run_segment(
                        w,
                        text,
                        tags,
                        &statements[start..i],
                        part,
                        false,
                        opens(start),
                    )
                    .await?
                {
                    return Ok(());
                }
            }
            rewrites.next();
            start = i + 1;
            let (status, pending) = {
                let st = self.shared.lock();
                let pending = !st.txn.is_empty() || !st.capture_errors.is_empty();
                (st.status, pending)
            };
            let sql = text[s.located.span.clone()].trim();
            let a = &s.located.analysis;
            let ok = if ends_opened && status == TxState::InBlock {
                if a.kind == Kind::Transaction(TxControl::Commit) && !a.chain {
                    self.commit(w, CommitBy::InQueryImplicit { sql, last })
                        .await?
                } else {
                    self.roll_back_implicit(w, sql, last).await?
                }
            } else if a.kind == Kind::Transaction(TxControl::Commit)
                && status == TxState::InBlock
                && pending
            {
                self.commit(w, CommitBy::InQuery { sql, last }).await?
            } else {
                self.run_segment(w, text, tags, &statements[i..=i], vec![None], last, false)
                    .await?
            };
            if !ok {
                return Ok(());
            }
        }
        Ok(())
    }

    /// A ROLLBACK (or `… AND CHAIN`) that ends an implicit transaction hindsight opened for the
    /// writes before it: nothing is published; hindsight rolls back, then the client's
    /// statement runs on its own, so the client gets what the server says of it in an
    /// implicit transaction (a warning, or for AND CHAIN its error). `Ok(false)`: it failed.
    async fn roll_back_implicit<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        last: bool,
    ) -> std::io::Result<bool> {
        {
            let mut st = self.shared.lock();
            st.txn.clear();
            st.capture_errors.clear();
        }
        let mut ours = Unit::with(Delivery::Errors, b"C");
        ours.txctl = Some((TxControl::Rollback, String::new()));
        self.push([ours, Unit::pass(b"C"), end_unit(last)]);
        write_all(w, &query_frame(&format!("ROLLBACK;\n{sql}"))).await?;
        if last {
            return Ok(true);
        }
        self.shared.drained().await;
        Ok(!self.shared.lock().last_failed)
    }

    /// Run `statements` as one query whose ReadyForQuery the client gets only if `last` or
    /// if one of them failed. Waits for the replies unless `last`; `Ok(false)`: one failed.
    /// `open`: the statements write outside a transaction block, in the implicit transaction
    /// the server would give them up to the client's COMMIT (or the end of the string):
    /// hindsight opens it with its own BEGIN, rolls it back after an error, and at the end of
    /// the string publishes and commits it (`finish_query`).
    #[allow(clippy::too_many_arguments)]
    async fn run_segment<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        statements: &[Statement],
        rewrites: Vec<Option<Rewritten>>,
        last: bool,
        open: bool,
    ) -> std::io::Result<bool> {
        let (sql, mut units) = self.composed(text, tags, statements, rewrites, open);
        units.push(if open {
            Unit::new(b"Z")
        } else {
            end_unit(last)
        });
        self.own_queries = Protocol::Simple;
        self.push(units);
        write_all(w, &query_frame(&sql)).await?;
        if open && last {
            self.finish_query(w, true).await?;
            return Ok(true);
        }
        if last {
            return Ok(true);
        }
        self.shared.drained().await;
        let failed = self.shared.lock().last_failed;
        if failed && open {
            // The client has the error; end hindsight's transaction as the server would have
            // ended the implicit one, and hand over that ReadyForQuery.
            self.finish_query(w, true).await?;
        }
        Ok(!failed)
    }

    /// Each statement rewritten for capture (`None`: it runs as sent), or the client's error
    /// (an encoded ErrorResponse) when one cannot be captured.
    async fn rewrites<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        statements: &[Statement],
    ) -> std::io::Result<Result<Vec<Option<Rewritten>>, Vec<u8>>> {
        let mut out = Vec::with_capacity(statements.len());
        self.next_encoding = NextEncoding::Reported;
        let mut result = Ok(());
        for s in statements {
            match self.rewrite_one(w, text, s, statements.len() == 1).await? {
                Ok(rw) => out.push(rw),
                Err(frame) => {
                    result = Err(frame);
                    break;
                }
            }
            if may_change_encoding(text[s.located.span.clone()].as_bytes()) {
                self.next_encoding = NextEncoding::MayChange;
            }
        }
        self.next_encoding = NextEncoding::Reported;
        Ok(result.map(|()| out))
    }

    /// One statement of a query string (`alone`: the only one) rewritten for capture (`None`:
    /// it runs as sent), or the client's error (an encoded ErrorResponse).
    async fn rewrite_one<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        s: &Statement,
        alone: bool,
    ) -> std::io::Result<Result<Option<Rewritten>, Vec<u8>>> {
        let refused = |msg: String| uncapturable(msg).encode();
        let span = s.located.span.clone();
        let sent = &text[span.clone()];
        Ok(
            match self
                .plan_write(w, text, sent, s, &[], Protocol::Simple)
                .await?
            {
                Planned::Rewritten(rw, _) => Ok(rw),
                Planned::Refused(msg) => Err(refused(msg)),
                Planned::Failed(frame) if alone => {
                    // The statement's own error: where the client's text has it.
                    let before = text[..span.start].chars().count() as i64;
                    Err(crate::wire::error_response::shift_position(&frame, -before))
                }
                Planned::Failed(frame) => {
                    let why = crate::wire::error_response::message_of(&frame);
                    Err(refused(format!("hindsight: the data-modifying WITH statement could not be described before the query ran ({why}); the query was not run. If it depends on an earlier statement of the same query string, send it as a query of its own")))
                }
                Planned::Skipped => Err(refused(
                    "hindsight: the query could not be described".into(),
                )),
            },
        )
    }

    /// After a captured query: if hindsight opened the transaction, end it (publish + COMMIT,
    /// or ROLLBACK when the statement failed) and hand the client its ReadyForQuery.
    pub(super) async fn finish_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        implicit: bool,
    ) -> std::io::Result<()> {
        if !implicit {
            return Ok(());
        }
        self.shared.drained().await;
        let (status, failed) = {
            let st = self.shared.lock();
            (st.status, st.last_failed)
        };
        if status == TxState::Failed {
            // The client already has the statement's error; end the transaction as the server
            // would have, and hand over the ReadyForQuery of the ROLLBACK (status I).
            return self.internal_end(w, "ROLLBACK", None, None).await;
        }
        if failed && status == TxState::Idle {
            // The server rejected the whole string (its BEGIN never ran, see
            // `Unit::maps_whole_string`): no transaction to end. An empty query hands the
            // client its ReadyForQuery (a COMMIT would warn "no transaction in progress").
            return self.internal_end(w, "", None, None).await;
        }
        self.commit(w, CommitBy::ImplicitSimple).await.map(drop)
    }
}

/// hindsight's own `BEGIN;` at the start of a query string it composes, and its unit: an error
/// there means the server rejected the whole string (see `Unit::maps_whole_string`).
fn open_own_transaction(sql: &mut String, units: &mut Vec<Unit>) {
    sql.push_str("BEGIN;\n");
    units.push(Unit::with(Delivery::Errors, b"C"));
}

/// The first unit of a query string hindsight composed — its BEGIN, or in a transaction block
/// the first statement's — maps the position of an error that rejects the whole string (see
/// `Unit::maps_whole_string`).
fn maps_whole_string(units: &mut [Unit]) {
    if let Some(first) = units.first_mut() {
        first.maps_whole_string = true;
    }
}

/// The ReadyForQuery of one part of a query string hindsight runs in parts: the client's own
/// if `last`, else swallowed unless something before it failed (then it ends the client's
/// query, as the server ends a query string at its first error).
pub(super) fn end_unit(last: bool) -> Unit {
    if last {
        return Unit::pass(b"Z");
    }
    Unit::with(Delivery::EndIfFailed, b"Z")
}

/// Where `run_segments` cuts a query string: at each COMMIT and each ROLLBACK (without AND
/// CHAIN, which keeps the block) — what follows them may be a new implicit transaction.
fn splits_at(s: &Statement) -> bool {
    let a = &s.located.analysis;
    match a.kind {
        Kind::Transaction(TxControl::Commit) => true,
        Kind::Transaction(TxControl::Rollback) => !a.chain,
        _ => false,
    }
}

/// What a statement of a query string run in parts (`run_segments`) is to its implicit
/// transactions (`implicit_blocks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Plain,
    /// The first statement of a part whose writes the server would run in the implicit
    /// transaction it gives a query string outside a block: hindsight opens it with its own
    /// BEGIN.
    Opens,
    /// The COMMIT or ROLLBACK (with or without AND CHAIN) that ends such a transaction.
    EndsOpened,
}

/// How to run a query string that both writes and controls the transaction, judged from the
/// statements alone, starting from the session's transaction `status`: the parts (cut where
/// [`splits_at`] says, and at a ROLLBACK AND CHAIN that ends an implicit transaction) whose
/// writes run outside a
/// block — `INSERT …; COMMIT; INSERT …` — in the implicit transaction the server would give
/// them, which hindsight opens and must hold at its end (see [`Role`]).
///
/// `Err` says what cannot be run that way: in such an implicit transaction, a BEGIN (the server
/// would turn the implicit transaction into a block) or a savepoint (the server refuses it
/// there, hindsight's own BEGIN would not); a write after other transaction control in the same
/// part (a savepoint or `COMMIT PREPARED` outside a block, which hindsight's BEGIN would
/// change); PREPARE TRANSACTION.
pub(super) fn implicit_blocks(
    statements: &[Statement],
    status: TxState,
) -> Result<Vec<Role>, String> {
    #[derive(PartialEq)]
    enum Block {
        None,
        Client,
        Opened,
    }
    let mut roles = vec![Role::Plain; statements.len()];
    let mut block = if status == TxState::Idle {
        Block::None
    } else {
        Block::Client
    };
    let mut part = 0;
    let mut first_write = 0;
    for (i, s) in statements.iter().enumerate() {
        let kind = s.located.analysis.kind;
        match kind {
            Kind::Transaction(TxControl::PrepareTransaction) => {
                return Err("PREPARE TRANSACTION among other statements of a query string that writes cannot be captured (send it as a query of its own)".into())
            }
            Kind::Transaction(TxControl::Commit | TxControl::Rollback) if block == Block::Opened => {
                roles[i] = Role::EndsOpened;
                block = Block::None;
                part = i + 1;
            }
            // `AND CHAIN` starts the client's next block at once.
            Kind::Transaction(TxControl::Commit) => {
                if !s.located.analysis.chain {
                    block = Block::None;
                }
                part = i + 1;
            }
            Kind::Transaction(ctl) if block == Block::Opened => {
                let what = if ctl == TxControl::Begin { "BEGIN" } else { "a savepoint" };
                return Err(format!(
                    "a query string that writes outside a transaction block ({}) then has {what} in the same implicit transaction",
                    statements[first_write].located.analysis.kind.label().to_uppercase()
                ));
            }
            Kind::Transaction(TxControl::Begin) => block = Block::Client,
            Kind::Transaction(TxControl::Rollback) if !s.located.analysis.chain => {
                block = Block::None;
                part = i + 1;
            }
            k if (k.writes_rows() || k.statement_event()) && block == Block::None => {
                let clean = statements[part..i]
                    .iter()
                    .all(|s| !matches!(s.located.analysis.kind, Kind::Transaction(_)));
                if !clean {
                    return Err(format!(
                        "a query string writes outside a transaction block ({}) after transaction control that is not BEGIN, COMMIT or ROLLBACK",
                        k.label().to_uppercase()
                    ));
                }
                roles[part] = Role::Opens;
                block = Block::Opened;
                first_write = i;
            }
            _ => {}
        }
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(sql: &str, status: TxState) -> Result<Vec<Role>, String> {
        let statements: Vec<Statement> = crate::statement::analyze(sql)
            .unwrap()
            .into_iter()
            .map(|located| Statement {
                located,
                fingerprint: String::new(),
            })
            .collect();
        implicit_blocks(&statements, status)
    }

    #[test]
    fn writes_outside_a_block_get_the_implicit_transaction_up_to_its_end() {
        use Role::*;
        // Each part's implicit transaction: opened where the part starts, ended where it ends.
        assert_eq!(
            roles("SELECT 1; INSERT INTO t VALUES (1); COMMIT; UPDATE t SET a = 2; ROLLBACK; DELETE FROM t", TxState::Idle),
            Ok(vec![Opens, Plain, EndsOpened, Opens, EndsOpened, Opens])
        );
        // Inside the client's own block nothing is opened; its COMMIT is its own.
        assert_eq!(
            roles(
                "BEGIN; INSERT INTO t VALUES (1); COMMIT AND CHAIN; INSERT INTO t VALUES (2)",
                TxState::Idle
            ),
            Ok(vec![Plain, Plain, Plain, Plain])
        );
        assert_eq!(
            roles("INSERT INTO t VALUES (1); COMMIT", TxState::InBlock),
            Ok(vec![Plain, Plain])
        );
        // A ROLLBACK of the client's block: a new implicit transaction after it.
        assert_eq!(
            roles("BEGIN; INSERT INTO t VALUES (1); ROLLBACK; INSERT INTO t VALUES (2); ROLLBACK AND CHAIN", TxState::Idle),
            Ok(vec![Plain, Plain, Plain, Opens, EndsOpened])
        );
        // What hindsight's BEGIN would change: refused.
        for sql in [
            "UPDATE t SET a = 1; BEGIN; COMMIT",
            "UPDATE t SET a = 1; SAVEPOINT s; COMMIT",
            "SAVEPOINT s; UPDATE t SET a = 1; COMMIT",
            "INSERT INTO t VALUES (1); PREPARE TRANSACTION 'x'",
        ] {
            assert!(roles(sql, TxState::Idle).is_err(), "{sql}");
        }
    }
}
