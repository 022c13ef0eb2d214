//! Reliable UDP with and without UDP segmentation/receive offload
//! (`DgramOptions::offload`): the wire is the same, so every pairing works,
//! and a train the kernel refuses falls back to single datagrams.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use msgloop::rudp::{Guarantee, RudpCloseReason, RudpConfig};
use msgloop::{Ctx, DgramOptions, Error, Handler, PeerId, Reactor, SocketId};

/// Message `seq` of client `client`: mostly 1 KiB (full trains), every
/// seventh short (a train's shorter last datagram), every thirteenth
/// 3,000 bytes (fragments), with bytes derived from both numbers.
fn message(client: u8, seq: u64) -> Vec<u8> {
    let len = match seq {
        s if s % 13 == 0 => 3000,
        s if s % 7 == 0 => 300,
        _ => 1024,
    };
    let mut m: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seq * 7) as u8 ^ client)
        .collect();
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m[8] = client;
    m
}

struct Client {
    peer: PeerId,
    sent: u64,
    /// Echoes received, in order.
    echoed: u64,
}

struct Echo {
    servers: Vec<SocketId>,
    clients: Vec<Client>,
    count: u64,
    closed: Vec<(PeerId, RudpCloseReason)>,
}

impl Echo {
    fn pump(&mut self, cx: &mut Ctx, i: usize) {
        while self.clients[i].sent < self.count {
            let msg = message(i as u8, self.clients[i].sent);
            match cx.send_rudp(self.clients[i].peer, &msg, Guarantee::Delivery) {
                Ok(()) => self.clients[i].sent += 1,
                Err(Error::WouldBlock) => break,
                Err(e) => panic!("client {i}: {e}"),
            }
        }
    }

    fn client(&self, peer: PeerId) -> Option<usize> {
        self.clients.iter().position(|c| c.peer == peer)
    }

    fn done(&self) -> bool {
        self.clients.iter().all(|c| c.echoed == self.count)
    }
}

impl Handler for Echo {
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {
        if let Some(i) = self.client(peer) {
            self.pump(cx, i);
        }
    }

    fn on_rudp_writable(&mut self, cx: &mut Ctx, peer: PeerId) {
        if let Some(i) = self.client(peer) {
            self.pump(cx, i);
        }
    }

    fn on_rudp(&mut self, cx: &mut Ctx, peer: PeerId, msg: &[u8], g: Guarantee) {
        if self.servers.contains(&peer.sock) {
            // Echo; a full window here would be a test bug (the clients'
            // windows bound what is in flight).
            cx.send_rudp(peer, msg, g).expect("echo");
            return;
        }
        let i = self.client(peer).expect("a client");
        let c = &mut self.clients[i];
        assert!(
            msg == message(i as u8, c.echoed).as_slice(),
            "client {i}: echo {} wrong, reordered or corrupted",
            c.echoed
        );
        c.echoed += 1;
    }

    fn on_rudp_closed(&mut self, _cx: &mut Ctx, peer: PeerId, reason: RudpCloseReason) {
        self.closed.push((peer, reason));
    }
}

/// Socket options with offload on or off.
fn offload(on: bool) -> DgramOptions {
    DgramOptions::new().offload(on)
}

/// Runs the echo load: client `i` has offload as `clients[i].0` and talks
/// to server `clients[i].1` from a socket of its own — or, with
/// `one_client_socket`, all clients share one socket (offload as the
/// first); servers have offload as `servers`.
fn echo_run(
    r: &mut Reactor,
    bind: &str,
    config: &RudpConfig,
    servers: &[bool],
    clients: &[(bool, usize)],
    one_client_socket: bool,
    count: u64,
) -> Echo {
    let limit = Duration::from_secs(60);
    let servers: Vec<SocketId> = servers
        .iter()
        .map(|&o| {
            r.bind_rudp_with(bind, config.clone(), &offload(o))
                .expect("bind")
        })
        .collect();
    let mut app = Echo {
        servers: servers.clone(),
        clients: Vec::new(),
        count,
        closed: Vec::new(),
    };
    let shared = one_client_socket.then(|| {
        r.bind_rudp_with(bind, config.clone(), &offload(clients[0].0))
            .expect("bind")
    });
    for &(on, s) in clients {
        let to = r.local_addr(servers[s]).unwrap().as_inet().unwrap();
        let peer = match shared {
            Some(sock) => r.connect_rudp_from(sock, to).expect("rudp_connect"),
            None => r
                .connect_rudp_with(to, config.clone(), &offload(on))
                .expect("connect"),
        };
        app.clients.push(Client {
            peer,
            sent: 0,
            echoed: 0,
        });
    }
    let start = Instant::now();
    while !app.done() {
        assert!(app.closed.is_empty(), "closed: {:?}", app.closed);
        let progress: Vec<u64> = app.clients.iter().map(|c| c.echoed).collect();
        assert!(
            start.elapsed() < limit,
            "not done within {limit:?}: echoes {progress:?}"
        );
        r.run_once(&mut app, Some(Duration::from_millis(10)))
            .expect("run_once");
    }
    app
}

