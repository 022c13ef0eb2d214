//! Integration and property tests for `msgloop::framing`.

use std::ops::ControlFlow;

use msgloop::framing::{Decoded, Endian, FrameConfig, FrameDecoder, FrameError, LengthWidth};
use proptest::prelude::*;
use proptest::sample::Index;

fn width() -> impl Strategy<Value = LengthWidth> {
    prop_oneof![
        Just(LengthWidth::U8),
        Just(LengthWidth::U16),
        Just(LengthWidth::U32),
        Just(LengthWidth::U64),
    ]
}

fn endian() -> impl Strategy<Value = Endian> {
    prop_oneof![Just(Endian::Big), Just(Endian::Little)]
}

/// Any config; the limit is small enough that random bytes hit it.
fn config() -> impl Strategy<Value = FrameConfig> {
    let max = prop_oneof![0usize..=600, Just(usize::MAX)];
    (width(), endian(), any::<bool>(), max).prop_map(|(w, e, inc, max)| {
        FrameConfig::new()
            .with_length_width(w)
            .with_endian(e)
            .with_length_includes_header(inc)
            .with_max_frame_len(max)
    })
}

/// Sorted, deduplicated cut points into a buffer of length `len`.
fn cuts(len: usize, idx: &[Index]) -> Vec<usize> {
    let mut c: Vec<usize> = idx.iter().map(|i| i.index(len + 1)).collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// Splits `buf` at the cut points into chunks (empty chunks possible at ends).
fn chunks<'a>(buf: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts {
        out.push(&buf[start..c]);
        start = c;
    }
    out.push(&buf[start..]);
    out
}

