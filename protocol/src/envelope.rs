//! The versioned JSON envelope every message travels in, with optional HMAC signing.
//!
//! ```json
//! {"v":1,"type":"passage","sent_at":"2026-11-25T08:00:00Z","body":{...},"sig":"9f2c..."}
//! ```
//!
//! `sig`, when present, is the lowercase hex HMAC-SHA256, under the sender's key, of
//! `"{v}\n{type}\n{sent_at}\n{body}"`, where `body` is the body re-serialised with its object
//! keys sorted (serde_json's default map order) and no whitespace. Receivers verify it by the
//! same recipe, so key order and spacing on the wire do not matter.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The envelope version this crate writes and reads.
pub const VERSION: u32 = 1;

/// A message body: its `type` tag in the envelope.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: &'static str;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not a JSON envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0} (this build reads version {VERSION})")]
    Version(u32),
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongType { expected: &'static str, got: String },
    #[error("body of {kind:?} message is invalid: {detail}")]
    Body { kind: &'static str, detail: String },
    #[error("message is not signed")]
    Unsigned,
    #[error("message signature does not verify")]
    BadSignature,
}

impl DecodeError {
    /// A short machine-friendly reason, used as a metric label and in the dead-letter table.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Version(_) => "version",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::Body { .. } => "invalid_body",
            DecodeError::Unsigned => "unsigned",
            DecodeError::BadSignature => "bad_signature",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawEnvelope {
    v: u32,
    #[serde(rename = "type")]
    kind: String,
    sent_at: DateTime<Utc>,
    body: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

fn signing_input(v: u32, kind: &str, sent_at: &DateTime<Utc>, body: &serde_json::Value) -> String {
    format!(
        "{v}\n{kind}\n{}\n{}",
        sent_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        body
    )
}

fn mac(key: &[u8], input: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length; new_from_slice only fails for fixed-size-key MACs.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(input.as_bytes());
    m
}

/// Serialises a message in an envelope, signed when a key is given.
pub fn encode<M: Message>(body: &M, sent_at: DateTime<Utc>, key: Option<&[u8]>) -> Vec<u8> {
    // Serialising our own plain data types cannot fail: no maps with non-string keys.
    let body = serde_json::to_value(body).expect("message types serialise to JSON");
    // Millisecond precision, so the signed text survives a round trip through the JSON.
    let sent_at = DateTime::from_timestamp_millis(sent_at.timestamp_millis()).unwrap_or(sent_at);
    let sig = key.map(|k| {
        hex::encode(
            mac(k, &signing_input(VERSION, M::KIND, &sent_at, &body))
                .finalize()
                .into_bytes(),
        )
    });
    let env = RawEnvelope {
        v: VERSION,
        kind: M::KIND.to_string(),
        sent_at,
        body,
        sig,
    };
    serde_json::to_vec(&env).expect("envelope serialises to JSON")
}

/// A decoded envelope: the body, when it was sent, and whether a signature came with it.
#[derive(Debug, Clone)]
pub struct Decoded<M> {
    pub body: M,
    pub sent_at: DateTime<Utc>,
}

/// Decodes a message; with `key`, the signature must be present and verify.
pub fn decode<M: Message>(payload: &[u8], key: Option<&[u8]>) -> Result<Decoded<M>, DecodeError> {
    let env = peek(payload)?;
    if env.kind != M::KIND {
        return Err(DecodeError::WrongType {
            expected: M::KIND,
            got: env.kind,
        });
    }
    if let Some(key) = key {
        let sig = env.sig.as_deref().ok_or(DecodeError::Unsigned)?;
        let sig = hex::decode(sig).map_err(|_| DecodeError::BadSignature)?;
        mac(
            key,
            &signing_input(env.v, &env.kind, &env.sent_at, &env.body),
        )
        .verify_slice(&sig)
        .map_err(|_| DecodeError::BadSignature)?;
    }
    let body = serde_json::from_value(env.body).map_err(|e| DecodeError::Body {
        kind: M::KIND,
        detail: e.to_string(),
    })?;
    Ok(Decoded {
        body,
        sent_at: env.sent_at,
    })
}

fn peek(payload: &[u8]) -> Result<RawEnvelope, DecodeError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    // Check the version before the shape, so a future envelope is reported as such.
    let v: Version =
        serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if v.v != VERSION {
        return Err(DecodeError::Version(v.v));
    }
    serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The `type` tag of an envelope, without decoding its body.
pub fn kind_of(payload: &[u8]) -> Result<String, DecodeError> {
    peek(payload).map(|e| e.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
        s: String,
    }
    impl Message for Ping {
        const KIND: &'static str = "ping";
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Pong {}
    impl Message for Pong {
        const KIND: &'static str = "pong";
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T08:00:00.123456Z")
            .unwrap()
            .into()
    }

    #[test]
    fn round_trips_signed_and_unsigned() {
        let p = Ping {
            n: 7,
            s: "x".into(),
        };
        let plain = encode(&p, now(), None);
        assert_eq!(decode::<Ping>(&plain, None).unwrap().body, p);
        assert_eq!(
            decode::<Ping>(&plain, Some(b"k")).unwrap_err(),
            DecodeError::Unsigned
        );
        let signed = encode(&p, now(), Some(b"k"));
        assert_eq!(decode::<Ping>(&signed, Some(b"k")).unwrap().body, p);
        assert_eq!(
            decode::<Ping>(&signed, Some(b"other")).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn a_tampered_body_fails_verification() {
        let signed = encode(
            &Ping {
                n: 7,
                s: "x".into(),
            },
            now(),
            Some(b"k"),
        );
        let tampered = String::from_utf8(signed)
            .unwrap()
            .replace("\"n\":7", "\"n\":8");
        assert_eq!(
            decode::<Ping>(tampered.as_bytes(), Some(b"k")).unwrap_err(),
            DecodeError::BadSignature
        );
    }

    #[test]
    fn key_order_on_the_wire_does_not_matter() {
        let signed = encode(
            &Ping {
                n: 7,
                s: "x".into(),
            },
            now(),
            Some(b"k"),
        );
        let reordered = String::from_utf8(signed)
            .unwrap()
            .replace("{\"n\":7,\"s\":\"x\"}", "{ \"s\": \"x\", \"n\": 7 }");
        assert!(decode::<Ping>(reordered.as_bytes(), Some(b"k")).is_ok());
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        assert_eq!(
            decode::<Ping>(b"nonsense", None).unwrap_err().reason(),
            "malformed"
        );
        let future = br#"{"v":2,"type":"ping","sent_at":"2026-01-01T00:00:00Z","body":{}}"#;
        assert_eq!(
            decode::<Ping>(future, None).unwrap_err(),
            DecodeError::Version(2)
        );
        let pong = encode(&Pong {}, now(), None);
        assert!(matches!(
            decode::<Ping>(&pong, None),
            Err(DecodeError::WrongType { .. })
        ));
        let bad_body =
            br#"{"v":1,"type":"ping","sent_at":"2026-01-01T00:00:00Z","body":{"n":"x"}}"#;
        assert_eq!(
            decode::<Ping>(bad_body, None).unwrap_err().reason(),
            "invalid_body"
        );
    }
}
