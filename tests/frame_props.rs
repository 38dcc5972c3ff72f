//! Property tests (the fuzz target) for the wire decoders: whatever bytes arrive, in whatever
//! chunks, decoding never panics, never reads past a frame, and a partial frame is "read more".

use hindsight::wire::{backend, frame, frontend, startup};
use proptest::prelude::*;

/// (tag, body) of one decoded frame.
type Frames = Vec<(u8, Vec<u8>)>;

/// Decode every complete frame in `buf`, returning (tag, body) pairs and the unconsumed tail.
fn decode_all(buf: &[u8], max: usize) -> Result<(Frames, usize), frame::FrameError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(h) = frame::peek_header(&buf[pos..], max)? {
        if buf.len() - pos < h.frame_len() {
            break;
        }
        out.push((
            h.tag,
            buf[pos + frame::HEADER_LEN..pos + h.frame_len()].to_vec(),
        ));
        pos += h.frame_len();
    }
    Ok((out, pos))
}

fn arb_frames() -> impl Strategy<Value = Frames> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)),
        0..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Frames split at arbitrary chunk boundaries decode to exactly the frames that were encoded.
    #[test]
    fn chunked_stream_decodes_to_the_encoded_frames(frames in arb_frames(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let mut wire = Vec::new();
        for (tag, body) in &frames {
            frame::put_frame(&mut wire, *tag, body);
        }
        let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cut_points.push(wire.len());
        cut_points.sort_unstable();
        // Feed the stream in chunks, as a socket would, decoding what is complete each time.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut start = 0;
        for end in cut_points {
            buf.extend_from_slice(&wire[start..end]);
            start = end;
            let (decoded, used) = decode_all(&buf, 1 << 20).unwrap();
            got.extend(decoded);
            buf.drain(..used);
        }
        prop_assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
        prop_assert_eq!(got, frames);
    }

    /// Arbitrary bytes: the header decoder either asks for more, rejects, or returns a header whose
    /// length is within the bounds it promises.
    #[test]
    fn arbitrary_bytes_never_break_the_header_decoder(bytes in prop::collection::vec(any::<u8>(), 0..64), max in 4usize..100_000) {
        match frame::peek_header(&bytes, max) {
            Ok(None) => prop_assert!(bytes.len() < frame::HEADER_LEN),
            Ok(Some(h)) => {
                prop_assert!(h.len >= 4 && h.len as usize <= max);
                prop_assert_eq!(h.frame_len(), h.len as usize + 1);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Startup packets of any content (with a valid length prefix) decode or fail cleanly.
    #[test]
    fn arbitrary_startup_packets_decode_or_fail_cleanly(body in prop::collection::vec(any::<u8>(), 4..400)) {
        let mut raw = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(&body);
        if let Err(e) = startup::decode(&raw) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Message-body inspectors used on the hot path never panic on malformed bodies.
    #[test]
    fn body_inspectors_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = backend::auth_code(&body);
        let _ = backend::sasl_mechanisms(&body);
        let _ = backend::strip_channel_binding(&body);
        let _ = backend::parameter_status(&body);
        let _ = backend::backend_key(&body);
        let _ = frontend::query_text(&body);
        let _ = frontend::parse_statement(&body);
        let _ = frame::take_cstr(&body);
    }
}
