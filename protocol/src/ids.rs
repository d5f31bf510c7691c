//! Identifiers that appear in topics and payloads. Each can only be built valid: a topic segment
//! must never contain `/`, `+` or `#`, or a lane could publish into another lane's topic tree.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not valid: use 1-64 characters from A-Z a-z 0-9 _ -")]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
}

fn valid_segment(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! segment_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if valid_segment(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError { kind: $kind, value: s })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

segment_id!(
    /// A parking lot (one site, one tariff).
    LotId,
    "lot id"
);
segment_id!(
    /// One lane of a lot: a barrier with its camera, loop and display.
    LaneId,
    "lane id"
);
segment_id!(
    /// An edge gateway process.
    GatewayId,
    "gateway id"
);
segment_id!(
    /// A piece of barrier hardware (camera, loop detector, arm, display).
    DeviceId,
    "device id"
);

/// The id of one passage event: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    pub fn new() -> EventId {
        EventId(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(EventId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_topic_metacharacters() {
        assert!(LotId::parse("lot-1").is_ok());
        for bad in ["", "a/b", "+", "#", "a b", &"x".repeat(65)] {
            assert!(LaneId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let err = serde_json::from_str::<LotId>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("lot id"));
    }
}
