//! The events a connection hands to its owner, and the arena that holds the
//! bytes of small messages until they are polled.
//!
//! A message reaches the application by one of three routes, chosen when it
//! is delivered and told apart by [`MsgData`]:
//!
//! - in-order unfragmented messages are copied once, into the inbox's arena
//!   (`poll_event_ref` then lends them out: no allocation per message);
//! - reassembled or reordered messages already have a vector of their own,
//!   which is moved;
//! - while a packet is handled in place (the reactor's path,
//!   [`Connection::handle_packet_in_place`](super::Connection::handle_packet_in_place)),
//!   messages lying whole in it are not copied at all: the event records
//!   where they are in the caller's receive buffer.

use std::collections::VecDeque;

use super::stats::PerGuarantee;
use crate::rudp::{Event, EventRef, Guarantee, RudpCloseReason};

/// Data handed to the application, waiting in the event queue.
#[derive(Debug)]
enum MsgData {
    Arena {
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
    /// Still in the caller's receive buffer, at `offset` (a packet handled
    /// with [`Connection::handle_packet_in_place`](super::Connection::handle_packet_in_place)):
    /// not copied at all.
    InPlace {
        offset: usize,
        len: usize,
    },
}

/// A packet being handled where it lies in the caller's receive buffer:
/// the address and length of its bytes, and their offset in that buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InPlace {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) origin: usize,
}

/// A message's bytes as [`Connection::poll_event_raw`](super::Connection::poll_event_raw)
/// gives them.
#[derive(Debug)]
pub(crate) enum MsgRef<'a> {
    /// Here.
    Bytes(&'a [u8]),
    /// In the caller's receive buffer, `buf[offset..offset + len]`.
    InPlace { offset: usize, len: usize },
}

/// [`EventRef`] with message bytes possibly left in
/// the caller's buffer.
#[derive(Debug)]
pub(crate) enum RawEvent<'a> {
    Connected,
    Message {
        data: MsgRef<'a>,
        guarantee: Guarantee,
    },
    Writable,
    Closed(RudpCloseReason),
}

#[derive(Debug)]
enum PendingEvent {
    Connected,
    Message { guarantee: Guarantee, data: MsgData },
    Writable,
    Closed(RudpCloseReason),
}

/// Events waiting for `poll_event`, with an arena for in-order small messages.
///
/// The arena is only cleared when no queued event points into it.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    events: VecDeque<PendingEvent>,
    arena: Vec<u8>,
    /// Message bytes waiting in `events`.
    bytes: usize,
    delivered: PerGuarantee,
    /// Set while a packet is handled in place: messages that lie whole in
    /// it are queued by position instead of copied.
    place: Option<InPlace>,
    /// The message most recently returned by `pop_raw`, kept alive for the
    /// borrow.
    last: Option<Vec<u8>>,
}

impl Inbox {
    /// Events are waiting.
    pub(super) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Message bytes waiting (they count toward the receive buffer limit).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages handed to the application so far.
    pub(super) fn delivered(&self) -> PerGuarantee {
        self.delivered
    }

    /// Reuses the arena from its start when no event refers to it.
    pub(super) fn recycle(&mut self) {
        if self.events.is_empty() {
            self.arena.clear();
        }
    }

    /// Sets (or, with `None`, ends) the packet being handled in place.
    pub(super) fn set_place(&mut self, place: Option<InPlace>) {
        self.place = place;
    }

    /// Queues `Connected`.
    pub(super) fn push_connected(&mut self) {
        self.events.push_back(PendingEvent::Connected);
    }

    /// Queues `Writable`.
    pub(super) fn push_writable(&mut self) {
        self.events.push_back(PendingEvent::Writable);
    }

    /// Queues `Closed`.
    pub(super) fn push_closed(&mut self, reason: RudpCloseReason) {
        self.events.push_back(PendingEvent::Closed(reason));
    }

