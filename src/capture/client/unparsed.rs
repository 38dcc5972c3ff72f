//! A text hindsight's parser cannot read, in front of a server whose grammar is newer
//! (`parser_may_lag`): its statements are read one by one (`statement::unparsed`), and the
//! server is asked about each one taken on assumption before anything runs.

use tokio::io::AsyncWrite;

use super::cte::Description;
use super::extended::declared_params;
use super::{BatchFlow, ClientCapture, Protocol};
use crate::capture::router::TxState;
use crate::statement::cache::Statement;
use crate::statement::unparsed::Basis;
use crate::statement::{unparsed, AnalysisError};
use crate::wire::error_response::{sqlstate, ErrorResponse};

/// What becomes of a simple Query whose text the parser cannot read whole.
pub(super) enum Unreadable {
    /// Its statements, to handle as any others (those taken on assumption included).
    Statements(Vec<Statement>),
    /// The client has its answer: the server's syntax error, or hindsight's refusal.
    Answered,
    /// The scanner rejects the text (an unterminated literal): the server reports it.
    Relay,
}

/// The refusal of a text that may write rows but that the parser cannot read.
pub(super) fn unparseable_write(e: &AnalysisError) -> ErrorResponse {
    ErrorResponse::error(
        sqlstate::CAPTURE_UNSUPPORTED,
        format!("hindsight: this statement may write rows but hindsight's parser cannot read it, so it cannot be captured; it was not run ({e})"),
    )
    .with_hint("Check the syntax; write syntax newer than hindsight's parser (PostgreSQL 18's grammar) cannot be captured. Run it as its own statement to see the server's verdict.")
}

impl ClientCapture {
    /// The statements of `text` (`full` with its request tags) for a simple Query. Each one
    /// the parser cannot read is described first (never run), in order: a syntax error the
    /// server finds there is the client's answer, as the server's whole-string parse would
    /// have given it before running anything. One that may write rows is then refused: the
    /// rows it would change cannot be captured.
    pub(super) async fn read_unparsed<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        full: &str,
        text: &str,
    ) -> std::io::Result<Unreadable> {
        if self.shared.lock().status == TxState::Failed {
            // The server refuses every statement until the transaction ends.
            return Ok(Unreadable::Relay);
        }
        let Some(pieces) = unparsed::pieces(text, &self.parts.cache) else {
            return Ok(Unreadable::Relay);
        };
        for p in &pieces {
            if p.basis == Basis::Parsed {
                continue;
            }
            let span = p.statement.located.span.clone();
            let offset = text[..span.start].chars().count() as i64;
            // With its `;`: an error at the end of the statement is "at or near ";"", as the
            // server reports it in the whole string.
            let end = span.end + usize::from(text[span.end..].starts_with(';'));
            if let Description::Failed(err) = self
                .describe_at(w, &full[span.start..end], &[], Protocol::Simple, offset)
                .await?
            {
                if crate::wire::error_response::has_position(&err) {
                    self.refuse_frame(w, err).await?;
                    return Ok(Unreadable::Answered);
                }
            }
            if let Basis::Refused(e) = &p.basis {
                self.refuse(w, unparseable_write(e)).await?;
                return Ok(Unreadable::Answered);
            }
        }
        Ok(Unreadable::Statements(
            pieces.into_iter().map(|p| p.statement).collect(),
        ))
    }

    /// A Parse whose text the parser cannot read: the statement taken on assumption (the
    /// server's reply to the Parse itself is then its verdict on the syntax), or `None` once
    /// the Parse is answered — passed on (several statements, a lexical error: the server
    /// refuses those itself), or refused because it may write rows (after the server, asked
    /// first, found no syntax error in it).
    pub(super) async fn parse_unparsed<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        frame: &[u8],
        name: &[u8],
        text: &str,
        full: &str,
        params: &[u8],
    ) -> std::io::Result<Option<Statement>> {
        let piece = match unparsed::pieces(text, &self.parts.cache) {
            Some(mut p) if p.len() == 1 => p.remove(0),
            _ => {
                self.forward_parse(w, frame).await?;
                return Ok(None);
            }
        };
        let Basis::Refused(e) = piece.basis else {
            return Ok(Some(piece.statement));
        };
        match self
            .describe(w, full, &declared_params(params), Protocol::Extended)
            .await?
        {
            // Forwarded as this Parse's error; the server now skips to the client's Sync.
            Description::Failed(_) => {
                self.batch.flow = BatchFlow::SkipToSync;
                return Ok(None);
            }
            Description::Skipped => {
                self.forward_parse(w, frame).await?;
                return Ok(None);
            }
            Description::Described(..) => {}
        }
        let err = unparseable_write(&e).encode();
        self.refused_parse(w, name, err).await?;
        Ok(None)
    }
}
