//! Reassembly of fragmented messages.
//!
//! Every fragment but the last carries exactly the connection's fragment
//! size, so fragment `i` lands at `i * frag_size` whatever order the
//! fragments arrive in, and the message's length is known once the last one
//! has arrived.

use crate::rudp::wire::{FragInfo, SetInfo};
use crate::rudp::Guarantee;

/// A message being reassembled from fragments. Every fragment but the last
/// carries exactly `frag_size` bytes, so fragment `i` goes to `i * frag_size`.
#[derive(Debug)]
pub(super) struct Reassembly {
    count: u16,
    received: u16,
    /// Bit `i` set: fragment `i` received.
    bits: Vec<u64>,
    /// The message so far; as long as the furthest fragment received.
    data: Vec<u8>,
    /// The message's length, known once the last fragment arrived.
    total: Option<usize>,
    set: Option<SetInfo>,
}

/// What [`Reassembly::insert`] did with a fragment.
pub(super) enum FragInsert {
    /// Stored; the reassembly grew by `grown` bytes.
    Added { grown: usize },
    /// Already received.
    Duplicate,
    /// Does not belong to this message (another fragment count).
    Mismatch,
}

impl Reassembly {
    pub(super) fn new(count: u16, set: Option<SetInfo>) -> Self {
        Reassembly {
            count,
            received: 0,
            bits: vec![0; usize::from(count).div_ceil(64)],
            data: Vec::new(),
            total: None,
            set,
        }
    }

    /// How much inserting a fragment of `len` bytes would grow the buffer.
    pub(super) fn growth(&self, f: FragInfo, len: usize, frag_size: usize) -> usize {
        (usize::from(f.index) * frag_size + len).saturating_sub(self.data.len())
    }

    pub(super) fn insert(&mut self, f: FragInfo, payload: &[u8], frag_size: usize) -> FragInsert {
        if f.count != self.count {
            return FragInsert::Mismatch;
        }
        let (w, bit) = (usize::from(f.index / 64), 1u64 << (f.index % 64));
        let Some(word) = self.bits.get_mut(w) else {
            return FragInsert::Mismatch;
        };
        if *word & bit != 0 {
            return FragInsert::Duplicate;
        }
        *word |= bit;
        self.received += 1;
        let start = usize::from(f.index) * frag_size;
        let end = start + payload.len();
        let mut grown = 0;
        if self.data.len() < end {
            grown = end - self.data.len();
            self.data.resize(end, 0);
        }
        if let Some(dst) = self.data.get_mut(start..end) {
            dst.copy_from_slice(payload);
        }
        if f.index + 1 == f.count {
            self.total = Some(end);
        }
        FragInsert::Added { grown }
    }

    /// The set the message belongs to, if any.
    pub(super) fn set(&self) -> Option<SetInfo> {
        self.set
    }

    /// Every fragment arrived.
    pub(super) fn is_complete(&self) -> bool {
        self.received == self.count
    }

    /// The whole message.
    pub(super) fn finish(mut self) -> Vec<u8> {
        if let Some(t) = self.total {
            self.data.truncate(t);
        }
        self.data
    }

    /// Bytes held.
    pub(super) fn held(&self) -> usize {
        self.data.len()
    }
}

/// An unreliable (None or Order) message being reassembled.
#[derive(Debug)]
pub(super) struct UnrelPartial {
    pub(super) guarantee: Guarantee,
    pub(super) seq: u32,
    pub(super) r: Reassembly,
}
