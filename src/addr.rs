//! Socket addresses: Unix-domain addresses that need no allocation, and the
//! peer address handed to [`Handler::on_datagram`](crate::Handler::on_datagram).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::SocketAddr;
#[cfg(target_os = "linux")]
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use socket2::SockAddr;

/// The address of a Unix-domain socket: a filesystem path, an abstract name
/// (Linux), or unnamed (an unbound sender, one end of a socket pair).
///
/// It is stored inline (no heap allocation), so receiving a datagram and
/// replying to its sender costs nothing beyond the system calls.
///
/// ```
/// use msgloop::UnixAddr;
/// let a = UnixAddr::from_pathname("/tmp/app.sock")?;
/// assert_eq!(a.as_pathname(), Some(std::path::Path::new("/tmp/app.sock")));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct UnixAddr(SockAddr);

impl UnixAddr {
    /// An address naming a filesystem path.
    ///
    /// Fails with `InvalidInput` when the path does not fit `sun_path`
    /// (107 bytes on Linux) or is empty.
    pub fn from_pathname<P: AsRef<Path>>(path: P) -> io::Result<UnixAddr> {
        let bytes = path.as_ref().as_os_str();
        if bytes.is_empty() || path.as_ref().to_str().is_some_and(|s| s.starts_with('\0')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Unix socket path must be non-empty and must not start with NUL",
            ));
        }
        SockAddr::unix(path).map(UnixAddr)
    }

    /// An address in Linux's abstract namespace (no file is created; the
    /// name vanishes with the socket). `name` excludes the leading NUL.
    #[cfg(target_os = "linux")]
    pub fn from_abstract_name(name: &[u8]) -> io::Result<UnixAddr> {
        let mut raw = [0u8; 108];
        if name.len() >= raw.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "abstract socket name longer than 107 bytes",
            ));
        }
        raw[1..=name.len()].copy_from_slice(name);
        let path = Path::new(std::ffi::OsStr::from_bytes(&raw[..=name.len()]));
        SockAddr::unix(path).map(UnixAddr)
    }

    /// The filesystem path, if this address names one.
    pub fn as_pathname(&self) -> Option<&Path> {
        self.0.as_pathname()
    }

    /// The abstract name (without the leading NUL), if this address is one.
    #[cfg(target_os = "linux")]
    pub fn as_abstract_name(&self) -> Option<&[u8]> {
        self.0.as_abstract_namespace()
    }

    /// `true` for an unbound socket's address (nothing to reply to).
    pub fn is_unnamed(&self) -> bool {
        // The kernel reports an unbound sender with an address length of 0
        // (or just the family): nothing after `sun_family`.
        self.0.len() as usize <= std::mem::size_of::<libc::sa_family_t>()
    }

    /// The raw socket address.
    pub fn as_sock_addr(&self) -> &SockAddr {
        &self.0
    }

    /// Wraps a raw address; `None` unless its family is `AF_UNIX`.
    pub fn from_sock_addr(addr: SockAddr) -> Option<UnixAddr> {
        if addr.is_unix() || addr.len() == 0 {
            Some(UnixAddr(addr))
        } else {
            None
        }
    }

    /// The path, if any, as an owned `PathBuf`.
    pub fn to_path_buf(&self) -> Option<PathBuf> {
        self.as_pathname().map(Path::to_path_buf)
    }

    /// Builds from a raw address known to be `AF_UNIX` or unnamed (a
    /// zero-length address, as recvmsg reports for unbound senders).
    pub(crate) fn from_received(addr: SockAddr) -> UnixAddr {
        UnixAddr(addr)
    }
}

impl PartialEq for UnixAddr {
    fn eq(&self, other: &UnixAddr) -> bool {
        if self.is_unnamed() && other.is_unnamed() {
            return true;
        }
        self.0 == other.0
    }
}

impl Eq for UnixAddr {}

impl fmt::Debug for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.as_pathname() {
            return write!(f, "{}", p.display());
        }
        #[cfg(target_os = "linux")]
        if let Some(name) = self.as_abstract_name() {
            return write!(f, "@{}", String::from_utf8_lossy(name));
        }
        f.write_str("(unnamed)")
    }
}

/// Where a datagram came from: an IP address and port, or a Unix address.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// An IPv4 or IPv6 sender (UDP).
    Inet(SocketAddr),
    /// A Unix-domain sender.
    Unix(UnixAddr),
}

impl PeerAddr {
    /// The IP address and port, for a UDP peer.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Inet(a) => Some(*a),
            PeerAddr::Unix(_) => None,
        }
    }

    /// The Unix address, for a Unix-domain peer.
    pub fn as_unix(&self) -> Option<&UnixAddr> {
        match self {
            PeerAddr::Inet(_) => None,
            PeerAddr::Unix(a) => Some(a),
        }
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Inet(a) => write!(f, "{a}"),
            PeerAddr::Unix(a) => write!(f, "{a}"),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> PeerAddr {
        PeerAddr::Inet(a)
    }
}

impl From<UnixAddr> for PeerAddr {
    fn from(a: UnixAddr) -> PeerAddr {
        PeerAddr::Unix(a)
    }
}

/// Anything a datagram can be sent to: [`SocketAddr`], [`PeerAddr`],
/// [`UnixAddr`], a socket2 [`SockAddr`], or a filesystem [`Path`] of a Unix
/// socket — and references to each. Conversions happen on the stack;
/// sending allocates nothing.
pub trait Destination {
    /// The address in the form the send path takes (an implementation
    /// detail, not part of the stable API).
    #[doc(hidden)]
    fn dest(&self) -> io::Result<private::Dest<'_>>;
}

