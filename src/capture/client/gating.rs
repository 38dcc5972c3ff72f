//! The gates on the capture path: statement rules before a write runs (a refused write is run
//! on trial and rolled back to record what it would have changed), row rules at COMMIT.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::commit::{Failure, Publishing};
use super::extended::execute_frame;
use super::front::Planned;
use super::internal::{close_frame, frame_of, query_frame};
use super::{write_all, BatchFlow, BatchTx, ClientCapture, Prep, Protocol};
use crate::audit::event::Image;
use crate::capture::expect::{Audience, PreReadRows, Step};
use crate::capture::publish::SessionInfo;
use crate::capture::rewrite::{Rewritten, Shape};
use crate::capture::router::{TxState, Unit};
use crate::capture::txn::{Change, GateInfo, GateMark, StatementCtx};
use crate::capture::{expect, publish};
use crate::gates::decide::{StatementFacts, Verdict as Gate};
use crate::gates::guard::RowFacts;
use crate::statement::cache::Statement;
use crate::statement::{sqlcommenter, Kind};
use crate::wire::error_response::{sqlstate, ErrorResponse};

/// The client's error for a gate decision. `at_commit`: a row rule refused at COMMIT (the
/// whole transaction was rolled back, like a deferred constraint).
pub(super) fn gate_error(hit: &crate::gates::decide::Hit, at_commit: bool) -> ErrorResponse {
    use crate::gates::decide::HitSource;
    let code = match hit.source {
        HitSource::KillSwitch => sqlstate::READ_ONLY,
        HitSource::Rule => sqlstate::GATE_DENIED,
        HitSource::Footprint => sqlstate::NEW_WRITE_PATH,
    };
    let what = if at_commit {
        "the transaction was rolled back"
    } else {
        "the statement was not run"
    };
    let hint = hit.hint.clone().unwrap_or_else(|| {
        if hit.reason.contains("feature flag") {
            "Turn the flag on for this application through the admin API (PUT /gates/flags/NAME), or change the rule.".into()
        } else {
            "If this write is legitimate, change or remove the rule in the rules file (it is reloaded on save).".into()
        }
    });
    let message = match hit.source {
        HitSource::Footprint => {
            format!("hindsight: new write path refused: {}; {what}", hit.reason)
        }
        HitSource::Rule | HitSource::KillSwitch => format!(
            "hindsight: write refused by rule \"{}\": {}; {what}",
            hit.rule, hit.reason
        ),
    };
    ErrorResponse::error(code, message).with_hint(hint)
}

/// Longest example statement kept in a footprint.
const EXAMPLE_LIMIT: usize = 2048;

/// The refusal of a write path outside the footprint (enforce mode).
fn footprint_hit(r: &crate::footprint::live::Refusal) -> crate::gates::decide::Hit {
    crate::gates::decide::Hit {
        rule: format!("footprint:{}", r.id),
        reason: format!(
            "application {:?} has never taken this write path ({}) and its footprint is enforced",
            r.application, r.path
        ),
        hint: Some(format!(
            "If this write is intended, approve it: hindsight footprint approve {} (or POST /footprints/{}/approve on the admin endpoint), then retry.",
            r.id, r.id
        )),
        source: crate::gates::decide::HitSource::Footprint,
    }
}

pub(super) fn client_ip(s: &SessionInfo) -> Option<std::net::IpAddr> {
    s.client_addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
}

impl ClientCapture {
    /// The gates' statement-phase outcome recorded for `s` of the current Query.
    pub(super) fn gate_for(&self, s: &Statement) -> GateInfo {
        self.query_gates
            .iter()
            .find(|(r, _)| *r == s.located.span)
            .map(|(_, g)| g.clone())
            .unwrap_or_default()
    }

    /// Whether anything judges statements before they run (gates or footprints).
    pub(super) fn judges(&self) -> bool {
        self.parts.gates.is_some() || self.parts.footprints.is_some()
    }