    /// Queues a message from borrowed bytes: by position when they lie in
    /// the packet handled in place, else copied into the arena.
    pub(super) fn deliver_slice(&mut self, g: Guarantee, data: &[u8]) {
        if let Some(p) = self.place {
            let at = (data.as_ptr() as usize).wrapping_sub(p.base);
            if at <= p.len && data.len() <= p.len - at {
                self.bytes += data.len();
                self.delivered.add(g);
                self.events.push_back(PendingEvent::Message {
                    guarantee: g,
                    data: MsgData::InPlace {
                        offset: p.origin + at,
                        len: data.len(),
                    },
                });
                return;
            }
        }
        if self.events.is_empty() {
            self.arena.clear();
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        self.bytes += data.len();
        self.delivered.add(g);
        self.events.push_back(PendingEvent::Message {
            guarantee: g,
            data: MsgData::Arena {
                start,
                len: data.len(),
            },
        });
    }

    /// Queues a message that has a vector of its own.
    pub(super) fn deliver_vec(&mut self, g: Guarantee, data: Vec<u8>) {
        self.bytes += data.len();
        self.delivered.add(g);
        self.events.push_back(PendingEvent::Message {
            guarantee: g,
            data: MsgData::Owned(data),
        });
    }

    /// The next event, with message bytes copied out (or moved, for messages
    /// that have a vector of their own).
    #[inline]
    pub(super) fn pop_event(&mut self) -> Option<Event> {
        let Some(ev) = self.events.pop_front() else {
            self.arena.clear();
            return None;
        };
        Some(match ev {
            PendingEvent::Connected => Event::Connected,
            PendingEvent::Writable => Event::Writable,
            PendingEvent::Closed(r) => Event::Closed(r),
            PendingEvent::Message { guarantee, data } => {
                let data = match data {
                    MsgData::Owned(v) => v,
                    MsgData::Arena { start, len } => {
                        self.arena.get(start..start + len).unwrap_or(&[]).to_vec()
                    }
                    MsgData::InPlace { len, .. } => {
                        // Only the reactor handles packets in place, and it
                        // polls with `poll_event_raw`.
                        debug_assert!(false, "in-place message polled by copy");
                        log::error!("rudp: a {len} B message left in a receive buffer was lost");
                        Vec::new()
                    }
                };
                self.bytes -= data.len();
                Event::Message { data, guarantee }
            }
        })
    }

    /// The next event, borrowing message bytes from the inbox.
    #[inline]
    pub(super) fn pop_ref(&mut self) -> Option<EventRef<'_>> {
        Some(match self.pop_raw()? {
            RawEvent::Connected => EventRef::Connected,
            RawEvent::Writable => EventRef::Writable,
            RawEvent::Closed(r) => EventRef::Closed(r),
            RawEvent::Message { data, guarantee } => EventRef::Message {
                data: match data {
                    MsgRef::Bytes(d) => d,
                    MsgRef::InPlace { len, .. } => {
                        // As in `pop_event`: only the reactor's path makes these.
                        debug_assert!(false, "in-place message polled by reference");
                        log::error!("rudp: a {len} B message left in a receive buffer was lost");
                        &[]
                    }
                },
                guarantee,
            },
        })
    }

    /// The next event, borrowing message bytes from the inbox, or leaving
    /// them in the caller's buffer ([`MsgRef::InPlace`]).
    pub(super) fn pop_raw(&mut self) -> Option<RawEvent<'_>> {
        let Some(ev) = self.events.pop_front() else {
            self.arena.clear();
            self.last = None;
            return None;
        };
        Some(match ev {
            PendingEvent::Message { guarantee, data } => {
                let data = match data {
                    MsgData::Arena { start, len } => {
                        self.bytes -= len;
                        MsgRef::Bytes(self.arena.get(start..start + len).unwrap_or(&[]))
                    }
                    MsgData::Owned(v) => {
                        self.bytes -= v.len();
                        MsgRef::Bytes(self.last.insert(v))
                    }
                    MsgData::InPlace { offset, len } => {
                        self.bytes -= len;
                        MsgRef::InPlace { offset, len }
                    }
                };
                RawEvent::Message { data, guarantee }
            }
            PendingEvent::Connected => RawEvent::Connected,
            PendingEvent::Writable => RawEvent::Writable,
            PendingEvent::Closed(r) => RawEvent::Closed(r),
        })
    }

    /// Copies every queued in-place message out of `buf` (the caller's
    /// receive buffer, still holding the packets) into the arena.
    pub(super) fn materialize(&mut self, buf: &[u8]) {
        let Inbox { events, arena, .. } = self;
        for ev in events.iter_mut() {
            if let PendingEvent::Message { data, .. } = ev {
                if let MsgData::InPlace { offset, len } = *data {
                    let bytes = buf.get(offset..offset + len).unwrap_or(&[]);
                    let start = arena.len();
                    arena.extend_from_slice(bytes);
                    *data = MsgData::Arena {
                        start,
                        len: bytes.len(),
                    };
                }
            }
        }
    }
}
