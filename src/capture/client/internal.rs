//! hindsight's own statements on the client's upstream connection: queries whose replies the
//! client never sees (or sees only in part), sent so that they never disturb what the client is
//! owed — a simple Query between client requests, named extended messages in the middle of a
//! client's batch.

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::{write_all, BatchFlow, ClientCapture, NextEncoding, Protocol};
use crate::capture::router::{Collect, Delivery, Reply, TxState, Unit};
use crate::wire::client_text::TextError;
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::put_frame;

/// Parse + Bind + Execute + Close of hindsight's own statement `sql` as named statement and
/// portal `__hindsight_q`, in the middle of a client's extended-protocol batch (the client's
/// unnamed statement and portal stay untouched). `exec` handles the Execute's replies; the
/// other messages' replies are delivered as `others` says (`Nothing` or `Errors`). Both are
/// closed first too: after
/// an error the server skipped the previous closes.
pub(super) fn internal_statement(
    sql: &str,
    mut exec: Unit,
    others: Delivery,
) -> (Vec<u8>, [Unit; 7]) {
    const NAME: &[u8] = b"__hindsight_q\0";
    let mut frames = Vec::new();
    for kind in [b'P', b'S'] {
        let mut c = vec![kind];
        c.extend_from_slice(NAME);
        frames.extend(frame_of(b'C', &c));
    }
    let mut p = NAME.to_vec();
    p.extend_from_slice(&crate::wire::client_text::encode(sql));
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
    let quiet = |ends: &'static [u8]| Unit::with(others, ends);
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

/// A message whose body is a name (Close / Describe: `kind` + name; Execute: name + max rows).
pub(super) fn close_frame(kind: u8, name: &[u8]) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(name);
    b.push(0);
    frame_of(b'C', &b)
}

pub(super) fn frame_of(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 5);
    put_frame(&mut f, tag, body);
    f
}

/// A Query frame; `sql` may hold client text of a non-UTF-8 session (see `client_text`).
pub(super) fn query_frame(sql: &str) -> Vec<u8> {
    let mut body = crate::wire::client_text::encode(sql).into_owned();
    body.push(0);
    frame_of(b'Q', &body)
}

/// A text the server rejects at once; its ErrorResponse is replaced by hindsight's own, so the
/// session and transaction end up exactly as after any failed statement.
pub(super) const REFUSED_SQL: &str = "hindsight refused this statement";

impl ClientCapture {
    /// Send a text the server rejects and replace its error with `err`.
    pub(super) async fn refuse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        err: ErrorResponse,
    ) -> std::io::Result<()> {
        tracing::warn!(message = %err.message, "statement refused");
        self.refuse_frame(w, err.encode()).await
    }

    /// Like [`Self::refuse`], with an encoded ErrorResponse (possibly the server's own).
    pub(super) async fn refuse_frame<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        err: Vec<u8>,
    ) -> std::io::Result<()> {
        let mut unit = Unit::pass(b"Z");
        unit.error_replacement = Some(err);
        self.push([unit]);
        write_all(w, &query_frame(REFUSED_SQL)).await
    }

    /// A query of hindsight's own whose replies the client never sees.
    pub(super) async fn swallowed_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
    ) -> std::io::Result<()> {
        self.send_internal(w, sql, Unit::new(b"Z")).await
    }

    /// Send hindsight's own `sql`; `unit` describes its result (as for a simple Query, ending
    /// at ReadyForQuery). Mid-batch it goes as named Parse/Bind/Execute/Close + Flush instead.
    pub(super) async fn send_internal<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        unit: Unit,
    ) -> std::io::Result<()> {
        if self.own_queries == Protocol::Simple {
            self.push([unit]);
            return write_all(w, &query_frame(sql)).await;
        }
        let (mut frames, units) = internal_statement(sql, unit, Delivery::Nothing);
        frames.extend(frame_of(b'H', &[]));
        self.push(units);
        write_all(w, &frames).await
    }

    /// A Parse the server rejects, its error replaced with `err` (the statement named `name`
    /// is not created, and the server skips to the next Sync — as after any failed message).
    pub(super) async fn refused_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        name: &[u8],
        err: Vec<u8>,
    ) -> std::io::Result<()> {
        self.batch.flow = BatchFlow::SkipToSync;
        let mut u = self.parse_unit();
        u.error_replacement = Some(err);
        self.push([u]);
        let mut b = name.to_vec();
        b.push(0);
        b.extend_from_slice(REFUSED_SQL.as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        write_all(w, &frame_of(b'P', &b)).await
    }

    /// Send `sql` (COMMIT/ROLLBACK) as hindsight's own query; the client receives `prefix`
    /// (if any), any error of it, and its ReadyForQuery; `reply` gets the outcome.
    pub(super) async fn internal_end<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        prefix: Option<Vec<u8>>,
        reply: Option<oneshot::Sender<Reply>>,
    ) -> std::io::Result<()> {
        let mut u = Unit::with(Delivery::ErrorsAndEnd, b"Z");
        u.prefix = prefix;
        u.reply = reply;
        self.push([u]);
        write_all(w, &query_frame(sql)).await
    }

    /// Run a query of hindsight's own and wait for its rows.
    pub(super) async fn internal_query<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
    ) -> std::io::Result<Reply> {
        if self.own_queries == Protocol::Extended {
            // Whether something earlier in the client's batch failed must be known first.
            self.flush_and_drain(w).await?;
        }
        {
            let st = self.shared.lock();
            if st.status == TxState::Failed
                || (self.own_queries == Protocol::Extended && st.batch_failed)
            {
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
    pub(super) async fn flush_and_drain<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
    ) -> std::io::Result<()> {
        if !self.shared.lock().units.is_empty() {
            write_all(w, &frame_of(b'H', &[])).await?;
            self.shared.drained().await;
        }
        Ok(())
    }
}

/// The refusal of a client text hindsight cannot take apart without changing its bytes.
pub(super) fn unreadable_text(e: TextError) -> ErrorResponse {
    ErrorResponse::error(
        sqlstate::CAPTURE_UNSUPPORTED,
        format!("hindsight: {e}; it was not run"),
    )
    .with_hint("Send such characters as parameters (the extended protocol), or run the statement through a proxy started with --no-capture if it must run unaudited.")
}

impl ClientCapture {
    /// The client's SQL bytes as text, in the session's `client_encoding` (see `client_text`).
    pub(super) fn client_text<'a>(
        &self,
        bytes: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, str>, TextError> {
        let encoding = self.shared.lock().encoding.current();
        crate::wire::client_text::decode(bytes, encoding)
    }

    /// How image columns built now come back, by the session's `client_encoding` (hex while
    /// an earlier statement of the same query string may change it, or one sent earlier may
    /// have changed it and the server has not reported it yet).
    pub(super) fn image_form(&self) -> crate::capture::image_sql::Form {
        let st = self.shared.lock();
        if self.next_encoding == NextEncoding::MayChange || !st.encoding.settled() {
            return crate::capture::image_sql::Form::Hex;
        }
        crate::capture::image_sql::Form::for_session(st.encoding.current())
    }
}
