//! The rudp wire parser on arbitrary bytes: `PacketRepr::parse` returns Ok
//! or Err and never panics; whatever parses re-emits to bytes that parse to
//! the same packet (and re-emit identically: emit is canonical).

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgloop::rudp::wire::{ChunkRepr, Packet, PacketRepr};

fuzz_target!(|data: &[u8]| {
    // The unchecked view's accessors are total on any bytes.
    let view = Packet::new_unchecked(data);
    let _ = (view.version(), view.flags(), view.conn_id(), view.pn());
    let _ = (view.nonce(), view.cookie(), view.close_reason());
    let _ = (view.ack_block(), view.params_block(), view.chunk_bytes());
    // A chunk on its own.
    if let Ok((c, used)) = ChunkRepr::parse(data) {
        assert!(used <= data.len());
        assert_eq!(c.buffer_len(), used);
        let mut b = vec![0u8; used];
        assert_eq!(c.emit(&mut b), Ok(used));
        assert_eq!(&b[..], &data[..used]);
    }
    let Ok(p) = PacketRepr::parse(data) else {
        return;
    };
    let mut buf = vec![0u8; p.buffer_len()];
    let n = p.emit(&mut buf).expect("a parsed packet emits");
    assert_eq!(n, buf.len());
    let q = PacketRepr::parse(&buf).expect("an emitted packet parses");
    assert_eq!(p, q, "emit -> parse round trip");
    let mut again = vec![0u8; q.buffer_len()];
    q.emit(&mut again).expect("emits again");
    assert_eq!(buf, again, "emit is canonical");
    // Every chunk of a DATA packet parses on its own and round-trips.
    if let PacketRepr::Data { chunks, .. } = p {
        let mut total = 0;
        for c in chunks.iter() {
            let mut b = vec![0u8; c.buffer_len()];
            c.emit(&mut b).expect("chunk emits");
            assert_eq!(ChunkRepr::parse(&b).map(|(c2, _)| c2), Ok(c));
            total += b.len();
        }
        assert_eq!(total, chunks.as_bytes().len());
    }
});
