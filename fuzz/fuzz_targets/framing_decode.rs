//! The length-prefix frame decoder on arbitrary bytes, fed in arbitrary
//! chunks, under an arbitrary frame format: it never panics, it buffers no
//! more than it has been given (never the declared length), and it yields
//! exactly the frames — and the error — that decoding the whole input at
//! once yields.

#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use msgloop::framing::{Decoded, Endian, FrameConfig, FrameDecoder, LengthWidth};

fuzz_target!(|data: &[u8]| {
    let Some((&fmt, rest)) = data.split_first() else {
        return;
    };
    let Some((&max, rest)) = rest.split_first() else {
        return;
    };
    let Some((&cut, input)) = rest.split_first() else {
        return;
    };
    let width = [
        LengthWidth::U8,
        LengthWidth::U16,
        LengthWidth::U32,
        LengthWidth::U64,
    ][usize::from(fmt & 3)];
    let cfg = FrameConfig::new()
        .with_length_width(width)
        .with_endian(if fmt & 4 == 0 {
            Endian::Big
        } else {
            Endian::Little
        })
        .with_length_includes_header(fmt & 8 != 0)
        .with_max_frame_len(usize::from(max) * 16);

    // Reference: decode the whole input in one go.
    let mut expected = Vec::new();
    let mut at = 0;
    let expected_err = loop {
        match cfg.decode(&input[at..]) {
            Ok(Decoded::Frame {
                header_len,
                payload_len,
            }) => {
                expected.push(&input[at + header_len..at + header_len + payload_len]);
                at += header_len + payload_len;
            }
            Ok(Decoded::NeedMore { .. }) => break None,
            Err(e) => break Some(e),
        }
    };

    // The decoder, fed in chunks of 1..=cut+1 bytes.
    let step = usize::from(cut) + 1;
    let mut dec = FrameDecoder::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut fed = 0;
    let mut err = None;
    for chunk in input.chunks(step) {
        fed += chunk.len();
        match dec.feed(&cfg, chunk, |f| {
            got.push(f.to_vec());
            ControlFlow::Continue(())
        }) {
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        assert!(dec.pending_len() <= fed, "buffered more than was fed");
        assert!(
            dec.buffered_capacity() <= 2 * dec.pending_len() + 64,
            "buffer not bounded by bytes received"
        );
    }
    assert_eq!(err, expected_err);
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.as_slice(), *e);
    }
});