/// Reference decoder: repeated pure `decode` over the whole buffer.
fn reference(cfg: &FrameConfig, mut buf: &[u8]) -> (Vec<Vec<u8>>, Result<usize, FrameError>) {
    let mut frames = Vec::new();
    loop {
        match cfg.decode(buf) {
            Ok(Decoded::Frame {
                header_len,
                payload_len,
            }) => {
                frames.push(buf[header_len..header_len + payload_len].to_vec());
                buf = &buf[header_len + payload_len..];
            }
            Ok(Decoded::NeedMore { .. }) => return (frames, Ok(buf.len())),
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Streaming decode of `chunks`, checking memory bounds after every feed.
/// Returns the frames and either the pending length or the error.
fn stream(cfg: &FrameConfig, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Result<usize, FrameError>) {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut fed = 0usize;
    for chunk in chunks {
        fed += chunk.len();
        let res = dec.feed(cfg, chunk, |p| {
            frames.push(p.to_vec());
            ControlFlow::Continue(())
        });
        // Memory grows only with bytes received: never more than twice the
        // pending bytes (amortised doubling), nothing when idle.
        assert!(dec.pending_len() <= fed);
        assert!(dec.buffered_capacity() <= 2 * dec.pending_len());
        assert_eq!(dec.has_partial(), dec.pending_len() > 0);
        if let Err(e) = res {
            assert_eq!(dec.buffered_capacity(), 0);
            return (frames, Err(e));
        }
        // Whatever stays pending is one incomplete frame, within limits.
        assert!(dec.pending_len() < cfg.header_len() + cfg.max_frame_len());
    }
    (frames, Ok(dec.pending_len()))
}

#[test]
fn shared_buffer_read_path() {
    // Simulates the reactor: one shared read buffer, several connections.
    let cfg = FrameConfig::new().with_length_width(LengthWidth::U16);
    let mut wire_a = Vec::new();
    let mut wire_b = Vec::new();
    for i in 0..50u8 {
        cfg.encode_into(&vec![i; usize::from(i) * 7], &mut wire_a)
            .unwrap();
        cfg.encode_into(&[i], &mut wire_b).unwrap();
    }
    let mut decs = [FrameDecoder::new(), FrameDecoder::new()];
    let mut got: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut shared = [0u8; 64];
    let wires = [&wire_a[..], &wire_b[..]];
    let mut pos = [0usize; 2];
    while pos.iter().zip(wires).any(|(p, w)| *p < w.len()) {
        for c in 0..2 {
            let n = (wires[c].len() - pos[c]).min(shared.len() - c * 13);
            shared[..n].copy_from_slice(&wires[c][pos[c]..pos[c] + n]);
            pos[c] += n;
            let out = decs[c]
                .feed(&cfg, &shared[..n], |p| {
                    got[c].push(p.to_vec());
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert!(!out.stopped);
        }
    }
    assert_eq!(reference(&cfg, &wire_a).0, got[0]);
    assert_eq!(reference(&cfg, &wire_b).0, got[1]);
    assert_eq!(got[0].len(), 50);
    for d in &decs {
        assert_eq!(d.buffered_capacity(), 0);
    }
}

#[test]
fn slow_header_then_reject() {
    let cfg = FrameConfig::new().with_max_frame_len(1024);
    let mut dec = FrameDecoder::new();
    for b in [0u8, 0, 4] {
        dec.feed(&cfg, &[b], |_| ControlFlow::Continue(())).unwrap();
        assert!(dec.has_partial());
        assert!(dec.buffered_capacity() <= cfg.header_len());
    }
    let err = dec
        .feed(&cfg, &[1, 0xAA, 0xBB], |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: 1025,
            max: 1024
        }
    );
    assert_eq!(dec.buffered_capacity(), 0);
}

proptest! {
    /// (a) Encoded frames split at arbitrary points decode to the same frames.
    #[test]
    fn split_stream_decodes_to_same_frames(
        (cfg, payloads) in config().prop_flat_map(|cfg| {
            let cap = cfg.max_frame_len().min(300);
            (Just(cfg), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=cap), 0..12))
        }),
        cut_idx in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut wire = Vec::new();
        for p in &payloads {
            cfg.encode_into(p, &mut wire).unwrap();
        }
        let cut = cuts(wire.len(), &cut_idx);
        let (frames, res) = stream(&cfg, &chunks(&wire, &cut));
        prop_assert_eq!(res, Ok(0));
        prop_assert_eq!(frames, payloads);
    }

    /// (b) Arbitrary bytes in arbitrary chunks never panic, keep memory
    /// bounded, and agree with the pure decoder.
    #[test]
    fn arbitrary_bytes_never_panic(
        cfg in config(),
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        cut_idx in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let cut = cuts(bytes.len(), &cut_idx);
        let (frames, res) = stream(&cfg, &chunks(&bytes, &cut));
        let (ref_frames, ref_res) = reference(&cfg, &bytes);
        prop_assert_eq!(frames, ref_frames);
        prop_assert_eq!(res, ref_res);
    }

    /// Random small byte strings: zero/small length headers get decoded.
    #[test]
    fn small_length_bytes_agree_with_reference(
        w in width(),
        e in endian(),
        inc in any::<bool>(),
        bytes in prop::collection::vec(0u8..4, 0..400),
        cut_idx in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let cfg = FrameConfig::new()
            .with_length_width(w)
            .with_endian(e)
            .with_length_includes_header(inc);
        let cut = cuts(bytes.len(), &cut_idx);
        let (frames, res) = stream(&cfg, &chunks(&bytes, &cut));
        let (ref_frames, ref_res) = reference(&cfg, &bytes);
        prop_assert_eq!(frames, ref_frames);
        prop_assert_eq!(res, ref_res);
    }

    /// (c) Encode/decode round trip for every width and endianness.
    #[test]
    fn encode_decode_round_trip(
        w in width(),
        e in endian(),
        inc in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..=255),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let cfg = FrameConfig::new()
            .with_length_width(w)
            .with_endian(e)
            .with_length_includes_header(inc);
        let mut wire = Vec::new();
        match cfg.encode_into(&payload, &mut wire) {
            Ok(()) => {}
            Err(err) => {
                // Only a U8 field including its header cannot carry 255.
                prop_assert_eq!(err, FrameError::TooLarge { len: 255, max: 254 });
                prop_assert!(wire.is_empty());
                return Ok(());
            }
        }
        let hl = cfg.header_len();
        prop_assert_eq!(wire.len(), hl + payload.len());
        wire.extend_from_slice(&trailing);
        prop_assert_eq!(
            cfg.decode(&wire),
            Ok(Decoded::Frame { header_len: hl, payload_len: payload.len() })
        );
        prop_assert_eq!(&wire[hl..hl + payload.len()], &payload[..]);
        // Truncated, it asks for exactly the frame length.
        if !payload.is_empty() {
            prop_assert_eq!(
                cfg.decode(&wire[..hl + payload.len() - 1]),
                Ok(Decoded::NeedMore { frame_len: Some(hl + payload.len()) })
            );
        }
        prop_assert_eq!(
            cfg.decode(&wire[..hl - 1]),
            Ok(Decoded::NeedMore { frame_len: None })
        );
    }

    /// The encoder refuses exactly the lengths the decoder rejects.
    #[test]
    fn encoder_and_decoder_agree_on_limits(
        w in width(),
        e in endian(),
        inc in any::<bool>(),
        max in prop_oneof![0usize..=70_000, Just(usize::MAX)],
        raw in any::<u64>(),
    ) {
        let cfg = FrameConfig::new()
            .with_length_width(w)
            .with_endian(e)
            .with_length_includes_header(inc)
            .with_max_frame_len(max);
        let hl = cfg.header_len();
        let raw = raw & w.max_value();
        // Header bytes for `raw`, built independently of the encoder.
        let header: Vec<u8> = match e {
            Endian::Big => raw.to_be_bytes()[8 - hl..].to_vec(),
            Endian::Little => raw.to_le_bytes()[..hl].to_vec(),
        };
        match cfg.decode(&header) {
            Ok(Decoded::Frame { payload_len, .. }) => {
                prop_assert_eq!(payload_len, 0);
                let enc = cfg.encode_header(0).unwrap();
                prop_assert_eq!(enc.as_bytes(), &header[..]);
            }
            Ok(Decoded::NeedMore { frame_len: Some(n) }) => {
                let payload_len = n - hl;
                prop_assert!(payload_len <= cfg.max_frame_len());
                let enc = cfg.encode_header(payload_len).unwrap();
                prop_assert_eq!(enc.as_bytes(), &header[..]);
            }
            Ok(Decoded::NeedMore { frame_len: None }) => prop_assert!(false, "header is complete"),
            Err(FrameError::TooLarge { len, max }) => {
                prop_assert_eq!(max, cfg.max_frame_len());
                prop_assert!(len > max as u64);
                if let Ok(len) = usize::try_from(len) {
                    prop_assert!(cfg.encode_header(len).is_err());
                }
            }
            Err(FrameError::InvalidLength { len, header_len }) => {
                prop_assert!(inc);
                prop_assert_eq!(header_len, hl);
                prop_assert!(len < hl as u64);
            }
            Err(e) => prop_assert!(false, "an error decode never returns: {e:?}"),
        }
    }
}
