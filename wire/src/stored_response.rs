//! The value stored per idempotency key on the edge: the original response, so a retry gets the
//! same status and body byte for byte.
//!
//! `version u8 (=1) | status u16 LE | created_ms u64 LE | body_sha256 [32] | response body`.

const VERSION: u8 = 1;
const HEADER: usize = 1 + 2 + 8 + 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub created_ms: u64,
    /// SHA-256 of the request body the key was first used with.
    pub request_hash: [u8; 32],
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoredResponseError {
    #[error("stored response is truncated")]
    Truncated,
    #[error("unknown stored response version {0}")]
    Version(u8),
}

impl StoredResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.request_hash);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoredResponseError> {
        if bytes.len() < HEADER {
            return Err(StoredResponseError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(StoredResponseError::Version(bytes[0]));
        }
        let mut request_hash = [0u8; 32];
        request_hash.copy_from_slice(&bytes[11..43]);
        Ok(Self {
            status: u16::from_le_bytes([bytes[1], bytes[2]]),
            created_ms: u64::from_le_bytes(bytes[3..11].try_into().map_err(|_| StoredResponseError::Truncated)?),
            request_hash,
            body: bytes[HEADER..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = StoredResponse { status: 202, created_ms: 42, request_hash: [7; 32], body: b"{}".to_vec() };
        assert_eq!(StoredResponse::decode(&r.encode()), Ok(r));
        assert_eq!(StoredResponse::decode(&[1, 2]), Err(StoredResponseError::Truncated));
        assert_eq!(StoredResponse::decode(&[9; 50]), Err(StoredResponseError::Version(9)));
    }
}
