//! What only the fuzz target and the unit tests see: built with
//! `--cfg fuzzing` (which cargo-fuzz sets) or for `cargo test`, and never
//! part of the crate's API.

use std::os::fd::RawFd;

use super::UCred;
use crate::sys::cmsg;

/// Control data parsed without trusting it: see [`parse_control`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParsedControl {
    /// The numbers in every `SCM_RIGHTS` message, in order. Plain integers,
    /// not owned descriptors: nothing here is closed or otherwise trusted.
    pub fds: Vec<RawFd>,
    /// The first complete `SCM_CREDENTIALS` message.
    pub credentials: Option<UCred>,
    /// A header or payload was cut short, or a length was impossible.
    pub malformed: bool,
    /// Control messages of other kinds, skipped.
    pub other: usize,
}

/// Parses raw control-message bytes (`msg_control`) — the same walk the
/// receive path uses. Total: any input gives a result, never a panic.
///
/// Descriptor numbers stay plain integers here. Only the real receive path,
/// right after `recvmsg`, turns the numbers the kernel installed into
/// `OwnedFd`s.
pub fn parse_control(bytes: &[u8]) -> ParsedControl {
    let mut fds = Vec::new();
    let s = cmsg::parse(bytes, |fd| fds.push(fd));
    ParsedControl {
        fds,
        credentials: s.creds.map(UCred::from),
        malformed: s.malformed,
        other: s.other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_control_is_total_on_junk() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut bytes = [0u8; 96];
        for _ in 0..2000 {
            for b in bytes.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            for cut in [0, 1, 15, 16, 17, 40, 96] {
                let _ = parse_control(&bytes[..cut]);
            }
        }
        assert_eq!(parse_control(&[]), ParsedControl::default());
    }
}
