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
//!
//! This file holds the session's state and the frame dispatch ([`Inspector`]); the paths live in:
//! - `simple` — Query: analyse, relay, refuse or rewrite;
//! - `bound` — a Query's write bound to a statement the session prepared once;
//! - `extended` — Parse / Bind / Execute / Sync;
//! - `front` — the front half both protocols share: the text, then the statements with their
//!   targets resolved and the reads that may write made opaque;
//! - `copy_in` — `COPY … FROM` through a stage table;
//! - `cte` — statements with data-modifying CTEs: described, then run in a wrapper query;
//! - `commit` — publish, then COMMIT (or roll back with HS001); statement events announced;
//! - `gating` — the gates' statement rules (with trial runs) and row rules;
//! - `catalog` — what the session looks up in the catalog (tables, functions, targets);
//! - `encoding` — which messages may change `client_encoding` (images in hex until it settles);
//! - `internal` — hindsight's own statements on the connection, invisible to the client;
//! - `unparsed` — texts the parser cannot read whole, in front of a newer server.

mod bound;
mod catalog;
mod commit;
mod copy_in;
mod cte;
mod encoding;
mod extended;
mod front;
mod gating;
mod internal;
mod simple;
mod unparsed;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::publish::SessionInfo;
use super::rewrite::Rewritten;
use super::router::{Collect, Shared, Unit};
use super::txn::{GateInfo, StatementCtx};
use crate::audit::kafka::KafkaSink;
use crate::statement::analysis::TableName;
use crate::statement::cache::{AnalysisCache, Statement};
use crate::statement::{fast_path, sqlcommenter, Kind};
use crate::telemetry::Metrics;
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::{Header, HEADER_LEN};
use crate::wire::frontend::{describe_target, parse_statement, query_text, FrontendTag};
use crate::wire::inspect::{frontend_tag, Inspector, Verdict};

use copy_in::CopyPlan;
use encoding::may_change_encoding;
use extended::{companion_name, two_cstrs, Companions, PreparedWrite};
use internal::close_frame;

pub use crate::config::OnSinkFailure;

/// Client-side inspector of a capturing session.
pub struct ClientCapture {
    shared: Arc<Shared>,
    /// What the proxy hands every session: the sink, caches, rules and limits.
    parts: SessionParts,
    session: SessionInfo,
    /// Statements seen (numbering for events).
    seq: u64,
    /// Transactions published (numbering for transaction ids).
    tx_seq: u64,
    /// Extended protocol: prepared statements and portals by name.
    statements: HashMap<Vec<u8>, Arc<Prep>>,
    portals: HashMap<Vec<u8>, Portal>,
    /// A MERGE portal's post-read companion Bind (with Close of the previous one), sent right
    /// before that companion's Execute: a portal's snapshot is taken at Bind, and the post-read
    /// must see what the MERGE did.
    post_binds: HashMap<Vec<u8>, Vec<u8>>,
    /// The extended-protocol batch in progress, up to the client's Sync.
    batch: Batch,
    /// How hindsight's own queries are sent now (`Protocol::Extended` in the middle of an
    /// extended-protocol batch: a simple Query would destroy the client's unnamed portal).
    own_queries: Protocol,
    /// Whether an earlier statement of the query string being rewritten may change
    /// `client_encoding` before the next ones run.
    next_encoding: NextEncoding,
    /// Prepared statements that may change `client_encoding` (`SET client_encoding`, …): a
    /// Bind of one marks the encoding unsettled (`router::EncodingTracker`).
    encoding_statements: std::collections::HashSet<Vec<u8>>,
    /// Whose the server's replies to a Parse are (`reprepare` parses a prepared write again
    /// for an encoding it was not built for).
    parse_replies: ParseReplies,
    /// A `COPY … FROM` hindsight must act on when it ends.
    copy: CopyRun,
    /// The gates' statement-phase outcome for the statements of the current simple Query, by
    /// their span in its text.
    query_gates: Vec<(std::ops::Range<usize>, GateInfo)>,
    /// … and for bound portals (extended protocol).
    portal_gates: HashMap<Vec<u8>, GateInfo>,
    /// Whether the list of functions that may write must be read again (a schema change ran).
    functions_list: FunctionList,
    /// Whether the open transaction ran DDL: then its catalog lookups are not cached, and the
    /// cache is dropped again when it commits.
    txn_ddl: TxnDdl,
    /// Which write targets this session named can take the capture columns.
    targets: super::tables::Targets,
    /// The END record of the transaction whose records were just published, until the COMMIT
    /// that follows is sent (its outcome decides the END's `commit_status`).
    pending_end: Option<commit::PendingEnd>,
    /// Statements prepared for bound simple-protocol writes (`capture.simple_writes`).
    bound: bound::BoundStatements,
}

