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
//! Extended protocol: Parse rewrites writes like the simple path (PostgreSQL 18 for UPDATE,
//! upsert and MERGE; INSERT/DELETE on any version); Describe and Execute replies lose the
//! capture columns; a Bind of a write outside a transaction makes hindsight open one, which it
//! ends at the client's Sync after publishing. What cannot be captured is refused (HS002).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::publish::{self, SessionInfo};
use super::rewrite::Shape;
use super::rewrite::{rewrite, Refusal, Rewritten};
use super::router::{Collect, Reply, Shared, Unit};
use super::tables::Target;
use super::txn::{Change, GateInfo, GateMark, StatementCtx};
use crate::audit::event::CommitStatus;
use crate::audit::kafka::KafkaSink;
use crate::gates::decide::{StatementFacts, Verdict as Gate};
use crate::gates::guard::RowFacts;
use crate::proxy::relay::{frontend_tag, Inspector, Verdict};
use crate::statement::analysis::TableName;
use crate::statement::cache::{AnalysisCache, Statement};
use crate::statement::{fast_path, sqlcommenter, Kind, TxControl};
use crate::telemetry::Metrics;
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::{put_frame, take_cstr, Header, HEADER_LEN};
use crate::wire::frontend::{describe_target, parse_statement, query_text, FrontendTag};

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
    pub redactor: Arc<super::redact::Redactor>,
    /// TRUNCATE of more rows than this is refused (capture.truncate_row_limit).
    pub truncate_limit: u64,
    /// Statements seen (numbering for events).
    seq: u64,
    /// Transactions published (numbering for transaction ids).
    tx_seq: u64,
    /// Extended protocol: prepared statements and portals by name.
    statements: HashMap<Vec<u8>, Arc<Prep>>,
    portals: HashMap<Vec<u8>, (Arc<Prep>, bool)>,
    /// hindsight opened a transaction for the current extended-protocol batch and must end
    /// it at the client's Sync.
    batch_implicit: bool,
    /// hindsight's own queries go in the middle of an extended-protocol batch: they must use
    /// named extended messages (a simple Query would destroy the client's unnamed portal).
    mid_batch: bool,
    /// A COPY runs in a transaction hindsight opened: it ends it at the client's CopyDone or
    /// CopyFail.
    copy_pending: bool,
    /// An extended-protocol COPY into a stage is running: at the client's CopyDone, the
    /// captured `INSERT … SELECT` from the stage and the stage's DROP follow it.
    copy_ext: Option<(Arc<CopyPlan>, Arc<StatementCtx>)>,
    /// Rules that refuse writes, when configured.
    pub gates: Option<Arc<crate::gates::engine::Gates>>,
    /// The gates' statement-phase outcome for the statements of the current simple Query, by
    /// their span in its text.
    query_gates: Vec<(std::ops::Range<usize>, GateInfo)>,
    /// … and for bound portals (extended protocol).
    portal_gates: HashMap<Vec<u8>, GateInfo>,
    /// hindsight failed an extended-protocol message in the client's place: like the server,
    /// it now drops the client's messages up to its Sync (their replies will never come).
    skip_until_sync: bool,
    /// Functions that may write when a query calls them (shared by the proxy's sessions).
    pub functions: Arc<super::functions::WritingFunctions>,
    /// A schema change ran: the function list is read again before the next query.
    ddl_seen: bool,
    /// Schema, name and key of captured tables (shared by the proxy's sessions).
    pub tables: Arc<super::tables::TableCache>,
    /// The open transaction ran DDL: its catalog lookups are not cached, and the cache is
    /// dropped again when it commits.
    ddl_in_txn: bool,
    /// Which write targets this session named can take the capture columns.
    targets: super::tables::Targets,
}

/// A prepared statement as hindsight analysed (and maybe rewrote) it.
struct Prep {
    kind: Kind,
    savepoint: String,
    text: String,
    fingerprint: String,
    tags: sqlcommenter::Tags,
    rewritten: Option<Rewritten>,
    /// The table the statement names first (DDL and writes), for statement-level events.
    object: TableName,
    /// Every table it writes (for the gates).
    writes: Vec<crate::statement::Write>,
    /// PostgreSQL < 18 UPDATE: the name of hindsight's companion prepared statement that reads
    /// (and locks) the before images with the same parameters, run right before each Execute.
    companion: Option<Vec<u8>>,
    /// `COPY … FROM` (extended protocol): the client's statement was prepared pointing at a
    /// stage table; this is what runs around each execution.
    copy: Option<Arc<CopyPlan>>,
}

/// The statements around an extended-protocol COPY into a stage (see `copy`).
struct CopyPlan {
    /// `CREATE TEMP TABLE stage …`, before the client's Bind.
    create: String,
    /// The captured `INSERT INTO target … SELECT … FROM stage`, after the client's CopyDone.
    insert: Rewritten,
    /// `DROP TABLE stage`, after it.
    drop: String,
    /// `FROM STDIN` (else the server reads a file or program and no CopyDone will come).
    stdin: bool,
}

/// Parse + Bind + Execute + Close of hindsight's own statement `sql` as named statement and
/// portal `__hindsight_q`, in the middle of a client's extended-protocol batch (the client's
/// unnamed statement and portal stay untouched). `exec` handles the Execute's replies; errors
/// of the other messages are forwarded when `forward_errors`. Both are closed first too: after
/// an error the server skipped the previous closes.
fn internal_statement(sql: &str, mut exec: Unit, forward_errors: bool) -> (Vec<u8>, [Unit; 7]) {
    const NAME: &[u8] = b"__hindsight_q\0";
    let mut frames = Vec::new();
    for kind in [b'P', b'S'] {
        let mut c = vec![kind];
        c.extend_from_slice(NAME);
        frames.extend(frame_of(b'C', &c));
    }
    let mut p = NAME.to_vec();
    p.extend_from_slice(sql.as_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    frames.extend(frame_of(b'P', &p));
    let mut b = NAME.to_vec();
    b.extend_from_slice(NAME);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    frames.extend(frame_of(b'B', &b));
    let mut e = NAME.to_vec();
    e.extend_from_slice(&[0, 0, 0, 0]);
    frames.extend(frame_of(b'E', &e));
    for kind in [b'P', b'S'] {
        let mut c = vec![kind];
        c.extend_from_slice(NAME);
        frames.extend(frame_of(b'C', &c));
    }
    exec.ends = b"CI";
    let quiet = |ends: &'static [u8]| {
        let mut u = Unit::new(ends);
        u.forward_errors = forward_errors;
        u
    };
    (
        frames,
        [
            quiet(b"3"),
            quiet(b"3"),
            quiet(b"1"),
            quiet(b"2"),
            exec,
            quiet(b"3"),
            quiet(b"3"),
        ],
    )
}

impl ClientCapture {
    /// After an extended-protocol COPY into the stage: the captured INSERT (its count becomes
    /// the client's `COPY n`), then the stage's DROP. If the COPY failed, the server skips these
    /// to the next Sync.
    fn copy_followers(&mut self, plan: &CopyPlan, ctx: Arc<StatementCtx>) -> Vec<u8> {
        let mut ins = Unit::pass(b"C");
        ins.complete = super::router::Complete::AsCopy;
        ins.collect = Collect::Capture(ctx, Vec::new());
        let (mut out, units) = internal_statement(&plan.insert.text, ins, true);
        self.push(units);
        let mut drop = Unit::new(b"C");
        drop.forward_errors = true;
        let (frames, units) = internal_statement(&plan.drop, drop, true);
        self.push(units);
        out.extend(frames);
        out
    }
}

/// Mark a statement with what its write target resolved to.
fn apply_target(s: &mut Statement, target: Target) {
    match target {
        Target::Table => {}
        Target::Opaque => s.located.analysis.kind = Kind::Opaque,
        Target::Partitioned => {
            if let Some(w) = s.located.analysis.writes.first_mut() {
                w.partitioned = true;
            }
        }
    }
}

/// The PostgreSQL major whose grammar pg_query parses with.
const PARSER_MAJOR: u32 = 17;

/// HS003: a TRUNCATE above `capture.truncate_row_limit` (the guard's error, replaced).
fn truncate_limit_error(msg: &str) -> Vec<u8> {
    ErrorResponse::error(sqlstate::CAPTURE_LIMIT, msg.to_string())
        .with_hint("Delete in batches (each row is recorded), or raise capture.truncate_row_limit.")
        .encode()
}

/// Name of hindsight's companion statement (`kind` b's') or portal (b'p') for a client's one.
fn companion_name(kind: u8, name: &[u8]) -> Vec<u8> {
    let mut n = b"__hs_pre_".to_vec();
    n.push(kind);
    n.push(b'_');
    n.extend_from_slice(name);
    n
}

/// A message whose body is a name (Close / Describe: `kind` + name; Execute: name + max rows).
fn close_frame(kind: u8, name: &[u8]) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(name);
    b.push(0);
    frame_of(b'C', &b)
}

/// Why a transaction's records were not published.
enum Failure {
    /// The brokers (or the catalog lookup) failed: HS001, unless `on_sink_failure = allow`.
    Sink(String),
    /// A gate's row rule refused a change: this ErrorResponse, always.
    Gate(Vec<u8>),
}

