//! Unit tests of the wire codec (`wire.rs`).

use super::*;

fn params() -> Params {
    Params {
        initial_seq: 0xfffffff0,
        recv_window: 4096,
        max_datagram: 1200,
        max_ack_delay_ms: 10,
        max_message_len: 1 << 20,
    }
}

fn ack() -> AckRepr {
    AckRepr {
        largest: 77,
        bitmap: 0xdead_beef_0000_0001,
        delay: 600,
        cum_seq: 12,
    }
}

fn chunk_bytes() -> Vec<u8> {
    let mut v = vec![0u8; 256];
    let mut at = 0;
    let cs = [
        ChunkRepr {
            guarantee: Guarantee::Delivery,
            seq: 5,
            frag: None,
            set: None,
            payload: b"hello",
        },
        ChunkRepr {
            guarantee: Guarantee::Order,
            seq: u32::MAX,
            frag: Some(FragInfo { index: 1, count: 3 }),
            set: None,
            payload: b"",
        },
        ChunkRepr {
            guarantee: Guarantee::Delivery,
            seq: 9,
            frag: Some(FragInfo { index: 0, count: 2 }),
            set: Some(SetInfo { index: 2, len: 4 }),
            payload: &[1, 2, 3],
        },
        ChunkRepr {
            guarantee: Guarantee::None,
            seq: 1,
            frag: None,
            set: None,
            payload: &[0xff; 40],
        },
    ];
    for c in &cs {
        at += c.emit(&mut v[at..]).unwrap();
    }
    v.truncate(at);
    v
}

fn samples(chunks: &[u8]) -> Vec<PacketRepr<'_>> {
    vec![
        PacketRepr::Initial {
            conn_id: 1,
            nonce: 0x0102030405060708,
        },
        PacketRepr::Challenge {
            conn_id: 2,
            nonce: 9,
            cookie: 0xabcdef,
        },
        PacketRepr::Echo {
            conn_id: 3,
            cookie: 0xabcdef,
            params: params(),
        },
        PacketRepr::Accept {
            conn_id: 4,
            params: params(),
        },
        PacketRepr::Data {
            conn_id: 5,
            pn: 1000,
            ack: Some(ack()),
            chunks: Chunks::new_checked(chunks).unwrap(),
        },
        PacketRepr::Data {
            conn_id: 5,
            pn: u32::MAX,
            ack: None,
            chunks: Chunks::new_checked(chunks).unwrap(),
        },
        PacketRepr::Ack {
            conn_id: 6,
            ack: ack(),
        },
        PacketRepr::Ping {
            conn_id: 7,
            pn: 3,
            ack: None,
        },
        PacketRepr::Ping {
            conn_id: 7,
            pn: 4,
            ack: Some(ack()),
        },
        PacketRepr::Close {
            conn_id: 8,
            reason: CloseCode::ProtocolViolation,
        },
    ]
}

#[test]
fn round_trip_every_type() {
    let cb = chunk_bytes();
    for repr in samples(&cb) {
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf).unwrap(), buf.len());
        let back = PacketRepr::parse(&buf).unwrap();
        assert_eq!(back, repr, "{:?}", repr.packet_type());
        // Re-emitting gives identical bytes.
        let mut buf2 = vec![0u8; back.buffer_len()];
        back.emit(&mut buf2).unwrap();
        assert_eq!(buf, buf2);
    }
}

#[test]
fn chunks_round_trip() {
    let cb = chunk_bytes();
    let c = Chunks::new_checked(&cb).unwrap();
    let v: Vec<_> = c.iter().collect();
    assert_eq!(v.len(), 4);
    assert_eq!(v[0].payload, b"hello");
    assert_eq!(v[1].seq, u32::MAX);
    assert_eq!(v[2].set, Some(SetInfo { index: 2, len: 4 }));
    assert_eq!(v[3].payload.len(), 40);
}

#[test]
fn every_truncation_is_err() {
    let cb = chunk_bytes();
    for repr in samples(&cb) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        for cut in 0..buf.len() {
            let r = PacketRepr::parse(&buf[..cut]);
            if let PacketRepr::Data { .. } = repr {
                // Cutting exactly at a chunk boundary (after the first chunk) is a
                // valid shorter packet; every other cut must fail.
                if let Ok(PacketRepr::Data { chunks, .. }) = r {
                    assert!(cut < buf.len());
                    assert!(chunks.iter().count() < 4);
                    continue;
                }
            }
            assert!(r.is_err(), "{:?} cut at {cut} parsed", repr.packet_type());
        }
    }
}

#[test]
fn empty_and_tiny_inputs() {
    for n in 0..field::HEADER_LEN {
        assert_eq!(PacketRepr::parse(&vec![1u8; n]), Err(WireError::Truncated));
    }
}