    /// The verdict on a statement before it runs: the gates', then the footprints' (a path
    /// outside the application's footprint in enforce mode is refused like a rule's denial).
    pub(super) fn statement_gate(
        &self,
        kind: Kind,
        writes: &[crate::statement::Write],
        fingerprint: &str,
        tags: &sqlcommenter::Tags,
        text: &str,
    ) -> Gate {
        let application = self.shared.lock().application_name.clone();
        let verdict = match &self.parts.gates {
            Some(g) => g.statement(&StatementFacts {
                kind,
                writes,
                fingerprint,
                user: &self.session.user,
                database: &self.session.database,
                application: &application,
                client_ip: client_ip(&self.session),
                tags,
            }),
            None => Gate::Allow { exempt: false },
        };
        if matches!(verdict, Gate::Deny(_)) || !crate::gates::decide::is_write(kind) {
            return verdict;
        }
        match self.footprint(kind, writes, fingerprint, tags, text, &application) {
            Some(hit) => Gate::Deny(hit),
            None => verdict,
        }
    }

    /// Whose footprint: `application` with this session's user and database.
    fn actor<'a>(&'a self, application: &'a str) -> crate::footprint::path::ActorRef<'a> {
        crate::footprint::path::ActorRef {
            application,
            user: &self.session.user,
            database: &self.session.database,
        }
    }

    /// The footprints' look at a write; `Some` when enforce mode refuses it.
    fn footprint(
        &self,
        kind: Kind,
        writes: &[crate::statement::Write],
        fingerprint: &str,
        tags: &sqlcommenter::Tags,
        text: &str,
        application: &str,
    ) -> Option<crate::gates::decide::Hit> {
        let f = self.parts.footprints.as_ref()?;
        let example = || {
            let redacted = writes
                .iter()
                .any(|w| self.parts.redactor.covers(&w.table.schema, &w.table.name));
            publish::statement_text(text, redacted, EXAMPLE_LIMIT)
        };
        let facts = crate::footprint::live::WriteFacts {
            actor: self.actor(application),
            kind,
            writes,
            fingerprint,
            tags,
            example: &example,
        };
        match f.observe(&facts) {
            crate::footprint::Sighting::Pass => None,
            crate::footprint::Sighting::Refuse(r) => Some(footprint_hit(&r)),
        }
    }

    /// Decide every write of a simple Query; `Err` with the refusing hit.
    pub(super) fn gate_query(
        &mut self,
        text: &str,
        statements: &[Statement],
        tags: &sqlcommenter::Tags,
    ) -> Result<(), (usize, crate::gates::decide::Hit)> {
        self.query_gates.clear();
        if !self.judges() {
            return Ok(());
        }
        for (i, s) in statements.iter().enumerate() {
            let a = &s.located.analysis;
            if !crate::gates::decide::is_write(a.kind) {
                continue;
            }
            let mut info = GateInfo {
                op: Some(a.kind),
                writes: a.writes.clone(),
                ..GateInfo::default()
            };
            let stmt = &text[s.located.span.clone()];
            match self.statement_gate(a.kind, &a.writes, &s.fingerprint, tags, stmt) {
                Gate::Deny(hit) => return Err((i, hit)),
                Gate::Audit(hit) => info.mark = Some(GateMark::WouldBlock(hit.rule)),
                Gate::Allow { exempt } => info.exempt = exempt,
            }
            self.query_gates.push((s.located.span.clone(), info));
        }
        Ok(())
    }

