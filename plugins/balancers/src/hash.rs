//! Hashing of keys and backend identities for the hash algorithms.
//!
//! A fixed, seedless hash so that every gateway of a fleet, and every restart, sends a key
//! to the same backend: 8 bytes at a time folded with a multiply-rotate step (as FxHash),
//! then MurmurHash3's 64-bit finaliser (`fmix64`) to spread every input bit over the
//! output. No allocation.

use std::net::IpAddr;

/// MurmurHash3's 64-bit finaliser: a bijection that mixes every bit into every other.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

const K: u64 = 0x517c_c1b7_2722_0a95;

/// The 64-bit hash of `data`.
#[inline]
pub(crate) fn bytes(data: &[u8]) -> u64 {
    let mut h = (data.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    fmix64(h)
}

/// The hash of a client address; an IPv4-mapped IPv6 address hashes as its IPv4 form.
#[inline]
pub(crate) fn ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => bytes(&v4.octets()),
        IpAddr::V6(v6) => bytes(&v6.octets()),
    }
}

/// The hash a hash algorithm uses for one request: of [`Pick::key`] when set, else of the
/// client address, else `None`.
///
/// [`Pick::key`]: switchyard_plugin::Pick::key
#[inline]
pub(crate) fn request(pick: &switchyard_plugin::Pick<'_>) -> Option<u64> {
    match (pick.key, pick.client_ip) {
        (Some(key), _) => Some(bytes(key)),
        (None, Some(addr)) => Some(ip(addr)),
        (None, None) => None,
    }
}

/// The next hash in a deterministic sequence of retries after `h`.
#[inline]
pub(crate) fn rehash(h: u64) -> u64 {
    fmix64(h.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn stable_and_length_sensitive() {
        assert_eq!(bytes(b"hello"), bytes(b"hello"));
        assert_ne!(bytes(b"hello"), bytes(b"hello\0"));
        assert_ne!(bytes(b""), bytes(b"\0"));
        assert_ne!(bytes(b"abcdefgh"), bytes(b"abcdefgi"));
        // Fixed across builds and processes: a fleet must agree.
        assert_eq!(bytes(b"key"), bytes(b"key"));
    }

    #[test]
    fn mapped_ipv6_hashes_as_ipv4() {
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(ip(IpAddr::V4(v4)), ip(IpAddr::V6(v4.to_ipv6_mapped())));
        assert_ne!(ip(IpAddr::V4(v4)), ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }
}
