//! Routing the server's replies while capture is on.
//!
//! The client side pushes one [`Unit`] per request it sends upstream (its own, rewritten or
//! hindsight's internal ones), in order; the server answers requests in order, so the unit at
//! the front of the queue says what each reply frame is and what to do with it: forward it,
//! strip capture columns off it, collect it for hindsight, or swallow it.
//!
//! After an ErrorResponse the server skips everything up to the next ReadyForQuery, so the
//! units up to the next sync point are dropped with their captured rows: a failed statement
//! never contributes a change.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use super::positions::Positions;
use super::rewrite::ReadAfter;
use super::rows::{decode_image, decode_oid, split_data_row, strip_row_description, Format};
use super::txn::{Change, StatementCtx, TxnBuffer};
use crate::statement::TxControl;
use crate::wire::client_text::ClientEncoding;

/// Reply frames of one request.
pub struct Unit {
    /// Tags that complete the unit (`Z` makes it a sync point).
    pub ends: &'static [u8],
    /// Which of the server's frames reach the client.
    pub delivery: Delivery,
    /// What to gather from the frames.
    pub collect: Collect,
    /// Where an internal request's outcome goes.
    pub reply: Option<oneshot::Sender<Reply>>,
    /// Sent to the client instead of the server's ErrorResponse (refused statements).
    pub error_replacement: Option<Vec<u8>>,
    /// Sent to the client right before the frame that completes the unit.
    pub prefix: Option<Vec<u8>>,
    /// Transaction control to apply to the buffer when the unit completes without error.
    pub txctl: Option<(TxControl, String)>,
    /// The last CommandComplete tag seen in this unit.
    pub last_tag: Option<String>,
    /// An ErrorResponse arrived (a sync-point unit stays until its ReadyForQuery).
    pub failed: bool,
    /// What the client sees of a forwarded CommandComplete.
    pub complete: Complete,
    /// The held ReadyForQuery of a COPY hindsight wrapped in its own transaction: if the
    /// query failed before the COPY started (so the client will send no CopyDone to resume
    /// on), give the client `Z I` now and roll back at its next message.
    pub idle_if_no_copy: bool,
    /// How a forwarded error's position maps back to the client's text.
    pub positions: Positions,
    /// The first unit of a query string hindsight composed (its BEGIN, or the first
    /// statement's in a transaction block): an error here may mean that the server rejected
    /// the whole string before running any of it (a syntax error: the server's grammar may be
    /// newer or older than hindsight's parser). Its position is mapped by the queued unit whose
    /// `positions.sent` holds it (an error of the first statement itself lies in its own range).
    pub maps_whole_string: bool,
    /// Captured rows go to `State::probe`, not the transaction (a gate's trial run of a
    /// refused statement, rolled back, to record what it would have changed).
    pub probe: bool,
    /// The client's BEGIN inside the transaction hindsight opened for its batch (which the
    /// BEGIN takes over, as the server turns an implicit transaction block into an explicit
    /// one): the server's "there is already a transaction in progress" is about hindsight's
    /// BEGIN, and is not forwarded.
    pub begin_in_batch: bool,
    /// The sync point after a statement that may change `client_encoding`: the server reports
    /// the new encoding (ParameterStatus) only right before this ReadyForQuery, so images are
    /// built in hex until it is through (see [`EncodingTracker`]).
    pub settles_encoding: bool,
}

/// Which reply frames of a unit reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// All of them (the client's own request).
    All,
    /// None (hindsight's own request).
    Nothing,
    /// Only an ErrorResponse (hindsight's part of a client request, e.g. a COMMIT that can
    /// fail).
    Errors,
    /// ErrorResponses and the completing frame: the ReadyForQuery that closes an exchange
    /// hindsight finished on the client's behalf.
    ErrorsAndEnd,
    /// Only the completing ReadyForQuery, and only when a statement before it failed: the
    /// ReadyForQuery after the failing part of a query string hindsight split in several.
    EndIfFailed,
}

impl Delivery {
    /// Whether an ErrorResponse is forwarded.
    pub fn errors(self) -> bool {
        match self {
            Delivery::All | Delivery::Errors | Delivery::ErrorsAndEnd => true,
            Delivery::Nothing | Delivery::EndIfFailed => false,
        }
    }

    /// Whether the completing frame of a unit that forwards nothing else is forwarded
    /// (`failed`: a statement before it failed).
    pub fn end(self, failed: bool) -> bool {
        match self {
            Delivery::ErrorsAndEnd => true,
            Delivery::EndIfFailed => failed,
            Delivery::All | Delivery::Nothing | Delivery::Errors => false,
        }
    }
}

/// What the client sees of a forwarded CommandComplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Complete {
    Keep,
    /// Nothing: the command is hindsight's part of a client's one (COPY into the stage).
    Drop,
    /// `INSERT 0 n` shown as `COPY n` (the staged INSERT that completes a client's COPY).
    AsCopy,
}

/// What a unit gathers.
pub enum Collect {
    Nothing,
    /// DataRows of an internal query.
    Rows(Vec<Vec<Option<Vec<u8>>>>),
    /// A rewritten statement: capture columns are split off every row.
    Capture(Arc<StatementCtx>, Vec<Change>),
    /// Describe of a rewritten statement or portal: the capture columns are taken off its
    /// RowDescription, which becomes NoData when the client asked for no rows.
    Describe(Arc<super::rewrite::Shape>),
    /// Before images from a pre-read (PostgreSQL < 18 UPDATE); the rows are not the client's.
    PreRead(Arc<StatementCtx>, Vec<Change>),
    /// The parameter types of an internal Describe of a prepared statement.
    Params(Vec<u32>),
    /// A DDL or opaque statement: one statement-level change once it completes.
    Statement(Arc<StatementCtx>),
    /// A statement with data-modifying CTEs in hindsight's wrapper query (see `cte`).
    Wrapped(Box<Wrapped>),
    /// An internal Describe of a statement: its parameter types and RowDescription.
    Described(Vec<u32>, Option<Vec<u8>>),
    /// A post-read (a MERGE's before PostgreSQL 18, `COPY (write …) TO`'s, the cascades'):
    /// its changes, and the counters of its last rows.
    MergeRead(Arc<StatementCtx>, Vec<Change>, ReadCounts),
}