/// The protocol of the client's statement, and so how hindsight sends its own queries beside
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// A simple Query: hindsight's own queries go as simple Queries between the client's.
    Simple,
    /// An extended-protocol batch: hindsight's own queries go as named extended messages.
    Extended,
}

/// The extended-protocol batch in progress, up to the client's Sync.
#[derive(Debug, Default)]
struct Batch {
    /// Who opened the transaction the batch runs in.
    tx: BatchTx,
    /// Whether the client's messages still go to the server.
    flow: BatchFlow,
}

/// Who opened the transaction an extended-protocol batch runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum BatchTx {
    /// The client (or nobody yet).
    #[default]
    Client,
    /// hindsight, for the batch's writes: it ends it at the client's Sync.
    Hindsight,
}

/// Whether the client's extended-protocol messages still go to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum BatchFlow {
    #[default]
    Running,
    /// hindsight failed a message in the client's place: like the server, it now drops the
    /// client's messages up to its Sync (their replies will never come).
    SkipToSync,
}

/// Whether the encoding the server last reported holds for the next statement of the query
/// string being rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextEncoding {
    Reported,
    /// An earlier statement may change `client_encoding` before the next ones run: their
    /// images are built in hex, right in any encoding (`image_sql::Form`), as the server has
    /// not reported the new encoding yet.
    MayChange,
}

/// Whose the server's replies to a Parse are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseReplies {
    Client,
    /// hindsight's: a prepared write is parsed again for an encoding it was not built for
    /// (see `reprepare`).
    Hindsight,
}

/// Whether the session's list of functions that may write is current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum FunctionList {
    #[default]
    Fresh,
    /// A schema change ran: the list is read again before the next query.
    Stale,
}

/// Whether the open transaction ran DDL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum TxnDdl {
    #[default]
    None,
    /// Its catalog lookups are not cached, and the cache is dropped again when it commits.
    Ran,
}

/// A `COPY … FROM` hindsight must act on when it ends.
#[derive(Default)]
enum CopyRun {
    #[default]
    None,
    /// A simple-query COPY runs in a transaction hindsight opened: it ends it at the client's
    /// CopyDone or CopyFail.
    InOwnTx,
    /// An extended-protocol COPY into a stage is running: at the client's CopyDone, the
    /// captured `INSERT … SELECT` from the stage and the stage's DROP follow it.
    Staged(Arc<CopyPlan>, Arc<StatementCtx>),
}

impl CopyRun {
    fn is_staged(&self) -> bool {
        matches!(self, CopyRun::Staged(..))
    }

    /// The transaction hindsight opened around a simple-query COPY is over.
    fn own_tx_ended(&mut self) {
        if matches!(self, CopyRun::InOwnTx) {
            *self = CopyRun::None;
        }
    }
}

/// A bound portal: its prepared statement and whether its results come back in binary.
#[derive(Clone)]
struct Portal {
    prep: Arc<Prep>,
    binary: bool,
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
    /// PostgreSQL < 18 MERGE: the companion that reads its changes back (`capture::merge`'s
    /// post-read), run right after each Execute; `companion` is then its pre-read.
    post_companion: Option<Vec<u8>>,
    /// `COPY … FROM` (extended protocol): the client's statement was prepared pointing at a
    /// stage table; this is what runs around each execution.
    copy: Option<Arc<CopyPlan>>,
    /// The client's Parse of a write whose images were built for a UTF-8 session (jsonb):
    /// kept to prepare it again, in hex, should the session's encoding change before a Bind
    /// (the server would then send the images in the new encoding, which may lack their
    /// characters, or turn them into other valid UTF-8).
    reparse: Option<Vec<u8>>,
}

