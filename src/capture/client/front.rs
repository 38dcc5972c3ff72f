//! The front half both protocols share, written once: the client's bytes as text in the
//! session's encoding, and the analysed statements as the session must treat them — each
//! write's target resolved against the catalog (a view or a relation with rules makes it
//! opaque; a partitioned table marks it), and each read that calls a function which may write
//! made opaque. `simple` (a Query, any number of statements) and `extended` (a Parse, one)
//! both start here; what differs between them (how a text the parser cannot read is handled,
//! when DDL invalidates the caches) stays in their files.

use std::borrow::Cow;
use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::catalog::apply_target;
use super::cte::{has_cte_writes, CteRewrite};
use super::internal::unreadable_text;
use super::{ClientCapture, Protocol};
use crate::capture::functions::{calls_any, Names};
use crate::capture::rewrite::{rewrite, Rewritten};
use crate::capture::tables::Target;
use crate::capture::{cascade, merge};
use crate::statement::cache::Statement;
use crate::statement::Kind;
use crate::wire::client_text::TextError;
use crate::wire::error_response::ErrorResponse;

/// The client's SQL bytes, read as text.
pub(super) enum FrontText {
    /// The text, in UTF-8.
    Text(String),
    /// Not UTF-8 in a UTF-8 session: the server refuses the bytes itself, sent unchanged.
    ServerDecides,
    /// Text hindsight cannot read in the session's encoding: refused with this error (HS002).
    Refused(ErrorResponse),
}

/// What became of a write planned for capture.
pub(super) enum Planned {
    /// Run this instead (`None`: the statement runs as sent); for a wrapper query, the
    /// parameter types the server resolved for the client's statement.
    Rewritten(Option<Rewritten>, Option<Vec<u32>>),
    /// hindsight cannot capture it (the message says why).
    Refused(String),
    /// The server rejected the client's statement itself (when describing it): its
    /// ErrorResponse.
    Failed(Vec<u8>),
    /// An earlier message of the client's batch failed: the server skips this one anyway.
    Skipped,
}

/// Statements with their write targets resolved.
pub(super) struct Resolved<'a> {
    /// The statements, changed only where a target or a function call says so.
    pub statements: Cow<'a, [Statement]>,
    /// Each statement's target, in order.
    pub targets: Vec<Target>,
}

impl ClientCapture {
    /// The client's SQL `bytes` as text, in the session's `client_encoding`.
    pub(super) fn front_text(&self, bytes: &[u8]) -> FrontText {
        match self.client_text(bytes) {
            Ok(text) => FrontText::Text(text.into_owned()),
            Err(TextError::NotUtf8) => FrontText::ServerDecides,
            Err(e) => FrontText::Refused(unreadable_text(e)),
        }
    }

