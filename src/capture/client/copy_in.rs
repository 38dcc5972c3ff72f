//! `COPY … FROM`, as a query of its own or prepared through the extended protocol: the rows go
//! into a temporary stage table, then into the target with a captured `INSERT … SELECT`.

use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::internal::{internal_statement, query_frame};
use super::{now_ms, uncapturable, write_all, ClientCapture, CopyRun, Protocol};
use crate::capture::rewrite::{rewrite, Refusal, Rewritten, Shape};
use crate::capture::router::{Collect, Delivery, TxState, Unit};
use crate::capture::txn::StatementCtx;
use crate::statement::cache::Statement;
use crate::statement::{sqlcommenter, Kind};

/// The statements around an extended-protocol COPY into a stage (see `copy`).
pub(super) struct CopyPlan {
    /// `CREATE TEMP TABLE stage …`, before the client's Bind.
    pub(super) create: String,
    /// The captured `INSERT INTO target … SELECT … FROM stage`, after the client's CopyDone.
    pub(super) insert: Rewritten,
    /// `DROP TABLE stage`, after it.
    pub(super) drop: String,
    /// `FROM STDIN` (else the server reads a file or program and no CopyDone will come).
    pub(super) stdin: bool,
}

impl ClientCapture {
    /// After an extended-protocol COPY into the stage: the captured INSERT (its count becomes
    /// the client's `COPY n`), then the stage's DROP. If the COPY failed, the server skips these
    /// to the next Sync.
    pub(super) fn copy_followers(&mut self, plan: &CopyPlan, ctx: Arc<StatementCtx>) -> Vec<u8> {
        let mut ins = Unit::pass(b"C");
        ins.complete = crate::capture::router::Complete::AsCopy;
        ins.collect = Collect::capture(ctx);
        let (mut out, units) = internal_statement(&plan.insert.text, ins, Delivery::Errors);
        self.push(units);
        let drop = Unit::with(Delivery::Errors, b"C");
        let (frames, units) = internal_statement(&plan.drop, drop, Delivery::Errors);
        self.push(units);
        out.extend(frames);
        out
    }

    /// `COPY … FROM` as a query of its own: staged through a temporary table and a captured
    /// `INSERT … SELECT` (see `copy`), in the client's transaction (or one hindsight opens).
    pub(super) async fn capture_copy<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        status: TxState,
    ) -> std::io::Result<()> {
        let write = &s.located.analysis.writes[0];
        let sql = text[s.located.span.clone()].trim();
        self.own_queries = Protocol::Simple;
        let target = self.copy_target(w, write).await?;
        self.seq += 1;
        let staged = match target {
            Some(target) => crate::capture::copy::stage(sql, &target, &write.columns, self.seq),
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
                    .refuse(w, uncapturable(format!("hindsight: {refusal}")))
                    .await
            }
        };
        let Some(rw) = self.staged_insert(&staged.insert) else {
            let err = uncapturable(format!(
                "hindsight: could not build the capture of {sql:?}; it was not run"
            ));
            return self.refuse(w, err).await;
        };
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
        let client_at = text[..s.located.span.start].chars().count() as i64;
        let q = plan_copy(&staged, &rw, ctx, client_at, status == TxState::Idle);
        if q.end == CopyEnd::AtCopyDone {
            // The client pump must keep relaying its CopyData until then.
            self.copy = CopyRun::InOwnTx;
        }
        self.push(q.units);
        write_all(w, &query_frame(&q.text)).await?;
        match q.end {
            CopyEnd::ByServer => self.finish_query(w, true).await,
            CopyEnd::AtCopyDone | CopyEnd::InClientTx => Ok(()),
        }
    }

    /// The target of a `COPY … FROM` with its copyable columns, from the catalog (`None`: no
    /// such table).
    async fn copy_target<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        write: &crate::statement::analysis::Write,
    ) -> std::io::Result<Option<crate::capture::copy::Target>> {
        let lookup = self
            .internal_query(w, &crate::capture::copy::lookup_query(&write.table))
            .await?;
        let encoding = self.shared.lock().encoding.current();
        Ok(crate::capture::copy::parse_lookup(&lookup.rows, encoding))
    }

    /// An extended-protocol `COPY … FROM`: the target's columns from the catalog, the stage
    /// statements, and the captured INSERT. `Ok(None)`: no such table or column (relay the
    /// client's COPY unchanged; it fails on its own).
    pub(super) async fn prepare_copy<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        stmt: &Statement,
    ) -> std::io::Result<Result<Option<(Rewritten, CopyPlan)>, Refusal>> {
        let write = &stmt.located.analysis.writes[0];
        let sql = text[stmt.located.span.clone()].trim();
        self.own_queries = Protocol::Extended;
        let Some(target) = self.copy_target(w, write).await? else {
            return Ok(Ok(None));
        };
        self.seq += 1;
        let staged = match crate::capture::copy::stage(sql, &target, &write.columns, self.seq) {
            Ok(Some(st)) => st,
            Ok(None) => return Ok(Ok(None)),
            Err(refusal) => return Ok(Err(refusal)),
        };
        let insert = self.staged_insert(&staged.insert);
        let Some(insert) = insert else {
            return Ok(Err(Refusal::Unsupported {
                what: format!("{sql:?} (its capture could not be built)"),
            }));
        };
        let shape = Arc::new(Shape::statement(Kind::CopyIn, write.table.clone()));
        let client = Rewritten::returning(staged.copy, shape);
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

    /// The stage's `INSERT … SELECT` into the target, rewritten for capture (`None`: it cannot
    /// be, which the callers refuse).
    fn staged_insert(&self, insert: &str) -> Option<Rewritten> {
        let major = self.shared.lock().server_major;
        let v = crate::statement::analyze(insert).ok()?;
        rewrite(
            insert,
            &v[0],
            major,
            self.parts.truncate_limit,
            &[],
            self.image_form(),
        )
        .ok()
        .flatten()
    }
}

