//! Passing an open file from one process (here: one end of a socket pair)
//! to another over a Unix seqpacket socket.
//!
//! ```text
//! cargo run --example fd_passing
//! ```
//!
//! The sender opens a file, writes to it and passes the *open file* — not
//! its name — to the receiver along with a short message. The receiver
//! gets its own descriptor for the same open file (same offset, same
//! access mode), even if the name is gone: here the file is unlinked before
//! it is sent. This is how a privileged daemon hands a client a file or a
//! socket the client could not open itself.
//!
//! In a real program the two ends live in two processes: a client connects
//! with `UnixSeqpacket::connect(path)` to a server that did
//! `UnixSeqpacketListener::bind(path)` and `accept()`. Everything below
//! works the same way on those sockets.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use msgloop::{AncillaryBuf, MsgBuf, RecvResult, UnixSeqpacket};

fn main() -> io::Result<()> {
    // Two connected sockets. Like every msgloop socket they are
    // non-blocking, close-on-exec, and have SO_PASSCRED set (so each
    // message carries the sender's pid/uid/gid).
    let (sender, mut receiver) = UnixSeqpacket::pair()?;

    // --- Sender side -----------------------------------------------------
    // A scratch file with some content, unlinked at once: only the open
    // descriptor keeps it alive.
    let path = std::env::temp_dir().join(format!("msgloop-fd-passing-{}", std::process::id()));
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    file.write_all(b"hello through a passed file descriptor\n")?;

    // Pass it: the kernel installs a new descriptor for the same open file
    // in the receiver. Ours stays open (we only lend it for the call).
    let sent = sender.send_with_fds(b"here is a file", &[file.as_fd()])?;
    println!(
        "sender:   sent a {sent}-byte message passing fd {}",
        file.as_raw_fd()
    );
    drop(file); // the receiver's copy keeps the file alive

    // --- Receiver side ---------------------------------------------------
    // Wait for the message the way an event loop would: register with mio,
    // poll for READABLE (the message is already queued here, so this
    // returns at once).
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut receiver, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(Duration::from_secs(5)))?;
    assert!(events
        .iter()
        .any(|e| e.token() == Token(0) && e.is_readable()));

    // Room for the message (grows if needed) and for the control data:
    // AncillaryBuf::new() has room for the most fds Linux passes in one
    // message (253), so nothing a sender passes is ever cut.
    let mut storage = [0u8; 256];
    let mut buf = MsgBuf::from(&mut storage[..]);
    let mut anc = AncillaryBuf::new();
    let (result, mut received) = receiver.recv_with_ancillary(&mut buf, &mut anc)?;
    match result {
        RecvResult::Fit(()) | RecvResult::Spilled(()) => {}
        RecvResult::EndOfStream => {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"));
        }
        other => return Err(io::Error::other(format!("unexpected {other:?}"))),
    }
    println!(
        "receiver: got {:?} with {} fd(s) from {:?}",
        String::from_utf8_lossy(buf.filled()),
        received.fds().len(),
        received.credentials(),
    );
    if received.is_truncated() {
        // MSG_CTRUNC: the sender passed more fds than `anc` had room for;
        // the kernel closed the extra ones. Those in `received` are ours.
        eprintln!("receiver: some passed fds were discarded (control data truncated)");
    }

    // Take the descriptors we want. Any we did not take would be closed
    // when `received` is dropped — a passed fd can never leak.
    let mut fds = received.take_fds().into_iter();
    let Some(fd) = fds.next() else {
        return Err(io::Error::other("no fd arrived"));
    };
    let mut file = File::from(fd); // an OwnedFd: File takes ownership

    // It is the same open file: same content; the offset is shared too, so
    // rewind before reading (the sender's write left it at the end).
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    print!("receiver: the file says: {text}");

    // mio requires a source to be deregistered before it is closed.
    poll.registry().deregister(&mut receiver)?;
    println!("done: the file and both sockets are closed as they go out of scope");
    Ok(())
}
