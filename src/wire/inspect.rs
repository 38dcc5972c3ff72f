//! The contract between the relay's pumps and whatever inspects one direction's frames
//! (capture implements it): what to do with each frame, and the asynchronous resolution of a
//! deferred one. Defined here, below both, so capture does not depend on the proxy.

use tokio::io::AsyncWrite;

use super::frame::{FrameError, Header};
use super::frontend::FrontendTag;

/// What to do with one frame.
pub enum Verdict {
    /// Forward the original bytes.
    Forward,
    /// Forward these bytes instead of the frame.
    Replace(Vec<u8>),
    /// The frame breaks the protocol: tell the client and close the session.
    Reject {
        reason: &'static str,
        error: FrameError,
    },
    /// The inspector needs to do asynchronous work (wait for replies, publish, send its own
    /// requests) before the frame can go on: the pump writes what precedes the frame, then
    /// calls [`Inspector::resolve`], which writes whatever should go in its place.
    Defer,
}

/// Looks at the frames of one direction.
pub trait Inspector: Send {
    /// `frame` is the whole frame when `complete`, else the first part of a streamed frame.
    fn on_frame(&mut self, header: Header, frame: &[u8], complete: bool) -> Verdict;

    /// Whether frames with this tag must be buffered whole (never streamed), so `on_frame`
    /// always sees all of them. Statement texts must be, when they are analysed.
    fn must_buffer(&self, _tag: u8) -> bool {
        false
    }

    /// Handle a frame `on_frame` deferred; write its replacement (if any) to `w`. Writes are
    /// held until `w` is flushed (see the relay's coalescing writer): flush before waiting for the server.
    fn resolve<'a, W: AsyncWrite + Unpin + Send>(
        &'a mut self,
        _frame: &'a [u8],
        _w: &'a mut W,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'a {
        async { Ok(()) }
    }
}

/// The typed frontend tag, or the Verdict that rejects an unknown one (PostgreSQL would).
pub fn frontend_tag(byte: u8) -> Result<FrontendTag, Verdict> {
    FrontendTag::from_byte(byte).ok_or(Verdict::Reject {
        reason: "unknown_message_type",
        error: FrameError::UnknownFrontendTag { byte },
    })
}