/// The counters a post-read ends with.
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// A MERGE's (`updates,deletes,inserts`, see `merge`).
    pub merge: Option<String>,
    /// The cascades' (`{"oid": [n, name], …}`, see `cascade::check`).
    pub cascade: Option<String>,
}

impl Collect {
    /// Whether its DataRows become changes of the transaction (counted against
    /// capture.max_transaction_bytes).
    pub fn keeps_rows(&self) -> bool {
        matches!(
            self,
            Collect::Capture(..)
                | Collect::PreRead(..)
                | Collect::Wrapped(_)
                | Collect::MergeRead(..)
        )
    }

    /// Forget the changes gathered so far (their transaction cannot commit).
    pub fn drop_rows(&mut self) {
        match self {
            Collect::Capture(_, rows)
            | Collect::PreRead(_, rows)
            | Collect::MergeRead(_, rows, _) => *rows = Vec::new(),
            Collect::Wrapped(wr) => {
                wr.rows = Vec::new();
                wr.main_changes = Vec::new();
            }
            _ => {}
        }
    }

    /// What a rewritten statement's execution gathers.
    pub fn capture(ctx: Arc<StatementCtx>) -> Collect {
        let Some(wrapper) = ctx.shape.wrapper.clone() else {
            return Collect::Capture(ctx, Vec::new());
        };
        let with = |shape: &Arc<super::rewrite::Shape>| {
            Arc::new(StatementCtx {
                shape: Arc::clone(shape),
                ..(*ctx).clone()
            })
        };
        Collect::Wrapped(Box::new(Wrapped {
            main: wrapper.main.as_ref().map(with),
            parts: wrapper.parts.iter().map(with).collect(),
            rows: Vec::new(),
            main_changes: Vec::new(),
            main_rows: 0,
            ctx,
        }))
    }
}

/// What a wrapper query's unit gathers.
pub struct Wrapped {
    /// The statement as a whole (its shape holds the [`super::cte::Wrapper`]).
    pub ctx: Arc<StatementCtx>,
    /// Attribution of the client's own write (rows with source 0), if it writes.
    pub main: Option<Arc<StatementCtx>>,
    /// … of each write in the WITH list (source k is `parts[k - 1]`).
    pub parts: Vec<Arc<StatementCtx>>,
    /// Changes of the WITH list's writes, then (at completion) those of the statement's own:
    /// a consumer applying them in order deletes a key before the statement inserts it again.
    pub rows: Vec<Change>,
    /// Changes of the statement's own write, until completion.
    pub main_changes: Vec<Change>,
    /// Rows of the client's own result (its command tag's count).
    pub main_rows: u64,
}

/// Outcome of an internal request.
#[derive(Debug, Default)]
pub struct Reply {
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    /// CommandComplete tag, if one arrived.
    pub tag: Option<String>,
    /// The server's ErrorResponse frame, if the request failed.
    pub error: Option<Vec<u8>>,
    /// Parameter type oids (a Describe of a statement).
    pub params: Vec<u32>,
    /// RowDescription body (an internal Describe of a statement that returns rows).
    pub row_description: Option<Vec<u8>>,
}

impl Reply {
    /// The first column of every row as text (NULLs left out): the lists hindsight looks up,
    /// names it builds SQL with or matches against the client's text.
    pub fn first_column(&self, encoding: ClientEncoding) -> Vec<String> {
        self.rows
            .iter()
            .filter_map(|r| {
                r.first()?
                    .as_deref()
                    .map(|b| crate::wire::client_text::sql_name(b, encoding))
            })
            .collect()
    }
}

impl Unit {
    /// A unit of hindsight's own request: nothing reaches the client; set what else you need.
    pub fn new(ends: &'static [u8]) -> Self {
        Unit::with(Delivery::Nothing, ends)
    }

    /// A unit delivering `delivery`'s frames, with everything else off.
    pub fn with(delivery: Delivery, ends: &'static [u8]) -> Self {
        Unit {
            ends,
            delivery,
            collect: Collect::Nothing,
            reply: None,
            error_replacement: None,
            prefix: None,
            txctl: None,
            last_tag: None,
            failed: false,
            complete: Complete::Keep,
            idle_if_no_copy: false,
            positions: Positions::default(),
            maps_whole_string: false,
            probe: false,
            begin_in_batch: false,
            settles_encoding: false,
        }
    }

    /// Replies forwarded unchanged.
    pub fn pass(ends: &'static [u8]) -> Self {
        Unit::with(Delivery::All, ends)
    }

    pub fn sync_point(&self) -> bool {
        self.ends.contains(&b'Z')
    }

