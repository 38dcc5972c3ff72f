//! The frame decoder and startup packets: any bytes give frames, "read more", or an error;
//! never a panic, never a frame over the limit or a length field under 4.
#![no_main]
use hindsight::wire::{backend, frame, frontend, startup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = startup::decode(data);
    if data.len() >= 4 {
        let _ = startup::check_length(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
    }
    let limit = 1 << 20;
    let mut rest = data;
    while let Ok(Some(h)) = frame::peek_header(rest, limit) {
        assert!(h.frame_len() <= limit, "a frame over the limit was accepted");
        assert!(h.len >= 4, "a length below its own 4 bytes was accepted");
        if h.frame_len() > rest.len() {
            break;
        }
        let body = &rest[5.min(rest.len())..h.frame_len()];
        let _ = frontend::query_text(body);
        let _ = frontend::parse_statement(body);
        let _ = frontend::describe_target(body);
        let _ = backend::auth_code(body);
        let _ = backend::sasl_mechanisms(body);
        let _ = backend::strip_channel_binding(body);
        let _ = backend::parameter_status(body);
        let _ = backend::parameter_types(body);
        let _ = backend::backend_key(body);
        let _ = frame::take_cstr(body);
        if h.frame_len() == 0 {
            break;
        }
        rest = &rest[h.frame_len()..];
    }
});
