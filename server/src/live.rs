//! What the operator dashboard shows live: lane and gateway state, and a stream of passages,
//! decisions and charges fanned out to every open dashboard over server-sent events.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use parkpay_protocol::{ArmPosition, Decision, Direction, GatewayStatus, LaneState, PassageEvent};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::Charge;

#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

impl LiveEvent {
    fn new(kind: &'static str, data: impl Serialize) -> LiveEvent {
        LiveEvent {
            kind,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn passage(ev: &PassageEvent, d: &Decision) -> LiveEvent {
        LiveEvent::new(
            "passage",
            serde_json::json!({
                "event_id": ev.event_id, "lot": ev.lot, "lane": ev.lane, "direction": ev.direction,
                "captured_at": ev.captured_at, "candidates": ev.candidates, "quality": ev.quality,
                "evidence_digest": ev.evidence_digest, "decision": d,
            }),
        )
    }

    pub fn decision(d: &Decision) -> LiveEvent {
        LiveEvent::new("decision", d)
    }

    /// A held passage was decided again under a new event id (a plate correction, an unlock):
    /// whoever shows the original row shows it settled by `d`.
    pub fn superseded(original: parkpay_protocol::EventId, d: &Decision) -> LiveEvent {
        LiveEvent::new(
            "superseded",
            serde_json::json!({ "event_id": original, "decision": d }),
        )
    }

    pub fn charge(c: &Charge) -> LiveEvent {
        LiveEvent::new("charge", c)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LaneView {
    pub lot: String,
    pub lane: String,
    pub gateway: String,
    pub direction: Direction,
    pub arm: ArmPosition,
    pub vehicle_present: bool,
    pub gateway_online: bool,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayView {
    pub lot: String,
    pub gateway: String,
    pub online: bool,
    pub lanes: Vec<String>,
    pub journal_pending: u32,
    pub updated_at: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    lanes: BTreeMap<(String, String), LaneState>,
    gateways: BTreeMap<(String, String), GatewayStatus>,
}

/// Shared live state; cheap to clone.
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<LiveEvent>,
    state: Arc<RwLock<State>>,
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Live {
    pub fn new() -> Live {
        let (tx, _) = broadcast::channel(1024);
        Live {
            tx,
            state: Arc::default(),
        }
    }

    pub fn send(&self, e: LiveEvent) {
        // No subscriber is fine: nobody is watching the dashboard.
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    pub fn lane_state(&self, s: LaneState) {
        let key = (s.lot.to_string(), s.lane.to_string());
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .lanes
            .insert(key, s.clone());
        self.send(LiveEvent::new(
            "lane",
            self.lanes_of(s.lot.as_str())
                .into_iter()
                .find(|l| l.lane == s.lane.as_str()),
        ));
    }

    pub fn gateway_status(&self, s: GatewayStatus) {
        let key = (s.lot.to_string(), s.gateway.to_string());
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .gateways
            .insert(key, s.clone());
        self.send(LiveEvent::new("gateway", &s));
    }

    pub fn gateways_online(&self) -> i64 {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .gateways
            .values()
            .filter(|g| g.online)
            .count() as i64
    }

    pub fn gateways(&self) -> Vec<GatewayView> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.gateways
            .values()
            .map(|g| GatewayView {
                lot: g.lot.to_string(),
                gateway: g.gateway.to_string(),
                online: g.online,
                lanes: g.lanes.iter().map(|l| l.to_string()).collect(),
                journal_pending: g.journal_pending,
                updated_at: g.at,
            })
            .collect()
    }

    pub fn lanes_of(&self, lot: &str) -> Vec<LaneView> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        st.lanes
            .values()
            .filter(|l| l.lot.as_str() == lot)
            .map(|l| LaneView {
                lot: l.lot.to_string(),
                lane: l.lane.to_string(),
                gateway: l.gateway.to_string(),
                direction: l.direction,
                arm: l.arm,
                vehicle_present: l.vehicle_present,
                gateway_online: st
                    .gateways
                    .get(&(l.lot.to_string(), l.gateway.to_string()))
                    .is_some_and(|g| g.online),
                updated_at: l.at,
            })
            .collect()
    }
}
