//! The versioned JSON envelope every message travels in, with optional HMAC signing.
//!
//! ```json
//! {"v":1,"type":"passage","sent_at":"2026-11-25T08:00:00.000Z","body":{...},"sig":"9f2c..."}
//! ```
//!
//! `sig`, when present, is the lowercase hex HMAC-SHA256, under the sender's key, of the UTF-8
//! text `"{v}\n{type}\n{sent_at}\n{body}"`, where `sent_at` is the string value exactly as sent
//! and `body` is the body's JSON text **exactly as it appears in the payload**, from its opening
//! `{` to its closing `}`. Nothing is re-serialised on either side: a receiver hashes the bytes
//! it was given, so number formatting (an `f32` confidence), key order and spacing can never make
//! a correct signature fail, and no two payloads that differ in their body share a signature.
//! `sent_at` is always written with milliseconds (`...T08:00:00.000Z`).

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// The envelope as it arrived: borrowed slices of the payload, so the signed bytes are the
/// received bytes.
#[derive(Deserialize)]
struct Wire<'a> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    sent_at: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
    #[serde(default)]
    sig: Option<&'a str>,
}

fn mac(key: &[u8], v: u32, kind: &str, sent_at: &str, body: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length; new_from_slice only fails for fixed-size-key MACs.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(format!("{v}\n{kind}\n{sent_at}\n").as_bytes());
    m.update(body.as_bytes());
    m
}

/// Serialises a message in an envelope, signed when a key is given.
pub fn encode<M: Message>(body: &M, sent_at: DateTime<Utc>, key: Option<&[u8]>) -> Vec<u8> {
    // Serialising our own plain data types cannot fail: no maps with non-string keys.
    let body = serde_json::to_string(body).expect("message types serialise to JSON");
    let sent_at = sent_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    // KIND is a plain identifier and sent_at an RFC 3339 instant: neither needs JSON escaping.
    let mut out = format!(
        "{{\"v\":{VERSION},\"type\":\"{}\",\"sent_at\":\"{sent_at}\",\"body\":{body}",
        M::KIND
    );
    if let Some(k) = key {
        let sig = mac(k, VERSION, M::KIND, &sent_at, &body)
            .finalize()
            .into_bytes();
        out.push_str(",\"sig\":\"");
        out.push_str(&hex::encode(sig));
        out.push('"');
    }
    out.push('}');
    out.into_bytes()
}

/// A decoded envelope: the body and when it was sent.
#[derive(Debug, Clone)]
pub struct Decoded<M> {
    pub body: M,
    pub sent_at: DateTime<Utc>,
}

/// An envelope whose version is known, opened but not yet verified or decoded.
pub struct Opened<'a> {
    wire: Wire<'a>,
    sent_at: DateTime<Utc>,
}

