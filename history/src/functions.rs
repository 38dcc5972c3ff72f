//! The questions as SQL table functions, for the SQL endpoint (and any DataFusion session):
//!
//! | function | question |
//! |---|---|
//! | `who_changed(table, key_json [, column])` | every committed change of one row |
//! | `row_as_of(table, key_json, time)` | the row at a time |
//! | `table_as_of(table, time)` | every row at a time (one JSON image per row) |
//! | `changes_by_application(application, since, until)` | what an application changed in a window |
//! | `blast_radius(application, since, until)` | per table: rows, columns, times, statements |
//! | `blocked_attempts(since, until)` | writes gates refused, with would-be values |
//! | `one_transaction(id)` | a transaction's outcome and every event (`id`: hindsight's id or a txid) |
//!
//! Times are RFC 3339 text (`'2026-12-04T10:00:00Z'`) or milliseconds since the epoch. Each
//! call plans the question's SQL (`questions::sql`, the same text the CLI runs) in the
//! calling session and returns it as a view, so filters, projections and joins compose.

use std::sync::Arc;

use deltalake::datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use deltalake::datafusion::common::{plan_err, DataFusionError, Result, ScalarValue};
use deltalake::datafusion::datasource::ViewTable;
use deltalake::datafusion::execution::context::SessionState;
use deltalake::datafusion::logical_expr::Expr;
use deltalake::datafusion::prelude::SessionContext;

use crate::questions::{self, Filter, Question, TransactionId};

/// Which question a function asks.
#[derive(Debug, Clone, Copy)]
enum Kind {
    WhoChanged,
    RowAsOf,
    TableAsOf,
    ChangesByApplication,
    BlastRadius,
    BlockedAttempts,
    OneTransaction,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::WhoChanged,
        Kind::RowAsOf,
        Kind::TableAsOf,
        Kind::ChangesByApplication,
        Kind::BlastRadius,
        Kind::BlockedAttempts,
        Kind::OneTransaction,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::WhoChanged => "who_changed",
            Kind::RowAsOf => "row_as_of",
            Kind::TableAsOf => "table_as_of",
            Kind::ChangesByApplication => "changes_by_application",
            Kind::BlastRadius => "blast_radius",
            Kind::BlockedAttempts => "blocked_attempts",
            Kind::OneTransaction => "one_transaction",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Kind::WhoChanged => "who_changed('schema.table', '{\"key\": 1}' [, 'column'])",
            Kind::RowAsOf => "row_as_of('schema.table', '{\"key\": 1}', '2026-12-04T10:00:00Z')",
            Kind::TableAsOf => "table_as_of('schema.table', '2026-12-04T10:00:00Z')",
            Kind::ChangesByApplication => {
                "changes_by_application('app', '2026-12-04T10:00:00Z', '2026-12-04T11:00:00Z')"
            }
            Kind::BlastRadius => {
                "blast_radius('app', '2026-12-04T10:00:00Z', '2026-12-04T11:00:00Z')"
            }
            Kind::BlockedAttempts => {
                "blocked_attempts('2026-12-04T10:00:00Z', '2026-12-04T11:00:00Z')"
            }
            Kind::OneTransaction => "one_transaction('<session>:<n>') or one_transaction(<txid>)",
        }
    }
}

/// One argument as text (strings, numbers).
fn text(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
            ScalarValue::Int64(Some(n)) => Some(n.to_string()),
            ScalarValue::Int32(Some(n)) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn time(s: &str) -> std::result::Result<i64, String> {
    match s.parse::<i64>() {
        Ok(ms) => Ok(ms),
        Err(_) => hindsight::restore::cli::parse_time(s),
    }
}

fn window(app: Option<String>, since: &str, until: &str) -> std::result::Result<Filter, String> {
    Ok(Filter {
        applications: app.into_iter().collect(),
        since_ms: Some(time(since)?),
        until_ms: Some(time(until)?),
        ..Filter::default()
    })
}

/// The question a call asks, or why the arguments do not make one.
fn question(kind: Kind, args: &[String]) -> std::result::Result<Question, String> {
    let a = |i: usize| {
        args.get(i)
            .cloned()
            .ok_or_else(|| "too few arguments".to_string())
    };
    let key = |s: String| hindsight::restore::cli::parse_key(&s);
    let q = match kind {
        Kind::WhoChanged => Question::WhoChanged {
            table: a(0)?,
            key: key(a(1)?)?,
            column: args.get(2).cloned(),
        },
        Kind::RowAsOf => Question::RowAsOf {
            table: a(0)?,
            key: key(a(1)?)?,
            at_ms: time(&a(2)?)?,
        },
        Kind::TableAsOf => Question::TableAsOf {
            table: a(0)?,
            at_ms: time(&a(1)?)?,
        },
        Kind::ChangesByApplication => Question::Changes(window(Some(a(0)?), &a(1)?, &a(2)?)?),
        Kind::BlastRadius => Question::Summary(window(Some(a(0)?), &a(1)?, &a(2)?)?),
        Kind::BlockedAttempts => Question::Blocked(window(None, &a(0)?, &a(1)?)?),
        Kind::OneTransaction => {
            let id = a(0)?;
            Question::Transaction(match id.parse::<i64>() {
                Ok(txid) => TransactionId::Txid(txid),
                Err(_) => TransactionId::Id(id),
            })
        }
    };
    Ok(q)
}

#[derive(Debug)]
struct QuestionFunction(Kind);

impl TableFunctionImpl for QuestionFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let kind = self.0;
        let texts: Option<Vec<String>> = args.exprs().iter().map(text).collect();
        let q = texts
            .ok_or_else(|| "arguments must be literals".to_string())
            .and_then(|t| question(kind, &t));
        let q = match q {
            Ok(q) => q,
            Err(why) => return plan_err!("{}: {why}; usage: {}", kind.name(), kind.usage()),
        };
        let sql = questions::sql(&q);
        let Some(state) = args.session().as_any().downcast_ref::<SessionState>() else {
            return plan_err!("{}: not a DataFusion session", kind.name());
        };
        // Planning only reads the catalog (tables are registered in memory): no I/O awaits.
        let plan = futures::executor::block_on(state.create_logical_plan(&sql))
            .map_err(|e| DataFusionError::Plan(format!("{}: {e}", kind.name())))?;
        Ok(Arc::new(ViewTable::new(plan, Some(sql))))
    }
}

/// Register every question function in `ctx`.
pub fn register(ctx: &SessionContext) {
    for kind in Kind::ALL {
        ctx.register_udtf(kind.name(), Arc::new(QuestionFunction(kind)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_make_the_cli_questions() {
        let q = question(
            Kind::WhoChanged,
            &["public.brieff".into(), r#"{"bfkey": 7}"#.into()],
        )
        .unwrap();
        assert!(matches!(q, Question::WhoChanged { ref table, .. } if table == "public.brieff"));
        let q = question(
            Kind::ChangesByApplication,
            &[
                "cert".into(),
                "2026-12-04T10:00:00Z".into(),
                "1764849600000".into(),
            ],
        )
        .unwrap();
        match q {
            Question::Changes(f) => {
                assert_eq!(f.applications, ["cert"]);
                assert_eq!(f.until_ms, Some(1_764_849_600_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(question(
            Kind::RowAsOf,
            &["t".into(), "{}".into(), "yesterday".into()]
        )
        .is_err());
        assert!(question(Kind::WhoChanged, &["t".into()]).is_err());
        assert!(matches!(
            question(Kind::OneTransaction, &["42".into()]).unwrap(),
            Question::Transaction(TransactionId::Txid(42))
        ));
    }
}
