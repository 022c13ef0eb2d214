//! An rudp Endpoint fed one fuzz input split into many datagrams (quiche
//! style), from a few source addresses, interleaved with timeouts, sends,
//! `poll_transmit` and both event APIs. It must never panic, loop or grow
//! without bound.
//!
//! Input format: a sequence of records `op:u8, arg:u8, len:u8, bytes[len]`.
//! The low bits of `op` pick the action; datagrams are sent "from" one of
//! four addresses. To reach connection state, the endpoint also runs a
//! real client (a second Endpoint) through the handshake first, so fuzzed
//! datagrams from the client's address hit an established connection; and
//! replayed, truncated or bit-flipped copies of the legitimate datagrams
//! are mixed in.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use msgloop::rudp::{Endpoint, EventRef, Guarantee, RudpConfig};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + (i % 4)], 4000 + u16::from(i % 4)))
}

fuzz_target!(|data: &[u8]| {
    let cfg = RudpConfig::default().max_send_queue_messages(64).max_send_queue_bytes(1 << 16).max_message_len(1 << 14).max_recv_buffer_bytes(1 << 16).recv_window(64).max_connections(8).max_half_open(4);
    let mut now = Instant::now();
    let mut server = Endpoint::new(cfg.clone(), 1);
    let mut client = Endpoint::new(cfg, 2);
    let (caddr, saddr) = (addr(0), SocketAddr::from(([10, 0, 0, 9], 9000)));
    let mut buf = vec![0u8; 2048];
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let Ok(peer) = client.connect(now, saddr) else {
        return;
    };
    // Handshake (and a little traffic) over a perfect link.
    for _ in 0..8 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            seen.push(buf[..t.len].to_vec());
            let _ = server.handle_datagram(now, caddr, &buf[..t.len]);
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            let _ = client.handle_datagram(now, saddr, &buf[..t.len]);
        }
        while server.poll_event().is_some() {}
        while client.poll_event().is_some() {}
        let _ = client.send(peer, b"hello", Guarantee::Delivery);
        now += Duration::from_millis(1);
    }

    let mut rest = data;
    let mut steps = 0u32;
    while rest.len() >= 3 && steps < 4096 {
        steps += 1;
        let (op, arg, len) = (rest[0], rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (bytes, tail) = rest.split_at(len);
        rest = tail;
        match op % 8 {
            // A fuzzed datagram from one of four addresses.
            0..=2 => {
                let _ = server.handle_datagram(now, addr(arg), bytes);
            }
            // A legitimate datagram replayed, truncated or bit-flipped.
            3 => {
                if !seen.is_empty() {
                    let mut d = seen[usize::from(arg) % seen.len()].clone();
                    match bytes.first().copied().unwrap_or(0) % 3 {
                        0 => {}
                        1 => d.truncate(usize::from(bytes.get(1).copied().unwrap_or(0))),
                        _ => {
                            let n = d.len().max(1);
                            for (i, b) in bytes.iter().enumerate().skip(1) {
                                if let Some(x) = d.get_mut((usize::from(*b) + i * 7) % n) {
                                    *x ^= 1 << (i % 8);
                                }
                            }
                        }
                    }
                    let _ = server.handle_datagram(now, caddr, &d);
                }
            }
            // Time passes; timers fire.
            4 => {
                now += Duration::from_millis(u64::from(arg) * u64::from(arg));
                server.handle_timeout(now);
                client.handle_timeout(now);
            }
            // The legitimate client sends (and its datagrams go through).
            5 => {
                let g = match arg % 3 {
                    0 => Guarantee::None,
                    1 => Guarantee::Order,
                    _ => Guarantee::Delivery,
                };
                let _ = client.send(peer, bytes, g);
                if arg & 0x80 != 0 {
                    let _ = client.send_set(peer, &[bytes, b"x", b""]);
                }
                while let Some(t) = client.poll_transmit(now, &mut buf) {
                    if seen.len() < 256 {
                        seen.push(buf[..t.len].to_vec());
                    }
                    let _ = server.handle_datagram(now, caddr, &buf[..t.len]);
                }
            }
            // The server sends to every peer, or closes one.
            6 => {
                let peers: Vec<_> = server.peers().collect();
                for p in peers {
                    if arg == 0xff {
                        server.close(p);
                    } else {
                        let _ = server.send(p, bytes, Guarantee::Delivery);
                    }
                    let _ = server.peer_stats(p);
                }
            }
            // Drain output: transmits (answers to the client) and events.
            _ => {
                while let Some(t) = server.poll_transmit(now, &mut buf) {
                    assert!(t.len <= buf.len());
                    if t.dest == caddr {
                        let _ = client.handle_datagram(now, saddr, &buf[..t.len]);
                    }
                }
                if arg % 2 == 0 {
                    while let Some((_, ev)) = server.poll_event_ref() {
                        if let EventRef::Message { data, .. } = ev {
                            assert!(data.len() <= 1 << 14);
                        }
                    }
                } else {
                    while server.poll_event().is_some() {}
                }
                while client.poll_event().is_some() {}
            }
        }
        // The deadline is consistent with what handle_timeout does.
        if let Some(t) = server.poll_timeout() {
            if t <= now {
                server.handle_timeout(now);
            }
        }
    }
    // Bounded: draining terminates.
    let mut n = 0;
    while server.poll_transmit(now, &mut buf).is_some() {
        n += 1;
        assert!(n < 100_000, "poll_transmit does not terminate");
    }
    assert!(server.len() <= 8);
});