/// The client's error for a gate decision. `at_commit`: a row rule refused at COMMIT (the
/// whole transaction was rolled back, like a deferred constraint).
fn gate_error(hit: &crate::gates::decide::Hit, at_commit: bool) -> ErrorResponse {
    let code = if hit.kill_switch {
        sqlstate::READ_ONLY
    } else {
        sqlstate::GATE_DENIED
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
    ErrorResponse::error(
        code,
        format!(
            "hindsight: write refused by rule \"{}\": {}; {what}",
            hit.rule, hit.reason
        ),
    )
    .with_hint(hint)
}

fn client_ip(s: &SessionInfo) -> Option<std::net::IpAddr> {
    s.client_addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
}

/// How a COMMIT happens once the records are published.
enum CommitBy<'a> {
    /// The client's own COMMIT (simple Query frame).
    ClientSimple(&'a [u8]),
    /// hindsight wrapped an autocommit simple Query in BEGIN.
    ImplicitSimple,
    /// The client's Execute of a COMMIT portal.
    ClientExtended(&'a [u8]),
    /// hindsight opened the transaction for an extended batch; this is the client's Sync.
    ImplicitExtended(&'a [u8]),
}

impl ClientCapture {
    pub fn new(
        shared: Arc<Shared>,
        sink: Arc<KafkaSink>,
        cache: Arc<AnalysisCache>,
        session: SessionInfo,
        metrics: Metrics,
        on_sink_failure: OnSinkFailure,
        redactor: Arc<super::redact::Redactor>,
    ) -> Self {
        ClientCapture {
            truncate_limit: crate::config::defaults::TRUNCATE_ROW_LIMIT,
            redactor,
            shared,
            sink,
            cache,
            session,
            metrics,
            on_sink_failure,
            seq: 0,
            tx_seq: 0,
            statements: HashMap::new(),
            portals: HashMap::new(),
            batch_implicit: false,
            mid_batch: false,
            copy_pending: false,
            copy_ext: None,
            gates: None,
            query_gates: Vec::new(),
            portal_gates: HashMap::new(),
            skip_until_sync: false,
            functions: Arc::default(),
            ddl_seen: false,
            tables: Arc::default(),
            ddl_in_txn: false,
            targets: Default::default(),
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
        let tag = match frontend_tag(header.tag) {
            Ok(t) => t,
            Err(reject) => return reject,
        };
        if tag != FrontendTag::Terminate
            && self
                .shared
                .lazy_rollback
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Verdict::Defer;
        }
        if self.skip_until_sync {
            match tag {
                FrontendTag::Parse
                | FrontendTag::Bind
                | FrontendTag::Describe
                | FrontendTag::Execute
                | FrontendTag::Close
                | FrontendTag::Flush => return Verdict::Replace(Vec::new()),
                FrontendTag::Sync => self.skip_until_sync = false,
                _ => {}
            }
        }
        let body = &frame[HEADER_LEN.min(frame.len())..];
        match tag {
            FrontendTag::Query => {
                let text = query_text(body);
                self.metrics
                    .statement(crate::statement::classify(text))
                    .inc();
                if fast_path::certainly_read(text) && !self.may_call_writer(text) {
                    self.push([Unit::pass(b"Z")]);
                    return Verdict::Forward;
                }
                Verdict::Defer
            }
            FrontendTag::Parse => {
                let (name, sql) = parse_statement(body).unwrap_or_default();
                self.metrics
                    .statement(crate::statement::classify(sql))
                    .inc();
                if complete && (!fast_path::certainly_read(sql) || self.may_call_writer(sql)) {
                    return Verdict::Defer;
                }
                self.statements.remove(name);
                self.push([Unit::pass(b"1")]);
                Verdict::Forward
            }
            FrontendTag::Bind => {
                let Some((portal, stmt)) = two_cstrs(body) else {
                    self.push([Unit::pass(b"2")]);
                    return Verdict::Forward;
                };
                match self.statements.get(stmt).cloned() {
                    Some(p) if p.rewritten.is_some() => Verdict::Defer,
                    Some(p) => {
                        self.portals.insert(portal.to_vec(), (p, false));
                        self.push([Unit::pass(b"2")]);
                        Verdict::Forward
                    }
                    None => {
                        self.portals.remove(portal);
                        self.push([Unit::pass(b"2")]);
                        Verdict::Forward
                    }
                }
            }
            FrontendTag::Describe => {
                let (kind, name) = describe_target(body);
                let prep = match kind {
                    b'S' => self.statements.get(name).cloned(),
                    _ => self.portals.get(name).map(|(p, _)| Arc::clone(p)),
                };
                let mut u = Unit::pass(b"Tn");
                if let Some(rw) = prep.as_ref().and_then(|p| p.rewritten.as_ref()) {
                    u.collect = Collect::Describe(Arc::clone(&rw.shape));
                }
                self.push([u]);
                Verdict::Forward
            }
            FrontendTag::Execute => self.on_execute(body),
            FrontendTag::Close => {
                let (kind, name) = describe_target(body);
                let prep = if kind == b'S' {
                    self.statements.remove(name)
                } else {
                    self.portals.remove(name).map(|(p, _)| p)
                };
                self.push([Unit::pass(b"3")]);
                if prep.is_none_or(|p| p.companion.is_none()) {
                    return Verdict::Forward;
                }
                // Close hindsight's companion too, so the server does not accumulate them.
                self.push([Unit::new(b"3")]);
                let mut out = frame.to_vec();
                let ckind = if kind == b'S' { b's' } else { b'p' };
                out.extend(close_frame(kind, &companion_name(ckind, name)));
                Verdict::Replace(out)
            }
            FrontendTag::CopyDone if self.copy_ext.is_some() => {
                let (plan, ctx) = self.copy_ext.take().expect("checked");
                // The COPY's own CommandComplete (dropped: the INSERT's count replaces it).
                let mut copied = Unit::pass(b"C");
                copied.complete = super::router::Complete::Drop;
                self.push([copied]);
                let mut all = frame.to_vec();
                all.extend(self.copy_followers(&plan, ctx));
                Verdict::Replace(all)
            }
            FrontendTag::CopyFail if self.copy_ext.is_some() => {
                self.copy_ext = None;
                Verdict::Forward
            }
            FrontendTag::Sync if self.batch_implicit || self.copy_ext.is_some() => Verdict::Defer,
            FrontendTag::CopyDone | FrontendTag::CopyFail if self.copy_pending => Verdict::Defer,
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
        matches!(tag, b'Q' | b'P' | b'B')
    }

    async fn resolve<'a, W: AsyncWrite + Unpin + Send>(
        &'a mut self,
        frame: &'a [u8],
        w: &'a mut W,
    ) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if !self.shared.lazy_rollback.swap(false, Ordering::SeqCst) {
            return self.resolve_frame(frame, w).await;
        }
        // hindsight's transaction around a COPY that never started is still open (aborted).
        self.copy_pending = false;
        self.mid_batch = false;
        self.swallowed_query(w, "ROLLBACK", false).await?;
        let header = Header {
            tag: frame[0],
            len: u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]),
        };
        match self.on_frame(header, frame, true) {
            Verdict::Forward | Verdict::Reject { .. } => write_all(w, frame).await,
            Verdict::Replace(bytes) => write_all(w, &bytes).await,
            Verdict::Defer => self.resolve_frame(frame, w).await,
        }
    }
}

