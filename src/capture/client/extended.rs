//! The extended-query protocol: Parse rewrites writes (and prepares the PG<18 pre-read companion),
//! Bind opens hindsight's transaction for a write outside one, Execute runs the companion first,
//! Sync ends hindsight's transaction (publish, then COMMIT).

use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::commit::CommitBy;
use super::copy_in::CopyPlan;
use super::front::{FrontText, Planned};
use super::internal::{close_frame, frame_of, internal_statement};
use super::{
    now_ms, uncapturable, write_all, write_last, BatchFlow, BatchTx, ClientCapture, CopyRun,
    ParseReplies, Portal, Prep, Protocol,
};
use crate::capture::expect;
use crate::capture::expect::{Audience, Step};
use crate::capture::image_sql::Form;
use crate::capture::positions::Piece;
use crate::capture::rewrite::{ReadAfter, Rewritten, Shape};
use crate::capture::router::{Collect, Delivery, TxState, Unit};
use crate::capture::tables::Target;
use crate::capture::txn::{Change, StatementCtx};
use crate::statement::cache::Statement;
use crate::statement::{sqlcommenter, Kind, TxControl};
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::{take_cstr, HEADER_LEN};
use crate::wire::frontend::parse_statement;
use crate::wire::inspect::Verdict;

/// HS002: a prepared write whose text is not ASCII, bound after the session's encoding changed
/// (its row images would come in the new encoding, and its text cannot be sent again as is).
fn stale_statement(name: &[u8]) -> ErrorResponse {
    ErrorResponse::error(
        sqlstate::CAPTURE_UNSUPPORTED,
        format!(
            "hindsight: prepared statement \"{}\" holds characters other than ASCII and was prepared before the session's client_encoding changed; hindsight cannot record its writes in the new encoding, and it was not run",
            String::from_utf8_lossy(name)
        ),
    )
    .with_hint("Prepare the statement again (Close and Parse) after changing client_encoding, or set client_encoding when connecting.")
}

/// Name of hindsight's companion statement (`kind` b's') or portal (b'p') for a client's one;
/// a MERGE's post-read companion is statement b't', portal b'q'.
pub(super) fn companion_name(kind: u8, name: &[u8]) -> Vec<u8> {
    let mut n = b"__hs_pre_".to_vec();
    n.push(kind);
    n.push(b'_');
    n.extend_from_slice(name);
    n
}

/// The units of a companion's Close and Bind (whose errors are the client's).
pub(super) fn companion_bind_units() -> [Unit; 2] {
    [Unit::new(b"3"), Unit::with(Delivery::Errors, b"2")]
}

/// The portal and statement names at the start of a Bind body.
pub(super) fn two_cstrs(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (a, rest) = take_cstr(body)?;
    let (b, _) = take_cstr(rest)?;
    Some((a, b))
}

/// Execute `portal` for all its rows.
pub(super) fn execute_frame(portal: &[u8]) -> Vec<u8> {
    let mut b = portal.to_vec();
    b.push(0);
    b.extend_from_slice(&[0, 0, 0, 0]);
    frame_of(b'E', &b)
}

/// The parameter part of a Bind body: format codes and values, as one slice.
pub(super) fn bind_parameters(body: &[u8]) -> Option<&[u8]> {
    let (_, rest) = take_cstr(body)?;
    let (_, rest) = take_cstr(rest)?;
    let start = body.len() - rest.len();
    Some(&body[start..result_formats_at(body)?])
}

