//! The control-message (ancillary data) parser on arbitrary bytes — what
//! `recvmsg` puts in `msg_control`: it never panics, never reads past the
//! buffer, and reports at most as many descriptors as the bytes can hold.
//! (It yields plain integers; only the real receive path turns kernel-
//! written numbers into owned descriptors.)

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = msgloop::net::parse_control(data);
    assert!(parsed.fds.len() * 4 <= data.len());
    assert!(parsed.other <= data.len());
});
