//! A request signature the edge accepted, kept until it could no longer pass the skew check, so
//! the same signed request is refused after a restart too. Stored in the edge's idempotency store
//! (redb), keyed by the signature's MAC bytes; this is the value.
//!
//! `version u8 (=1) | signed_at i64 LE (the signature's `t`, unix seconds) | expires_ms u64 LE`.

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenSignature {
    /// The `t=` of the `X-Signature` header.
    pub signed_at: i64,
    /// Epoch milliseconds after which the signature is refused as expired anyway (`t` + skew),
    /// so its entry may be deleted.
    pub expires_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeenSignatureError {
    #[error("seen-signature entry has {0} bytes, expected {LEN}")]
    Length(usize),
    #[error("unknown seen-signature version {0}")]
    Version(u8),
}

impl SeenSignature {
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0] = VERSION;
        out[1..9].copy_from_slice(&self.signed_at.to_le_bytes());
        out[9..].copy_from_slice(&self.expires_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SeenSignatureError> {
        let bytes: &[u8; LEN] = bytes.try_into().map_err(|_| SeenSignatureError::Length(bytes.len()))?;
        if bytes[0] != VERSION {
            return Err(SeenSignatureError::Version(bytes[0]));
        }
        let (mut t, mut e) = ([0u8; 8], [0u8; 8]);
        t.copy_from_slice(&bytes[1..9]);
        e.copy_from_slice(&bytes[9..]);
        Ok(Self { signed_at: i64::from_le_bytes(t), expires_ms: u64::from_le_bytes(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let s = SeenSignature { signed_at: -5, expires_ms: 1_800_000_300_000 };
        assert_eq!(SeenSignature::decode(&s.encode()), Ok(s));
        assert_eq!(s.encode()[..9], [1, 0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "byte layout is fixed");
        assert_eq!(SeenSignature::decode(&[1; 3]), Err(SeenSignatureError::Length(3)));
        assert_eq!(SeenSignature::decode(&[2; LEN]), Err(SeenSignatureError::Version(2)));
    }
}