#[test]
fn bad_version_and_unknown_type() {
    let mut buf = [0u8; field::CLOSE_LEN];
    PacketRepr::Close {
        conn_id: 9,
        reason: CloseCode::Normal,
    }
    .emit(&mut buf)
    .unwrap();
    let mut v = buf;
    v[0] = 2;
    assert_eq!(PacketRepr::parse(&v), Err(WireError::BadVersion(2)));
    v[0] = 0;
    assert_eq!(PacketRepr::parse(&v), Err(WireError::BadVersion(0)));
    let mut t = buf;
    t[1] = 0x7f;
    assert_eq!(PacketRepr::parse(&t), Err(WireError::UnknownType(0x7f)));
    let mut z = buf;
    z[4..8].fill(0);
    assert!(matches!(
        PacketRepr::parse(&z),
        Err(WireError::Malformed(_))
    ));
    let mut f = buf;
    f[2] = 0x80;
    assert!(matches!(
        PacketRepr::parse(&f),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn invalid_chunk_fields() {
    let mk = |flags: u8, ext: &[u8], len: u16, payload: &[u8]| {
        let mut v = vec![flags];
        v.extend_from_slice(&7u32.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(ext);
        v.extend_from_slice(payload);
        v
    };
    // guarantee 3
    assert!(Chunks::new_checked(&mk(3, &[], 0, &[])).is_err());
    // reserved bit
    assert!(Chunks::new_checked(&mk(0x10, &[], 0, &[])).is_err());
    // frag count 1
    assert!(Chunks::new_checked(&mk(2 | CHUNK_FRAG, &[0, 0, 0, 1], 0, &[])).is_err());
    // frag index == count
    assert!(Chunks::new_checked(&mk(2 | CHUNK_FRAG, &[0, 2, 0, 2], 0, &[])).is_err());
    // set on unreliable
    assert!(Chunks::new_checked(&mk(1 | CHUNK_SET, &[0, 0, 0, 1], 0, &[])).is_err());
    // set len 0
    assert!(Chunks::new_checked(&mk(2 | CHUNK_SET, &[0, 0, 0, 0], 0, &[])).is_err());
    // payload longer than the rest
    assert!(Chunks::new_checked(&mk(2, &[], 5, &[1, 2])).is_err());
    // empty region
    assert!(Chunks::new_checked(&[]).is_err());
    // ok
    assert!(Chunks::new_checked(&mk(2 | CHUNK_SET, &[0, 0, 0, 1], 2, &[1, 2])).is_ok());
}

#[test]
fn params_validation() {
    let mut p = params();
    let mut buf = [0u8; field::ECHO_LEN];
    for (bad, what) in [
        (
            Params {
                recv_window: 0,
                ..p
            },
            "window 0",
        ),
        (
            Params {
                max_datagram: 100,
                ..p
            },
            "mtu",
        ),
        (
            Params {
                max_ack_delay_ms: MAX_ACK_DELAY_MS + 1,
                ..p
            },
            "ack delay",
        ),
    ] {
        PacketRepr::Echo {
            conn_id: 1,
            cookie: 2,
            params: bad,
        }
        .emit(&mut buf)
        .unwrap();
        assert!(PacketRepr::parse(&buf).is_err(), "{what}");
    }
    p.recv_window = MAX_RECV_WINDOW;
    PacketRepr::Accept {
        conn_id: 1,
        params: p,
    }
    .emit(&mut buf[..field::ACCEPT_LEN])
    .unwrap();
    assert!(PacketRepr::parse(&buf[..field::ACCEPT_LEN]).is_ok());
}

#[test]
fn fixed_types_reject_trailing_bytes() {
    let mut buf = [0u8; field::ACK_LEN + 1];
    PacketRepr::Ack {
        conn_id: 1,
        ack: ack(),
    }
    .emit(&mut buf)
    .unwrap();
    assert!(PacketRepr::parse(&buf[..field::ACK_LEN]).is_ok());
    assert_eq!(PacketRepr::parse(&buf), Err(WireError::Truncated));
}

#[test]
fn bit_flips_never_panic() {
    let cb = chunk_bytes();
    for repr in samples(&cb) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut m = buf.clone();
                m[i] ^= 1 << bit;
                if let Ok(p) = PacketRepr::parse(&m) {
                    // Whatever parsed must re-emit to a parseable packet.
                    let mut out = vec![0u8; p.buffer_len()];
                    p.emit(&mut out).unwrap();
                    assert!(PacketRepr::parse(&out).is_ok());
                    if let PacketRepr::Data { chunks, .. } = p {
                        let _ = chunks.iter().count();
                    }
                }
            }
        }
    }
}

#[test]
fn accessors_total_on_unchecked() {
    for n in 0..40 {
        let v = vec![0xffu8; n];
        let p = Packet::new_unchecked(&v[..]);
        let _ = (
            p.version(),
            p.flags(),
            p.conn_id(),
            p.nonce(),
            p.cookie(),
            p.pn(),
        );
        let _ = (
            p.ack_block(),
            p.params_block(),
            p.close_reason(),
            p.chunk_bytes(),
        );
    }
}

/// The example in docs/rudp.md §9, byte for byte.
#[test]
fn doc_example_bytes() {
    let bytes: [u8; 39] = [
        0x01, 0x10, 0x01, 0x00, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0,
        0, 5, 0, 0, 0, 0, 0, 0x64, 0x02, 0, 0, 0, 5, 0, 2, b'h', b'i',
    ];
    let p = PacketRepr::parse(&bytes).unwrap();
    let PacketRepr::Data {
        conn_id,
        pn,
        ack,
        chunks,
    } = p
    else {
        panic!("not data: {p:?}");
    };
    assert_eq!((conn_id, pn), (0x0a0b0c0d, 7));
    assert_eq!(
        ack,
        Some(AckRepr {
            largest: 3,
            bitmap: 5,
            delay: 0,
            cum_seq: 100
        })
    );
    let c: Vec<_> = chunks.iter().collect();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].guarantee, c[0].seq, c[0].payload),
        (Guarantee::Delivery, 5, &b"hi"[..])
    );
    let mut out = [0u8; 39];
    assert_eq!(p.emit(&mut out), Ok(39));
    assert_eq!(out, bytes);
}

#[test]
fn ack_delay_encoding_saturates() {
    assert_eq!(AckRepr::encode_delay(Duration::from_micros(160)), 10);
    assert_eq!(AckRepr::encode_delay(Duration::from_secs(100)), u16::MAX);
}
