//! Captured writes of the simple protocol sent as statements this session prepared
//! (`capture::bound`, `capture.simple_writes = "prepared"`): which of them the session has, the
//! PREPAREs sent between transactions, and the frames of a bound write.
//!
//! A statement is prepared only once the session has sent its text twice (values in strings
//! make a new statement, and most such are sent once): after the second write, which goes as
//! text like the first, it waits. hindsight prepares it at the session's next moment outside a
//! transaction, before relaying the client's next Query. Then a PREPARE the server rejects costs
//! nothing: no transaction of the client's is open to fail with it. Such a statement is never
//! tried again. Later writes of the shape are bound.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::extended::execute_frame;
use super::internal::frame_of;
use super::{write_all, ClientCapture, Protocol};
use crate::capture::bound::{bound, BoundWrite};
use crate::capture::expect::{self, Audience, Step};
use crate::capture::positions::Positions;
use crate::capture::rewrite::Rewritten;
use crate::capture::router::{Delivery, TxState, Unit};
use crate::capture::txn::StatementCtx;
use crate::config::SimpleWrites;
use crate::statement::binding::{params, Bindable};
use crate::statement::cache::Statement;
use crate::statement::sqlcommenter;
use crate::telemetry::Event;

/// Prepared statements a session holds for bound writes at most; later shapes go as text. Each
/// holds about 20 KB of the backend's memory (pgbench's UPDATE with its capture columns: its
/// source, query and generic plan contexts, `pg_backend_memory_contexts`), and a legacy
/// database may have hundreds of sessions: 64 is at most 1.3 MB per session.
const MAX_PREPARED: usize = 64;
/// Statements waiting to be prepared at most (a flood of new shapes does not queue up).
const MAX_WAITING: usize = 16;
/// PREPAREs sent at one moment between transactions at most.
const PREPARES_AT_ONCE: usize = 4;
/// Statements seen once remembered at most (then forgotten all at once).
const MAX_SEEN: usize = 4096;
/// Times a session's statements are retired by its schema changes before it stops binding
/// (a session that creates a temporary table in every transaction would prepare and
/// deallocate its statements again and again).
const MAX_RETIREMENTS: u32 = 8;

/// A statement the session prepared.
#[derive(Debug, Clone)]
pub(super) struct Prepared {
    name: String,
    /// Where the write starts in its PREPARE's text (errors point into that text).
    at: i64,
}

/// What the session knows of one bound statement text.
#[derive(Debug, Clone)]
enum Known {
    Prepared(Prepared),
    /// The server rejected its PREPARE: its writes stay text.
    Refused,
}

/// The session's statements for bound writes.
#[derive(Debug, Default)]
pub(super) struct BoundStatements {
    known: HashMap<String, Known>,
    /// Seen once (a hash of the key).
    seen: std::collections::HashSet<u64>,
    /// Seen twice, to be prepared at the next moment outside a transaction.
    waiting: Vec<(String, BoundWrite)>,
    /// Names are never reused (`__hs_b<n>`): a statement hindsight forgot may still exist.
    next: u64,
    /// Statements retired by a schema change, to deallocate at the next moment outside a
    /// transaction.
    stale: Vec<String>,
    /// How many times a schema change retired the statements.
    retirements: u32,
}

impl BoundStatements {
    /// The prepared statement for `bw`, or `None` (then it waits, if there is room).
    fn find(&mut self, bw: &BoundWrite) -> Option<Prepared> {
        if self.retirements > MAX_RETIREMENTS {
            return None;
        }
        let key = bw.key();
        match self.known.get(&key) {
            Some(Known::Prepared(p)) => return Some(p.clone()),
            Some(Known::Refused) => return None,
            None => {}
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        let hash = {
            use std::hash::{BuildHasher, RandomState};
            static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
            STATE.get_or_init(RandomState::new).hash_one(&key)
        };
        if self.seen.insert(hash) {
            return None;
        }
        let room = self.known.len() + self.waiting.len() < MAX_PREPARED
            && self.waiting.len() < MAX_WAITING;
        if room && !self.waiting.iter().any(|(k, _)| *k == key) {
            self.waiting.push((key, bw.clone()));
        }
        None
    }

    /// Forget every statement (the client ran `DISCARD ALL` or `DEALLOCATE`: they are gone).
    pub(super) fn forget(&mut self) {
        self.known.clear();
        self.seen.clear();
        self.waiting.clear();
        self.stale.clear();
    }

    /// Stop using every statement, and deallocate them later (the session changed the schema).
    pub(super) fn retire(&mut self) {
        if self.known.is_empty() && self.waiting.is_empty() {
            return;
        }
        self.retirements += 1;
        for known in self.known.values() {
            if let Known::Prepared(p) = known {
                self.stale.push(p.name.clone());
            }
        }
        self.known.clear();
        self.seen.clear();
        self.waiting.clear();
    }
}

/// Whether the statement `sql` may drop hindsight's prepared statements: `DISCARD ALL`,
/// `DEALLOCATE [PREPARE] ALL`, or `DEALLOCATE` of a name like hindsight's.
pub(super) fn drops_prepared(sql: &str) -> bool {
    let Ok(tokens) = crate::statement::parser::tokens(sql) else {
        return false;
    };
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| {
            t.token != pg_query::protobuf::Token::SqlComment as i32
                && t.token != pg_query::protobuf::Token::CComment as i32
        })
        .take(3)
        .filter_map(|t| sql.get(t.start as usize..t.end as usize))
        .map(|w| w.trim_matches('"').to_ascii_lowercase())
        .collect();
    let word = |i: usize| words.get(i).map(String::as_str);
    let ours_or_all = |w: Option<&str>| w.is_some_and(|w| w == "all" || w.starts_with("__hs_b"));
    match word(0) {
        Some("deallocate") if word(1) == Some("prepare") => ours_or_all(word(2)),
        Some("deallocate") => ours_or_all(word(1)),
        Some("discard") => word(1) == Some("all"),
        _ => false,
    }
}