impl Prep {
    /// The client's statement `stmt` of `text` as prepared: `write` and its `companions`;
    /// `reparse`: its Parse, kept while its images are built for UTF-8.
    fn new(
        text: &str,
        stmt: &Statement,
        tags: sqlcommenter::Tags,
        write: PreparedWrite,
        companions: Companions,
        reparse: Option<Vec<u8>>,
    ) -> Self {
        let a = &stmt.located.analysis;
        Prep {
            kind: a.kind,
            savepoint: a.savepoint.clone(),
            text: text[stmt.located.span.clone()].trim().to_string(),
            fingerprint: stmt.fingerprint.clone(),
            tags,
            rewritten: write.rewritten,
            writes: a.writes.clone(),
            object: a
                .writes
                .first()
                .map(|w| w.table.clone())
                .unwrap_or_default(),
            companion: companions.pre,
            post_companion: companions.post,
            copy: write.copy,
            reparse,
        }
    }
}

/// HS002: a statement hindsight cannot capture, refused with `message` (which says what and
/// why) and the one hint every such refusal gives.
fn uncapturable(message: impl Into<String>) -> ErrorResponse {
    ErrorResponse::error(sqlstate::CAPTURE_UNSUPPORTED, message.into())
        .with_hint("Run it through a proxy started with --no-capture if it must run unaudited.")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The frame dispatch's arms: what each client message expects of the server.
impl ClientCapture {
    /// A Query: a read the fast path is sure of goes through; anything else is decided once
    /// the whole frame is in (`on_query`).
    fn inspect_query(&mut self, body: &[u8]) -> Verdict {
        let text = query_text(body);
        self.parts
            .metrics
            .statement(crate::statement::classify(text))
            .inc();
        if fast_path::certainly_read(text) && !self.may_call_writer(text) {
            self.push([Unit::pass(b"Z")]);
            if may_change_encoding(text) {
                self.shared.lock().encoding.mark();
            }
            return Verdict::Forward;
        }
        Verdict::Defer
    }

    /// A Parse: a certain read goes through; anything else is analysed (`on_parse`).
    fn inspect_parse(&mut self, body: &[u8], complete: bool) -> Verdict {
        let (name, sql) = parse_statement(body).unwrap_or_default();
        self.parts
            .metrics
            .statement(crate::statement::classify(sql))
            .inc();
        if may_change_encoding(sql) {
            self.encoding_statements.insert(name.to_vec());
        } else if !self.encoding_statements.is_empty() {
            self.encoding_statements.remove(name);
        }
        if complete && (!fast_path::certainly_read(sql) || self.may_call_writer(sql)) {
            return Verdict::Defer;
        }
        self.statements.remove(name);
        self.push([Unit::pass(b"1")]);
        Verdict::Forward
    }

    /// A Bind: a rewritten statement's is decided later (`on_bind`); others go through.
    fn inspect_bind(&mut self, body: &[u8]) -> Verdict {
        let Some((portal, stmt)) = two_cstrs(body) else {
            self.push([Unit::pass(b"2")]);
            return Verdict::Forward;
        };
        self.post_binds.remove(portal);
        if !self.encoding_statements.is_empty() && self.encoding_statements.contains(stmt) {
            self.shared.lock().encoding.mark();
        }
        match self.statements.get(stmt).cloned() {
            Some(p) if p.rewritten.is_some() => Verdict::Defer,
            Some(p) => {
                self.portals.insert(
                    portal.to_vec(),
                    Portal {
                        prep: p,
                        binary: false,
                    },
                );
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

    /// A Describe: a rewritten statement's or portal's RowDescription loses the capture columns.
    fn inspect_describe(&mut self, body: &[u8]) -> Verdict {
        let (kind, name) = describe_target(body);
        let prep = match kind {
            b'S' => self.statements.get(name).cloned(),
            _ => self.portals.get(name).map(|p| Arc::clone(&p.prep)),
        };
        let mut u = Unit::pass(b"Tn");
        if let Some(rw) = prep.as_ref().and_then(|p| p.rewritten.as_ref()) {
            u.collect = Collect::Describe(Arc::clone(&rw.shape));
        }
        self.push([u]);
        Verdict::Forward
    }

    /// A Close: of the client's statement or portal, and of hindsight's companions with it.
    fn inspect_close(&mut self, frame: &[u8], body: &[u8]) -> Verdict {
        let (kind, name) = describe_target(body);
        let prep = if kind == b'S' {
            self.encoding_statements.remove(name);
            self.statements.remove(name)
        } else {
            self.post_binds.remove(name);
            self.portals.remove(name).map(|p| p.prep)
        };
        self.push([Unit::pass(b"3")]);
        let Some(prep) = prep.filter(|p| p.companion.is_some()) else {
            return Verdict::Forward;
        };
        // Close hindsight's companions too, so the server does not accumulate them.
        let mut out = frame.to_vec();
        let (ckind, post) = if kind == b'S' {
            (b's', b't')
        } else {
            (b'p', b'q')
        };
        self.push([Unit::new(b"3")]);
        out.extend(close_frame(kind, &companion_name(ckind, name)));
        if prep.post_companion.is_some() {
            self.push([Unit::new(b"3")]);
            out.extend(close_frame(kind, &companion_name(post, name)));
        }
        Verdict::Replace(out)
    }
}

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
        if self.batch.flow == BatchFlow::SkipToSync {
            match tag {
                FrontendTag::Parse
                | FrontendTag::Bind
                | FrontendTag::Describe
                | FrontendTag::Execute
                | FrontendTag::Close
                | FrontendTag::Flush => return Verdict::Replace(Vec::new()),
                FrontendTag::Sync => self.batch.flow = BatchFlow::Running,
                _ => {}
            }
        }
        let body = &frame[HEADER_LEN.min(frame.len())..];
        match tag {
            FrontendTag::Query => self.inspect_query(body),
            FrontendTag::Parse => self.inspect_parse(body, complete),
            FrontendTag::Bind => self.inspect_bind(body),
            FrontendTag::Describe => self.inspect_describe(body),
            FrontendTag::Execute => self.on_execute(body),
            FrontendTag::Close => self.inspect_close(frame, body),
            FrontendTag::CopyDone if self.copy.is_staged() => {
                let CopyRun::Staged(plan, ctx) = std::mem::take(&mut self.copy) else {
                    unreachable!("checked by the guard")
                };
                // The COPY's own CommandComplete (dropped: the INSERT's count replaces it).
                let mut copied = Unit::pass(b"C");
                copied.complete = super::router::Complete::Drop;
                self.push([copied]);
                let mut all = frame.to_vec();
                all.extend(self.copy_followers(&plan, ctx));
                Verdict::Replace(all)
            }
            FrontendTag::CopyFail if self.copy.is_staged() => {
                self.copy = CopyRun::None;
                Verdict::Forward
            }
            FrontendTag::Sync if self.batch.tx == BatchTx::Hindsight || self.copy.is_staged() => {
                Verdict::Defer
            }
            FrontendTag::CopyDone | FrontendTag::CopyFail
                if matches!(self.copy, CopyRun::InOwnTx) =>
            {
                Verdict::Defer
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
        self.copy.own_tx_ended();
        self.own_queries = Protocol::Simple;
        self.swallowed_query(w, "ROLLBACK").await?;
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

async fn write_all<W: AsyncWrite + Unpin + Send>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Write without flushing: only as the last thing a resolver does before it returns, so the
/// bytes go to the server together with the frames that follow in the client's read (one
/// write, one wake-up of the server, instead of two). Never before waiting for a reply.
async fn write_last<W: AsyncWrite + Unpin + Send>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await
}

/// Everything a capturing session is made from: what the proxy's sessions share, and the
/// settings that apply to each (`capture.*`).
pub struct SessionParts {
    pub sink: Arc<KafkaSink>,
    pub cache: Arc<AnalysisCache>,
    pub metrics: Metrics,
    pub redactor: Arc<super::redact::Redactor>,
    /// Rules that refuse writes, when configured.
    pub gates: Option<Arc<crate::gates::engine::Gates>>,
    /// Write paths per application, when enabled.
    pub footprints: Option<Arc<crate::footprint::Footprints>>,
    /// Functions that may write when a query calls them.
    pub functions: Arc<super::functions::WritingFunctions>,
    /// The foreign keys with actions, per database (`cascade`).
    pub cascades: Arc<super::cascade::Graphs>,
    /// Schema, name and key of captured tables.
    pub tables: Arc<super::tables::TableCache>,
    pub on_sink_failure: OnSinkFailure,
    /// `capture.simple_writes`.
    pub simple_writes: crate::config::SimpleWrites,
    /// `capture.truncate_row_limit`.
    pub truncate_limit: u64,
    /// `capture.max_transaction_bytes`.
    pub max_transaction_bytes: u64,
}

impl ClientCapture {
    /// A session's client side, and the router state it shares with the server side's
    /// inspector (pass it to `ServerInspector`).
    pub fn new(parts: SessionParts, session: SessionInfo) -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        shared.lock().txn.byte_limit = parts.max_transaction_bytes;
        let capture = ClientCapture {
            shared: Arc::clone(&shared),
            parts,
            session,
            seq: 0,
            tx_seq: 0,
            statements: HashMap::new(),
            portals: HashMap::new(),
            post_binds: HashMap::new(),
            batch: Batch::default(),
            own_queries: Protocol::Simple,
            next_encoding: NextEncoding::Reported,
            encoding_statements: Default::default(),
            parse_replies: ParseReplies::Client,
            copy: CopyRun::None,
            query_gates: Vec::new(),
            portal_gates: HashMap::new(),
            functions_list: FunctionList::Fresh,
            txn_ddl: TxnDdl::None,
            targets: Default::default(),
            pending_end: None,
            bound: Default::default(),
        };
        (capture, shared)
    }

    /// Expect the replies of requests about to be sent. After an error in an extended-protocol
    /// batch the server answers nothing up to the client's Sync: units of requests sent then
    /// (the client's pipeline continuing while a deferred message was being decided) are
    /// dropped, or they would wait forever and take the replies meant for later requests.
    pub(super) fn push(&self, units: impl IntoIterator<Item = Unit>) {
        let mut st = self.shared.lock();
        for mut u in units {
            if st.batch_failed && !u.sync_point() && !st.units.iter().any(Unit::sync_point) {
                continue;
            }
            st.encoding.on_push(&mut u);
            st.units.push_back(u);
        }
    }

    /// Frames whose handling needs to wait for replies, publish, or send hindsight's own.
    pub(super) async fn resolve_frame<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        match frame[0] {
            b'c' | b'f' => {
                // The end of a COPY in hindsight's transaction: let it complete, then end it.
                self.copy.own_tx_ended();
                write_all(w, frame).await?;
                self.finish_query(w, true).await
            }
            b'Q' => {
                self.on_query(frame, w).await?;
                // Marked once its units are in: the sync point that settles it is then one
                // after the statement (later than needed at worst, which only costs hex).
                if may_change_encoding(query_text(&frame[HEADER_LEN..])) {
                    self.shared.lock().encoding.mark();
                }
                Ok(())
            }
            b'P' => self.on_parse(frame, w).await,
            b'B' => self.on_bind(frame, w).await,
            b'E' => self.on_deferred_execute(frame, w).await,
            _ => self.on_sync(frame, w).await,
        }
    }
}
