//! Statement analysis and the capture rewriter: any text is refused, runs unchanged, or is
//! rewritten into SQL that PostgreSQL's parser accepts, of the same statement kind (and so are
//! the pre-read, post-read and guard it adds).
#![no_main]
use hindsight::capture::image_sql::Form;
use hindsight::capture::rewrite::rewrite;
use libfuzzer_sys::fuzz_target;

/// The statement kinds of `sql` by hindsight's parser (PostgreSQL 18's grammar).
fn kinds(sql: &str) -> Option<Vec<String>> {
    let parsed = hindsight::statement::parser::parse(sql).ok()?;
    Some(parsed.statement_types().into_iter().map(str::to_string).collect())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > 4096 {
        return;
    }
    let (body, _tags) = hindsight::statement::sqlcommenter::split(text);
    let Ok(stmts) = hindsight::statement::analysis::analyze(body) else { return };
    for s in &stmts {
        for major in [15, 18] {
            for form in [Form::Jsonb, Form::Hex] {
                let Ok(Some(r)) = rewrite(body, s, major, 10_000, &[], form) else { continue };
                let original = kinds(&body[s.span.clone()]);
                let rewritten = kinds(&r.text);
                assert!(rewritten.is_some(), "PG{major}: the parser rejects the rewrite of {:?}: {:?}", &body[s.span.clone()], r.text);
                if original.is_some() {
                    assert_eq!(original, rewritten, "PG{major}: the rewrite changed the statement kind: {:?} → {:?}", &body[s.span.clone()], r.text);
                }
                for extra in [&r.pre_read, &r.post_read].into_iter().flatten() {
                    assert!(kinds(extra).is_some(), "PG{major}: the parser rejects {extra:?} (for {:?})", &body[s.span.clone()]);
                }
                if let Some(guard) = &r.guard {
                    assert!(kinds(&guard.sql).is_some(), "PG{major}: the parser rejects the guard {:?}", guard.sql);
                }
            }
        }
    }
});
