//! Statements with data-modifying CTEs: described by the server (never run), then run as
//! hindsight's wrapper query (see `capture::cte`).

use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::internal::{close_frame, frame_of};
use super::{write_all, ClientCapture, Protocol};
use crate::capture::cascade::{self, RowChange};
use crate::capture::cte;
use crate::capture::rewrite::{Refusal, Rewritten};
use crate::capture::router::{Collect, Delivery, Unit};
use crate::statement::cache::Statement;
use crate::statement::Kind;

/// What became of a statement with writes in its WITH clause.
pub(super) enum CteRewrite {
    /// Run this instead; the parameter types as the server resolved them.
    Rewritten(Rewritten, Vec<u32>),
    /// hindsight cannot capture it (the message says why).
    Refused(String),
    /// The server rejected the client's statement itself: this is its ErrorResponse.
    Failed(Vec<u8>),
    /// An earlier message of the client's batch failed: the server skips this one anyway.
    Skipped,
}

/// The outcome of hindsight's own Describe of a statement.
pub(super) enum Description {
    /// Parameter types and RowDescription body (`None`: NoData).
    Described(Vec<u32>, Option<Vec<u8>>),
    /// The server's ErrorResponse frame.
    Failed(Vec<u8>),
    /// Not sent: the client's batch already failed (the server skips to its Sync).
    Skipped,
}

/// Whether the statement writes in its WITH clause (and so needs the wrapper query).
pub(super) fn has_cte_writes(s: &Statement) -> bool {
    let a = &s.located.analysis;
    a.kind.writes_rows()
        && !a.explain_analyze
        && a.kind != Kind::CopyIn
        && a.writes.iter().any(|w| w.nested)
}

