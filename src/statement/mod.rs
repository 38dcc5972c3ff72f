//! Statement analysis. For now: the leading-keyword classification the relay uses for metrics.
//! (The full grammar-based analysis arrives with capture.)

pub mod leading_keyword;

pub use leading_keyword::{classify, KeywordClass};
