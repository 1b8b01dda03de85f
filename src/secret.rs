//! Secrets: making them (admin tokens, session ids, CSRF tokens, CSP nonces)
//! and comparing presented ones, one helper each.

use rand::TryRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 32 random bytes from the OS, hex: admin tokens, session ids, CSRF tokens,
/// CSP nonces.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS's random source (getrandom) failed");
    hex::encode(bytes)
}

/// Whether `presented` equals `expected`, in time that depends on neither:
/// their SHA-256 digests are compared in constant time, so not even the
/// expected secret's length leaks. An empty expected secret matches nothing.
pub fn matches(presented: &[u8], expected: &[u8]) -> bool {
    if expected.is_empty() {
        return false;
    }
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    a.ct_eq(&b).into()
}

/// The token of an `Authorization: Bearer <token>` header value. The scheme
/// is case-insensitive (RFC 9110); one or more spaces follow it.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole_and_an_empty_one_matches_nothing() {
        assert!(matches(b"abc", b"abc"));
        assert!(!matches(b"abd", b"abc"));
        assert!(!matches(b"ab", b"abc"));
        assert!(!matches(b"abcd", b"abc"));
        assert!(!matches(b"", b""));
        assert!(!matches(b"x", b""));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for h in ["Bearer t0k", "bearer t0k", "BEARER t0k", "Bearer  t0k"] {
            assert_eq!(bearer(h), Some("t0k"), "{h}");
        }
        for h in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", ""] {
            assert_eq!(bearer(h), None, "{h}");
        }
    }
}