impl ClientCapture {
    /// Describe `s` (whose text as the client sent it is `sent`, with parameter types
    /// `params`) and each write in its WITH clause, and rewrite it into the wrapper query.
    /// `extended`: in the middle of the client's extended-protocol batch (a failure of the
    /// client's own statement is then forwarded as its Parse's error).
    pub(super) async fn cte_rewrite<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        sent: &str,
        s: &Statement,
        params: &[u32],
        protocol: Protocol,
    ) -> std::io::Result<CteRewrite> {
        if let Some(copy) = crate::capture::copy_out::cut(&text[s.located.span.clone()]) {
            // Where the write starts in `sent` (the statement alone in a simple Query, the
            // whole text of a Parse), in characters.
            let start = s.located.span.start + copy.write.start;
            let from = if protocol == Protocol::Extended {
                0
            } else {
                s.located.span.start
            };
            let offset = text[from..start].chars().count() as i64;
            return self
                .copy_out_rewrite(w, sent, &copy, params, protocol, offset)
                .await;
        }
        let cut = match cte::cut(&text[s.located.span.clone()]) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Ok(CteRewrite::Refused(format!(
                    "hindsight: {}",
                    Refusal::Unsupported {
                        what: "a write inside COPY (…) TO".into()
                    }
                )))
            }
            Err(r) => return Ok(CteRewrite::Refused(format!("hindsight: {r}"))),
        };
        let (params, client) = match self.describe(w, sent, params, protocol).await? {
            Description::Described(p, rd) => (p, rd),
            Description::Failed(e) => return Ok(CteRewrite::Failed(e)),
            Description::Skipped => return Ok(CteRewrite::Skipped),
        };
        let mut columns = Vec::new();
        for probe in cut.probes() {
            let Some(probe) = probe else {
                columns.push(None);
                continue;
            };
            match self.describe(w, &probe, &params, protocol).await? {
                Description::Described(_, Some(rd)) => {
                    match cte::column_names(&rd, self.shared.lock().encoding.current()) {
                        Ok(names) => columns.push(Some(names)),
                        Err(r) => return Ok(CteRewrite::Refused(format!("hindsight: {r}"))),
                    }
                }
                Description::Described(_, None) => {
                    return Ok(CteRewrite::Refused(
                        "hindsight: a RETURNING list in the WITH clause described no columns"
                            .into(),
                    ))
                }
                Description::Failed(e) => return Ok(CteRewrite::Failed(e)),
                Description::Skipped => return Ok(CteRewrite::Skipped),
            }
        }
        let (major, encoding) = {
            let st = self.shared.lock();
            (st.server_major, st.encoding.current())
        };
        let rw = match cut.rewrite(
            major,
            client.as_deref(),
            &columns,
            encoding,
            self.image_form(),
        ) {
            Ok(rw) => rw,
            Err(r) => return Ok(CteRewrite::Refused(format!("hindsight: {r}"))),
        };
        Ok(match self.cte_cascades(w, &cut, rw, protocol).await? {
            Ok(rw) => CteRewrite::Rewritten(rw, params),
            Err(why) => CteRewrite::Refused(format!("hindsight: {why}")),
        })
    }

    /// The wrapper query `rw` with the reads of the foreign-key cascades its deletes and
    /// updates set off. One write's cascades are read (they share the wrapper's pre-read and
    /// post-read slots); those of a second, of a write whose rows depend on another write of
    /// the statement, or next to an UPDATE's locking pre-read (before PostgreSQL 18) stay
    /// marked uncaptured.
    async fn cte_cascades<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        cut: &cte::Cut,
        mut rw: Rewritten,
        protocol: Protocol,
    ) -> std::io::Result<Result<Rewritten, String>> {
        if rw.pre_read.is_some() || rw.post_read.is_some() {
            return Ok(Ok(rw));
        }
        let mut reading = Vec::new();
        for c in cut.cascading() {
            let write = &c.analysis.writes[0];
            let change = match c.analysis.kind {
                Kind::Update => RowChange::Updated(write.columns.clone()),
                _ => RowChange::Deleted,
            };
            let plan = match self
                .cascade_plan(w, &write.table, vec![change], protocol)
                .await?
            {
                Ok(Some(plan)) => plan,
                Ok(None) => continue,
                Err(e) => return Ok(Err(e.to_string())),
            };
            if plan.reaches.is_empty() {
                // No key's action applies: nothing to read, and nothing went uncaptured.
                rw = cte::with_part_cascade(rw, c.source, plan);
            } else {
                reading.push((c, plan));
            }
        }
        let [(c, plan)] = reading.as_slice() else {
            return Ok(Ok(rw));
        };
        let Some(alone) = &c.alone else {
            return Ok(Ok(rw));
        };
        let rw = cte::with_part_cascade(rw, c.source, Arc::clone(plan));
        let write = &c.analysis.writes[0];
        let form = self.image_form();
        Ok(
            cascade::attach_within(rw, alone, write, Arc::clone(plan), form)
                .map_err(|e| e.to_string()),
        )
    }

    /// `COPY (write RETURNING …) TO` (see `capture::copy_out`): the client's statement is
    /// described first (the server's grammar may reject it: its own error then), then the
    /// write alone, for its RETURNING list's column names (its errors moved by `offset`
    /// characters, to where the write is in `sent`).
    async fn copy_out_rewrite<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sent: &str,
        copy: &crate::capture::copy_out::Cut<'_>,
        params: &[u32],
        protocol: Protocol,
        offset: i64,
    ) -> std::io::Result<CteRewrite> {
        if !copy.returning() {
            return Ok(CteRewrite::Rewritten(copy.unchanged(), params.to_vec()));
        }
        let params = match self.describe(w, sent, params, protocol).await? {
            Description::Described(p, _) => p,
            Description::Failed(e) => return Ok(CteRewrite::Failed(e)),
            Description::Skipped => return Ok(CteRewrite::Skipped),
        };
        let names = match self
            .describe_at(w, copy.write_text(), &params, protocol, offset)
            .await?
        {
            Description::Described(_, Some(rd)) => {
                match cte::column_names(&rd, self.shared.lock().encoding.current()) {
                    Ok(names) => names,
                    Err(r) => return Ok(CteRewrite::Refused(format!("hindsight: {r}"))),
                }
            }
            Description::Described(_, None) => {
                return Ok(CteRewrite::Refused(
                    "hindsight: the write inside COPY (…) TO described no columns".into(),
                ))
            }
            Description::Failed(e) => return Ok(CteRewrite::Failed(e)),
            Description::Skipped => return Ok(CteRewrite::Skipped),
        };
        let major = self.shared.lock().server_major;
        Ok(match copy.rewrite(major, &names, self.image_form()) {
            Ok(rw) => CteRewrite::Rewritten(rw, params),
            Err(r) => CteRewrite::Refused(format!("hindsight: {r}")),
        })
    }

    /// Describe `sql` as hindsight's own statement (never executed). Between client requests
    /// it ends with a Sync; `extended` (mid-batch) with a Flush, and an error is forwarded to
    /// the client as its Parse's (the server then skips to the client's Sync).
    pub(super) async fn describe<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        params: &[u32],
        protocol: Protocol,
    ) -> std::io::Result<Description> {
        self.describe_at(w, sql, params, protocol, 0).await
    }

    /// [`Self::describe`] of a piece of the client's text that starts `offset` characters into
    /// it: an error's position is moved there.
    pub(super) async fn describe_at<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        params: &[u32],
        protocol: Protocol,
        offset: i64,
    ) -> std::io::Result<Description> {
        const NAME: &[u8] = b"__hindsight_d";
        if protocol == Protocol::Extended {
            self.flush_and_drain(w).await?;
            if self.shared.lock().batch_failed {
                return Ok(Description::Skipped);
            }
        }
        let mut p = NAME.to_vec();
        p.push(0);
        p.extend_from_slice(&crate::wire::client_text::encode(sql));
        p.push(0);
        p.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for oid in params {
            p.extend_from_slice(&oid.to_be_bytes());
        }
        let mut d = vec![b'S'];
        d.extend_from_slice(NAME);
        d.push(0);
        let mut frames = close_frame(b'S', NAME);
        frames.extend(frame_of(b'P', &p));
        frames.extend(frame_of(b'D', &d));
        frames.extend(close_frame(b'S', NAME));
        let (tx, rx) = oneshot::channel();
        let others = if protocol == Protocol::Extended {
            Delivery::Errors
        } else {
            Delivery::Nothing
        };
        let mut described = Unit::with(others, b"Tn");
        described.collect = Collect::Described(Vec::new(), None);
        described.reply = Some(tx);
        described.positions.shift = -offset;
        let mut units = vec![Unit::new(b"3"), described, Unit::new(b"3")];
        if protocol == Protocol::Extended {
            frames.extend(frame_of(b'H', &[]));
        } else {
            frames.extend(frame_of(b'S', &[]));
            units.push(Unit::new(b"Z"));
        }
        self.push(units);
        write_all(w, &frames).await?;
        let reply = rx
            .await
            .map_err(|_| std::io::Error::other("the server connection closed during a Describe"))?;
        if protocol == Protocol::Simple {
            self.shared.drained().await;
        }
        Ok(match reply.error {
            Some(e) if offset != 0 => {
                Description::Failed(crate::wire::error_response::shift_position(&e, -offset))
            }
            Some(e) => Description::Failed(e),
            None => Description::Described(reply.params, reply.row_description),
        })
    }
}