impl<'a> Opened<'a> {
    /// Reads the envelope without trusting it: check [`Opened::verify`] before acting on it.
    pub fn new(payload: &'a [u8]) -> Result<Opened<'a>, DecodeError> {
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
        let wire: Wire<'a> =
            serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let sent_at = DateTime::parse_from_rfc3339(wire.sent_at)
            .map_err(|e| DecodeError::Malformed(format!("sent_at {:?}: {e}", wire.sent_at)))?
            .with_timezone(&Utc);
        Ok(Opened { wire, sent_at })
    }

    pub fn kind(&self) -> &str {
        self.wire.kind
    }

    pub fn sent_at(&self) -> DateTime<Utc> {
        self.sent_at
    }

    pub fn is_signed(&self) -> bool {
        self.wire.sig.is_some()
    }

    /// Checks the signature over the bytes as received.
    pub fn verify(&self, key: &[u8]) -> Result<(), DecodeError> {
        let w = &self.wire;
        let sig = w.sig.ok_or(DecodeError::Unsigned)?;
        let sig = hex::decode(sig).map_err(|_| DecodeError::BadSignature)?;
        mac(key, w.v, w.kind, w.sent_at, w.body.get())
            .verify_slice(&sig)
            .map_err(|_| DecodeError::BadSignature)
    }

    /// Decodes the body as `M`, which must be the envelope's type.
    pub fn body<M: Message>(&self) -> Result<M, DecodeError> {
        if self.wire.kind != M::KIND {
            return Err(DecodeError::WrongType {
                expected: M::KIND,
                got: self.wire.kind.to_string(),
            });
        }
        serde_json::from_str(self.wire.body.get()).map_err(|e| DecodeError::Body {
            kind: M::KIND,
            detail: e.to_string(),
        })
    }
}

/// Decodes a message; with `key`, the signature must be present and verify.
pub fn decode<M: Message>(payload: &[u8], key: Option<&[u8]>) -> Result<Decoded<M>, DecodeError> {
    let env = Opened::new(payload)?;
    if env.kind() != M::KIND {
        return Err(DecodeError::WrongType {
            expected: M::KIND,
            got: env.kind().to_string(),
        });
    }
    if let Some(key) = key {
        env.verify(key)?;
    }
    Ok(Decoded {
        body: env.body()?,
        sent_at: env.sent_at(),
    })
}

/// Signs an envelope as it stands (replacing any signature it has) with `key`, keeping its
/// body bytes exactly: what a relay that holds the recipient's key uses, so a message stored
/// unsigned (an outbox row) can be signed for whoever it is finally sent to.
pub fn sign(payload: &[u8], key: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let env = Opened::new(payload)?;
    let w = &env.wire;
    let sig = mac(key, w.v, w.kind, w.sent_at, w.body.get())
        .finalize()
        .into_bytes();
    // `kind` and `sent_at` were borrowed from the payload, so they hold no escapes; quote them
    // through serde anyway so nothing can break out of the string.
    let quote = |t: &str| serde_json::to_string(t).unwrap_or_else(|_| "\"\"".into());
    Ok(format!(
        "{{\"v\":{},\"type\":{},\"sent_at\":{},\"body\":{},\"sig\":\"{}\"}}",
        w.v,
        quote(w.kind),
        quote(w.sent_at),
        w.body.get(),
        hex::encode(sig)
    )
    .into_bytes())
}

/// The `type` tag of an envelope, without decoding its body.
pub fn kind_of(payload: &[u8]) -> Result<String, DecodeError> {
    Opened::new(payload).map(|e| e.kind().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_an_encoded_envelope_equals_encoding_it_signed() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Ping {
            n: f32,
            s: String,
        }
        impl Message for Ping {
            const KIND: &'static str = "ping";
        }
        let at = DateTime::parse_from_rfc3339("2026-11-25T08:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = Ping {
            n: 0.97,
            s: "\"quoted\"".into(),
        };
        let key = b"0123456789abcdef";
        let plain = encode(&body, at, None);
        let signed = sign(&plain, key).unwrap();
        assert_eq!(signed, encode(&body, at, Some(key)));
        let resigned = sign(&signed, b"another key here").unwrap();
        assert!(decode::<Ping>(&resigned, Some(b"another key here")).is_ok());
        assert_eq!(
            decode::<Ping>(&resigned, Some(key)).unwrap_err(),
            DecodeError::BadSignature
        );
    }

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
    fn the_signature_covers_the_bytes_sent_not_a_re_serialisation() {
        let signed = encode(
            &Ping {
                n: 7,
                s: "x".into(),
            },
            now(),
            Some(b"k"),
        );
        let text = String::from_utf8(signed).unwrap();
        assert!(text.contains("\"body\":{\"n\":7,\"s\":\"x\"}"), "{text}");
        // The same body with other spacing is other bytes: it is not what was signed.
        let respaced = text.replace("{\"n\":7,\"s\":\"x\"}", "{ \"n\": 7, \"s\": \"x\" }");
        assert_eq!(
            decode::<Ping>(respaced.as_bytes(), Some(b"k")).unwrap_err(),
            DecodeError::BadSignature
        );
        // A second body key cannot smuggle another body past the signature.
        let doubled = text.replace("\"body\":", "\"body\":{\"n\":8,\"s\":\"y\"},\"body\":");
        assert_eq!(
            decode::<Ping>(doubled.as_bytes(), Some(b"k"))
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn sent_at_always_carries_milliseconds() {
        let whole = DateTime::parse_from_rfc3339("2026-11-30T08:17:12Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = String::from_utf8(encode(&Pong {}, whole, None)).unwrap();
        assert!(
            text.contains("\"sent_at\":\"2026-11-30T08:17:12.000Z\""),
            "{text}"
        );
        assert_eq!(
            decode::<Pong>(text.as_bytes(), None).unwrap().sent_at,
            whole
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Read {
        confidence: f32,
        plate: String,
    }
    impl Message for Read {
        const KIND: &'static str = "read";
    }

    proptest::proptest! {
        // f32 confidences once failed verification whenever their widened f64 text differed
        // from their own (0.97 -> 0.9700000286102295): every value must verify.
        #[test]
        fn every_f32_confidence_verifies(c in 0.0f32..=1.0, plate in "\\PC{0,12}") {
            let r = Read { confidence: c, plate };
            let signed = encode(&r, now(), Some(b"gateway key"));
            let back = decode::<Read>(&signed, Some(b"gateway key")).unwrap();
            proptest::prop_assert_eq!(back.body, r);
        }
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