impl ClientCapture {
    /// The bound form of a Query's one captured write, when the session has its statement
    /// prepared (otherwise it waits to be, and the write goes as text).
    pub(super) fn bound_write(
        &mut self,
        text: &str,
        statements: &[Statement],
        rewrites: &[Option<Rewritten>],
        status: TxState,
    ) -> Option<(BoundWrite, Prepared)> {
        if self.parts.simple_writes != SimpleWrites::Prepared || status == TxState::Failed {
            return None;
        }
        let ([s], [Some(rw)]) = (statements, rewrites) else {
            return None;
        };
        let Bindable::Numbers(n) = s.located.analysis.binding else {
            return None;
        };
        let original = &text[s.located.span.clone()];
        let bw = bound(rw, original, &params(original, n)?)?;
        let prepared = self.bound.find(&bw)?;
        Some((bw, prepared))
    }

    /// Deallocate the statements retired and prepare those waiting, if the session is between
    /// transactions with nothing in flight. A rejected PREPARE only means that shape stays text.
    pub(super) async fn prepare_waiting<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
    ) -> std::io::Result<()> {
        if self.bound.waiting.is_empty() && self.bound.stale.is_empty() {
            return Ok(());
        }
        {
            let st = self.shared.lock();
            if st.status != TxState::Idle || !st.units.is_empty() {
                return Ok(());
            }
        }
        self.own_queries = Protocol::Simple;
        while let Some(name) = self.bound.stale.pop() {
            // Gone already only if the client deallocated it by a way hindsight did not see.
            self.internal_query(w, &format!("DEALLOCATE {name}"))
                .await?;
        }
        let take = self.bound.waiting.len().min(PREPARES_AT_ONCE);
        let batch: Vec<_> = self.bound.waiting.drain(..take).collect();
        for (key, bw) in batch {
            self.bound.next += 1;
            let name = format!("__hs_b{}", self.bound.next);
            let (sql, at) = bw.prepare(&name);
            let reply = self.internal_query(w, &sql).await?;
            let why = reply
                .error
                .as_deref()
                .map(crate::wire::error_response::message_of);
            Event::BoundPrepare {
                statement: &bw.sql,
                error: why.as_ref().map(|w| w as &dyn std::fmt::Display),
            }
            .emit(&self.parts.metrics);
            let known = match why {
                Some(_) => Known::Refused,
                None => Known::Prepared(Prepared { name, at }),
            };
            self.bound.known.insert(key, known);
        }
        Ok(())
    }

    /// Run a Query's one captured write bound to its prepared statement: (outside a
    /// transaction block, hindsight's BEGIN first, in the same batch) Bind, Describe, Execute,
    /// Sync. The replies are a Query's but for BindComplete, which the client does not see.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn capture_bound<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        text: &str,
        tags: &sqlcommenter::Tags,
        s: &Statement,
        rw: &Rewritten,
        (bw, prepared): (BoundWrite, Prepared),
        status: TxState,
    ) -> std::io::Result<()> {
        let implicit = status == TxState::Idle;
        self.seq += 1;
        let original = &text[s.located.span.clone()];
        let before = text[..s.located.span.start].chars().count() as i64;
        let ctx = self.write_ctx(original, s, tags, rw);
        let positions = Positions {
            shift: prepared.at - before,
            inserts: rw.position_inserts(prepared.at),
            params: bw.position_params(prepared.at),
            ..Positions::default()
        };
        let mut frames = Vec::new();
        let mut units = Vec::new();
        if implicit {
            // In the batch: if it failed, the server would skip the write too.
            frames.extend(unnamed_begin());
            units.extend([b"1", b"2", b"C"].map(|t| Unit::with(Delivery::Errors, t)));
        }
        frames.extend(bind_frame(&prepared.name, &bw.values));
        frames.extend(frame_of(b'D', b"P\0"));
        frames.extend(execute_frame(b""));
        frames.extend(frame_of(b'S', &[]));
        let mut bind = Unit::with(Delivery::Errors, b"2");
        bind.positions = positions.clone();
        let mut write = expect::unit(&Step::Main, &ctx, &Audience::Client { ends: b"CI" });
        write.positions = positions;
        units.extend([bind, write]);
        units.push(match implicit {
            true => Unit::new(b"Z"),
            false => Unit::pass(b"Z"),
        });
        self.push(units);
        Event::BoundWrite.emit(&self.parts.metrics);
        write_all(w, &frames).await?;
        self.finish_query(w, implicit).await
    }

    /// The attribution of the write `original` (statement `s`, rewritten as `rw`) as the
    /// current statement (`self.seq`).
    pub(super) fn write_ctx(
        &self,
        original: &str,
        s: &Statement,
        tags: &sqlcommenter::Tags,
        rw: &Rewritten,
    ) -> Arc<StatementCtx> {
        Arc::new(StatementCtx {
            text: original.trim().to_string(),
            fingerprint: s.fingerprint.clone(),
            tags: tags.clone(),
            seq: self.seq,
            ts_ms: super::now_ms(),
            application_name: self.shared.lock().application_name.clone(),
            binary: false,
            gate: self.gate_for(s),
            shape: Arc::clone(&rw.shape),
        })
    }
}

