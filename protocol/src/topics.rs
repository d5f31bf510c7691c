//! The MQTT topic tree, built and parsed in one place.
//!
//! ```text
//! parkpay/v1/hw/{device}/frame | plate | loop          hardware -> gateway
//! parkpay/v1/hw/{device}/barrier/cmd | display         gateway  -> hardware
//! parkpay/v1/hw/{device}/barrier/state | status        hardware -> gateway
//! parkpay/v1/lots/{lot}/lanes/{lane}/events            gateway  -> server
//! parkpay/v1/lots/{lot}/lanes/{lane}/evidence          gateway  -> server
//! parkpay/v1/lots/{lot}/lanes/{lane}/decisions         server   -> gateway
//! parkpay/v1/lots/{lot}/lanes/{lane}/commands          server   -> gateway
//! parkpay/v1/lots/{lot}/lanes/{lane}/acks              gateway  -> server
//! parkpay/v1/lots/{lot}/lanes/{lane}/state             gateway  -> server (retained)
//! parkpay/v1/lots/{lot}/gateways/{gw}/status           gateway  -> server (retained, last will)
//! parkpay/v1/lots/{lot}/gateways/{gw}/allowlist        server   -> gateway (retained)
//! ```

use std::fmt;

use crate::ids::{DeviceId, GatewayId, IdError, LaneId, LotId};

