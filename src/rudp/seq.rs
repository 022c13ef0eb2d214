//! Serial-number arithmetic (RFC 1982 style) for 32-bit wrapping sequence
//! numbers.
//!
//! Every comparison of packet numbers and message sequence numbers in this
//! module tree goes through [`seq_cmp`]; the helpers below are thin wrappers
//! around it so that there is exactly one place that decides what "newer"
//! means.
//!
//! `a` is newer than `b` when `a - b` (mod 2^32), read as a signed 32-bit
//! number, is positive. Two numbers exactly 2^31 apart are ambiguous; the
//! protocol keeps every window far below that (at most a few hundred thousand
//! numbers), so the ambiguity never arises between legitimate values.

use core::cmp::Ordering;

/// Compares two wrapping 32-bit sequence numbers.
///
/// Returns `Less` when `a` is older than `b`, `Greater` when newer, `Equal`
/// when they are the same number.
#[inline]
pub fn seq_cmp(a: u32, b: u32) -> Ordering {
    (a.wrapping_sub(b) as i32).cmp(&0)
}

/// `a` is older than `b`.
#[inline]
pub fn seq_lt(a: u32, b: u32) -> bool {
    seq_cmp(a, b) == Ordering::Less
}

/// `a` is older than or equal to `b`.
#[inline]
pub fn seq_le(a: u32, b: u32) -> bool {
    seq_cmp(a, b) != Ordering::Greater
}

/// `a` is newer than `b`.
#[inline]
pub fn seq_gt(a: u32, b: u32) -> bool {
    seq_cmp(a, b) == Ordering::Greater
}

/// `a` is newer than or equal to `b`.
#[inline]
pub fn seq_ge(a: u32, b: u32) -> bool {
    seq_cmp(a, b) != Ordering::Less
}

/// Forward distance from `from` to `to` (mod 2^32). Only meaningful when
/// `seq_ge(to, from)`.
#[inline]
pub fn seq_dist(from: u32, to: u32) -> u32 {
    to.wrapping_sub(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_order() {
        assert_eq!(seq_cmp(1, 2), Ordering::Less);
        assert_eq!(seq_cmp(2, 1), Ordering::Greater);
        assert_eq!(seq_cmp(7, 7), Ordering::Equal);
        assert!(seq_lt(1, 2) && seq_le(2, 2) && seq_gt(3, 2) && seq_ge(3, 3));
    }

    #[test]
    fn across_wrap() {
        assert!(seq_lt(u32::MAX, 0));
        assert!(seq_gt(0, u32::MAX));
        assert!(seq_lt(u32::MAX - 10, 5));
        assert!(seq_gt(5, u32::MAX - 10));
        assert_eq!(seq_dist(u32::MAX - 1, 1), 3);
    }

    #[test]
    fn half_range_boundary() {
        // Just under half the space apart: still ordered the obvious way.
        assert!(seq_lt(0, (1 << 31) - 1));
        assert!(seq_gt((1 << 31) - 1, 0));
        // Just over half: the shorter way round wins.
        assert!(seq_gt(0, (1 << 31) + 1));
    }

    #[test]
    fn antisymmetric_sample() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let y = x.rotate_left(13) ^ 0x9e37_79b9;
            if x.wrapping_sub(y) == 1 << 31 {
                continue;
            }
            assert_eq!(seq_cmp(x, y), seq_cmp(y, x).reverse());
        }
    }
}