/// Parse, Bind and Execute of `BEGIN` as the unnamed statement and portal (which the client's
/// Query would have destroyed anyway).
fn unnamed_begin() -> Vec<u8> {
    let mut f = frame_of(b'P', b"\0BEGIN\0\0\0");
    f.extend(frame_of(b'B', b"\0\0\0\0\0\0\0\0"));
    f.extend(execute_frame(b""));
    f
}

/// Bind of the unnamed portal to statement `name` with text parameters `values` and text
/// results.
fn bind_frame(name: &str, values: &[String]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    frame_of(b'B', &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_drops_prepared_statements() {
        assert!(drops_prepared("DISCARD ALL"));
        assert!(drops_prepared("/* pool */ discard all"));
        assert!(drops_prepared("DEALLOCATE ALL"));
        assert!(drops_prepared("deallocate prepare __hs_b1"));
        assert!(drops_prepared("DEALLOCATE \"__hs_b7\""));
        assert!(!drops_prepared("DEALLOCATE my_statement"));
        assert!(!drops_prepared("DISCARD PLANS"));
        assert!(!drops_prepared("SET search_path = a"));
    }

    #[test]
    fn a_statement_waits_to_be_prepared_from_its_second_write() {
        let rw = |n: u32| BoundWrite::for_test(&format!("UPDATE t SET a = $1 WHERE b = {n}"));
        let mut b = BoundStatements::default();
        assert!(b.find(&rw(1)).is_none());
        assert!(b.waiting.is_empty(), "a text sent once does not wait");
        assert!(b.find(&rw(2)).is_none());
        assert!(b.find(&rw(1)).is_none());
        assert_eq!(
            b.waiting.len(),
            1,
            "the second write of a text makes it wait"
        );
        assert!(b.find(&rw(1)).is_none());
        assert_eq!(b.waiting.len(), 1, "it waits once");
        let (key, _) = b.waiting.pop().unwrap();
        let name = "__hs_b1".to_string();
        b.known
            .insert(key, Known::Prepared(Prepared { name, at: 20 }));
        assert_eq!(b.find(&rw(1)).unwrap().name, "__hs_b1");
        b.retire();
        assert_eq!(b.stale, ["__hs_b1"], "retired: deallocated later");
        assert!(b.find(&rw(1)).is_none(), "retired: text again");
        assert!(b.waiting.is_empty());
        b.forget();
        assert!(b.stale.is_empty(), "forgotten: gone already");
    }

    #[test]
    fn a_session_that_keeps_changing_its_schema_stops_binding() {
        let rw = BoundWrite::for_test("UPDATE t SET a = $1");
        let mut b = BoundStatements::default();
        for _ in 0..=MAX_RETIREMENTS {
            b.find(&rw);
            b.find(&rw);
            assert_eq!(b.waiting.len(), 1);
            b.retire();
        }
        b.find(&rw);
        b.find(&rw);
        assert!(b.waiting.is_empty());
    }

    #[test]
    fn a_bind_frame_carries_text_parameters() {
        let f = bind_frame("__hs_b1", &["15".into(), "7".into()]);
        let body = &f[5..];
        assert_eq!(&body[..9], b"\0__hs_b1\0");
        assert_eq!(&body[9..13], &[0, 0, 0, 2]);
        assert_eq!(&body[13..19], &[0, 0, 0, 2, b'1', b'5']);
        assert_eq!(&body[19..24], &[0, 0, 0, 1, b'7']);
        assert_eq!(&body[24..], &[0, 0]);
    }
}