    /// Whether the unit's replies can neither add to the transaction's changes nor change its
    /// state, nor does anyone wait on them: a Parse, Bind, Describe or Close of a statement
    /// hindsight does not capture (a COMMIT's own, sent with its Execute) — not an Execute or a
    /// query (ended by a CommandComplete), whose statement may fail and abort the transaction.
    /// A COMMIT need not wait for inert replies before publishing; if one is an error after
    /// all, the server skips the COMMIT and its END says "aborted" (see `on_error`).
    pub fn is_inert(&self) -> bool {
        !self.ends.contains(&b'C')
            && matches!(self.collect, Collect::Nothing)
            && self.txctl.is_none()
            && self.reply.is_none()
            && self.error_replacement.is_none()
            && !self.sync_point()
            && !self.probe
            && !self.begin_in_batch
            && !self.settles_encoding
    }
}

/// The server's transaction status, as its last ReadyForQuery said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxState {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block (everything up to its end is refused).
    Failed,
}

impl TxState {
    /// The status byte of a ReadyForQuery body (a missing or unknown one reads as idle, as
    /// hindsight read it before).
    pub fn from_ready(byte: Option<u8>) -> TxState {
        match byte {
            Some(b'T') => TxState::InBlock,
            Some(b'E') => TxState::Failed,
            _ => TxState::Idle,
        }
    }
}

/// State shared by the two directions of a capturing session.
#[derive(Default)]
pub struct State {
    pub units: VecDeque<Unit>,
    pub txn: TxnBuffer,
    /// Transaction status from the last ReadyForQuery (`I`, `T`, `E`).
    pub status: TxState,
    /// An ErrorResponse arrived since the last ReadyForQuery.
    pub batch_failed: bool,
    /// An ErrorResponse arrived before the last ReadyForQuery (the last query failed).
    pub last_failed: bool,
    /// Rows whose capture columns could not be decoded: the transaction must not commit.
    pub capture_errors: Vec<String>,
    pub application_name: String,
    /// The session's `client_encoding`, and whether a change of it may still be on its way.
    pub encoding: EncodingTracker,
    /// `server_version_num / 10000`, from ParameterStatus `server_version`.
    pub server_major: u32,
    /// A CopyInResponse arrived since the last ReadyForQuery.
    pub copy_started: bool,
    /// Rows of probe units (see [`Unit::probe`]).
    pub probe: Vec<Change>,
    /// The row count in the command tag of the last statement whose rows a post-read finds
    /// (`MERGE n`, `COPY n`; see `Shape::read_after`).
    pub read_after_rows: Option<u64>,
}

impl State {
    /// Whether the transaction's changes and status are final as far as the replies still
    /// awaited go: every pending unit is inert ([`Unit::is_inert`]) and nothing failed since
    /// the last ReadyForQuery. A COMMIT can then publish without draining them first.
    pub fn settled_for_commit(&self) -> bool {
        !self.batch_failed && self.units.iter().all(Unit::is_inert)
    }
}

/// The session's `client_encoding`, as the server reported it (ParameterStatus), and whether
/// it may already have changed: the server reports a new encoding only right before the
/// ReadyForQuery after the statement that set it, so from the moment such a statement is sent
/// until that sync point is through, what was reported last may be stale (images are then
/// built in hex, see `image_sql::Form`).
#[derive(Debug, Default)]
pub struct EncodingTracker {
    /// What the server reported last: how the session's SQL text and row images are encoded.
    reported: ClientEncoding,
    /// A statement that may change it was sent, and the next sync point pushed will be the one
    /// after it.
    marked: bool,
    /// Sync points pushed after such a statement and not yet through.
    unsettled: u32,
}

impl EncodingTracker {
    /// What the server reported last.
    pub fn current(&self) -> ClientEncoding {
        self.reported
    }

    /// The server reported `encoding`.
    pub fn reported(&mut self, encoding: ClientEncoding) {
        self.reported = encoding;
    }

    /// A statement that may change the encoding is being sent.
    pub fn mark(&mut self) {
        self.marked = true;
    }

    /// Whether what was reported last is surely the session's encoding.
    pub fn settled(&self) -> bool {
        !self.marked && self.unsettled == 0
    }

    /// `unit` is being pushed: the first sync point after a marked statement settles it.
    pub(crate) fn on_push(&mut self, unit: &mut Unit) {
        if self.marked && unit.sync_point() {
            self.marked = false;
            self.unsettled += 1;
            unit.settles_encoding = true;
        }
    }

    /// `unit` completed.
    fn on_complete(&mut self, unit: &Unit) {
        if unit.settles_encoding {
            self.unsettled = self.unsettled.saturating_sub(1);
        }
    }
}