    /// A simple-Query write a gate refused: run it on trial (rolled back) to record what it
    /// would have changed, publish that as `blocked` events, and refuse it.
    pub(super) async fn deny_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        status: TxState,
        hit: crate::gates::decide::Hit,
    ) -> std::io::Result<()> {
        let a = &s.located.analysis;
        self.seq += 1;
        let gate = GateInfo {
            op: Some(a.kind),
            writes: a.writes.clone(),
            exempt: false,
            mark: Some(GateMark::Blocked(hit.rule.clone())),
        };
        let stmt = text[s.located.span.clone()].trim();
        let mut changes = self.probe(w, text, tags, s, status, &gate).await?;
        if changes.is_empty() {
            changes.push(Change::statement(
                self.statement_ctx_with(stmt, s, tags, gate),
            ));
        }
        if self.shared.lock().status == TxState::Failed {
            self.publish_refused(None, changes, &HashMap::new()).await;
        } else if let Err(Failure::Sink(e)) = self.publish(w, changes, Publishing::Refused).await? {
            self.parts.metrics.audit_publish_failures.inc();
            tracing::error!(error = %e, "the record of a refused write could not be published");
        }
        self.refuse(w, gate_error(&hit, false)).await
    }

    /// Run `s` rewritten for capture and roll it back, collecting what it would have changed
    /// (in a savepoint inside a transaction block, else in a transaction of its own).
    pub(super) async fn probe<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        status: TxState,
        gate: &GateInfo,
    ) -> std::io::Result<Vec<Change>> {
        let a = &s.located.analysis;
        if status == TxState::Failed || !a.kind.writes_rows() || a.kind == Kind::CopyIn {
            return Ok(Vec::new());
        }
        // A TRUNCATE's trial would empty the tables: its event is the statement's.
        if a.kind == Kind::Truncate {
            return Ok(Vec::new());
        }
        let sent = &text[s.located.span.clone()];
        let Planned::Rewritten(Some(rw), _) = self
            .plan_write(w, text, sent, s, &[], Protocol::Simple)
            .await?
        else {
            return Ok(Vec::new());
        };
        if rw.guard.is_some() {
            return Ok(Vec::new());
        }
        let ctx = self.event_ctx(
            text[s.located.span.clone()].trim(),
            &s.fingerprint,
            tags,
            Arc::clone(&rw.shape),
            gate.clone(),
        );
        let (open, close) = if status == TxState::Idle {
            ("BEGIN", "ROLLBACK")
        } else {
            (
                "SAVEPOINT __hs_probe",
                "ROLLBACK TO SAVEPOINT __hs_probe;\nRELEASE SAVEPOINT __hs_probe",
            )
        };
        let mut sql = format!("{open};\n");
        let mut units = vec![Unit::new(b"C")];
        let trial = Audience::Trial { refusal: None };
        for (step, step_sql) in rw.steps() {
            sql.push_str(step_sql);
            sql.push_str(";\n");
            units.push(expect::unit(&step, &ctx, &trial));
        }
        sql.push_str(close);
        for _ in close.split(';') {
            units.push(Unit::new(b"C"));
        }
        units.push(Unit::new(b"Z"));
        self.own_queries = Protocol::Simple;
        self.push(units);
        write_all(w, &query_frame(&sql)).await?;
        self.shared.drained().await;
        if status == TxState::Idle && self.shared.lock().status != TxState::Idle {
            // The trial failed inside hindsight's own transaction: end it.
            self.swallowed_query(w, "ROLLBACK").await?;
            self.shared.drained().await;
        }
        Ok(std::mem::take(&mut self.shared.lock().probe))
    }

    /// The gates' row rules over the transaction's changes (at COMMIT). Marks each change the
    /// rules refuse or dry-run; returns the client's error if any is refused.
    pub(super) fn row_rules(
        &self,
        changes: &mut [crate::capture::txn::Change],
        tables: &HashMap<u32, publish::TableInfo>,
    ) -> Option<Vec<u8>> {
        let gates = self.parts.gates.as_ref().filter(|g| g.has_row_rules())?;
        let mut first: Option<crate::gates::decide::Hit> = None;
        let client_ip = client_ip(&self.session);
        for c in changes.iter_mut() {
            if c.is_statement() || c.stmt.gate.exempt {
                continue;
            }
            let table = tables
                .get(&c.table_oid)
                .map(|t| format!("{}.{}", t.schema, t.name))
                .unwrap_or_else(|| c.stmt.shape.table.to_string());
            let op = match (&c.before, &c.after) {
                (None, Some(_)) => "insert",
                (Some(_), None) => "delete",
                _ => "update",
            };
            let facts = StatementFacts {
                kind: c.stmt.gate.op.unwrap_or(c.stmt.shape.kind),
                writes: &c.stmt.gate.writes,
                fingerprint: &c.stmt.fingerprint,
                user: &self.session.user,
                database: &self.session.database,
                application: &c.stmt.application_name,
                client_ip,
                tags: &c.stmt.tags,
            };
            // A row rule reads values: the images are parsed for it (only here).
            let (before, after) = (
                c.before.as_ref().map(Image::row),
                c.after.as_ref().map(Image::row),
            );
            let row = RowFacts {
                before: before.as_ref(),
                after: after.as_ref(),
                op,
                table: &table,
            };
            match gates.row(&facts, &row) {
                Gate::Deny(hit) => {
                    c.gate = Some(GateMark::Blocked(hit.rule.clone()));
                    first.get_or_insert(hit);
                }
                Gate::Audit(hit) => c.gate = Some(GateMark::WouldBlock(hit.rule)),
                Gate::Allow { .. } => {}
            }
        }
        first.map(|hit| gate_error(&hit, true).encode())
    }

    /// At COMMIT: columns the transaction set from non-NULL to NULL, for the footprints
    /// (grouped by application, table and column; the first row's before value and key,
    /// redacted like events).
    pub(super) fn nulling(
        &self,
        changes: &[crate::capture::txn::Change],
        tables: &HashMap<u32, publish::TableInfo>,
    ) {
        let Some(f) = &self.parts.footprints else {
            return;
        };
        type Group<'a> = (crate::footprint::live::Nulled, &'a Arc<StatementCtx>);
        let mut groups: std::collections::BTreeMap<(&str, String, String), Group> =
            Default::default();
        for c in changes {
            let (Some(before), Some(after), Some(t)) =
                (&c.before, &c.after, tables.get(&c.table_oid))
            else {
                continue;
            };
            let (before, after) = (before.row(), after.row());
            for (col, v) in &after {
                if !v.is_null() || before.get(col).is_none_or(|b| b.is_null()) {
                    continue;
                }
                let table = format!("{}.{}", t.schema, t.name);
                let key = (c.stmt.application_name.as_str(), table.clone(), col.clone());
                match groups.get_mut(&key) {
                    Some((n, _)) => n.rows += 1,
                    None => {
                        let n = self.nulled(t, table, col, &before);
                        groups.insert(key, (n, &c.stmt));
                    }
                }
            }
        }
        for ((application, _, _), (n, stmt)) in groups {
            let (schema, name) = n.table.split_once('.').unwrap_or(("", &n.table));
            let redacted = self.parts.redactor.covers(schema, name);
            let example = publish::statement_text(&stmt.text, redacted, EXAMPLE_LIMIT);
            let actor = self.actor(application);
            f.observe_nulls(actor, &stmt.tags, &example, vec![n]);
        }
    }

    fn nulled(
        &self,
        t: &publish::TableInfo,
        table: String,
        col: &str,
        before: &crate::audit::event::Row,
    ) -> crate::footprint::live::Nulled {
        let mut value = crate::audit::event::Row::new();
        value.insert(col.to_string(), before[col].clone());
        self.parts.redactor.apply(&t.schema, &t.name, &mut value);
        let mut key = crate::audit::event::key_of(before, &t.key);
        self.parts.redactor.apply(&t.schema, &t.name, &mut key);
        crate::footprint::live::Nulled {
            table,
            column: col.to_string(),
            before: value
                .remove(col)
                .unwrap_or_else(|| serde_json::Value::String("(redacted)".into())),
            key: serde_json::Value::Object(key),
            rows: 1,
        }
    }

    /// The gates' statement phase for a prepared statement about to run; `Err` if refused.
    pub(super) fn prep_gate(&self, prep: &Prep) -> Result<GateInfo, crate::gates::decide::Hit> {
        if !self.judges() {
            return Ok(GateInfo::default());
        }
        let mut gate = GateInfo {
            op: Some(prep.kind),
            writes: prep.writes.clone(),
            ..GateInfo::default()
        };
        match self.statement_gate(
            prep.kind,
            &prep.writes,
            &prep.fingerprint,
            &prep.tags,
            &prep.text,
        ) {
            Gate::Deny(hit) => return Err(hit),
            Gate::Audit(hit) => gate.mark = Some(GateMark::WouldBlock(hit.rule)),
            Gate::Allow { exempt } => gate.exempt = exempt,
        }
        Ok(gate)
    }

    /// A prepared write a gate refused (at Bind or Execute): record it and fail the message —
    /// the server then skips to the client's Sync, as after any failed message. With `trial`
    /// (the client's statement name and Bind parameters) the statement first runs on trial
    /// and is rolled back, so that the `blocked` events carry what it would have changed;
    /// otherwise one statement-level `blocked` event records it.
    pub(super) async fn refuse_prepared<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        prep: &Prep,
        hit: crate::gates::decide::Hit,
        trial: Option<(Vec<u8>, Vec<u8>)>,
    ) -> std::io::Result<()> {
        self.seq += 1;
        let gate = GateInfo {
            op: Some(prep.kind),
            writes: prep.writes.clone(),
            exempt: false,
            mark: Some(GateMark::Blocked(hit.rule.clone())),
        };
        let err = gate_error(&hit, false).encode();
        let mut changes = Vec::new();
        let status = self.shared.lock().status;
        if let (Some((stmt, params)), Some(rw), true) =
            (trial, &prep.rewritten, status != TxState::Failed)
        {
            let ctx = self.event_ctx(
                &prep.text,
                &prep.fingerprint,
                &prep.tags,
                Arc::clone(&rw.shape),
                gate.clone(),
            );
            let opened = status == TxState::Idle;
            self.own_queries = Protocol::Extended;
            let mut open = Unit::new(b"Z");
            open.error_replacement = Some(err.clone());
            let open_sql = if opened {
                "BEGIN"
            } else {
                "SAVEPOINT __hs_probe"
            };
            self.send_internal(w, open_sql, open).await?;
            let (frames, units) = trial_frames(prep, &stmt, &params, &ctx, &err);
            self.push(units);
            write_all(w, &frames).await?;
            self.shared.drained().await;
            if self.shared.lock().batch_failed {
                // The trial failed: the client already has the gate's error in its place, and
                // the server skips to the Sync, which ends hindsight's transaction.
                self.shared.lock().probe.clear();
                self.batch.flow = BatchFlow::SkipToSync;
                if opened {
                    self.batch.tx = BatchTx::Hindsight;
                }
                let refused = Change::statement(self.event_ctx(
                    &prep.text,
                    &prep.fingerprint,
                    &prep.tags,
                    Arc::new(Shape::statement(prep.kind, prep.object.clone())),
                    gate,
                ));
                self.publish_refused(None, vec![refused], &HashMap::new())
                    .await;
                return Ok(());
            }
            let close_sql = if opened {
                "ROLLBACK"
            } else {
                "ROLLBACK TO SAVEPOINT __hs_probe"
            };
            self.swallowed_query(w, close_sql).await?;
            if !opened {
                self.swallowed_query(w, "RELEASE SAVEPOINT __hs_probe")
                    .await?;
            }
            changes = std::mem::take(&mut self.shared.lock().probe);
        }
        if changes.is_empty() {
            let shape = Arc::new(Shape::statement(prep.kind, prep.object.clone()));
            let ctx = self.event_ctx(&prep.text, &prep.fingerprint, &prep.tags, shape, gate);
            changes.push(Change::statement(ctx));
            self.publish_refused(None, changes, &HashMap::new()).await;
        } else if let Err(Failure::Sink(e)) = self.publish(w, changes, Publishing::Refused).await? {
            self.parts.metrics.audit_publish_failures.inc();
            tracing::error!(error = %e, "the record of a refused write could not be published");
        }
        self.refused_parse(w, b"__hindsight_refused", err).await
    }
}

