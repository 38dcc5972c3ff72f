//! What the reply router expects of each statement hindsight sends for a captured write: the
//! one place a plan step becomes a [`Unit`].
//!
//! A [`Rewritten`] write runs as up to four steps, in this order ([`Rewritten::steps`]): a
//! guard (TRUNCATE's row limit), a pre-read (before images, PostgreSQL < 18), the main
//! statement, a post-read (MERGE < 18). The protocol files decide how each step travels (part
//! of a query string, a companion portal, an internal statement) and add where its error
//! positions point; what its replies are and what they gather is decided here, once, for the
//! simple protocol, the extended one and the gates' trial runs alike.

use std::sync::Arc;

use super::rewrite::Rewritten;
use super::router::{Collect, Delivery, ReadCounts, Unit};
use super::txn::StatementCtx;
use crate::wire::error_response::{sqlstate, ErrorResponse};

/// The part one statement plays in capturing a client's write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fails when a limit is exceeded; its error is replaced by this message (HS003).
    Guard(String),
    /// Locks and reads the rows the write will change.
    PreRead(PreReadRows),
    /// The client's statement, rewritten: its replies are the client's, less the capture
    /// columns.
    Main,
    /// Reads a MERGE's changes back after it ran (PostgreSQL < 18).
    PostRead,
}

/// Where a pre-read's rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreReadRows {
    /// They are the before images of the write's changes.
    Collected,
    /// They stay in the server for the post-read to join (a MERGE's, see `merge`).
    KeptInServer,
}

/// Whose statement the steps run for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The client's own: the main statement's replies are forwarded and complete at `ends`;
    /// the reads' errors are the client's too (they evaluate its FROM, WHERE or ON).
    Client { ends: &'static [u8] },
    /// A gate's trial of a refused write, rolled back: nothing reaches the client, the rows
    /// go to the probe, and an error is replaced by `refusal` when one is given.
    Trial { refusal: Option<Vec<u8>> },
}

impl Rewritten {
    /// The statements to run for this write, in order, each with the part it plays (an
    /// iterator: no allocation per Execute).
    pub fn steps(&self) -> impl Iterator<Item = (Step, &str)> + '_ {
        let guard = self
            .guard
            .as_ref()
            .map(|g| (Step::Guard(g.message.clone()), g.sql.as_str()));
        let pre = self
            .pre_read
            .as_deref()
            .map(|sql| (Step::PreRead(self.pre_read_rows()), sql));
        let post = self.post_read.as_deref().map(|sql| (Step::PostRead, sql));
        guard
            .into_iter()
            .chain(pre)
            .chain(std::iter::once((Step::Main, self.text.as_str())))
            .chain(post)
    }

    /// Where this write's pre-read rows go: the before images of an UPDATE's locking pre-read
    /// (even with its cascades' reads joined in) and TRUNCATE's are collected; a pre-read
    /// followed by a post-read otherwise keeps its rows in the server for it.
    pub fn pre_read_rows(&self) -> PreReadRows {
        match (self.shape.pre_read, &self.post_read) {
            (true, _) | (false, None) => PreReadRows::Collected,
            (false, Some(_)) => PreReadRows::KeptInServer,
        }
    }
}

/// The unit for the replies to `step` of the write attributed to `ctx`.
pub fn unit(step: &Step, ctx: &Arc<StatementCtx>, audience: &Audience) -> Unit {
    let collect = collect(step, ctx);
    match audience {
        Audience::Client { ends } => {
            let mut u = match step {
                Step::Guard(msg) => {
                    let mut u = Unit::new(b"C");
                    u.error_replacement = Some(truncate_limit_error(msg));
                    u
                }
                Step::PreRead(_) | Step::PostRead => Unit::with(Delivery::Errors, b"C"),
                Step::Main => Unit::pass(ends),
            };
            u.collect = collect;
            u
        }
        Audience::Trial { refusal } => {
            let mut u = Unit::new(b"C");
            u.collect = collect;
            u.error_replacement = refusal.clone();
            u.probe = true;
            u
        }
    }
}