fn trains(r: &Reactor, id: SocketId) -> (u64, u64, u64) {
    let s = r.stats(id).expect("stats");
    (s.trains_sent, s.trains_received, s.offload_refused)
}

#[test]
fn offload_and_plain_sockets_interoperate_in_both_directions() {
    let _t = util::guard();
    let mut r = Reactor::new().expect("reactor");
    let cfg = RudpConfig::default();
    // Servers: offload on, off. Clients: every pairing.
    let clients = [(true, 0), (false, 0), (true, 1), (false, 1)];
    let app = echo_run(
        &mut r,
        "127.0.0.1:0",
        &cfg,
        &[true, false],
        &clients,
        false,
        3000,
    );
    let servers: Vec<_> = app.servers.iter().map(|&s| trains(&r, s)).collect();
    let peers: Vec<_> = app
        .clients
        .iter()
        .map(|c| trains(&r, c.peer.sock))
        .collect();
    println!("trains (sent, received, refused): servers {servers:?}, clients {peers:?}");
    if !util::kernel_has_offload("offload_and_plain_sockets_interoperate_in_both_directions") {
        return;
    }
    for (i, (&(offload, _), t)) in clients.iter().zip(&peers).enumerate() {
        assert_eq!(t.0 > 0, offload, "client {i}: trains sent");
        assert_eq!(t.2, 0, "client {i}: offload refused on loopback");
    }
    // The offload server reads trains (from client 0) and sends them (the
    // echoes); the other one does neither, yet every echo came back intact.
    assert!(servers[0].0 > 0 && servers[0].1 > 0, "{servers:?}");
    assert_eq!((servers[1].0, servers[1].1), (0, 0));
    // Client 0 (offload) reads its echoes as trains; client 1 gets the
    // same server's trains cut into datagrams by the kernel.
    assert!(peers[0].1 > 0, "client 0 read no train");
    assert_eq!(peers[1].1, 0, "client 1 has no receive offload");
    drop(r);
}

#[test]
fn offload_works_over_ipv6() {
    let _t = util::guard();
    if !util::ipv6_loopback("offload_works_over_ipv6") {
        return;
    }
    let mut r = Reactor::new().expect("reactor");
    let cfg = RudpConfig::default();
    let app = echo_run(&mut r, "[::1]:0", &cfg, &[true], &[(true, 0)], false, 2000);
    let server = trains(&r, app.servers[0]);
    let client = trains(&r, app.clients[0].peer.sock);
    println!("IPv6 trains (sent, received, refused): server {server:?}, client {client:?}");
    if !util::kernel_has_offload("offload_works_over_ipv6") {
        return;
    }
    assert!(server.0 > 0 && server.1 > 0 && client.0 > 0 && client.1 > 0);
    assert_eq!((server.2, client.2), (0, 0));
    drop(r);
}

const FALLBACK_TEST: &str = "a_train_the_kernel_refuses_goes_out_as_single_datagrams";

/// `lo` with a 1,400-byte MTU and peers configured for 1,472-byte
/// datagrams (above 1,452, so sent without don't-fragment): single
/// datagrams go out as IP fragments, but the kernel refuses a train whose
/// datagrams exceed the device MTU (`EMSGSIZE`; trains of smaller
/// datagrams go through). The sender turns offload off and resends the
/// train datagram by datagram: nothing is lost, and it happens once — the
/// client talks to two servers from one socket, so its batches hold trains
/// to both, and the second is split without being tried.
#[test]
fn a_train_the_kernel_refuses_goes_out_as_single_datagrams() {
    if !util::netns::enter(FALLBACK_TEST, &[]) {
        return;
    }
    let _g = util::serial();
    let out = Command::new("ip")
        .args(["link", "set", "lo", "mtu", "1400", "up"])
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip link: {out:?}");
    let mut r = Reactor::new().expect("reactor");
    let cfg = RudpConfig::default().mtu(1472);
    let app = echo_run(
        &mut r,
        "127.0.0.1:0",
        &cfg,
        &[true, true],
        &[(true, 0), (true, 1)],
        true,
        1000,
    );
    let servers: Vec<_> = app.servers.iter().map(|&s| trains(&r, s)).collect();
    let client = trains(&r, app.clients[0].peer.sock);
    println!("trains (sent, received, refused): servers {servers:?}, client {client:?}");
    let stats = r.stats(app.clients[0].peer.sock).expect("stats");
    assert_eq!(stats.send_errors, 0, "the refused train was resent");
    if !util::kernel_has_offload(FALLBACK_TEST) {
        return;
    }
    assert_eq!(
        client.2, 1,
        "the client's first train should be refused, once"
    );
    for (i, s) in servers.iter().enumerate() {
        assert_eq!(
            s.2, 1,
            "server {i}: its first train should be refused, once"
        );
    }
}
