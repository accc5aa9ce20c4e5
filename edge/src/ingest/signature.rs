//! Optional per-key request signatures: `X-Signature: t=<unix seconds>,v1=<hex>` where the hex is
//! HMAC-SHA256(secret, `<t>.` + raw body as sent). The timestamp must be within a bounded skew,
//! and a signature is accepted once: a captured request cannot be replayed inside the window.
//! The edge remembers accepted signatures durably (`idempotency::IdempotencyStore::admit_signature`)
//! until [`Verified::expires_ms`], and derives a signed request's batch ID from its MAC
//! (`sluice_wire::ids::signed_batch_id`), so a replay to another edge is dropped by core's dedupe.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this key requires an `X-Signature: t=<unix>,v1=<hex hmac-sha256>` header")]
    Missing,
    #[error("`X-Signature` must look like `t=<unix>,v1=<hex>`")]
    Malformed,
    #[error("signature timestamp is more than {0} s away from the server clock")]
    Skew(u64),
    #[error("signature does not match the body")]
    Mismatch,
    #[error("signature was already used")]
    Replayed,
}

/// A signature that checked out, identified for replay detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub timestamp: i64,
    pub mac: Vec<u8>,
}

impl Verified {
    /// Epoch milliseconds after which this signature fails the skew check, so it need not be
    /// remembered any longer.
    pub fn expires_ms(&self, skew_secs: u64) -> u64 {
        let secs = self.timestamp.saturating_add_unsigned(skew_secs).max(0) as u64;
        secs.saturating_mul(1000)
    }
}

/// Verifies `header` over `body` with `secret`, at server time `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    skew_secs: u64,
) -> Result<Verified, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (t, mac) = t.zip(v1).ok_or(SignatureError::Malformed)?;
    if now.abs_diff(t) > skew_secs {
        return Err(SignatureError::Skew(skew_secs));
    }
    let mut h = HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    h.update(t.to_string().as_bytes());
    h.update(b".");
    h.update(body);
    h.verify_slice(&mac).map_err(|_| SignatureError::Mismatch)?;
    Ok(Verified { timestamp: t, mac })
}

/// Computes the header value a client sends (used by tests and tooling).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut h = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    h.update(t.to_string().as_bytes());
    h.update(b".");
    h.update(body);
    format!("t={t},v1={}", hex::encode(h.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_reject_and_expiry() {
        let secret = b"s3cret";
        let body = br#"[{"event":"e"}]"#;
        let now = 1_800_000_000;
        let h = sign(secret, now - 10, body);
        let v = verify(secret, Some(&h), body, now, 300).unwrap();
        assert_eq!(v.expires_ms(300), (now + 290) as u64 * 1000, "t + skew");
        assert_eq!(verify(secret, Some(&h), body, now + 290, 300).map(|v| v.timestamp), Ok(now - 10));
        assert_eq!(verify(secret, Some(&h), body, now + 291, 300), Err(SignatureError::Skew(300)), "past expires_ms");

        assert_eq!(verify(secret, Some(&h), b"[]", now, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"other", Some(&h), body, now, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(secret, Some(&h), body, now + 400, 300), Err(SignatureError::Skew(300)));
        assert_eq!(verify(secret, None, body, now, 300), Err(SignatureError::Missing));
        assert_eq!(verify(secret, Some("v1=zz"), body, now, 300), Err(SignatureError::Malformed));
    }
}