impl ClientCapture {
    /// Frames whose handling needs to wait for replies, publish, or send hindsight's own.
    async fn resolve_frame<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        match frame[0] {
            b'c' | b'f' => {
                // The end of a COPY in hindsight's transaction: let it complete, then end it.
                self.copy_pending = false;
                write_all(w, frame).await?;
                self.finish_query(w, true).await
            }
            b'Q' => self.on_query(frame, w).await,
            b'P' => self.on_parse(frame, w).await,
            b'B' => self.on_bind(frame, w).await,
            b'E' => self.on_deferred_execute(frame, w).await,
            _ => self.on_sync(frame, w).await,
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
    /// DDL or opaque statements outside a transaction block: their statement-level events
    /// are published before they run (hindsight cannot wrap them in a transaction: VACUUM,
    /// CREATE INDEX CONCURRENTLY and procedures that COMMIT refuse to run inside one).
    Announce,
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
            Err(e) => {
                if may_write(text) && self.parser_may_lag() {
                    return self.refuse(w, unparseable_write(e)).await;
                }
                self.push([Unit::pass(b"Z")]);
                return write_all(w, frame).await;
            }
        };
        // Reads that call a function which may write are opaque statements. (Only looked up
        // for reads: a query of hindsight's must not be the first of a transaction whose
        // client then sets its mode, e.g. `BEGIN; SET TRANSACTION READ WRITE`.)
        let names = if statements
            .iter()
            .any(|s| s.located.analysis.kind == Kind::Read)
        {
            self.writing_functions(w, false).await?
        } else {
            Arc::default()
        };
        let calls = |s: &Statement| {
            s.located.analysis.kind == Kind::Read
                && super::functions::calls_any(text[s.located.span.clone()].as_bytes(), &names)
        };
        let targets = self.resolve_targets(w, statements, false).await?;
        let with_calls: Vec<Statement>;
        let statements = if (names.is_empty() || !statements.iter().any(calls))
            && targets.iter().all(|t| *t == Target::Table)
        {
            statements
        } else {
            with_calls = statements
                .iter()
                .zip(&targets)
                .map(|(s, target)| {
                    let mut s = s.clone();
                    apply_target(&mut s, *target);
                    if calls(&s) {
                        s.located.analysis.kind = Kind::Opaque;
                    }
                    s
                })
                .collect();
            &with_calls[..]
        };
        if statements
            .iter()
            .any(|s| s.located.analysis.kind == Kind::Session)
        {
            // SET search_path and the like: names may resolve differently from now on.
            self.targets.clear();
        }
        if statements
            .iter()
            .any(|s| s.located.analysis.kind == Kind::Ddl)
        {
            self.schema_changed();
        }
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
        let stmt_events = statements
            .iter()
            .any(|s| s.located.analysis.kind.statement_event());
        // Decisions below depend on the transaction state: let earlier replies arrive first.
        if writes || commit || stmt_events {
            self.flush_and_drain(w).await?;
        }
        let (status, pending) = {
            let st = self.shared.lock();
            (
                st.status,
                !st.txn.is_empty() || !st.capture_errors.is_empty(),
            )
        };
        if let Err((i, hit)) = self.gate_query(statements, &tags) {
            return self
                .deny_query(w, text, &tags, &statements[i], status, hit)
                .await;
        }
        if let [s] = statements {
            if s.located.analysis.kind == Kind::CopyIn && !s.located.analysis.explain_analyze {
                return self.capture_copy(w, frame, text, &tags, s, status).await;
            }
        }
        let plan = if (writes || stmt_events) && txctl {
            Plan::Refuse(ErrorResponse::error(
                sqlstate::CAPTURE_UNSUPPORTED,
                "hindsight: a query string that both writes (rows or schema) and controls the transaction (BEGIN/COMMIT/SAVEPOINT …) cannot be captured; the query was not run",
            ).with_hint("Send transaction control statements as separate queries."))
        } else if writes {
            let major = self.shared.lock().server_major;
            let mut cascades = Vec::with_capacity(statements.len());
            for s in statements {
                cascades.push(if s.located.analysis.kind == Kind::Truncate {
                    self.truncate_cascade(w, &text[s.located.span.clone()], false)
                        .await?
                } else {
                    Vec::new()
                });
            }
            match statements.iter().zip(&cascades).map(|(s, c)| rewrite(text, &s.located, major, self.truncate_limit, c)).collect::<Result<Vec<_>, _>>() {
                Ok(v) => Plan::Capture(v),
                Err(refusal) => Plan::Refuse(
                    ErrorResponse::error(sqlstate::CAPTURE_UNSUPPORTED, format!("hindsight: {refusal}"))
                        .with_hint("Run it through a session of a proxy started with --no-capture if it must run unaudited."),
                ),
            }
        } else if stmt_events && status == b'I' {
            Plan::Announce
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
                if txctl || stmt_events {
                    for s in statements {
                        let a = &s.located.analysis;
                        let mut u = Unit::pass(b"CI");
                        if let Kind::Transaction(ctl) = a.kind {
                            u.txctl = Some((ctl, a.savepoint.clone()));
                        }
                        if a.kind.statement_event() {
                            self.seq += 1;
                            let stmt = text[s.located.span.clone()].trim();
                            u.collect = Collect::Statement(self.statement_ctx(stmt, s, &tags));
                        }
                        units.push(u);
                    }
                }
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
                        Change::statement(self.statement_ctx(stmt, s, &tags))
                    })
                    .collect();
                self.announce(w, frame, changes, b"Z").await
            }
            Plan::Refuse(err) => self.refuse(w, err).await,
            Plan::Commit => self.commit(w, CommitBy::ClientSimple(frame)).await,
            Plan::Capture(rewrites) => {
                self.capture(w, text, &tags, statements, rewrites, status)
                    .await
            }
        }
    }

    /// Attribution of the current statement (`self.seq`) for a statement-level event.
    fn statement_ctx(
        &self,
        text: &str,
        s: &Statement,
        tags: &sqlcommenter::Tags,
    ) -> Arc<StatementCtx> {
        let a = &s.located.analysis;
        let table = a
            .writes
            .first()
            .map(|w| w.table.clone())
            .unwrap_or_default();
        let shape = Arc::new(Shape::statement(a.kind, table));
        self.event_ctx(text, &s.fingerprint, tags, shape, self.gate_for(s))
    }

    fn event_ctx(
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

    /// The gates' statement-phase outcome recorded for `s` of the current Query.
    fn gate_for(&self, s: &Statement) -> GateInfo {
        self.query_gates
            .iter()
            .find(|(r, _)| *r == s.located.span)
            .map(|(_, g)| g.clone())
            .unwrap_or_default()
    }

    /// The gates' verdict on a statement before it runs.
    fn statement_gate(
        &self,
        kind: Kind,
        writes: &[crate::statement::Write],
        fingerprint: &str,
        tags: &sqlcommenter::Tags,
    ) -> Gate {
        let Some(g) = &self.gates else {
            return Gate::Allow { exempt: false };
        };
        let application = self.shared.lock().application_name.clone();
        g.statement(&StatementFacts {
            kind,
            writes,
            fingerprint,
            user: &self.session.user,
            database: &self.session.database,
            application: &application,
            client_ip: client_ip(&self.session),
            tags,
        })
    }

    /// Decide every write of a simple Query; `Err` with the refusing hit.
    fn gate_query(
        &mut self,
        statements: &[Statement],
        tags: &sqlcommenter::Tags,
    ) -> Result<(), (usize, crate::gates::decide::Hit)> {
        self.query_gates.clear();
        if self.gates.is_none() {
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
            match self.statement_gate(a.kind, &a.writes, &s.fingerprint, tags) {
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
    async fn deny_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        status: u8,
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
            let table = a
                .writes
                .first()
                .map(|w| w.table.clone())
                .unwrap_or_default();
            let shape = Arc::new(Shape::statement(a.kind, table));
            changes.push(Change::statement(self.event_ctx(
                stmt,
                &s.fingerprint,
                tags,
                shape,
                gate,
            )));
        }
        if self.shared.lock().status == b'E' {
            self.publish_refused(None, changes, &HashMap::new()).await;
        } else if let Err(Failure::Sink(e)) = self.publish(w, changes, true).await? {
            self.metrics.audit_publish_failures.inc();
            tracing::error!(error = %e, "the record of a refused write could not be published");
        }
        self.refuse(w, gate_error(&hit, false)).await
    }

    /// Run `s` rewritten for capture and roll it back, collecting what it would have changed
    /// (in a savepoint inside a transaction block, else in a transaction of its own).
    async fn probe<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        status: u8,
        gate: &GateInfo,
    ) -> std::io::Result<Vec<Change>> {
        let a = &s.located.analysis;
        if status == b'E' || !a.kind.writes_rows() || a.kind == Kind::CopyIn {
            return Ok(Vec::new());
        }
        let major = self.shared.lock().server_major;
        let Ok(Some(rw)) = rewrite(text, &s.located, major, self.truncate_limit, &[]) else {
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
        let (open, close) = if status == b'I' {
            ("BEGIN", "ROLLBACK")
        } else {
            (
                "SAVEPOINT __hs_probe",
                "ROLLBACK TO SAVEPOINT __hs_probe;\nRELEASE SAVEPOINT __hs_probe",
            )
        };
        let mut sql = format!("{open};\n");
        let mut units = vec![Unit::new(b"C")];
        if let Some(pre) = &rw.pre_read {
            sql.push_str(pre);
            sql.push_str(";\n");
            let mut u = Unit::new(b"C");
            u.collect = Collect::PreRead(Arc::clone(&ctx), Vec::new());
            u.probe = true;
            units.push(u);
        }
        sql.push_str(&rw.text);
        sql.push_str(";\n");
        let mut u = Unit::new(b"C");
        u.collect = Collect::Capture(ctx, Vec::new());
        u.probe = true;
        units.push(u);
        sql.push_str(close);
        for _ in close.split(';') {
            units.push(Unit::new(b"C"));
        }
        units.push(Unit::new(b"Z"));
        self.mid_batch = false;
        self.push(units);
        write_all(w, &query_frame(&sql)).await?;
        self.shared.drained().await;
        if status == b'I' && self.shared.lock().status != b'I' {
            // The trial failed inside hindsight's own transaction: end it.
            self.swallowed_query(w, "ROLLBACK", false).await?;
            self.shared.drained().await;
        }
        Ok(std::mem::take(&mut self.shared.lock().probe))
    }

    /// Publish statement-level events *before* the statement runs (outside a transaction
    /// block, where hindsight cannot hold a COMMIT), then forward `frame`. The END record
    /// follows with the outcome. If the events cannot be published the statement does not run
    /// and the client gets HS001 (unless `on_sink_failure = "allow"`).
    async fn announce<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
        changes: Vec<Change>,
        ends: &'static [u8],
    ) -> std::io::Result<()> {
        self.tx_seq += 1;
        let (records, mut end) = publish::build(
            &self.session,
            self.tx_seq,
            None,
            changes,
            &HashMap::new(),
            &self.redactor,
        );
        match self.sink.publish(&records).await {
            Ok(()) => self.metrics.audit_events.inc_by(records.len() as u64 - 1),
            Err(e) => {
                self.metrics.audit_publish_failures.inc();
                if self.on_sink_failure == OnSinkFailure::Deny {
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
        let (tx, rx) = oneshot::channel();
        let mut u = Unit::pass(ends);
        u.reply = Some(tx);
        self.push([u]);
        let sink = Arc::clone(&self.sink);
        let session = self.session.clone();
        tokio::spawn(async move {
            let failed = !matches!(rx.await, Ok(Reply { error: None, .. }));
            if failed {
                end.commit_status = Some(CommitStatus::Aborted);
            }
            if let Err(e) = sink.publish(&[publish::end_record(&session, &end)]).await {
                tracing::warn!(error = %e, "publishing a transaction END record failed");
            }
        });
        write_all(w, frame).await
    }

    /// The tables a `TRUNCATE … CASCADE` empties, from the catalog (empty for other
    /// statements, or if the lookup failed — the TRUNCATE is then refused).
    async fn truncate_cascade<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        extended: bool,
    ) -> std::io::Result<Vec<String>> {
        let Some(q) = super::rewrite::truncate_cascade_query(sql) else {
            return Ok(Vec::new());
        };
        self.mid_batch = extended;
        let reply = self.internal_query(w, &q).await?;
        Ok(reply
            .rows
            .iter()
            .filter_map(|r| {
                r.first()?
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .collect())
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
            let mut u = Unit::new(b"C");
            u.forward_errors = true;
            units.push(u);
        }
        let application_name = self.shared.lock().application_name.clone();
        for (s, rw) in statements.iter().zip(rewrites) {
            self.seq += 1;
            let original = &text[s.located.span.clone()];
            let before = text[..s.located.span.start].chars().count() as i64;
            match rw {
                None => {
                    let shift = sql.chars().count() as i64 - before;
                    sql.push_str(original);
                    let mut u = Unit::pass(b"CI");
                    u.position_shift = shift;
                    if s.located.analysis.kind.statement_event() {
                        u.collect =
                            Collect::Statement(self.statement_ctx(original.trim(), s, tags));
                    }
                    units.push(u);
                }
                Some(rw) => {
                    let ctx = Arc::new(StatementCtx {
                        text: original.trim().to_string(),
                        fingerprint: s.fingerprint.clone(),
                        tags: tags.clone(),
                        seq: self.seq,
                        ts_ms: now_ms(),
                        application_name: application_name.clone(),
                        binary: false,
                        gate: self.gate_for(s),
                        shape: Arc::clone(&rw.shape),
                    });
                    if let Some((guard, msg)) = &rw.guard {
                        sql.push_str(guard);
                        sql.push_str(";\n");
                        let mut u = Unit::new(b"C");
                        u.error_replacement = Some(truncate_limit_error(msg));
                        units.push(u);
                    }
                    if let Some(pre) = &rw.pre_read {
                        sql.push_str(pre);
                        sql.push_str(";\n");
                        let mut u = Unit::new(b"C");
                        // The pre-read evaluates the statement's own FROM/WHERE: its errors
                        // are the ones the client's statement would have raised.
                        u.forward_errors = true;
                        u.collect = Collect::PreRead(Arc::clone(&ctx), Vec::new());
                        units.push(u);
                    }
                    let shift = sql.chars().count() as i64 - before;
                    sql.push_str(&rw.text);
                    let mut u = Unit::pass(b"CI");
                    u.position_shift = shift;
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
        self.finish_query(w, implicit).await
    }

    /// After a captured query: if hindsight opened the transaction, end it (publish + COMMIT,
    /// or ROLLBACK when the statement failed) and hand the client its ReadyForQuery.
    async fn finish_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        implicit: bool,
    ) -> std::io::Result<()> {
        if !implicit {
            return Ok(());
        }
        self.shared.drained().await;
        if self.shared.lock().status == b'E' {
            // The client already has the statement's error; end the transaction as the server
            // would have, and hand over the ReadyForQuery of the ROLLBACK (status I).
            return self.internal_end(w, "ROLLBACK", None).await;
        }
        self.commit(w, CommitBy::ImplicitSimple).await
    }

    /// `COPY … FROM` as a query of its own: staged through a temporary table and a captured
    /// `INSERT … SELECT` (see `copy`), in the client's transaction (or one hindsight opens).
    async fn capture_copy<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        status: u8,
    ) -> std::io::Result<()> {
        let write = &s.located.analysis.writes[0];
        let sql = text[s.located.span.clone()].trim();
        self.mid_batch = false;
        let lookup = self
            .internal_query(w, &super::copy::lookup_query(&write.table))
            .await?;
        self.seq += 1;
        let staged = match super::copy::parse_lookup(&lookup.rows) {
            Some(target) => super::copy::stage(sql, &target, &write.columns, self.seq),
            // No such table: the client's COPY fails on its own, writing nothing.
            None => Ok(None),
        };
        let staged = match staged {
            Ok(Some(st)) => st,
            Ok(None) => {
                self.push([Unit::pass(b"Z")]);
                return write_all(w, frame).await;
            }
            Err(refusal) => {
                return self
                    .refuse(
                        w,
                        ErrorResponse::error(
                            sqlstate::CAPTURE_UNSUPPORTED,
                            format!("hindsight: {refusal}"),
                        ),
                    )
                    .await
            }
        };
        let major = self.shared.lock().server_major;
        let insert = crate::statement::analyze(&staged.insert)
            .ok()
            .and_then(|v| rewrite(&staged.insert, &v[0], major, self.truncate_limit, &[]).ok())
            .flatten();
        let Some(rw) = insert else {
            let err = ErrorResponse::error(
                sqlstate::CAPTURE_UNSUPPORTED,
                format!("hindsight: could not build the capture of {sql:?}; it was not run"),
            );
            return self.refuse(w, err).await;
        };
        let implicit = status == b'I';
        let mut q = String::new();
        let mut units = Vec::new();
        let quiet = |units: &mut Vec<Unit>| {
            let mut u = Unit::new(b"C");
            u.forward_errors = true;
            units.push(u);
        };
        if implicit {
            q.push_str("BEGIN;\n");
            quiet(&mut units);
        }
        q.push_str(&staged.create);
        q.push_str(";\n");
        quiet(&mut units);
        // The client's COPY sub-protocol runs against the stage: CopyInResponse, its errors
        // (about the input) go to the client; its row count is the INSERT's.
        let before = text[..s.located.span.start].chars().count() as i64;
        let shift = (q.chars().count() as i64 + staged.shift) - before;
        q.push_str(&staged.copy);
        q.push_str(";\n");
        let mut copy = Unit::pass(b"C");
        copy.position_shift = shift;
        copy.complete = super::router::Complete::Drop;
        units.push(copy);
        q.push_str(&rw.text);
        q.push_str(";\n");
        let mut ins = Unit::pass(b"C");
        ins.complete = super::router::Complete::AsCopy;
        let ctx = Arc::new(StatementCtx {
            text: sql.to_string(),
            fingerprint: s.fingerprint.clone(),
            tags: tags.clone(),
            seq: self.seq,
            ts_ms: now_ms(),
            application_name: self.shared.lock().application_name.clone(),
            binary: false,
            gate: self.gate_for(s),
            shape: Arc::clone(&rw.shape),
        });
        ins.collect = Collect::Capture(ctx, Vec::new());
        units.push(ins);
        q.push_str(&staged.drop);
        quiet(&mut units);
        if implicit && staged.stdin {
            // Ended at the client's CopyDone / CopyFail (the client pump must keep relaying
            // its CopyData until then).
            self.copy_pending = true;
            let mut z = Unit::new(b"Z");
            z.idle_if_no_copy = true;
            units.push(z);
        } else if implicit {
            // From a file or program: the server completes the COPY by itself; end the
            // transaction like any captured query.
            units.push(Unit::new(b"Z"));
            self.push(units);
            write_all(w, &query_frame(&q)).await?;
            return self.finish_query(w, true).await;
        } else {
            units.push(Unit::pass(b"Z"));
        }
        self.push(units);
        write_all(w, &query_frame(&q)).await
    }

    /// Publish the transaction's changes, then COMMIT (see [`CommitBy`]); if they cannot be
    /// published, roll back and fail the COMMIT with HS001 (unless `on_sink_failure = allow`).
    async fn commit<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        by: CommitBy<'_>,
    ) -> std::io::Result<()> {
        if matches!(by, CommitBy::ClientExtended(_)) {
            self.flush_and_drain(w).await?;
        }
        self.mid_batch = matches!(
            by,
            CommitBy::ClientExtended(_) | CommitBy::ImplicitExtended(_)
        );
        if let CommitBy::ClientSimple(frame) | CommitBy::ClientExtended(frame) = by {
            if self.shared.lock().status != b'T' {
                // An aborted transaction: its COMMIT is a ROLLBACK; nothing to publish.
                self.shared.lock().txn.clear();
                let ends: &'static [u8] = if frame[0] == b'Q' { b"Z" } else { b"CIs" };
                self.push([Unit::pass(ends)]);
                return write_all(w, frame).await;
            }
        }
        let (changes, capture_errors) = {
            let mut st = self.shared.lock();
            (st.txn.take(), std::mem::take(&mut st.capture_errors))
        };
        let failure = if !capture_errors.is_empty() {
            Some(Failure::Sink(format!(
                "captured rows could not be decoded: {}",
                capture_errors.join("; ")
            )))
        } else if changes.is_empty() {
            None
        } else {
            self.publish(w, changes, false).await?.err()
        };
        let mut error = None;
        if let Some(Failure::Gate(err)) = failure {
            error = Some(err);
        } else if let Some(Failure::Sink(why)) = failure {
            self.metrics.audit_publish_failures.inc();
            if self.on_sink_failure == OnSinkFailure::Deny {
                tracing::error!(%why, "audit records not recorded: rolling the transaction back");
                error = Some(
                    ErrorResponse::error(
                        sqlstate::AUDIT_NOT_RECORDED,
                        format!("hindsight: the transaction was rolled back because its audit records could not be recorded: {why}"),
                    )
                    .with_hint("Nothing was committed. Retry when the audit broker is reachable; see hindsight's log and /readyz.")
                    .encode(),
                );
            } else {
                tracing::error!(%why, "audit records not recorded; committing anyway because capture.on_sink_failure = \"allow\"");
            }
        }
        if std::mem::take(&mut self.ddl_in_txn) {
            // Lookups other sessions made while this DDL was uncommitted saw the old catalog.
            self.tables.invalidate(&self.session.database);
        }
        match (by, error) {
            (CommitBy::ClientSimple(frame), None) => {
                self.push([Unit::pass(b"Z")]);
                write_all(w, frame).await
            }
            (CommitBy::ImplicitSimple, None) => self.internal_end(w, "COMMIT", None).await,
            (CommitBy::ClientExtended(frame), None) => {
                let mut u = Unit::pass(b"CIs");
                u.txctl = Some((TxControl::Commit, String::new()));
                self.push([u]);
                write_all(w, frame).await
            }
            (CommitBy::ImplicitExtended(sync), None) => {
                self.swallowed_query(w, "COMMIT", true).await?;
                self.push([Unit::pass(b"Z")]);
                write_all(w, sync).await
            }
            (CommitBy::ClientSimple(_) | CommitBy::ImplicitSimple, Some(err)) => {
                self.internal_end(w, "ROLLBACK", Some(err)).await
            }
            (CommitBy::ClientExtended(_), Some(err)) => {
                // Roll back, then fail the client's Execute: the server skips to its Sync.
                self.swallowed_query(w, "ROLLBACK", false).await?;
                self.refused_parse(w, b"__hindsight_refused", err).await
            }
            (CommitBy::ImplicitExtended(sync), Some(err)) => {
                self.swallowed_query(w, "ROLLBACK", false).await?;
                let mut u = Unit::pass(b"Z");
                u.prefix = Some(err);
                self.push([u]);
                write_all(w, sync).await
            }
        }
    }

    /// A query of hindsight's own whose replies the client never sees (except errors, if
    /// `forward_errors`).
    async fn swallowed_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        forward_errors: bool,
    ) -> std::io::Result<()> {
        let mut u = Unit::new(b"Z");
        u.forward_errors = forward_errors;
        self.send_internal(w, sql, u).await
    }

    /// Send hindsight's own `sql`; `unit` describes its result (as for a simple Query, ending
    /// at ReadyForQuery). Mid-batch it goes as named Parse/Bind/Execute/Close + Flush instead.
    async fn send_internal<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        unit: Unit,
    ) -> std::io::Result<()> {
        if !self.mid_batch {
            self.push([unit]);
            return write_all(w, &query_frame(sql)).await;
        }
        let (mut frames, units) = internal_statement(sql, unit, false);
        frames.extend(frame_of(b'H', &[]));
        self.push(units);
        write_all(w, &frames).await
    }

    /// A Parse the server rejects, its error replaced with `err` (the statement named `name`
    /// is not created, and the server skips to the next Sync — as after any failed message).
    async fn refused_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        name: &[u8],
        err: Vec<u8>,
    ) -> std::io::Result<()> {
        self.skip_until_sync = true;
        let mut u = Unit::pass(b"1");
        u.error_replacement = Some(err);
        self.push([u]);
        let mut b = name.to_vec();
        b.push(0);
        b.extend_from_slice(REFUSED_SQL.as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        write_all(w, &frame_of(b'P', &b)).await
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

    /// Resolve tables and the transaction id, check the gates' row rules, then publish.
    /// `blocked`: these are refused changes (op `blocked`): no row rules, END `aborted`.
    async fn publish<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        changes: Vec<super::txn::Change>,
        blocked: bool,
    ) -> std::io::Result<Result<(), Failure>> {
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
            match self.lookup_tables(w, &oids).await? {
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
        }
        self.tx_seq += 1;
        let (records, mut end) = publish::build(
            &self.session,
            self.tx_seq,
            txid,
            changes,
            &tables,
            &self.redactor,
        );
        let events = records.len() - 1;
        if blocked {
            end.commit_status = Some(CommitStatus::Aborted);
            let mut all = records;
            all.push(publish::end_record(&self.session, &end));
            return Ok(self
                .sink
                .publish(&all)
                .await
                .map_err(|e| Failure::Sink(e.to_string())));
        }
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
                Ok(Ok(()))
            }
            Err(e) => Ok(Err(Failure::Sink(e.to_string()))),
        }
    }

    /// Publish refused changes (op `blocked`, END `aborted`); a failure is logged, the refusal
    /// stands either way.
    async fn publish_refused(
        &mut self,
        txid: Option<i64>,
        changes: Vec<super::txn::Change>,
        tables: &HashMap<u32, publish::TableInfo>,
    ) {
        self.tx_seq += 1;
        let (mut records, mut end) = publish::build(
            &self.session,
            self.tx_seq,
            txid,
            changes,
            tables,
            &self.redactor,
        );
        end.commit_status = Some(CommitStatus::Aborted);
        records.push(publish::end_record(&self.session, &end));
        if let Err(e) = self.sink.publish(&records).await {
            self.metrics.audit_publish_failures.inc();
            tracing::error!(error = %e, "the record of a refused write could not be published");
        }
    }

    /// The gates' row rules over the transaction's changes (at COMMIT). Marks each change the
    /// rules refuse or dry-run; returns the client's error if any is refused.
    fn row_rules(
        &self,
        changes: &mut [super::txn::Change],
        tables: &HashMap<u32, publish::TableInfo>,
    ) -> Option<Vec<u8>> {
        let gates = self.gates.as_ref().filter(|g| g.has_row_rules())?;
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
            let row = RowFacts {
                before: c.before.as_ref(),
                after: c.after.as_ref(),
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

    /// Run a query of hindsight's own and wait for its rows.
    async fn internal_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
    ) -> std::io::Result<Reply> {
        if self.mid_batch {
            // Whether something earlier in the client's batch failed must be known first.
            self.flush_and_drain(w).await?;
        }
        {
            let st = self.shared.lock();
            if st.status == b'E' || (self.mid_batch && st.batch_failed) {
                // An aborted transaction (or a batch the server now skips to its Sync): the
                // query could not run, and sending it would disturb what the client is owed.
                return Ok(Reply {
                    error: Some(Vec::new()),
                    ..Reply::default()
                });
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut u = Unit::new(b"Z");
        u.collect = Collect::Rows(Vec::new());
        u.reply = Some(tx);
        self.send_internal(w, sql, u).await?;
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

    /// Parse: analyse; rewrite writes for capture (refusing what cannot be captured).
    async fn on_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let body = &frame[HEADER_LEN..];
        let Some((name, rest)) = take_cstr(body) else {
            self.push([Unit::pass(b"1")]);
            return write_all(w, frame).await;
        };
        let Some((sql, params)) = take_cstr(rest) else {
            self.push([Unit::pass(b"1")]);
            return write_all(w, frame).await;
        };
        let full = String::from_utf8_lossy(sql).into_owned();
        let (text, tags) = sqlcommenter::split(&full);
        let entry = self.cache.get(text);
        self.statements.remove(name);
        let stmt = match entry.as_ref() {
            Ok(a) if a.statements.len() == 1 => &a.statements[0],
            Err(e) if may_write(text) && self.parser_may_lag() => {
                let err = unparseable_write(e).encode();
                return self.refused_parse(w, name, err).await;
            }
            // Syntax errors and multi-statement texts: the server refuses them itself.
            _ => {
                self.push([Unit::pass(b"1")]);
                return write_all(w, frame).await;
            }
        };
        let a = &stmt.located.analysis;
        let names = if a.kind == Kind::Read {
            self.writing_functions(w, true).await?
        } else {
            Arc::default()
        };
        let target = self
            .resolve_targets(w, std::slice::from_ref(stmt), true)
            .await?[0];
        let resolved;
        let stmt = if target == Target::Partitioned {
            resolved = {
                let mut s = stmt.clone();
                apply_target(&mut s, target);
                s
            };
            &resolved
        } else {
            stmt
        };
        let a = &stmt.located.analysis;
        let opaque_target = target == Target::Opaque;
        let kind = if opaque_target
            || (a.kind == Kind::Read && super::functions::calls_any(text.as_bytes(), &names))
        {
            Kind::Opaque
        } else {
            a.kind
        };
        if kind == Kind::Session {
            self.targets.clear();
        }
        let major = self.shared.lock().server_major;
        let mut copy = None;
        let rewritten = if opaque_target {
            Ok(None)
        } else if a.kind == Kind::CopyIn && a.writes.len() == 1 && !a.explain_analyze {
            match self.prepare_copy(w, text, stmt).await? {
                Ok(Some((rw, plan))) => {
                    copy = Some(Arc::new(plan));
                    Ok(Some(rw))
                }
                // No such table or column: the client's COPY fails on its own.
                Ok(None) => Ok(None),
                Err(refusal) => Err(format!("hindsight: {refusal}")),
            }
        } else {
            let span = stmt.located.span.clone();
            let cascade = if a.kind == Kind::Truncate {
                self.truncate_cascade(w, &text[span], true).await?
            } else {
                Vec::new()
            };
            self.prepared_rewrite(text, stmt, major, &cascade)
        };
        let rewritten = match rewritten {
            Ok(rw) => rw,
            Err(msg) => {
                tracing::warn!(%msg, "statement refused");
                let err = ErrorResponse::error(sqlstate::CAPTURE_UNSUPPORTED, msg)
                    .with_hint("Use a proxy started with --no-capture if it must run unaudited.")
                    .encode();
                return self.refused_parse(w, name, err).await;
            }
        };
        let out = match &rewritten {
            None => frame.to_vec(),
            Some(rw) => {
                let mut b = name.to_vec();
                b.push(0);
                b.extend_from_slice(rw.text.as_bytes());
                b.push(0);
                b.extend_from_slice(params);
                frame_of(b'P', &b)
            }
        };
        self.push([Unit::pass(b"1")]);
        write_all(w, &out).await?;
        // UPDATE's pre-read is prepared once, with the client's parameters; TRUNCATE's image
        // read takes none and runs as hindsight's own statement at each Execute.
        let companion = match rewritten.as_ref().and_then(|rw| rw.pre_read.as_deref()) {
            Some(pre) if a.kind == Kind::Update => self.prepare_companion(w, name, pre).await?,
            _ => None,
        };
        self.statements.insert(
            name.to_vec(),
            Arc::new(Prep {
                kind,
                savepoint: a.savepoint.clone(),
                text: text[stmt.located.span.clone()].trim().to_string(),
                fingerprint: stmt.fingerprint.clone(),
                tags,
                rewritten,
                writes: a.writes.clone(),
                object: a
                    .writes
                    .first()
                    .map(|w| w.table.clone())
                    .unwrap_or_default(),
                companion,
                copy,
            }),
        );
        Ok(())
    }

    /// Whether the server may accept syntax hindsight's parser (PostgreSQL 17's grammar)
    /// rejects. On older servers a text the parser rejects is rejected by the server too, so
    /// it is relayed and the client gets the server's own syntax error; on newer ones a text
    /// the parser cannot read but that may write is refused (HS002), never run unaudited.
    fn parser_may_lag(&self) -> bool {
        self.shared.lock().server_major > PARSER_MAJOR
    }

    /// For each statement: what its write target is for capture. A relation that cannot take
    /// hindsight's RETURNING columns (a view, a relation with rules) makes the write an opaque
    /// statement that runs unchanged. Targets are resolved once per session
    /// (see `tables::Targets`).
    async fn resolve_targets<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        statements: &[Statement],
        extended: bool,
    ) -> std::io::Result<Vec<Target>> {
        let generation = self.tables.generation();
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            let a = &s.located.analysis;
            let table = match (a.kind, a.writes.as_slice()) {
                (
                    Kind::Insert | Kind::Update | Kind::Delete | Kind::Upsert | Kind::Merge,
                    [only],
                ) if !only.nested && !a.explain_analyze => &only.table,
                _ => {
                    out.push(Target::Table);
                    continue;
                }
            };
            let name = match table.schema.as_str() {
                "" => super::rewrite::quote(&table.name),
                schema => format!(
                    "{}.{}",
                    super::rewrite::quote(schema),
                    super::rewrite::quote(&table.name)
                ),
            };
            let target = match self.targets.get(generation, &name) {
                Some(t) => t,
                None => {
                    self.mid_batch = extended;
                    let reply = self
                        .internal_query(w, &super::tables::capturable_query(&name))
                        .await?;
                    if reply.error.is_some() {
                        // An aborted transaction: the statement fails on its own.
                        out.push(Target::Table);
                        continue;
                    }
                    // No row: no such relation; the statement fails on its own.
                    let t = match reply
                        .rows
                        .first()
                        .and_then(|r| r.first().cloned().flatten())
                        .as_deref()
                    {
                        Some(b"opaque") => Target::Opaque,
                        Some(b"partitioned") => Target::Partitioned,
                        _ => Target::Table,
                    };
                    self.targets.put(&name, t);
                    t
                }
            };
            out.push(target);
        }
        Ok(out)
    }

    /// The rewrite of a prepared write (TRUNCATE with its CASCADE tables), or why it cannot
    /// be prepared.
    fn prepared_rewrite(
        &self,
        text: &str,
        stmt: &Statement,
        major: u32,
        cascade: &[String],
    ) -> Result<Option<Rewritten>, String> {
        let kind = stmt.located.analysis.kind;
        match rewrite(text, &stmt.located, major, self.truncate_limit, cascade) {
            Ok(Some(rw)) if rw.pre_read.is_some() && !matches!(kind, Kind::Update | Kind::Truncate) => Err(format!(
                "hindsight: {} through the extended query protocol needs PostgreSQL 18 to be captured (older servers: send it as a simple query); the statement was not prepared",
                kind.label().to_uppercase()
            )),
            Ok(rw) => Ok(rw),
            Err(refusal) => Err(format!("hindsight: {refusal}")),
        }
    }

    /// An extended-protocol `COPY … FROM`: the target's columns from the catalog, the stage
    /// statements, and the captured INSERT. `Ok(None)`: no such table or column (relay the
    /// client's COPY unchanged; it fails on its own).
    async fn prepare_copy<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        stmt: &Statement,
    ) -> std::io::Result<Result<Option<(Rewritten, CopyPlan)>, Refusal>> {
        let write = &stmt.located.analysis.writes[0];
        let sql = text[stmt.located.span.clone()].trim();
        self.mid_batch = true;
        let lookup = self
            .internal_query(w, &super::copy::lookup_query(&write.table))
            .await?;
        let Some(target) = super::copy::parse_lookup(&lookup.rows) else {
            return Ok(Ok(None));
        };
        self.seq += 1;
        let staged = match super::copy::stage(sql, &target, &write.columns, self.seq) {
            Ok(Some(st)) => st,
            Ok(None) => return Ok(Ok(None)),
            Err(refusal) => return Ok(Err(refusal)),
        };
        let major = self.shared.lock().server_major;
        let insert = crate::statement::analyze(&staged.insert)
            .ok()
            .and_then(|v| rewrite(&staged.insert, &v[0], major, self.truncate_limit, &[]).ok())
            .flatten();
        let Some(insert) = insert else {
            return Ok(Err(Refusal::Unsupported {
                what: format!("{sql:?} (its capture could not be built)"),
            }));
        };
        let client = Rewritten {
            text: staged.copy,
            shape: Arc::new(Shape::statement(Kind::CopyIn, write.table.clone())),
            pre_read: None,
            guard: None,
        };
        Ok(Ok(Some((
            client,
            CopyPlan {
                create: staged.create,
                insert,
                drop: staged.drop,
                stdin: staged.stdin,
            },
        ))))
    }

    /// Whether a read the fast path passed must be analysed after all: it may call a function
    /// that writes, or the list of such functions must be read first.
    fn may_call_writer(&self, sql: &[u8]) -> bool {
        if self.ddl_seen {
            return true;
        }
        match self.functions.get(&self.session.database) {
            Some(names) => super::functions::calls_any(sql, &names),
            None => true,
        }
    }

    /// A DDL statement is about to run: function list and table facts are read again.
    fn schema_changed(&mut self) {
        self.ddl_seen = true;
        self.ddl_in_txn = true;
        self.tables.invalidate(&self.session.database);
    }

    /// The transaction id and the facts of the changed tables: from the cache where it has
    /// them, else from the catalog (one query either way, inside the transaction).
    async fn lookup_tables<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        oids: &[u32],
    ) -> std::io::Result<Option<(Option<i64>, HashMap<u32, publish::TableInfo>)>> {
        let db = self.session.database.clone();
        let (mut found, missing) = if self.ddl_in_txn {
            (HashMap::new(), oids.to_vec())
        } else {
            self.tables.get(&db, oids)
        };
        let query = if missing.is_empty() {
            publish::TXID_QUERY.to_string()
        } else {
            publish::catalog_query(&missing)
        };
        let reply = self.internal_query(w, &query).await?;
        if reply.error.is_some() {
            return Ok(None);
        }
        let (txid, looked_up) = publish::parse_catalog(&reply.rows);
        if !self.ddl_in_txn {
            self.tables.put(&db, &looked_up);
        }
        found.extend(looked_up);
        Ok(Some((txid, found)))
    }

    /// The functions that may write in this database, read from the catalog when needed.
    async fn writing_functions<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        extended: bool,
    ) -> std::io::Result<super::functions::Names> {
        let db = self.session.database.clone();
        if std::mem::take(&mut self.ddl_seen) {
            self.functions.invalidate(&db);
        }
        if let Some(names) = self.functions.get(&db) {
            return Ok(names);
        }
        self.mid_batch = extended;
        let reply = self.internal_query(w, super::functions::QUERY).await?;
        if reply.error.is_some() {
            // An aborted transaction: the statement fails on its own; try again next time.
            return Ok(Arc::default());
        }
        let names = reply
            .rows
            .iter()
            .filter_map(|r| {
                r.first()?
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .collect();
        Ok(self.functions.put(&db, names))
    }

    /// Prepare the pre-read of an UPDATE the client just prepared as `name` (PostgreSQL < 18).
    /// Its parameter types are taken from the client's statement as the server resolved them:
    /// the pre-read may not mention every parameter (`SET a = $1` only appears in the UPDATE).
    /// `None` when the client's Parse failed (the server then skips to the client's Sync).
    async fn prepare_companion<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        name: &[u8],
        pre_read: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let (tx, rx) = oneshot::channel();
        let mut u = Unit::new(b"nT");
        u.collect = Collect::Params(Vec::new());
        u.reply = Some(tx);
        self.push([u]);
        let mut d = vec![b'S'];
        d.extend_from_slice(name);
        d.push(0);
        let mut frames = frame_of(b'D', &d);
        frames.extend(frame_of(b'H', &[]));
        write_all(w, &frames).await?;
        let Ok(reply) = rx.await else {
            return Ok(None);
        };
        let cname = companion_name(b's', name);
        let mut p = cname.clone();
        p.push(0);
        p.extend_from_slice(pre_read.as_bytes());
        p.push(0);
        p.extend_from_slice(&(reply.params.len() as u16).to_be_bytes());
        for oid in &reply.params {
            p.extend_from_slice(&oid.to_be_bytes());
        }
        let mut frames = close_frame(b'S', &cname);
        frames.extend(frame_of(b'P', &p));
        let mut parse = Unit::new(b"1");
        parse.forward_errors = true;
        self.push([Unit::new(b"3"), parse]);
        write_all(w, &frames).await?;
        Ok(Some(cname))
    }

    /// Bind of a rewritten statement: open a transaction if there is none (so hindsight ends
    /// it), and make room for the capture columns in the result formats.
    async fn on_bind<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let body = &frame[HEADER_LEN..];
        let (portal, stmt) = two_cstrs(body).expect("checked in on_frame");
        let prep = Arc::clone(&self.statements[stmt]);
        let shape = Arc::clone(&prep.rewritten.as_ref().expect("rewritten").shape);
        self.flush_and_drain(w).await?;
        let gate = match self.prep_gate(&prep) {
            Ok(g) => g,
            Err(hit) => {
                // COPY and TRUNCATE get one statement-level event, not a trial run.
                let trial = bind_parameters(body)
                    .filter(|_| !matches!(prep.kind, Kind::CopyIn | Kind::Truncate))
                    .map(|p| (stmt.to_vec(), p.to_vec()));
                return self.refuse_prepared(w, &prep, hit, trial).await;
            }
        };
        self.portal_gates.insert(portal.to_vec(), gate);
        if !self.batch_implicit && self.shared.lock().status == b'I' {
            self.batch_implicit = true;
            // Named statement and portal: the client's unnamed ones stay untouched.
            self.mid_batch = true;
            self.send_internal(w, "BEGIN", Unit::new(b"Z")).await?;
        }
        if let Some(plan) = &prep.copy {
            // The stage the client's COPY was prepared to fill (created for each execution,
            // dropped after it; ON COMMIT DROP if the COPY fails).
            self.mid_batch = true;
            let mut create = Unit::new(b"Z");
            create.forward_errors = true;
            self.send_internal(w, &plan.create, create).await?;
        }
        let (out, binary) = widen_result_formats(body, shape.extra);
        let mut frames = match out {
            Some(b) => frame_of(b'B', &b),
            None => frame.to_vec(),
        };
        self.push([Unit::pass(b"2")]);
        if let (Some(cstmt), Some(params)) = (&prep.companion, bind_parameters(body)) {
            // The companion portal gets the same parameter values; its rows come back as text.
            let cportal = companion_name(b'p', portal);
            let mut b = cportal.clone();
            b.push(0);
            b.extend_from_slice(cstmt);
            b.push(0);
            b.extend_from_slice(params);
            b.extend_from_slice(&[0, 0]);
            frames.extend(close_frame(b'P', &cportal));
            frames.extend(frame_of(b'B', &b));
            let mut bind = Unit::new(b"2");
            bind.forward_errors = true;
            self.push([Unit::new(b"3"), bind]);
        }
        self.portals.insert(portal.to_vec(), (prep, binary));
        write_all(w, &frames).await
    }

    /// Execute: capture a rewritten portal; hold a COMMIT that has changes to publish.
    fn on_execute(&mut self, body: &[u8]) -> Verdict {
        let Some((portal, rest)) = take_cstr(body) else {
            self.push([Unit::pass(b"CIs")]);
            return Verdict::Forward;
        };
        let Some((prep, binary)) = self.portals.get(portal).cloned() else {
            self.push([Unit::pass(b"CIs")]);
            return Verdict::Forward;
        };
        let mut u = Unit::pass(b"CIs");
        match prep.kind {
            Kind::Transaction(ctl @ (TxControl::Commit | TxControl::PrepareTransaction)) => {
                let st = self.shared.lock();
                if !st.txn.is_empty() || !st.capture_errors.is_empty() || !st.units.is_empty() {
                    return Verdict::Defer;
                }
                u.txctl = Some((ctl, prep.savepoint.clone()));
            }
            Kind::Transaction(ctl) => u.txctl = Some((ctl, prep.savepoint.clone())),
            // Recorded before it runs, or with its transaction: decided once replies are in.
            k if k.statement_event() => return Verdict::Defer,
            _ => {}
        }
        let Some(rw) = &prep.rewritten else {
            self.push([u]);
            return Verdict::Forward;
        };
        self.seq += 1;
        let application_name = self.shared.lock().application_name.clone();
        let ctx = Arc::new(StatementCtx {
            text: prep.text.clone(),
            fingerprint: prep.fingerprint.clone(),
            tags: prep.tags.clone(),
            seq: self.seq,
            ts_ms: now_ms(),
            application_name,
            shape: Arc::clone(&rw.shape),
            binary,
            gate: self.portal_gates.get(portal).cloned().unwrap_or_default(),
        });
        if let Some(plan) = &prep.copy {
            // The client's COPY fills the stage: its CopyInResponse and input errors go to the
            // client, its row count is replaced by the INSERT's (at CopyDone).
            let ctx = StatementCtx {
                shape: Arc::clone(&plan.insert.shape),
                binary: false,
                ..(*ctx).clone()
            };
            if !plan.stdin {
                // From a file or program: complete by itself; the INSERT and DROP follow now.
                u.complete = super::router::Complete::Drop;
                self.push([u]);
                let mut out = frame_of(b'E', body);
                out.extend(self.copy_followers(plan, Arc::new(ctx)));
                return Verdict::Replace(out);
            }
            // Ends at CopyInResponse: the Sync clients send right after the Execute must wait
            // for it (see `on_sync`); the COPY's CommandComplete gets its unit at CopyDone.
            u.ends = b"G";
            self.push([u]);
            self.copy_ext = Some((Arc::clone(plan), Arc::new(ctx)));
            return Verdict::Forward;
        }
        let mut out = Vec::new();
        if let Some((guard, msg)) = &rw.guard {
            // TRUNCATE: refused above the row limit, then the before image of every row.
            let mut g = Unit::new(b"C");
            g.error_replacement = Some(truncate_limit_error(msg));
            let (frames, units) = internal_statement(guard, g, true);
            out.extend(frames);
            self.push(units);
            if let Some(images) = &rw.pre_read {
                let mut pre = Unit::new(b"C");
                pre.forward_errors = true;
                pre.collect = Collect::PreRead(Arc::clone(&ctx), Vec::new());
                let (frames, units) = internal_statement(images, pre, true);
                out.extend(frames);
                self.push(units);
            }
        }
        if prep.companion.is_some() {
            // The pre-read locks and reads the before images right before the UPDATE runs.
            let mut pre = Unit::new(b"C");
            pre.forward_errors = true;
            pre.collect = Collect::PreRead(Arc::clone(&ctx), Vec::new());
            self.push([pre]);
            out.extend(execute_frame(&companion_name(b'p', portal)));
        }
        u.collect = Collect::Capture(ctx, Vec::new());
        self.push([u]);
        // A row limit would suspend the portal on rows the client never asked for.
        let max_rows = rest
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        if max_rows != 0 && !rw.shape.client_returning {
            out.extend(execute_frame(portal));
        } else if out.is_empty() {
            return Verdict::Forward;
        } else {
            out.extend(frame_of(b'E', body));
        }
        Verdict::Replace(out)
    }

    /// A deferred Execute: a COMMIT with changes to publish, or a DDL / opaque statement.
    async fn on_deferred_execute<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let portal = take_cstr(&frame[HEADER_LEN..])
            .map(|(p, _)| p)
            .unwrap_or_default();
        let Some((prep, _)) = self.portals.get(portal).cloned() else {
            return self.commit(w, CommitBy::ClientExtended(frame)).await;
        };
        if !prep.kind.statement_event() {
            return self.commit(w, CommitBy::ClientExtended(frame)).await;
        }
        self.flush_and_drain(w).await?;
        if prep.kind == Kind::Ddl {
            self.schema_changed();
        }
        let gate = match self.prep_gate(&prep) {
            Ok(g) => g,
            Err(hit) => return self.refuse_prepared(w, &prep, hit, None).await,
        };
        self.seq += 1;
        let shape = Arc::new(Shape::statement(prep.kind, prep.object.clone()));
        let ctx = self.event_ctx(&prep.text, &prep.fingerprint, &prep.tags, shape, gate);
        if self.shared.lock().status == b'I' {
            return self
                .announce(w, frame, vec![Change::statement(ctx)], b"CIs")
                .await;
        }
        let mut u = Unit::pass(b"CIs");
        u.collect = Collect::Statement(ctx);
        self.push([u]);
        write_all(w, frame).await
    }

    /// The gates' statement phase for a prepared statement about to run; `Err` if refused.
    fn prep_gate(&self, prep: &Prep) -> Result<GateInfo, crate::gates::decide::Hit> {
        if self.gates.is_none() {
            return Ok(GateInfo::default());
        }
        let mut gate = GateInfo {
            op: Some(prep.kind),
            writes: prep.writes.clone(),
            ..GateInfo::default()
        };
        match self.statement_gate(prep.kind, &prep.writes, &prep.fingerprint, &prep.tags) {
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
    async fn refuse_prepared<W: AsyncWrite + Unpin + Send>(
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
        if let (Some((stmt, params)), Some(rw), true) = (trial, &prep.rewritten, status != b'E') {
            let ctx = self.event_ctx(
                &prep.text,
                &prep.fingerprint,
                &prep.tags,
                Arc::clone(&rw.shape),
                gate.clone(),
            );
            let opened = status == b'I';
            self.mid_batch = true;
            let mut open = Unit::new(b"Z");
            open.error_replacement = Some(err.clone());
            let open_sql = if opened {
                "BEGIN"
            } else {
                "SAVEPOINT __hs_probe"
            };
            self.send_internal(w, open_sql, open).await?;
            let mut frames = Vec::new();
            let mut units = Vec::new();
            let mut run = |statement: &[u8], collect: Collect| {
                let mut b = b"__hs_probe\0".to_vec();
                b.extend_from_slice(statement);
                b.push(0);
                b.extend_from_slice(&params);
                b.extend_from_slice(&[0, 0]);
                frames.extend(frame_of(b'B', &b));
                frames.extend(execute_frame(b"__hs_probe"));
                frames.extend(close_frame(b'P', b"__hs_probe"));
                let mut bind = Unit::new(b"2");
                bind.error_replacement = Some(err.clone());
                let mut exec = Unit::new(b"C");
                exec.error_replacement = Some(err.clone());
                exec.collect = collect;
                exec.probe = true;
                units.extend([bind, exec, Unit::new(b"3")]);
            };
            if let Some(c) = &prep.companion {
                run(c, Collect::PreRead(Arc::clone(&ctx), Vec::new()));
            }
            run(&stmt, Collect::Capture(ctx, Vec::new()));
            frames.extend(frame_of(b'H', &[]));
            self.push(units);
            write_all(w, &frames).await?;
            self.shared.drained().await;
            if self.shared.lock().batch_failed {
                // The trial failed: the client already has the gate's error in its place, and
                // the server skips to the Sync, which ends hindsight's transaction.
                self.shared.lock().probe.clear();
                self.skip_until_sync = true;
                self.batch_implicit |= opened;
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
            self.swallowed_query(w, close_sql, false).await?;
            if !opened {
                self.swallowed_query(w, "RELEASE SAVEPOINT __hs_probe", false)
                    .await?;
            }
            changes = std::mem::take(&mut self.shared.lock().probe);
        }
        if changes.is_empty() {
            let shape = Arc::new(Shape::statement(prep.kind, prep.object.clone()));
            let ctx = self.event_ctx(&prep.text, &prep.fingerprint, &prep.tags, shape, gate);
            changes.push(Change::statement(ctx));
            self.publish_refused(None, changes, &HashMap::new()).await;
        } else if let Err(Failure::Sink(e)) = self.publish(w, changes, true).await? {
            self.metrics.audit_publish_failures.inc();
            tracing::error!(error = %e, "the record of a refused write could not be published");
        }
        self.refused_parse(w, b"__hindsight_refused", err).await
    }

    /// Sync of a batch hindsight opened a transaction for: end it the way the server would have.
    async fn on_sync<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        if self.copy_ext.is_some() {
            // Sent right after a COPY's Execute (tokio-postgres does): once the COPY started,
            // the server ignores it, and so must the reply queue; the client's next Sync
            // (after CopyDone) ends the batch.
            self.flush_and_drain(w).await?;
            if !self.shared.lock().batch_failed {
                return write_all(w, frame).await;
            }
            self.copy_ext = None;
        }
        if !self.batch_implicit {
            self.push([Unit::pass(b"Z")]);
            return write_all(w, frame).await;
        }
        self.batch_implicit = false;
        self.flush_and_drain(w).await?;
        if !self.shared.lock().batch_failed {
            return self.commit(w, CommitBy::ImplicitExtended(frame)).await;
        }
        // Something failed: the server skips to this Sync; then roll back hindsight's
        // transaction (if it was opened) and give the client the ReadyForQuery it expects (I).
        self.push([Unit::new(b"Z")]);
        write_all(w, frame).await?;
        self.shared.drained().await;
        let status = self.shared.lock().status;
        let sql = if status == b'I' { "" } else { "ROLLBACK" };
        self.internal_end(w, sql, None).await
    }
}

/// Whether a text hindsight could not parse might write rows (then it must not go through
/// unaudited — e.g. PostgreSQL 18-only syntax the parser does not know yet).
fn may_write(text: &str) -> bool {
    use crate::statement::KeywordClass as K;
    !fast_path::certainly_read(text.as_bytes())
        && matches!(
            crate::statement::classify(text.as_bytes()),
            K::Select | K::Insert | K::Update | K::Delete | K::Merge | K::Copy | K::With
        )
}

fn unparseable_write(e: &crate::statement::AnalysisError) -> ErrorResponse {
    ErrorResponse::error(
        sqlstate::CAPTURE_UNSUPPORTED,
        format!("hindsight: this statement may write rows but hindsight's parser cannot read it, so it cannot be captured; it was not run ({e})"),
    )
    .with_hint("Check the syntax; PostgreSQL 18-only syntax (e.g. RETURNING WITH (OLD AS …)) is not understood yet.")
}

/// The portal and statement names at the start of a Bind body.
fn two_cstrs(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (a, rest) = take_cstr(body)?;
    let (b, _) = take_cstr(rest)?;
    Some((a, b))
}

/// Execute `portal` for all its rows.
fn execute_frame(portal: &[u8]) -> Vec<u8> {
    let mut b = portal.to_vec();
    b.push(0);
    b.extend_from_slice(&[0, 0, 0, 0]);
    frame_of(b'E', &b)
}

/// The parameter part of a Bind body: format codes and values, as one slice.
fn bind_parameters(body: &[u8]) -> Option<&[u8]> {
    let (_, rest) = take_cstr(body)?;
    let (_, rest) = take_cstr(rest)?;
    let start = body.len() - rest.len();
    Some(&body[start..result_formats_at(body)?])
}

/// Where the result-format count starts in a Bind body.
fn result_formats_at(body: &[u8]) -> Option<usize> {
    let (_, rest) = take_cstr(body)?;
    let (_, rest) = take_cstr(rest)?;
    let mut pos = body.len() - rest.len();
    let nfmt = u16::from_be_bytes(body.get(pos..pos + 2)?.try_into().ok()?) as usize;
    pos += 2 + 2 * nfmt;
    let nparams = u16::from_be_bytes(body.get(pos..pos + 2)?.try_into().ok()?) as usize;
    pos += 2;
    for _ in 0..nparams {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4 + len.max(0) as usize;
    }
    (pos + 2 <= body.len()).then_some(pos)
}

/// Bind with per-column result formats gets `extra` text formats appended for the capture
/// columns. Returns the new body (if changed) and whether the capture columns come back in
/// binary (a single format code of 1 applies to every column).
fn widen_result_formats(body: &[u8], extra: usize) -> (Option<Vec<u8>>, bool) {
    let parse = || -> Option<(usize, u16, usize)> {
        let pos = result_formats_at(body)?;
        let nres = u16::from_be_bytes(body.get(pos..pos + 2)?.try_into().ok()?);
        Some((pos, nres, pos + 2))
    };
    let Some((at, nres, codes)) = parse() else {
        return (None, false);
    };
    match nres {
        0 => (None, false),
        1 => (None, body.get(codes..codes + 2) == Some(&[0, 1][..])),
        n => {
            let mut b = body[..at].to_vec();
            b.extend_from_slice(&(n + extra as u16).to_be_bytes());
            b.extend_from_slice(&body[codes..]);
            b.resize(b.len() + 2 * extra, 0);
            (Some(b), false)
        }
    }
}

async fn write_all<W: AsyncWrite + Unpin + Send>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