pub(crate) mod private {
    use std::borrow::Cow;

    /// A destination: an IP address (converted to `sockaddr_in{,6}` on the
    /// stack when sending) or a raw address.
    #[derive(Debug)]
    pub enum Dest<'a> {
        /// IPv4 / IPv6.
        Inet(std::net::SocketAddr),
        /// Anything else (Unix).
        Sock(Cow<'a, socket2::SockAddr>),
    }

    impl Dest<'_> {
        /// As a socket2 address (for `connect`).
        pub(crate) fn to_sock_addr(&self) -> socket2::SockAddr {
            match self {
                Dest::Inet(a) => socket2::SockAddr::from(*a),
                Dest::Sock(s) => s.as_ref().clone(),
            }
        }
    }
}

use private::Dest;

impl<T: Destination + ?Sized> Destination for &T {
    fn dest(&self) -> io::Result<Dest<'_>> {
        (**self).dest()
    }
}

impl Destination for SocketAddr {
    fn dest(&self) -> io::Result<Dest<'_>> {
        Ok(Dest::Inet(*self))
    }
}

impl Destination for UnixAddr {
    fn dest(&self) -> io::Result<Dest<'_>> {
        if self.is_unnamed() {
            return Err(unnamed_dest());
        }
        Ok(Dest::Sock(Cow::Borrowed(&self.0)))
    }
}

impl Destination for PeerAddr {
    fn dest(&self) -> io::Result<Dest<'_>> {
        match self {
            PeerAddr::Inet(a) => Ok(Dest::Inet(*a)),
            PeerAddr::Unix(a) => a.dest(),
        }
    }
}

impl Destination for Path {
    fn dest(&self) -> io::Result<Dest<'_>> {
        UnixAddr::from_pathname(self).map(|a| Dest::Sock(Cow::Owned(a.0)))
    }
}

impl Destination for PathBuf {
    fn dest(&self) -> io::Result<Dest<'_>> {
        self.as_path().dest()
    }
}

impl Destination for SockAddr {
    fn dest(&self) -> io::Result<Dest<'_>> {
        match self.as_socket() {
            Some(a) => Ok(Dest::Inet(a)),
            None => Ok(Dest::Sock(Cow::Borrowed(self))),
        }
    }
}

/// Anything that names a Unix socket to bind or connect to: a filesystem
/// path (`&str`, `String`, `&Path`, `PathBuf`) or a [`UnixAddr`] (which can
/// also be an abstract name on Linux).
///
/// ```
/// use msgloop::{ToUnixAddr, UnixAddr};
/// let a = "/tmp/app.sock".to_unix_addr()?;
/// assert_eq!(a, UnixAddr::from_pathname("/tmp/app.sock")?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait ToUnixAddr {
    /// The address (fails for a path that does not fit a socket address).
    fn to_unix_addr(&self) -> io::Result<UnixAddr>;
}

impl<T: ToUnixAddr + ?Sized> ToUnixAddr for &T {
    fn to_unix_addr(&self) -> io::Result<UnixAddr> {
        (**self).to_unix_addr()
    }
}

impl ToUnixAddr for UnixAddr {
    fn to_unix_addr(&self) -> io::Result<UnixAddr> {
        Ok(self.clone())
    }
}

impl ToUnixAddr for Path {
    fn to_unix_addr(&self) -> io::Result<UnixAddr> {
        UnixAddr::from_pathname(self)
    }
}

impl ToUnixAddr for PathBuf {
    fn to_unix_addr(&self) -> io::Result<UnixAddr> {
        UnixAddr::from_pathname(self)
    }
}

impl ToUnixAddr for str {
    fn to_unix_addr(&self) -> io::Result<UnixAddr> {
        UnixAddr::from_pathname(self)
    }
}

impl ToUnixAddr for String {
    fn to_unix_addr(&self) -> io::Result<UnixAddr> {
        UnixAddr::from_pathname(self)
    }
}

/// The first address `addr` resolves to; errors name `what`.
pub(crate) fn first_addr<A: std::net::ToSocketAddrs>(
    addr: A,
    what: &str,
) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| crate::error::context(e, format_args!("{what}: resolving the address")))?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}: the address resolved to nothing"),
            )
        })
}

fn unnamed_dest() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "cannot send to an unnamed Unix socket (the sender is not bound)",
    )
}

/// The error for a non-IP sender address on an IP socket.
pub(crate) fn not_inet() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the kernel reported a non-IP sender address on an IP socket",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathname_round_trip_and_display() {
        let a = UnixAddr::from_pathname("/tmp/x.sock").unwrap();
        assert_eq!(a.as_pathname(), Some(Path::new("/tmp/x.sock")));
        assert!(!a.is_unnamed());
        assert_eq!(a.to_string(), "/tmp/x.sock");
        assert!(UnixAddr::from_pathname("").is_err());
        assert!(UnixAddr::from_pathname("a".repeat(200)).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_names() {
        let a = UnixAddr::from_abstract_name(b"msgloop-test").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"msgloop-test"[..]));
        assert_eq!(a.as_pathname(), None);
        assert_eq!(a.to_string(), "@msgloop-test");
        assert!(UnixAddr::from_abstract_name(&[b'x'; 108]).is_err());
        assert!(UnixAddr::from_abstract_name(&[b'x'; 107]).is_ok());
    }

    #[test]
    fn unnamed_is_not_a_destination() {
        let a = UnixAddr::from_received(crate::sys::RawAddr::new().to_sock_addr());
        assert!(a.is_unnamed());
        assert!(a.dest().is_err());
        assert_eq!(a.to_string(), "(unnamed)");
    }
}