/// The frames of a refused prepared write's trial run (`stmt` bound to the client's Bind
/// `params`, with its companions), each as portal `__hs_probe`, then a Flush, and their units:
/// rows to the probe, errors replaced by the gate's `err`.
fn trial_frames(
    prep: &Prep,
    stmt: &[u8],
    params: &[u8],
    ctx: &Arc<StatementCtx>,
    err: &[u8],
) -> (Vec<u8>, Vec<Unit>) {
    let mut frames = Vec::new();
    let mut units = Vec::new();
    let trial = Audience::Trial {
        refusal: Some(err.to_vec()),
    };
    let mut run = |statement: &[u8], step: Step| {
        let mut b = b"__hs_probe\0".to_vec();
        b.extend_from_slice(statement);
        b.push(0);
        b.extend_from_slice(params);
        b.extend_from_slice(&[0, 0]);
        frames.extend(frame_of(b'B', &b));
        frames.extend(execute_frame(b"__hs_probe"));
        frames.extend(close_frame(b'P', b"__hs_probe"));
        let mut bind = Unit::new(b"2");
        bind.error_replacement = Some(err.to_vec());
        units.extend([bind, expect::unit(&step, ctx, &trial), Unit::new(b"3")]);
    };
    let rows = prep
        .rewritten
        .as_ref()
        .map_or(PreReadRows::Collected, Rewritten::pre_read_rows);
    if let Some(c) = &prep.companion {
        run(c, Step::PreRead(rows));
    }
    run(stmt, Step::Main);
    if let Some(c) = &prep.post_companion {
        run(c, Step::PostRead);
    }
    frames.extend(frame_of(b'H', &[]));
    (frames, units)
}