/// Where the result-format count starts in a Bind body.
pub(super) fn result_formats_at(body: &[u8]) -> Option<usize> {
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

/// The parameter types a Parse declares (its tail after the statement text; 0 = unspecified).
pub(super) fn declared_params(tail: &[u8]) -> Vec<u32> {
    let n = tail
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
    (0..n)
        .filter_map(|i| tail.get(2 + 4 * i..6 + 4 * i))
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Bind with per-column result formats gets `extra` text formats appended for the capture
/// columns. Returns the new body (if changed) and whether the capture columns come back in
/// binary (a single format code of 1 applies to every column).
pub(super) fn widen_result_formats(body: &[u8], extra: usize) -> (Option<Vec<u8>>, bool) {
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

/// What a client's Parse becomes.
enum ParsePlan {
    /// Prepared as planned.
    Prepare(PreparedWrite),
    /// Refused with this message (HS002).
    Refuse(String),
    /// The client's statement failed when hindsight described it (the client has the error).
    Failed,
    /// Forwarded unchanged (the server skips it: an earlier message of the batch failed).
    Forward,
}

/// A write as it is prepared.
#[derive(Default)]
pub(super) struct PreparedWrite {
    /// What the server prepares instead (`None`: the client's statement as sent).
    pub rewritten: Option<Rewritten>,
    /// A wrapper query's parameter types, as the server resolved them for the client's text.
    params: Option<Vec<u32>>,
    /// A COPY's stage.
    pub copy: Option<Arc<CopyPlan>>,
}

/// hindsight's companion statements of a client's prepared write (by name).
#[derive(Debug, Default)]
pub(super) struct Companions {
    /// Its pre-read, run right before each Execute.
    pub pre: Option<Vec<u8>>,
    /// Its post-read, run right after each Execute.
    pub post: Option<Vec<u8>>,
}

/// The Parse of `rw` under the client's statement name. A wrapper query mentions every
/// parameter where the client's statement does; with `resolved`, the types the server resolved
/// for the client's text are kept; otherwise the client's declared ones (`params`, the Parse's
/// tail).
fn rewritten_parse(
    name: &[u8],
    rw: &Rewritten,
    resolved: Option<&[u32]>,
    params: &[u8],
) -> Vec<u8> {
    let mut b = name.to_vec();
    b.push(0);
    b.extend_from_slice(&crate::wire::client_text::encode(&rw.text));
    b.push(0);
    match resolved {
        Some(types) => {
            b.extend_from_slice(&(types.len() as u16).to_be_bytes());
            for oid in types {
                b.extend_from_slice(&oid.to_be_bytes());
            }
        }
        None => b.extend_from_slice(params),
    }
    frame_of(b'P', &b)
}

/// A prepared write's rewrite (not a wrapper query), or why it cannot be prepared: a pre-read
/// runs as a companion statement only for UPDATE and MERGE (and as hindsight's own for
/// TRUNCATE).
fn prepared_only(kind: Kind, rw: Option<Rewritten>) -> Result<Option<Rewritten>, String> {
    match rw {
        Some(rw)
            if rw.pre_read.is_some()
                && !matches!(kind, Kind::Update | Kind::Truncate | Kind::Merge)
                && rw.shape.read_after != Some(ReadAfter::Cascade) =>
        {
            Err(format!(
                "hindsight: {} through the extended query protocol needs PostgreSQL 18 to be captured (older servers: send it as a simple query); the statement was not prepared",
                kind.label().to_uppercase()
            ))
        }
        rw => Ok(rw),
    }
}

impl ClientCapture {
    /// The client's Parse goes to the server unchanged: nothing to capture in it, or the
    /// server's own verdict (a syntax error, several statements) is what the client is owed.
    pub(super) async fn forward_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
    ) -> std::io::Result<()> {
        self.push([self.parse_unit()]);
        write_all(w, frame).await
    }

    /// The unit for the reply to a client's Parse: the client's own, or, when hindsight parses
    /// it again (`reprepare`), hindsight's — its errors still go to the client.
    pub(super) fn parse_unit(&self) -> Unit {
        if self.parse_replies == ParseReplies::Hindsight {
            return Unit::with(Delivery::Errors, b"1");
        }
        Unit::pass(b"1")
    }

    /// Prepare the client's statement `name` again from its Parse, for the encoding the session
    /// has now (its images were built for UTF-8 when it was prepared). Whether it is still a
    /// rewritten write hindsight can bind; if not, its Parse failed (and the client got the
    /// error) or it is no longer captured.
    async fn reprepare<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        name: &[u8],
        parse: &[u8],
    ) -> std::io::Result<bool> {
        tracing::debug!(
            statement = %String::from_utf8_lossy(name),
            "client_encoding changed since the statement was prepared: preparing it again"
        );
        self.push([Unit::new(b"3")]);
        write_all(w, &close_frame(b'S', name)).await?;
        self.parse_replies = ParseReplies::Hindsight;
        let parsed = self.on_parse(parse, w).await;
        self.parse_replies = ParseReplies::Client;
        parsed?;
        Ok(self.batch.flow == BatchFlow::Running
            && self
                .statements
                .get(name)
                .is_some_and(|p| p.rewritten.is_some()))
    }

    /// Parse: analyse; rewrite writes for capture (refusing what cannot be captured).
    pub(super) async fn on_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let body = &frame[HEADER_LEN..];
        let Some((name, rest)) = take_cstr(body) else {
            return self.forward_parse(w, frame).await;
        };
        let Some((sql, params)) = take_cstr(rest) else {
            return self.forward_parse(w, frame).await;
        };
        let full = match self.front_text(sql) {
            FrontText::Text(text) => text,
            FrontText::ServerDecides => return self.forward_parse(w, frame).await,
            FrontText::Refused(e) => return self.refused_parse(w, name, e.encode()).await,
        };
        let (text, tags) = sqlcommenter::split(&full);
        let entry = self.parts.cache.get(text);
        self.statements.remove(name);
        let assumed;
        let stmt = match entry.as_ref() {
            Ok(a) if a.statements.len() == 1 => &a.statements[0],
            // A server newer than the parser may accept what the parser cannot read.
            Err(_) if self.parser_may_lag() => {
                match self
                    .parse_unparsed(w, frame, name, text, &full, params)
                    .await?
                {
                    Some(s) => {
                        assumed = s;
                        &assumed
                    }
                    None => return Ok(()),
                }
            }
            // Syntax errors and multi-statement texts: the server refuses them itself.
            _ => return self.forward_parse(w, frame).await,
        };
        if stmt.located.analysis.kind == Kind::Session && super::bound::drops_prepared(text) {
            // Prepared now, run later: hindsight's statements may be gone from then on.
            self.bound.forget();
        }
        let resolved = self
            .resolve(w, text, std::slice::from_ref(stmt), Protocol::Extended)
            .await?;
        let stmt = &resolved.statements[0];
        let a = &stmt.located.analysis;
        let opaque_target = resolved.targets[0] == Target::Opaque;
        let kind = a.kind;
        if kind == Kind::Session {
            self.targets.clear();
        }
        let planned = if opaque_target {
            ParsePlan::Prepare(PreparedWrite::default())
        } else {
            self.plan_parse(w, text, &full, stmt, params).await?
        };
        let write = match planned {
            ParsePlan::Prepare(p) => p,
            ParsePlan::Refuse(msg) => {
                tracing::warn!(%msg, "statement refused");
                let err = uncapturable(msg).encode();
                return self.refused_parse(w, name, err).await;
            }
            // The client's statement failed as its own Parse would have (the error went to
            // the client); the server now skips to the client's Sync.
            ParsePlan::Failed => {
                self.batch.flow = BatchFlow::SkipToSync;
                return Ok(());
            }
            ParsePlan::Forward => return self.forward_parse(w, frame).await,
        };
        let parsed = ParsedFrame {
            frame,
            name,
            params,
        };
        self.emit_parse(w, parsed, text, tags, stmt, write).await
    }

    /// Send the Parse of a planned statement (the client's frame, or its rewrite) and the
    /// statements prepared beside it, and keep what Bind and Execute will need.
    async fn emit_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        parsed: ParsedFrame<'_>,
        text: &str,
        tags: sqlcommenter::Tags,
        stmt: &Statement,
        write: PreparedWrite,
    ) -> std::io::Result<()> {
        let ParsedFrame {
            frame,
            name,
            params,
        } = parsed;
        let out = match &write.rewritten {
            None => frame.to_vec(),
            Some(rw) => rewritten_parse(name, rw, write.params.as_deref(), params),
        };
        let mut parse = self.parse_unit();
        if let Some(rw) = &write.rewritten {
            parse.positions.inserts = rw.position_inserts(0);
        }
        self.push([parse]);
        write_all(w, &out).await?;
        let companions = match &write.rewritten {
            Some(rw) => {
                let wrapper = write.params.is_some();
                self.prepare_companions(w, name, text, stmt, rw, wrapper)
                    .await?
            }
            None => Companions::default(),
        };
        // Built for UTF-8 (checked after the rewrite: the form can only have turned from hex
        // to jsonb meanwhile, as the server reported an encoding, so this errs towards keeping it).
        let reparse =
            (write.rewritten.is_some() && self.image_form() == Form::Jsonb).then(|| frame.to_vec());
        let prep = Prep::new(text, stmt, tags, write, companions, reparse);
        self.statements.insert(name.to_vec(), Arc::new(prep));
        Ok(())
    }

    /// What a client's Parse of `stmt` becomes: a COPY pointed at its stage, or the write
    /// planned for capture (`plan_write`), checked for what a prepared statement can run.
    async fn plan_parse<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        full: &str,
        stmt: &Statement,
        params: &[u8],
    ) -> std::io::Result<ParsePlan> {
        let a = &stmt.located.analysis;
        if a.kind == Kind::CopyIn && a.writes.len() == 1 && !a.explain_analyze {
            return Ok(match self.prepare_copy(w, text, stmt).await? {
                Ok(Some((rw, plan))) => ParsePlan::Prepare(PreparedWrite {
                    rewritten: Some(rw),
                    params: None,
                    copy: Some(Arc::new(plan)),
                }),
                // No such table or column: the client's COPY fails on its own.
                Ok(None) => ParsePlan::Prepare(PreparedWrite::default()),
                Err(refusal) => ParsePlan::Refuse(format!("hindsight: {refusal}")),
            });
        }
        let declared = declared_params(params);
        Ok(
            match self
                .plan_write(w, text, full, stmt, &declared, Protocol::Extended)
                .await?
            {
                // A wrapper query: its companion takes the parameter types resolved for it.
                Planned::Rewritten(rw, Some(params)) => ParsePlan::Prepare(PreparedWrite {
                    rewritten: rw,
                    params: Some(params),
                    copy: None,
                }),
                Planned::Rewritten(rw, None) => match prepared_only(a.kind, rw) {
                    Ok(rewritten) => ParsePlan::Prepare(PreparedWrite {
                        rewritten,
                        params: None,
                        copy: None,
                    }),
                    Err(msg) => ParsePlan::Refuse(msg),
                },
                Planned::Refused(msg) => ParsePlan::Refuse(msg),
                Planned::Failed(_) => ParsePlan::Failed,
                Planned::Skipped => ParsePlan::Forward,
            },
        )
    }

    /// The companions of the client's statement `name` (`stmt` of `text`, rewritten as `rw`;
    /// `wrapper`: a wrapper query): its pre-read and its post-read, prepared now.
    async fn prepare_companions<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        name: &[u8],
        text: &str,
        stmt: &Statement,
        rw: &Rewritten,
        wrapper: bool,
    ) -> std::io::Result<Companions> {
        let kind = stmt.located.analysis.kind;
        // UPDATE's (and a cascading DELETE's) pre-read is prepared once, with the client's
        // parameters; TRUNCATE's image
        // read takes none and runs as hindsight's own statement at each Execute.
        let companion = match &rw.pre_read {
            Some(pre)
                if matches!(kind, Kind::Update | Kind::Merge)
                    || wrapper
                    || rw.shape.read_after == Some(ReadAfter::Cascade) =>
            {
                // Its errors in the client's FROM, WHERE or ON point into the client's text.
                let span = stmt.located.span.clone();
                let before = text[..span.start].chars().count() as i64;
                let segments = rw.pre_read_segments(0, &text[span], before);
                self.prepare_companion(w, name, pre, b's', segments).await?
            }
            _ => None,
        };
        // Its rows come from the post-read (a MERGE before 18, COPY (write …) TO): it must run.
        let post_companion = match rw.post_read.as_deref() {
            Some(post) => {
                self.prepare_companion(w, name, post, b't', Vec::new())
                    .await?
            }
            None => None,
        };
        Ok(Companions {
            pre: companion,
            post: post_companion,
        })
    }

    /// Prepare the pre-read of an UPDATE the client just prepared as `name` (PostgreSQL < 18).
    /// Its parameter types are taken from the client's statement as the server resolved them:
    /// the pre-read may not mention every parameter (`SET a = $1` only appears in the UPDATE).
    /// `None` when the client's Parse failed (the server then skips to the client's Sync).
    pub(super) async fn prepare_companion<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        name: &[u8],
        pre_read: &str,
        kind: u8,
        pieces: Vec<Piece>,
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
        let reply = match rx.await {
            Ok(reply) if reply.error.is_none() => reply,
            _ => return Ok(None),
        };
        let cname = companion_name(kind, name);
        let mut p = cname.clone();
        p.push(0);
        p.extend_from_slice(&crate::wire::client_text::encode(pre_read));
        p.push(0);
        p.extend_from_slice(&(reply.params.len() as u16).to_be_bytes());
        for oid in &reply.params {
            p.extend_from_slice(&oid.to_be_bytes());
        }
        let mut frames = close_frame(b'S', &cname);
        frames.extend(frame_of(b'P', &p));
        let mut parse = Unit::with(Delivery::Errors, b"1");
        parse.positions.pieces = pieces;
        self.push([Unit::new(b"3"), parse]);
        write_all(w, &frames).await?;
        Ok(Some(cname))
    }

    /// Bind of a rewritten statement: open a transaction if there is none (so hindsight ends
    /// it), and make room for the capture columns in the result formats.
    pub(super) async fn on_bind<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let body = &frame[HEADER_LEN..];
        let (portal, stmt) = two_cstrs(body).expect("checked in on_frame");
        let mut prep = Arc::clone(&self.statements[stmt]);
        if let Some(parse) = prep
            .reparse
            .clone()
            .filter(|_| self.image_form() == Form::Hex)
        {
            if !parse_statement(&parse[HEADER_LEN..]).is_some_and(|(_, sql)| sql.is_ascii()) {
                // Sent again, its text would now be read in the new encoding.
                let err = stale_statement(stmt).encode();
                self.portals.remove(portal);
                return self
                    .refused_parse(w, &companion_name(b'r', stmt), err)
                    .await;
            }
            if !self.reprepare(w, stmt, &parse).await? {
                self.portals.remove(portal);
                if self.batch.flow == BatchFlow::SkipToSync {
                    // Its Parse failed: the server skips this Bind, and so do we.
                    return Ok(());
                }
                self.push([Unit::pass(b"2")]);
                return write_last(w, frame).await;
            }
            prep = Arc::clone(&self.statements[stmt]);
        }
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
        if self.batch.tx == BatchTx::Client && self.shared.lock().status == TxState::Idle {
            self.batch.tx = BatchTx::Hindsight;
            // Named statement and portal: the client's unnamed ones stay untouched.
            self.own_queries = Protocol::Extended;
            self.send_internal(w, "BEGIN", Unit::new(b"Z")).await?;
        }
        if let Some(plan) = &prep.copy {
            // The stage the client's COPY was prepared to fill (created for each execution,
            // dropped after it; ON COMMIT DROP if the COPY fails).
            self.own_queries = Protocol::Extended;
            let create = Unit::with(Delivery::Errors, b"Z");
            self.send_internal(w, &plan.create, create).await?;
        }
        let (out, binary) = widen_result_formats(body, shape.extra);
        let mut frames = match out {
            Some(b) => frame_of(b'B', &b),
            None => frame.to_vec(),
        };
        self.push([Unit::pass(b"2")]);
        let companions = [(&prep.companion, b'p'), (&prep.post_companion, b'q')];
        for (cstmt, kind) in companions {
            let (Some(cstmt), Some(params)) = (cstmt, bind_parameters(body)) else {
                continue;
            };
            // The companion portal gets the same parameter values; its rows come back as text.
            let cportal = companion_name(kind, portal);
            let mut b = cportal.clone();
            b.push(0);
            b.extend_from_slice(cstmt);
            b.push(0);
            b.extend_from_slice(params);
            b.extend_from_slice(&[0, 0]);
            let mut bind_frames = close_frame(b'P', &cportal);
            bind_frames.extend(frame_of(b'B', &b));
            if kind == b'q' {
                self.post_binds.insert(portal.to_vec(), bind_frames);
                continue;
            }
            frames.extend(bind_frames);
            self.push(companion_bind_units());
        }
        self.portals
            .insert(portal.to_vec(), Portal { prep, binary });
        write_last(w, &frames).await
    }

    /// Execute: capture a rewritten portal; hold a COMMIT that has changes to publish.
    pub(super) fn on_execute(&mut self, body: &[u8]) -> Verdict {
        let Some((portal, rest)) = take_cstr(body) else {
            self.push([Unit::pass(b"CIs")]);
            return Verdict::Forward;
        };
        let Some(Portal { prep, binary }) = self.portals.get(portal).cloned() else {
            self.push([Unit::pass(b"CIs")]);
            return Verdict::Forward;
        };
        let mut u = Unit::pass(b"CIs");
        match prep.kind {
            Kind::Transaction(ctl @ (TxControl::Commit | TxControl::PrepareTransaction)) => {
                let st = self.shared.lock();
                if !st.txn.is_empty() || !st.capture_errors.is_empty() || !st.settled_for_commit() {
                    return Verdict::Defer;
                }
                u.txctl = Some((ctl, prep.savepoint.clone()));
            }
            Kind::Transaction(ctl) => {
                u.txctl = Some((ctl, prep.savepoint.clone()));
                if ctl == TxControl::Begin && self.batch.tx == BatchTx::Hindsight {
                    // The client takes over the transaction hindsight opened for its batch.
                    self.batch.tx = BatchTx::Client;
                    u.begin_in_batch = true;
                }
            }
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
            return self.execute_copy(u, plan, &ctx, body);
        }
        let mut out = self.execute_steps(rw, &prep, &ctx, portal, u);
        let client = Audience::Client { ends: b"CIs" };
        if let Some(bind) = self.post_binds.get(portal).cloned() {
            // A MERGE has no RETURNING before 17: its post-read reads its changes back, bound
            // now so that its snapshot sees them.
            out.extend(frame_of(b'E', body));
            out.extend(bind);
            self.push(companion_bind_units());
            self.push([expect::unit(&Step::PostRead, &ctx, &client)]);
            out.extend(execute_frame(&companion_name(b'q', portal)));
            return Verdict::Replace(out);
        }
        // No row limit: the write ran in full at the first Execute, and every row's images
        // must reach hindsight before the transaction can commit — a suspended portal the
        // client never resumes would leave changes unrecorded. The client gets all of its
        // rows now, then the CommandComplete (a deviation from a direct connection, which
        // would send at most `max_rows` and PortalSuspended).
        let max_rows = rest
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        if max_rows != 0 {
            out.extend(execute_frame(portal));
        } else if out.is_empty() {
            return Verdict::Forward;
        } else {
            out.extend(frame_of(b'E', body));
        }
        Verdict::Replace(out)
    }

    /// The frames that run `rw`'s steps before a client's Execute of `portal` (its guard and
    /// reads as hindsight's own statements or companion portals), with their units pushed, and
    /// the unit of the write itself (`u` gives it its transaction control).
    fn execute_steps(
        &mut self,
        rw: &Rewritten,
        prep: &Prep,
        ctx: &Arc<StatementCtx>,
        portal: &[u8],
        mut u: Unit,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let client = Audience::Client { ends: b"CIs" };
        for (step, sql) in rw.steps() {
            match step {
                // TRUNCATE: refused above the row limit, then the before image of every row,
                // as hindsight's own statements.
                Step::Guard(_) => {
                    let unit = expect::unit(&step, ctx, &client);
                    let (frames, units) = internal_statement(sql, unit, Delivery::Errors);
                    out.extend(frames);
                    self.push(units);
                }
                Step::PreRead(_) if rw.guard.is_some() => {
                    let unit = expect::unit(&step, ctx, &client);
                    let (frames, units) = internal_statement(sql, unit, Delivery::Errors);
                    out.extend(frames);
                    self.push(units);
                }
                // The companion locks and reads the before images right before the write
                // runs (a MERGE's keeps them in the server).
                Step::PreRead(_) if prep.companion.is_some() => {
                    self.push([expect::unit(&step, ctx, &client)]);
                    out.extend(execute_frame(&companion_name(b'p', portal)));
                }
                // A pre-read with no companion (a CTE's is part of its wrapper) runs no step.
                Step::PreRead(_) => {}
                Step::Main => {
                    let mut main = expect::unit(&step, ctx, &client);
                    main.txctl = u.txctl.take();
                    self.push([main]);
                }
                // Run after the write, once it is executed (below).
                Step::PostRead => {}
            }
        }
        out
    }

    /// Execute of a COPY prepared into its stage (`u`: the Execute's unit). The client's COPY
    /// fills the stage: its CopyInResponse and input errors go to the client, its row count is
    /// replaced by the INSERT's (at CopyDone).
    fn execute_copy(
        &mut self,
        mut u: Unit,
        plan: &Arc<CopyPlan>,
        ctx: &StatementCtx,
        body: &[u8],
    ) -> Verdict {
        let ctx = StatementCtx {
            shape: Arc::clone(&plan.insert.shape),
            binary: false,
            ..ctx.clone()
        };
        if !plan.stdin {
            // From a file or program: complete by itself; the INSERT and DROP follow now.
            u.complete = crate::capture::router::Complete::Drop;
            self.push([u]);
            let mut out = frame_of(b'E', body);
            out.extend(self.copy_followers(plan, Arc::new(ctx)));
            return Verdict::Replace(out);
        }
        // Ends at CopyInResponse: the Sync clients send right after the Execute must wait
        // for it (see `on_sync`); the COPY's CommandComplete gets its unit at CopyDone.
        u.ends = b"G";
        self.push([u]);
        self.copy = CopyRun::Staged(Arc::clone(plan), Arc::new(ctx));
        Verdict::Forward
    }

    /// A deferred Execute: a COMMIT with changes to publish, or a DDL / opaque statement.
    pub(super) async fn on_deferred_execute<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        let portal = take_cstr(&frame[HEADER_LEN..])
            .map(|(p, _)| p)
            .unwrap_or_default();
        let Some(Portal { prep, .. }) = self.portals.get(portal).cloned() else {
            return self
                .commit(w, CommitBy::ClientExtended(frame))
                .await
                .map(drop);
        };
        if !prep.kind.statement_event() {
            return self
                .commit(w, CommitBy::ClientExtended(frame))
                .await
                .map(drop);
        }
        self.flush_and_drain(w).await?;
        if self.shared.lock().batch_failed {
            // An earlier message of the batch failed (its Parse, say): the server skips this
            // Execute, and a statement that does not run has no event.
            return write_all(w, frame).await;
        }
        self.statement_runs(prep.kind);
        let gate = match self.prep_gate(&prep) {
            Ok(g) => g,
            Err(hit) => return self.refuse_prepared(w, &prep, hit, None).await,
        };
        self.seq += 1;
        let shape = Arc::new(Shape::statement(prep.kind, prep.object.clone()));
        let ctx = self.event_ctx(&prep.text, &prep.fingerprint, &prep.tags, shape, gate);
        if self.shared.lock().status == TxState::Idle {
            return self
                .announce(w, frame, vec![Change::statement(ctx)], b"CIs")
                .await;
        }
        let mut u = Unit::pass(b"CIs");
        u.collect = Collect::Statement(ctx);
        self.push([u]);
        write_all(w, frame).await
    }

    /// Sync of a batch hindsight opened a transaction for: end it the way the server would have.
    pub(super) async fn on_sync<W: AsyncWrite + Unpin + Send>(
        &mut self,
        frame: &[u8],
        w: &mut W,
    ) -> std::io::Result<()> {
        if self.copy.is_staged() {
            // Sent right after a COPY's Execute (tokio-postgres does): once the COPY started,
            // the server ignores it, and so must the reply queue; the client's next Sync
            // (after CopyDone) ends the batch.
            self.flush_and_drain(w).await?;
            if !self.shared.lock().batch_failed {
                return write_all(w, frame).await;
            }
            self.copy = CopyRun::None;
        }
        if self.batch.tx == BatchTx::Client {
            self.push([Unit::pass(b"Z")]);
            return write_all(w, frame).await;
        }
        self.batch.tx = BatchTx::Client;
        self.flush_and_drain(w).await?;
        if !self.shared.lock().batch_failed {
            return self
                .commit(w, CommitBy::ImplicitExtended(frame))
                .await
                .map(drop);
        }
        // Something failed: the server skips to this Sync; then roll back hindsight's
        // transaction (if it was opened) and give the client the ReadyForQuery it expects (I).
        self.push([Unit::new(b"Z")]);
        write_all(w, frame).await?;
        self.shared.drained().await;
        let status = self.shared.lock().status;
        let sql = if status == TxState::Idle {
            ""
        } else {
            "ROLLBACK"
        };
        self.internal_end(w, sql, None, None).await
    }
}

/// A client's Parse frame with its statement name and its parameter-type section.
struct ParsedFrame<'a> {
    frame: &'a [u8],
    name: &'a [u8],
    params: &'a [u8],
}