/// [`State`] plus the wake-up for the client side waiting on replies.
#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
    pub progressed: Notify,
    /// hindsight's transaction must be rolled back before the client's next message.
    pub lazy_rollback: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until every pushed unit has completed.
    pub async fn drained(&self) {
        loop {
            let notified = self.progressed.notified();
            if self.lock().units.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// "permission denied for table" on a write hindsight added capture columns to, whose client
/// asked for no rows: the write itself may be allowed, and capture's reading the rows back
/// (RETURNING, a locking pre-read) be what needs SELECT. The client gets the server's error
/// as it is (a role without the write privilege gets the very same one directly); the log
/// tells the operator what to grant.
fn log_read_privilege_denied(unit: &Unit, frame: &[u8]) {
    let ctx = match &unit.collect {
        Collect::Capture(ctx, _) | Collect::PreRead(ctx, _) => ctx,
        _ => return,
    };
    if ctx.shape.client_returning
        || crate::wire::error_response::code_of(frame).as_deref() != Some("42501")
    {
        return;
    }
    let message = crate::wire::error_response::message_of(frame);
    if message.starts_with("permission denied for table") {
        tracing::warn!(
            table = %ctx.shape.table,
            statement = %ctx.text,
            "a captured write failed with \"{message}\": capture reads the rows a write changes back in the same statement, which needs the SELECT privilege on the table even where the write alone does not; if the role may write to it, GRANT SELECT ON {} TO the role",
            ctx.shape.table
        );
    }
}

/// What to send the client for one server frame.
pub enum Route {
    Forward,
    /// Replace the frame with these bytes (possibly none).
    Replace(Vec<u8>),
}

/// Whether the unit at the front reads or rewrites its DataRows (so they must arrive whole,
/// not streamed): it is not forwarded as is, or it collects something.
pub fn front_reads_rows(shared: &Shared) -> bool {
    shared
        .lock()
        .units
        .front()
        .is_some_and(|u| u.delivery != Delivery::All || !matches!(u.collect, Collect::Nothing))
}

/// A captured statement's CommandComplete counts the rows it changed, and each of them came
/// back as one DataRow with its images (the statement runs with `RETURNING` and, in the
/// extended protocol, without a row limit). Fewer rows than counted would leave a change
/// unrecorded, whatever the cause: the transaction then must not commit. Statements whose
/// rows are read afterwards (`read_after`) are checked there instead.
fn unseen_rows(ctx: &StatementCtx, seen: usize, tag: Option<&str>) -> Option<String> {
    match ctx.shape.read_after {
        Some(ReadAfter::Merge | ReadAfter::CopyOut) => return None,
        Some(ReadAfter::Cascade) | None => {}
    }
    let tag = tag?;
    let counted: usize = tag.rsplit(' ').next()?.parse().ok()?;
    (counted != seen).then(|| {
        format!(
            "{}: the server reports {tag:?} but hindsight received {seen} row images",
            ctx.shape.table
        )
    })
}

/// Route one complete server frame (`tag`, whole frame bytes): plan what the client gets
/// (`out`), gather what the front unit collects, and complete the unit at its last frame.
pub fn route(shared: &Shared, tag: u8, frame: &[u8]) -> Route {
    let body = &frame[5..];
    if let Some(route) = outside_units(shared, tag, body, frame) {
        return route;
    }
    let mut st = shared.lock();
    let copy_started = note_status(&mut st, tag, body);
    let st = &mut *st;
    if tag == b'E' {
        return match on_error(shared, st, frame) {
            Some(out) => Route::Replace(out),
            None => Route::Forward,
        };
    }
    let Some(unit) = st.units.front_mut() else {
        return Route::Forward;
    };
    let mut out = Vec::new();
    let mut forward = unit.delivery == Delivery::All;
    if tag == b'C' {
        on_command_complete(unit, body, &mut forward, &mut out);
    }
    if tag == b'D' && unit.collect.keeps_rows() && st.txn.count(body.len()) {
        tracing::warn!(
            limit = st.txn.byte_limit,
            "a transaction captured more row data than capture.max_transaction_bytes: it will be rolled back at COMMIT, and its rows are no longer kept"
        );
    }
    if gather(unit, tag, body, &mut out, &mut st.capture_errors) == Forwarding::Held {
        forward = false;
    }
    if tag == b'D' && st.txn.txid().is_none() && !unit.probe {
        if let Some(txid) = row_txid(&unit.collect, body) {
            st.txn.note_txid(txid);
        }
    }
    if tag == b'D' && st.txn.over_limit() {
        // Bounded: rows of a transaction that cannot commit are not kept.
        unit.collect.drop_rows();
    }
    if forward {
        out.extend_from_slice(frame);
    }
    if unit.ends.contains(&tag) {
        let unit = st.units.pop_front().expect("front exists");
        out = finish_unit(
            shared,
            st,
            unit,
            Ending {
                tag,
                frame,
                forward,
                copy_started,
            },
            out,
        );
    }
    if out.as_slice() == frame {
        Route::Forward
    } else {
        Route::Replace(out)
    }
}

/// Frames that are not replies to a unit: notices (one is hindsight's to hide),
/// notifications, and ParameterStatus, which updates what the session knows.
fn outside_units(shared: &Shared, tag: u8, body: &[u8], frame: &[u8]) -> Option<Route> {
    match tag {
        b'N' if crate::wire::error_response::code_of(frame).as_deref() == Some("25001")
            && shared
                .lock()
                .units
                .front()
                .is_some_and(|u| u.begin_in_batch) =>
        {
            Some(Route::Replace(Vec::new()))
        }
        b'N' | b'A' => Some(Route::Forward),
        b'S' => {
            if let Some((name, value)) = crate::wire::backend::parameter_status(body) {
                let mut st = shared.lock();
                match name {
                    b"application_name" => {
                        st.application_name = String::from_utf8_lossy(value).into_owned()
                    }
                    b"server_version" => st.server_major = major_of(value),
                    b"client_encoding" => st.encoding.reported(ClientEncoding::from_name(value)),
                    _ => {}
                }
            }
            Some(Route::Forward)
        }
        _ => None,
    }
}

/// What an error, a COPY start or a ReadyForQuery says of the session. Whether a COPY had
/// started before this frame.
fn note_status(st: &mut State, tag: u8, body: &[u8]) -> bool {
    match tag {
        b'E' => st.batch_failed = true,
        b'G' => st.copy_started = true,
        _ => {}
    }
    let copy_started = st.copy_started;
    if tag == b'Z' {
        st.copy_started = false;
        st.last_failed = std::mem::take(&mut st.batch_failed);
        st.status = TxState::from_ready(body.first().copied());
        if st.status == TxState::Idle {
            // The transaction is over; whatever was not published was rolled back.
            st.txn.clear();
            st.capture_errors.clear();
        }
    }
    copy_started
}

/// An ErrorResponse: what the client gets instead (`None`: no unit, forward it), and the
/// units it voids.
fn on_error(shared: &Shared, st: &mut State, frame: &[u8]) -> Option<Vec<u8>> {
    // A whole query string rejected: its position mapped by the statement it points into.
    let whole_string_error = st
        .units
        .front()
        .is_some_and(|u| u.maps_whole_string)
        .then(|| {
            crate::wire::error_response::map_position(frame, |p| {
                st.units
                    .iter()
                    .find(|u| u.positions.sent.is_some_and(|r| r.contains(p)))
                    .map_or(crate::wire::error_response::NO_POSITION, |u| {
                        u.positions.map(p)
                    })
            })
        });
    let unit = st.units.front_mut()?;
    let out = error_for_client(unit, frame, whole_string_error);
    log_read_privilege_denied(unit, frame);
    if let Some(tx) = unit.reply.take() {
        let _ = tx.send(Reply {
            error: Some(frame.to_vec()),
            ..Reply::default()
        });
    }
    if unit.sync_point() {
        // Stays until its ReadyForQuery; what it captured is void.
        unit.failed = true;
        unit.collect = Collect::Nothing;
        unit.txctl = None;
    } else {
        // The server skips to the next sync point; so do we (dropping captured rows).
        // What waits on a skipped message learns that it did not run (a statement
        // event's END record is then "aborted", not left out).
        st.units.pop_front();
        while st.units.front().is_some_and(|u| !u.sync_point()) {
            if let Some(tx) = st.units.pop_front().and_then(|mut u| u.reply.take()) {
                let _ = tx.send(Reply {
                    error: Some(frame.to_vec()),
                    ..Reply::default()
                });
            }
        }
        shared.progressed.notify_waiters();
    }
    Some(out)
}

/// The ErrorResponse the client gets for `frame`: replaced, position-mapped, as is, or
/// nothing (an error of hindsight's own request).
fn error_for_client(unit: &Unit, frame: &[u8], whole_string: Option<Vec<u8>>) -> Vec<u8> {
    if let Some(rep) = &unit.error_replacement {
        return rep.clone();
    }
    if let Some(mapped) = whole_string {
        return mapped;
    }
    if !unit.delivery.errors() {
        return Vec::new();
    }
    if !unit.positions.is_identity() {
        return crate::wire::error_response::map_position(frame, |p| unit.positions.map(p));
    }
    frame.to_vec()
}

/// A CommandComplete: remembered as the unit's tag, and shown to the client as the unit says.
fn on_command_complete(unit: &mut Unit, body: &[u8], forward: &mut bool, out: &mut Vec<u8>) {
    unit.last_tag = Some(command_tag(body));
    match unit.complete {
        Complete::Keep => {}
        Complete::Drop => *forward = false,
        Complete::AsCopy if *forward => {
            *forward = false;
            let n = command_tag(body)
                .rsplit(' ')
                .next()
                .unwrap_or("0")
                .to_string();
            let mut b = format!("COPY {n}").into_bytes();
            b.push(0);
            crate::wire::frame::put_frame(out, b'C', &b);
        }
        Complete::AsCopy => {}
    }
}

/// Whether [`gather`] left the frame to be forwarded as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarding {
    AsIs,
    /// Held back: what the client gets of it, if anything, is in `out`.
    Held,
}

/// Gather what the unit collects from one frame, and put what the client gets of a frame
/// that is not forwarded as is into `out`.
fn gather(
    unit: &mut Unit,
    tag: u8,
    body: &[u8],
    out: &mut Vec<u8>,
    errors: &mut Vec<String>,
) -> Forwarding {
    let to_client = unit.delivery == Delivery::All;
    match (&mut unit.collect, tag) {
        (Collect::Wrapped(wr), b'T') => {
            if to_client && wr.ctx.shape.client_returning {
                out.extend(client_row_description(&wr.ctx.shape, body));
            }
        }
        (Collect::Wrapped(wr), b'D') => match wrapped_row(wr, body) {
            Ok(Some(client)) if to_client && wr.ctx.shape.client_returning => {
                out.extend_from_slice(&client)
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        },
        (Collect::Wrapped(wr), b'C') => {
            if to_client {
                let tag = wr.ctx.shape.wrapper.as_ref().map_or("SELECT", |w| w.tag);
                let mut b = format!("{tag} {}", wr.main_rows).into_bytes();
                b.push(0);
                crate::wire::frame::put_frame(out, b'C', &b);
            }
        }
        (Collect::Described(params, _), b't') => {
            *params = crate::wire::backend::parameter_types(body);
            return Forwarding::AsIs;
        }
        (Collect::Described(_, rd), b'T') => {
            *rd = Some(body.to_vec());
            return Forwarding::AsIs;
        }
        (Collect::Capture(stmt, _), b'T') => {
            if to_client && stmt.shape.client_returning {
                if let Some(f) = strip_row_description(body, stmt.shape.extra) {
                    out.extend_from_slice(&f);
                }
            }
        }
        (Collect::Describe(shape), b'T') => described_row_description(shape, body, out),
        (Collect::Capture(stmt, rows), b'D') => match captured_row(stmt, body) {
            Ok((change, client)) => {
                rows.push(change);
                if to_client && stmt.shape.client_returning {
                    out.extend_from_slice(&client);
                }
            }
            Err((e, client)) => {
                errors.push(e);
                if let Some(client) = client.filter(|_| to_client && stmt.shape.client_returning) {
                    out.extend_from_slice(&client);
                }
            }
        },
        (Collect::PreRead(stmt, rows), b'D') => match pre_read_row(stmt, body) {
            Ok(change) => rows.push(change),
            Err(e) => errors.push(e),
        },
        (Collect::PreRead(..), _) | (Collect::MergeRead(..), _) if tag != b'D' => {}
        (Collect::MergeRead(stmt, rows, counters), _) => match merge_read_row(stmt, body) {
            Ok(MergeRow::Change(c)) => rows.push(c),
            Ok(MergeRow::Counters(c)) => counters.merge = Some(c),
            Ok(MergeRow::CascadeCounts(c)) => counters.cascade = Some(c),
            Err(e) => errors.push(format!("{}: {e}", stmt.shape.table)),
        },
        (Collect::Rows(rows), b'D') => {
            rows.push(data_row_values(body));
            return Forwarding::AsIs;
        }
        (Collect::Params(params), b't') => {
            *params = crate::wire::backend::parameter_types(body);
            return Forwarding::AsIs;
        }
        _ => return Forwarding::AsIs,
    }
    Forwarding::Held
}

/// The RowDescription a client's Describe of a rewritten statement gets: without the
/// capture columns, or NoData when the client asked for no rows.
fn described_row_description(shape: &super::rewrite::Shape, body: &[u8], out: &mut Vec<u8>) {
    const NO_DATA: [u8; 5] = [b'n', 0, 0, 0, 4];
    if !shape.client_returning {
        out.extend_from_slice(&NO_DATA);
    } else if shape.wrapper.is_some() {
        out.extend(client_row_description(shape, body));
    } else if let Some(f) = strip_row_description(body, shape.extra) {
        out.extend_from_slice(&f);
    }
}

/// A row that came back from a rewritten statement: its change, and the DataRow the client
/// gets (without the capture columns). On error, the error and (if the row could be split)
/// still the client's DataRow.
#[allow(clippy::type_complexity)]
fn captured_row(
    stmt: &Arc<StatementCtx>,
    body: &[u8],
) -> Result<(Change, Vec<u8>), (String, Option<Vec<u8>>)> {
    let shape = &stmt.shape;
    let fmt = if stmt.binary {
        Format::Binary
    } else {
        Format::Text
    };
    let Some(split) = split_data_row(body, shape.extra) else {
        return Err((format!("malformed DataRow for {}", shape.table), None));
    };
    let image = |i: Option<usize>| decode_image(i.and_then(|i| split.extra[i]));
    let decoded = image(shape.old_at).and_then(|b| {
        Ok((
            b,
            image(shape.new_at)?,
            decode_oid(split.extra[shape.oid_at], fmt)?,
        ))
    });
    // An upsert's row that ON CONFLICT updated must come with its before image.
    let updated = shape
        .updated_at
        .is_some_and(|i| matches!(split.extra[i], Some(b"t") | Some(&[1])));
    match decoded {
        Ok((None, _, _)) if updated => Err((
            format!("{}: ON CONFLICT updated a row the statement's snapshot does not see (inserted concurrently): its before image is unknown; retry the transaction", shape.table),
            Some(split.client_frame),
        )),
        Ok((before, after, table_oid)) => Ok((
            Change {
                before,
                after,
                table_oid,
                stmt: Arc::clone(stmt),
                gate: None,
                cascade: None,
            },
            split.client_frame,
        )),
        Err(e) => Err((format!("{}: {e}", shape.table), Some(split.client_frame))),
    }
}

/// The transaction's id a captured row carries (`Shape::txid_at`), if any.
fn row_txid(collect: &Collect, body: &[u8]) -> Option<i64> {
    let Collect::Capture(stmt, _) = collect else {
        return None;
    };
    let at = stmt.shape.txid_at?;
    let split = split_data_row(body, stmt.shape.extra)?;
    // Text, or text's binary form (the same bytes).
    std::str::from_utf8(split.extra.get(at).copied().flatten()?)
        .ok()?
        .parse()
        .ok()
}

/// A pre-read's row: a before image and its table.
fn pre_read_row(stmt: &Arc<StatementCtx>, body: &[u8]) -> Result<Change, String> {
    let Some(split) = split_data_row(body, 2) else {
        return Err(format!("malformed pre-read row for {}", stmt.shape.table));
    };
    let (before, table_oid) = decode_image(split.extra[0])
        .and_then(|b| Ok((b, decode_oid(split.extra[1], Format::Text)?)))
        .map_err(|e| format!("{}: {e}", stmt.shape.table))?;
    Ok(Change {
        before,
        after: None,
        table_oid,
        stmt: Arc::clone(stmt),
        gate: None,
        cascade: None,
    })
}

/// The frame that completes a unit, and what happened to it.
struct Ending<'a> {
    tag: u8,
    frame: &'a [u8],
    /// The frame went to the client as is.
    forward: bool,
    /// A COPY had started before it.
    copy_started: bool,
}

/// A unit's last frame arrived: apply its transaction control, hand what it gathered to the
/// transaction (or to whoever waits for it), and return what the client gets.
fn finish_unit(
    shared: &Shared,
    st: &mut State,
    unit: Unit,
    end: Ending<'_>,
    mut out: Vec<u8>,
) -> Vec<u8> {
    st.encoding.on_complete(&unit);
    if let Some((ctl, name)) = &unit.txctl {
        apply_txctl(st, *ctl, name);
    }
    if let Collect::Capture(ctx, _) = &unit.collect {
        if ctx.shape.read_after.is_some() {
            st.read_after_rows = unit
                .last_tag
                .as_deref()
                .and_then(|t| t.rsplit(' ').next())
                .and_then(|n| n.parse().ok());
        }
    }
    let Unit {
        collect,
        reply,
        probe,
        last_tag,
        idle_if_no_copy,
        delivery,
        prefix,
        ..
    } = unit;
    hand_over(st, collect, reply, probe, last_tag);
    if end.tag == b'Z' && idle_if_no_copy && !end.copy_started {
        shared
            .lazy_rollback
            .store(true, std::sync::atomic::Ordering::SeqCst);
        out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    } else if !end.forward && delivery.end(st.last_failed) {
        if let Some(p) = &prefix {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(end.frame);
    } else if let Some(mut with) = prefix {
        with.extend_from_slice(&out);
        out = with;
    }
    shared.progressed.notify_waiters();
    out
}

/// The rows a statement's cascades changed, checked against the counts its post-read ended
/// with and the statement's own rows already in the transaction (`cascade::check`).
fn cascade_check(
    st: &State,
    ctx: &Arc<StatementCtx>,
    rows: &[Change],
    cascaded: &[&Change],
    counts: Option<&str>,
) -> Result<(), String> {
    let Some(plan) = &ctx.shape.cascade else {
        return Err(format!(
            "{}: a cascade read without its plan",
            ctx.shape.table
        ));
    };
    // The statement's own rows: from its RETURNING (already in the transaction, a wrapper
    // query's under each write's context, all with the statement's number), or from this
    // post-read (a MERGE's before PostgreSQL 18).
    let mut own: HashMap<u32, i64> = HashMap::new();
    let before = st.txn.changes().iter().filter(|c| c.stmt.seq == ctx.seq);
    for c in before.chain(rows.iter()) {
        if c.cascade.is_none() {
            *own.entry(c.table_oid).or_insert(0) += 1;
        }
    }
    super::cascade::check(plan, cascaded, &own, counts).map_err(|e| e.to_string())
}

/// What a completed unit gathered goes to the transaction (or the gates' trial run), or to
/// the request waiting for it.
fn hand_over(
    st: &mut State,
    collect: Collect,
    reply: Option<oneshot::Sender<Reply>>,
    probe: bool,
    tag: Option<String>,
) {
    let answer = |r: Reply| {
        if let Some(tx) = reply {
            let _ = tx.send(r);
        }
    };
    match collect {
        Collect::MergeRead(ctx, rows, counters) => {
            let tag_rows = st.read_after_rows.take();
            let table = ctx.shape.table.to_string();
            let (own, cascaded): (Vec<&Change>, Vec<&Change>) =
                rows.iter().partition(|c| c.cascade.is_none());
            let checked = match ctx.shape.read_after {
                Some(ReadAfter::CopyOut) => super::copy_out::check(&table, &rows, tag_rows),
                Some(ReadAfter::Cascade) => Ok(()),
                Some(ReadAfter::Merge) | None => {
                    super::merge::check(&table, &own, tag_rows, counters.merge.as_deref())
                }
            };
            // A plan without reaches read nothing (its keys' actions do not apply).
            let checked = match &ctx.shape.cascade {
                Some(plan) if checked.is_ok() && !probe && !plan.reaches.is_empty() => {
                    cascade_check(st, &ctx, &rows, &cascaded, counters.cascade.as_deref())
                }
                _ => checked,
            };
            match checked {
                Ok(()) if probe => st.probe.extend(rows),
                Ok(()) => st.txn.push(rows),
                Err(e) => st.capture_errors.push(e),
            }
        }
        Collect::Capture(_, rows) | Collect::PreRead(_, rows) if probe => st.probe.extend(rows),
        Collect::Capture(ctx, rows) => {
            if !st.txn.over_limit() {
                if let Some(e) = unseen_rows(&ctx, rows.len(), tag.as_deref()) {
                    tracing::error!(error = %e, "capture saw fewer rows than the statement changed: its transaction cannot commit");
                    st.capture_errors.push(e);
                }
            }
            st.txn.push(rows)
        }
        Collect::PreRead(_, rows) => st.txn.push(rows),
        Collect::Wrapped(wr) if probe => {
            st.probe.extend(wr.rows.into_iter().chain(wr.main_changes))
        }
        Collect::Wrapped(wr) => st.txn.push(wr.rows.into_iter().chain(wr.main_changes)),
        Collect::Statement(stmt) => st.txn.push([Change::statement(stmt)]),
        Collect::Described(params, row_description) => answer(Reply {
            params,
            row_description,
            ..Reply::default()
        }),
        Collect::Rows(rows) => answer(Reply {
            rows,
            tag,
            ..Reply::default()
        }),
        Collect::Params(params) => answer(Reply {
            params,
            ..Reply::default()
        }),
        Collect::Nothing | Collect::Describe(_) => answer(Reply {
            tag,
            ..Reply::default()
        }),
    }
}

fn client_row_description(shape: &super::rewrite::Shape, actual: &[u8]) -> Vec<u8> {
    let original = shape
        .wrapper
        .as_ref()
        .and_then(|w| w.row_description.as_deref());
    match original.and_then(|o| super::rows::with_formats_of(o, actual)) {
        Some(frame) => frame,
        None => strip_row_description(actual, shape.extra).unwrap_or_default(),
    }
}

/// One row of a wrapper query: its images go to the write they belong to; the client's own
/// rows (source 0) are counted and returned (without the capture columns) for forwarding.
fn wrapped_row(wr: &mut Wrapped, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let shape = Arc::clone(&wr.ctx.shape);
    let fmt = if wr.ctx.binary {
        Format::Binary
    } else {
        Format::Text
    };
    let split = split_data_row(body, shape.extra)
        .ok_or_else(|| format!("malformed DataRow for {}", shape.table))?;
    let src = super::rows::decode_int(split.extra[0], fmt)
        .ok_or_else(|| format!("{}: a row without its source", shape.table))?;
    let stmt = match src {
        0 => {
            wr.main_rows += 1;
            wr.main.clone()
        }
        k => Some(
            wr.parts
                .get(k as usize - 1)
                .cloned()
                .ok_or_else(|| format!("{}: unknown source {k}", shape.table))?,
        ),
    };
    if let Some(stmt) = stmt {
        let image = |i: Option<usize>| decode_image(i.and_then(|i| split.extra[i]));
        let before = image(shape.old_at).map_err(|e| format!("{}: {e}", stmt.shape.table))?;
        let after = image(shape.new_at).map_err(|e| format!("{}: {e}", stmt.shape.table))?;
        let table_oid = decode_oid(split.extra[shape.oid_at], fmt)
            .map_err(|e| format!("{}: {e}", stmt.shape.table))?;
        let change = Change {
            before,
            after,
            table_oid,
            stmt,
            gate: None,
            cascade: None,
        };
        if src == 0 {
            wr.main_changes.push(change);
        } else {
            wr.rows.push(change);
        }
    }
    Ok((src == 0).then_some(split.client_frame))
}

fn command_tag(body: &[u8]) -> String {
    String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// Apply a completed transaction-control statement to the buffer, and to the transaction
/// status: in an extended-protocol batch (`BEGIN` and writes before one Sync, as JDBC sends
/// them) no ReadyForQuery tells the status until the Sync, but hindsight must know before it.
fn apply_txctl(st: &mut State, ctl: TxControl, name: &str) {
    match ctl {
        TxControl::Begin => st.status = TxState::InBlock,
        TxControl::Savepoint => st.txn.savepoint(name),
        TxControl::RollbackTo => st.txn.rollback_to(name),
        TxControl::Release => st.txn.release(name),
        TxControl::Rollback => {
            st.txn.clear();
            st.status = TxState::Idle;
        }
        TxControl::Commit | TxControl::PrepareTransaction => st.status = TxState::Idle,
        TxControl::CommitPrepared | TxControl::RollbackPrepared => {}
    }
}

/// A row of a post-read: `before, after, tableoid, NULL` per change of a MERGE (`merge`),
/// `before, after, tableoid, origin` per row a cascade changed (`cascade`); then `NULL, NULL,
/// NULL, counters` of each.
enum MergeRow {
    Change(Change),
    Counters(String),
    CascadeCounts(String),
}

fn merge_read_row(stmt: &Arc<StatementCtx>, body: &[u8]) -> Result<MergeRow, String> {
    let v = data_row_values(body);
    if v.len() != 4 {
        return Err(format!(
            "a MERGE post-read row has {} columns, not 4",
            v.len()
        ));
    }
    if v[2].is_none() {
        let counters = v[3]
            .as_deref()
            .ok_or("a MERGE post-read row has no table")?;
        let counters = String::from_utf8_lossy(counters).into_owned();
        // The cascades' counts are a JSON object; a MERGE's are `u,d,i`.
        return Ok(match counters.starts_with('{') {
            true => MergeRow::CascadeCounts(counters),
            false => MergeRow::Counters(counters),
        });
    }
    // A row a cascade changed names its origin; the statement's own rows (a MERGE's) do not.
    let cascade = match (&stmt.shape.cascade, v[3].as_deref()) {
        (Some(plan), Some(column)) => {
            let origin = super::cascade::origin(plan, column).map_err(|e| e.to_string())?;
            Some(Box::new(origin))
        }
        (None, Some(_)) => return Err("a post-read row names an origin without a plan".into()),
        (_, None) => None,
    };
    Ok(MergeRow::Change(Change {
        before: decode_image(v[0].as_deref())?,
        after: decode_image(v[1].as_deref())?,
        table_oid: decode_oid(v[2].as_deref(), Format::Text)?,
        stmt: Arc::clone(stmt),
        gate: None,
        cascade,
    }))
}

fn data_row_values(body: &[u8]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let Some(n) = body.get(0..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return out;
    };
    let mut pos = 2;
    for _ in 0..n {
        let Some(len) = body
            .get(pos..pos + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            break;
        };
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = (pos + len as usize).min(body.len());
            out.push(Some(body[pos..end].to_vec()));
            pos = end;
        }
    }
    out
}

/// `"15.18 (Debian …)"` → 15; `"18beta1"` → 18.
fn major_of(version: &[u8]) -> u32 {
    let digits: String = version
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| b as char)
        .collect();
    digits.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(read_after: Option<ReadAfter>) -> StatementCtx {
        let table = crate::statement::TableName {
            schema: "public".into(),
            name: "chaos".into(),
        };
        StatementCtx::for_test(Arc::new(super::super::rewrite::Shape {
            read_after,
            cascade: None,
            ..super::super::rewrite::Shape::statement(crate::statement::Kind::Update, table)
        }))
    }

    #[test]
    fn a_statement_that_changed_more_rows_than_came_back_cannot_commit() {
        let update = ctx(None);
        assert_eq!(unseen_rows(&update, 2, Some("UPDATE 2")), None);
        assert_eq!(unseen_rows(&update, 0, Some("INSERT 0 0")), None);
        let e = unseen_rows(&update, 1, Some("UPDATE 2")).expect("one row unseen");
        assert!(
            e.contains("\"UPDATE 2\"") && e.contains("received 1"),
            "{e}"
        );
        assert!(unseen_rows(&update, 0, Some("INSERT 0 3")).is_some());
        // No CommandComplete (an error, an empty query): nothing to compare.
        assert_eq!(unseen_rows(&update, 0, None), None);
        // Rows read back after the statement are checked by that read.
        assert_eq!(
            unseen_rows(&ctx(Some(ReadAfter::Merge)), 0, Some("MERGE 4")),
            None
        );
    }
}