pub const ROOT: &str = "parkpay/v1";
/// The shared-subscription group server instances join to split the event stream.
pub const SHARE_GROUP: &str = "parkpay";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Frame(DeviceId),
    PlateRead(DeviceId),
    Loop(DeviceId),
    BarrierCommand(DeviceId),
    Display(DeviceId),
    BarrierState(DeviceId),
    DeviceStatus(DeviceId),
    Events(LotId, LaneId),
    /// The picture of a passage the gateway would not vouch for.
    Evidence(LotId, LaneId),
    Decisions(LotId, LaneId),
    Commands(LotId, LaneId),
    Acks(LotId, LaneId),
    LaneState(LotId, LaneId),
    GatewayStatus(LotId, GatewayId),
    Allowlist(LotId, GatewayId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not under {ROOT}")]
    Foreign(String),
    #[error("topic {0:?} has an unknown shape")]
    Unknown(String),
    #[error(transparent)]
    Id(#[from] IdError),
}

impl Topic {
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(ROOT)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::Foreign(topic.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let unknown = || TopicError::Unknown(topic.to_string());
        Ok(match parts.as_slice() {
            ["hw", d, "frame"] => Topic::Frame(DeviceId::parse(*d)?),
            ["hw", d, "plate"] => Topic::PlateRead(DeviceId::parse(*d)?),
            ["hw", d, "loop"] => Topic::Loop(DeviceId::parse(*d)?),
            ["hw", d, "barrier", "cmd"] => Topic::BarrierCommand(DeviceId::parse(*d)?),
            ["hw", d, "barrier", "state"] => Topic::BarrierState(DeviceId::parse(*d)?),
            ["hw", d, "display"] => Topic::Display(DeviceId::parse(*d)?),
            ["hw", d, "status"] => Topic::DeviceStatus(DeviceId::parse(*d)?),
            ["lots", lot, "lanes", lane, leaf] => {
                let (lot, lane) = (LotId::parse(*lot)?, LaneId::parse(*lane)?);
                match *leaf {
                    "events" => Topic::Events(lot, lane),
                    "evidence" => Topic::Evidence(lot, lane),
                    "decisions" => Topic::Decisions(lot, lane),
                    "commands" => Topic::Commands(lot, lane),
                    "acks" => Topic::Acks(lot, lane),
                    "state" => Topic::LaneState(lot, lane),
                    _ => return Err(unknown()),
                }
            }
            ["lots", lot, "gateways", gw, leaf] => {
                let (lot, gw) = (LotId::parse(*lot)?, GatewayId::parse(*gw)?);
                match *leaf {
                    "status" => Topic::GatewayStatus(lot, gw),
                    "allowlist" => Topic::Allowlist(lot, gw),
                    _ => return Err(unknown()),
                }
            }
            _ => return Err(unknown()),
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Frame(d) => write!(f, "{ROOT}/hw/{d}/frame"),
            Topic::PlateRead(d) => write!(f, "{ROOT}/hw/{d}/plate"),
            Topic::Loop(d) => write!(f, "{ROOT}/hw/{d}/loop"),
            Topic::BarrierCommand(d) => write!(f, "{ROOT}/hw/{d}/barrier/cmd"),
            Topic::BarrierState(d) => write!(f, "{ROOT}/hw/{d}/barrier/state"),
            Topic::Display(d) => write!(f, "{ROOT}/hw/{d}/display"),
            Topic::DeviceStatus(d) => write!(f, "{ROOT}/hw/{d}/status"),
            Topic::Events(l, n) => write!(f, "{ROOT}/lots/{l}/lanes/{n}/events"),
            Topic::Evidence(l, n) => write!(f, "{ROOT}/lots/{l}/lanes/{n}/evidence"),
            Topic::Decisions(l, n) => write!(f, "{ROOT}/lots/{l}/lanes/{n}/decisions"),
            Topic::Commands(l, n) => write!(f, "{ROOT}/lots/{l}/lanes/{n}/commands"),
            Topic::Acks(l, n) => write!(f, "{ROOT}/lots/{l}/lanes/{n}/acks"),
            Topic::LaneState(l, n) => write!(f, "{ROOT}/lots/{l}/lanes/{n}/state"),
            Topic::GatewayStatus(l, g) => write!(f, "{ROOT}/lots/{l}/gateways/{g}/status"),
            Topic::Allowlist(l, g) => write!(f, "{ROOT}/lots/{l}/gateways/{g}/allowlist"),
        }
    }
}

/// Subscription filters the server uses. With `shared`, instances split events between them.
pub mod filters {
    use super::{ROOT, SHARE_GROUP};

    /// Passage events of one lot (`Some`) or of every lot (`None`).
    pub fn events(lot: Option<&str>, shared: bool) -> String {
        let f = format!("{ROOT}/lots/{}/lanes/+/events", lot.unwrap_or("+"));
        if shared {
            format!("$share/{SHARE_GROUP}/{f}")
        } else {
            f
        }
    }

    /// Evidence pictures of one lot (`Some`) or of every lot (`None`); shared like events.
    pub fn evidence(lot: Option<&str>, shared: bool) -> String {
        let f = format!("{ROOT}/lots/{}/lanes/+/evidence", lot.unwrap_or("+"));
        if shared {
            format!("$share/{SHARE_GROUP}/{f}")
        } else {
            f
        }
    }

    pub fn acks(lot: Option<&str>) -> String {
        format!("{ROOT}/lots/{}/lanes/+/acks", lot.unwrap_or("+"))
    }

    pub fn lane_state(lot: Option<&str>) -> String {
        format!("{ROOT}/lots/{}/lanes/+/state", lot.unwrap_or("+"))
    }

    pub fn gateway_status(lot: Option<&str>) -> String {
        format!("{ROOT}/lots/{}/gateways/+/status", lot.unwrap_or("+"))
    }

    /// Everything about one lane that a gateway listens to from the server.
    pub fn lane_inbox(lot: &str, lane: &str) -> [String; 2] {
        [
            format!("{ROOT}/lots/{lot}/lanes/{lane}/decisions"),
            format!("{ROOT}/lots/{lot}/lanes/{lane}/commands"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_known_shapes_and_rejects_others() {
        let t = Topic::parse("parkpay/v1/lots/lot1/lanes/in-1/events").unwrap();
        assert_eq!(
            t,
            Topic::Events(
                LotId::parse("lot1").unwrap(),
                LaneId::parse("in-1").unwrap()
            )
        );
        assert!(matches!(
            Topic::parse("other/v1/x"),
            Err(TopicError::Foreign(_))
        ));
        assert!(matches!(
            Topic::parse("parkpay/v1/lots/a/lanes/b/zzz"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            Topic::parse("parkpay/v1/lots/+/lanes/b/events"),
            Err(TopicError::Id(_))
        ));
    }

    proptest! {
        #[test]
        fn every_topic_round_trips(a in "[a-z0-9_-]{1,12}", b in "[A-Z0-9-]{1,12}", k in 0usize..15) {
            let d = DeviceId::parse(a.clone()).unwrap();
            let (lot, lane, gw) = (LotId::parse(a.clone()).unwrap(), LaneId::parse(b.clone()).unwrap(), GatewayId::parse(b).unwrap());
            let t = [
                Topic::Frame(d.clone()), Topic::PlateRead(d.clone()), Topic::Loop(d.clone()),
                Topic::BarrierCommand(d.clone()), Topic::Display(d.clone()), Topic::BarrierState(d.clone()),
                Topic::DeviceStatus(d), Topic::Events(lot.clone(), lane.clone()),
                Topic::Decisions(lot.clone(), lane.clone()), Topic::Commands(lot.clone(), lane.clone()),
                Topic::Acks(lot.clone(), lane.clone()), Topic::LaneState(lot.clone(), lane),
                Topic::GatewayStatus(lot.clone(), gw.clone()), Topic::Allowlist(lot.clone(), gw),
                Topic::Evidence(lot, LaneId::parse("x").unwrap()),
            ][k].clone();
            prop_assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = Topic::parse(&s);
        }
    }
}