    /// `statements` (of `text`) as the session must treat them: targets resolved, reads that
    /// may write opaque. `extended`: the lookups run in the middle of the client's batch.
    pub(super) async fn resolve<'a, W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        statements: &'a [Statement],
        protocol: Protocol,
    ) -> std::io::Result<Resolved<'a>> {
        // Looked up only for reads: a query of hindsight's must not be the first of a
        // transaction whose client then sets its mode (`BEGIN; SET TRANSACTION READ WRITE`).
        let reads = statements
            .iter()
            .any(|s| s.located.analysis.kind == Kind::Read);
        let names = if reads {
            self.writing_functions(w, protocol).await?
        } else {
            Arc::default()
        };
        let names = with_created_routines(names, statements);
        let targets = self.resolve_targets(w, statements, protocol).await?;
        let calls = |s: &Statement| calls_writing_function(text, s, &names);
        let unchanged = (names.is_empty() || !statements.iter().any(calls))
            && targets.iter().all(|t| *t == Target::Table);
        if unchanged {
            return Ok(Resolved {
                statements: Cow::Borrowed(statements),
                targets,
            });
        }
        let changed = statements
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
        Ok(Resolved {
            statements: Cow::Owned(changed),
            targets,
        })
    }

    /// The one rewrite dispatch: `s` (of `text`; `sent` is what the client sent around it)
    /// with data-modifying CTEs becomes a wrapper query (described first), a TRUNCATE learns
    /// the tables its CASCADE reaches, and every write gets its capture columns (`rewrite`).
    /// `declared`: the parameter types a Parse declared.
    pub(super) async fn plan_write<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        sent: &str,
        s: &Statement,
        declared: &[u32],
        protocol: Protocol,
    ) -> std::io::Result<Planned> {
        if has_cte_writes(s) {
            return Ok(
                match self
                    .cte_rewrite(w, text, sent, s, declared, protocol)
                    .await?
                {
                    CteRewrite::Rewritten(rw, params) => Planned::Rewritten(Some(rw), Some(params)),
                    CteRewrite::Refused(msg) => Planned::Refused(msg),
                    CteRewrite::Failed(frame) => Planned::Failed(frame),
                    CteRewrite::Skipped => Planned::Skipped,
                },
            );
        }
        let cascade = if s.located.analysis.kind == Kind::Truncate {
            let sql = &text[s.located.span.clone()];
            self.truncate_cascade(w, sql, protocol).await?
        } else {
            Vec::new()
        };
        let major = self.shared.lock().server_major;
        let form = self.image_form();
        let rw = match rewrite(
            text,
            &s.located,
            major,
            self.parts.truncate_limit,
            &cascade,
            form,
        ) {
            Ok(rw) => rw,
            Err(refusal) => return Ok(Planned::Refused(format!("hindsight: {refusal}"))),
        };
        Ok(match rw {
            Some(rw)
                if matches!(
                    s.located.analysis.kind,
                    Kind::Delete | Kind::Update | Kind::Merge
                ) =>
            {
                match self.with_cascades(w, text, s, rw, protocol).await? {
                    Ok(rw) => Planned::Rewritten(Some(rw), None),
                    Err(why) => Planned::Refused(format!("hindsight: {why}")),
                }
            }
            rw => Planned::Rewritten(rw, None),
        })
    }

    /// A DELETE's, UPDATE's or MERGE's capture with the reads of the foreign-key cascades it
    /// sets off, if any (`cascade`).
    async fn with_cascades<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        s: &Statement,
        rw: Rewritten,
        protocol: Protocol,
    ) -> std::io::Result<Result<Rewritten, String>> {
        let kind = s.located.analysis.kind;
        let write = &s.located.analysis.writes[0];
        let sql = &text[s.located.span.clone()];
        let body = sql.trim_end().trim_end_matches(';');
        let changes = match kind {
            Kind::Merge => match merge::row_changes(body, write) {
                Some(changes) => changes,
                // A form hindsight cannot cut: its cascades stay marked uncaptured.
                None => return Ok(Ok(rw)),
            },
            Kind::Update => vec![cascade::RowChange::Updated(write.columns.clone())],
            _ => vec![cascade::RowChange::Deleted],
        };
        if changes.is_empty() {
            return Ok(Ok(rw)); // A MERGE that only inserts.
        }
        let plan = match self
            .cascade_plan(w, &write.table, changes, protocol)
            .await?
        {
            Ok(Some(plan)) => plan,
            Ok(None) => return Ok(Ok(rw)),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if plan.reaches.is_empty() {
            // No key's action applies: nothing to read, and nothing went uncaptured.
            let mut rw = rw;
            Arc::make_mut(&mut rw.shape).cascade = Some(plan);
            return Ok(Ok(rw));
        }
        let form = self.image_form();
        if kind == Kind::Merge {
            let major = self.shared.lock().server_major;
            return Ok(Ok(merge::with_cascades(rw, body, write, plan, major, form)));
        }
        Ok(cascade::attach(rw, sql, write, plan, form).map_err(|e| e.to_string()))
    }
}

/// Whether `s`, a read, calls one of `names` (functions that may write): it is then opaque.
fn calls_writing_function(text: &str, s: &Statement, names: &Names) -> bool {
    s.located.analysis.kind == Kind::Read
        && calls_any(text[s.located.span.clone()].as_bytes(), names)
}

/// `names` and the routines `statements` create (CREATE [OR REPLACE] FUNCTION | PROCEDURE),
/// whatever their volatility: the safe side, as for the catalog's VOLATILE ones. A function
/// the same query string creates is not in the catalog yet
/// (`CREATE FUNCTION backfill() …; SELECT backfill()`): it may write too.
fn with_created_routines(names: Names, statements: &[Statement]) -> Names {
    let mut created = statements
        .iter()
        .map(|s| &s.located.analysis.routine)
        .filter(|r| !r.is_empty())
        .peekable();
    if created.peek().is_none() {
        return names;
    }
    Arc::new(names.iter().chain(created).cloned().collect())
}
