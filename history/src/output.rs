//! Answers for people and for programs: an aligned table (default), JSON lines (`--json`) or
//! CSV (`--csv`), written row by row as the query streams them, so a million-row answer never
//! sits in memory whole.

use std::io::Write;

use deltalake::arrow::json::writer::{JsonArray, WriterBuilder};
use deltalake::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use crate::questions::Ordered;
use crate::HistoryError;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// Rows of a batch as JSON objects (timestamps as RFC 3339 text, nulls explicit).
pub fn batch_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, HistoryError> {
    let mut w = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, JsonArray>(Vec::new());
    w.write(batch)?;
    w.finish()?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| HistoryError::Io {
        what: "reading a result batch".into(),
        source: std::io::Error::other(e),
    })
}

/// The column names of a batch, in order.
pub fn columns(batch: &RecordBatch) -> Vec<String> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Rows buffered before the text table's column widths are fixed.
const WIDTH_SAMPLE: usize = 200;
/// Widest a text column gets; longer values are cut with `…`.
const MAX_WIDTH: usize = 60;

/// Writes rows in one format.
pub struct Renderer<'a> {
    format: Format,
    out: &'a mut dyn Write,
    header: Option<Vec<String>>,
    sample: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
    rows: u64,
}

fn io(e: std::io::Error) -> HistoryError {
    HistoryError::Io {
        what: "writing the answer".into(),
        source: e,
    }
}

/// A value as one line of text: strings as they are, `changes` as `col: old → new; …`.
fn text_cell(name: &str, v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(m) if name == "changes" => m
            .iter()
            .map(|(c, p)| format!("{c}: {} → {}", compact(&p["old"]), compact(&p["new"])))
            .collect::<Vec<_>>()
            .join("; "),
        other => compact(other),
    };
    s.replace(['\n', '\r', '\t'], " ")
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl<'a> Renderer<'a> {
    pub fn new(format: Format, out: &'a mut dyn Write) -> Self {
        Renderer {
            format,
            out,
            header: None,
            sample: Vec::new(),
            widths: None,
            rows: 0,
        }
    }

    /// Write one row.
    pub fn row(&mut self, row: Ordered) -> Result<(), HistoryError> {
        self.rows += 1;
        if self.header.is_none() {
            self.header = Some(row.iter().map(|(n, _)| n.clone()).collect());
            if self.format == Format::Csv {
                let h: Vec<String> = row.iter().map(|(n, _)| csv_field(n)).collect();
                writeln!(self.out, "{}", h.join(",")).map_err(io)?;
            }
        }
        match self.format {
            Format::Json => {
                let fields: Vec<String> = row
                    .iter()
                    .map(|(n, v)| format!("{}:{}", compact(&Value::String(n.clone())), compact(v)))
                    .collect();
                writeln!(self.out, "{{{}}}", fields.join(",")).map_err(io)
            }
            Format::Csv => {
                let f: Vec<String> = row
                    .iter()
                    .map(|(n, v)| csv_field(&text_cell(n, v)))
                    .collect();
                writeln!(self.out, "{}", f.join(",")).map_err(io)
            }
            Format::Text => {
                let cells: Vec<String> = row.iter().map(|(n, v)| text_cell(n, v)).collect();
                if self.widths.is_some() {
                    return self.text_line(&cells);
                }
                self.sample.push(cells);
                if self.sample.len() >= WIDTH_SAMPLE {
                    self.flush_sample()?;
                }
                Ok(())
            }
        }
    }

    fn flush_sample(&mut self) -> Result<(), HistoryError> {
        let header = self.header.clone().unwrap_or_default();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &self.sample {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count()).min(MAX_WIDTH);
            }
        }
        self.widths = Some(widths.clone());
        self.text_line(&header)?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        self.text_line(&rule)?;
        for r in std::mem::take(&mut self.sample) {
            self.text_line(&r)?;
        }
        Ok(())
    }

    fn text_line(&mut self, cells: &[String]) -> Result<(), HistoryError> {
        let widths = self.widths.as_ref().expect("widths fixed");
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let c = cut(c, *w);
            if i + 1 == cells.len() {
                line.push_str(&c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = *w));
            }
        }
        writeln!(self.out, "{}", line.trim_end()).map_err(io)
    }

    /// Finish: the text table's last rows and a count line.
    pub fn finish(mut self) -> Result<u64, HistoryError> {
        if self.format == Format::Text {
            if self.widths.is_none() && !self.sample.is_empty() {
                self.flush_sample()?;
            }
            writeln!(
                self.out,
                "({} row{})",
                self.rows,
                if self.rows == 1 { "" } else { "s" }
            )
            .map_err(io)?;
        }
        self.out.flush().map_err(io)?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(pairs: &[(&str, Value)]) -> Ordered {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn the_three_formats() {
        let r = row(&[
            ("op", json!("u")),
            ("changes", json!({"bfso": {"old": "A", "new": null}})),
            (
                "statement",
                json!("UPDATE brieff SET bfso = NULL, \"x\" = 1"),
            ),
        ]);
        let mut text = Vec::new();
        let mut t = Renderer::new(Format::Text, &mut text);
        t.row(r.clone()).unwrap();
        assert_eq!(t.finish().unwrap(), 1);
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("bfso: \"A\" → null"), "{text}");
        assert!(text.ends_with("(1 row)\n"), "{text}");

        let mut js = Vec::new();
        let mut j = Renderer::new(Format::Json, &mut js);
        j.row(r.clone()).unwrap();
        j.finish().unwrap();
        let v: Value = serde_json::from_slice(&js).unwrap();
        assert_eq!(v["changes"]["bfso"]["old"], "A");

        let mut cs = Vec::new();
        let mut c = Renderer::new(Format::Csv, &mut cs);
        c.row(r).unwrap();
        c.finish().unwrap();
        let csv = String::from_utf8(cs).unwrap();
        assert!(csv.starts_with("op,changes,statement\nu,"), "{csv}");
        assert!(
            csv.contains("\"UPDATE brieff SET bfso = NULL, \"\"x\"\" = 1\""),
            "{csv}"
        );
    }
}