/// How a simple-query COPY's transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyEnd {
    /// hindsight opened it; it ends at the client's CopyDone / CopyFail.
    AtCopyDone,
    /// hindsight opened it and the server reads a file or program: it completes the COPY by
    /// itself, and the transaction ends like any captured query's.
    ByServer,
    /// The client's own transaction: nothing to end.
    InClientTx,
}

/// What a simple-query COPY sends (one query string) and what each reply is.
struct CopyQuery {
    text: String,
    units: Vec<Unit>,
    end: CopyEnd,
}

/// The query string for a staged COPY: [BEGIN;] CREATE stage; the client's COPY into the
/// stage; the captured INSERT (`rw`, whose rows are captured under `ctx`); DROP stage — and
/// the units its replies meet. `client_at`: the client's statement's character offset in its
/// query string; `implicit`: hindsight opens the transaction.
fn plan_copy(
    staged: &crate::capture::copy::Staged,
    rw: &Rewritten,
    ctx: Arc<StatementCtx>,
    client_at: i64,
    implicit: bool,
) -> CopyQuery {
    let mut q = String::new();
    let mut units = Vec::new();
    let quiet = || Unit::with(Delivery::Errors, b"C");
    if implicit {
        q.push_str("BEGIN;\n");
        units.push(quiet());
    }
    q.push_str(&staged.create);
    q.push_str(";\n");
    units.push(quiet());
    // The client's COPY sub-protocol runs against the stage: CopyInResponse, its errors
    // (about the input) go to the client; its row count is the INSERT's.
    let shift = (q.chars().count() as i64 + staged.shift) - client_at;
    q.push_str(&staged.copy);
    q.push_str(";\n");
    let mut copy = Unit::pass(b"C");
    copy.positions.shift = shift;
    copy.complete = crate::capture::router::Complete::Drop;
    units.push(copy);
    q.push_str(&rw.text);
    q.push_str(";\n");
    let mut ins = Unit::pass(b"C");
    ins.complete = crate::capture::router::Complete::AsCopy;
    ins.collect = Collect::capture(ctx);
    units.push(ins);
    q.push_str(&staged.drop);
    units.push(quiet());
    let end = match (implicit, staged.stdin) {
        (true, true) => CopyEnd::AtCopyDone,
        (true, false) => CopyEnd::ByServer,
        (false, _) => CopyEnd::InClientTx,
    };
    units.push(match end {
        CopyEnd::AtCopyDone => {
            let mut z = Unit::new(b"Z");
            z.idle_if_no_copy = true;
            z
        }
        CopyEnd::ByServer => Unit::new(b"Z"),
        CopyEnd::InClientTx => Unit::pass(b"Z"),
    });
    CopyQuery {
        text: q,
        units,
        end,
    }
}