/// What `step`'s rows become.
fn collect(step: &Step, ctx: &Arc<StatementCtx>) -> Collect {
    match step {
        Step::Guard(_) | Step::PreRead(PreReadRows::KeptInServer) => Collect::Nothing,
        Step::PreRead(PreReadRows::Collected) => Collect::PreRead(Arc::clone(ctx), Vec::new()),
        Step::Main => Collect::capture(Arc::clone(ctx)),
        Step::PostRead => Collect::MergeRead(Arc::clone(ctx), Vec::new(), ReadCounts::default()),
    }
}

/// HS003: a TRUNCATE above `capture.truncate_row_limit` (the guard's error, replaced).
fn truncate_limit_error(msg: &str) -> Vec<u8> {
    ErrorResponse::error(sqlstate::CAPTURE_LIMIT, msg.to_string())
        .with_hint("Delete in batches (each row is recorded), or raise capture.truncate_row_limit.")
        .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::rewrite::{LimitGuard, Shape};
    use crate::capture::router::Delivery;
    use crate::statement::{Kind, TableName};

    fn rewritten(pre: bool, post: bool, guard: bool) -> Rewritten {
        Rewritten {
            text: "UPDATE t SET a = 1 RETURNING …".into(),
            shape: Arc::new(Shape::statement(Kind::Update, TableName::default())),
            pre_read: pre.then(|| "SELECT … FOR UPDATE".to_string()),
            post_read: post.then(|| "SELECT … merged".to_string()),
            guard: guard.then(|| LimitGuard {
                sql: "SELECT guard".to_string(),
                message: "too many rows".to_string(),
            }),
            inserts: Vec::new(),
            pre_read_map: Vec::new(),
        }
    }

    fn ctx() -> Arc<StatementCtx> {
        Arc::new(StatementCtx::for_test(Arc::new(Shape::statement(
            Kind::Update,
            TableName::default(),
        ))))
    }

    #[test]
    fn steps_run_guard_pre_read_main_post_read_in_that_order() {
        let kinds: Vec<Step> = rewritten(true, true, true)
            .steps()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            kinds,
            vec![
                Step::Guard("too many rows".into()),
                Step::PreRead(PreReadRows::KeptInServer),
                Step::Main,
                Step::PostRead
            ]
        );
        let plain = rewritten(false, false, false);
        assert_eq!(
            plain.steps().collect::<Vec<_>>(),
            vec![(Step::Main, plain.text.as_str())]
        );
    }

    #[test]
    fn a_pre_read_collects_before_images_unless_a_post_read_follows() {
        let client = Audience::Client { ends: b"CI" };
        let pre = unit(&Step::PreRead(PreReadRows::Collected), &ctx(), &client);
        assert!(matches!(pre.collect, Collect::PreRead(..)));
        assert_eq!(pre.delivery, Delivery::Errors);
        let kept = unit(&Step::PreRead(PreReadRows::KeptInServer), &ctx(), &client);
        assert!(matches!(kept.collect, Collect::Nothing));
    }

    #[test]
    fn the_main_step_is_the_clients_and_a_trial_reaches_nobody() {
        let main = unit(&Step::Main, &ctx(), &Audience::Client { ends: b"CIs" });
        assert_eq!(main.delivery, Delivery::All);
        assert_eq!(main.ends, b"CIs");
        assert!(matches!(main.collect, Collect::Capture(..)));
        let trial = Audience::Trial {
            refusal: Some(b"E".to_vec()),
        };
        for step in [
            Step::PreRead(PreReadRows::Collected),
            Step::Main,
            Step::PostRead,
        ] {
            let u = unit(&step, &ctx(), &trial);
            assert_eq!(u.delivery, Delivery::Nothing, "{step:?}");
            assert!(u.probe, "{step:?}");
            assert_eq!(u.error_replacement.as_deref(), Some(&b"E"[..]), "{step:?}");
        }
    }

    #[test]
    fn a_guard_replaces_its_error_with_the_limit_message() {
        let g = unit(
            &Step::Guard("above the limit".into()),
            &ctx(),
            &Audience::Client { ends: b"CI" },
        );
        assert_eq!(g.delivery, Delivery::Nothing);
        let err = String::from_utf8_lossy(g.error_replacement.as_deref().unwrap()).into_owned();
        assert!(err.contains("above the limit"), "{err}");
    }
}
