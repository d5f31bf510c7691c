//! A bystander on the broker: watches a lot's passage events and the decisions answering them,
//! and times each answer as the lane sees it, from the gateway's publication of the event to the
//! decision's arrival. It touches nothing: it only subscribes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parkpay_protocol::topics::{filters, ROOT};
use parkpay_protocol::{decode, Decision, EventId, LotId, PassageEvent, Topic};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::SimError;
use crate::mqtt::{MqttUrl, Task};
use crate::tally::Tally;

const NAME: &str = "decision observer";

/// Events older than this without a decision are forgotten (the gateway went its own way).
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The observer's connection; dropping it stops the observation.
#[derive(Debug)]
pub struct DecisionObserver {
    client: AsyncClient,
    _task: Task,
}

impl DecisionObserver {
    /// Connects, subscribes to `lot`'s lane events and decisions, and returns once the broker has
    /// acknowledged both, so no passage after this call goes unseen. Every decision that answers
    /// a seen event adds a latency sample to `tally`; every one that closes a stay with a fee
    /// counts that stay as charged.
    pub async fn start(
        mqtt: &MqttUrl,
        lot: &LotId,
        tally: Arc<Tally>,
        ready_timeout: Duration,
    ) -> Result<DecisionObserver, SimError> {
        let id = format!("parkpay-observer-{lot}-{}", std::process::id());
        let mut opts = MqttOptions::new(id, mqtt.host(), mqtt.port());
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        opts.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        // Nagle would add tens of milliseconds to the very latency being measured.
        eventloop.network_options.set_tcp_nodelay(true);
        let filters = vec![
            SubscribeFilter::new(filters::events(Some(lot.as_str()), false), QoS::AtLeastOnce),
            SubscribeFilter::new(
                format!("{ROOT}/lots/{lot}/lanes/+/decisions"),
                QoS::AtLeastOnce,
            ),
        ];
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task(tokio::spawn(observe(
            client.clone(),
            eventloop,
            filters,
            ready_tx,
            tally,
        )));
        match tokio::time::timeout(ready_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(DecisionObserver {
                client,
                _task: task,
            }),
            Ok(Ok(Err(detail))) => Err(SimError::Config(format!(
                "broker refused the {NAME}'s subscriptions: {detail}"
            ))),
            Ok(Err(_)) => Err(SimError::DeviceGone {
                device: NAME.into(),
            }),
            Err(_) => Err(SimError::NotReady {
                device: NAME.into(),
                waited: ready_timeout,
            }),
        }
    }

    /// Disconnects cleanly.
    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        // Give the DISCONNECT a moment to leave; the task is aborted when `self` drops.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Matches decisions to the events they answer.
#[derive(Debug, Default)]
struct Timing {
    /// When each event still waiting for its decision was seen published.
    published: HashMap<EventId, Instant>,
}

impl Timing {
    fn on_publish(&mut self, p: &Publish, at: Instant, tally: &Tally) {
        match Topic::parse(&p.topic) {
            Ok(Topic::Events(..)) => {
                let Ok(ev) = decode::<PassageEvent>(&p.payload, None) else {
                    return;
                };
                // A resent event is timed from its first publication, as its lane waited.
                self.published.entry(ev.body.event_id).or_insert(at);
                if self.published.len() > 10_000 {
                    self.published
                        .retain(|_, seen| at.duration_since(*seen) < FORGET_AFTER);
                }
            }
            Ok(Topic::Decisions(..)) => {
                let Ok(d) = decode::<Decision>(&p.payload, None) else {
                    return;
                };
                // Only the first decision for an event answers it; repeats and decisions under a
                // new event id (a corrected plate) are not a passage's wait.
                if let Some(seen) = self.published.remove(&d.body.event_id) {
                    tally.decision_latency(at.duration_since(seen));
                }
                if let (Some(fee), Some(session)) = (d.body.fee, d.body.session_id) {
                    if fee.minor > 0 {
                        tally.charged(session);
                    }
                }
            }
            _ => {}
        }
    }
}

async fn observe(
    client: AsyncClient,
    mut eventloop: EventLoop,
    filters: Vec<SubscribeFilter>,
    ready: oneshot::Sender<Result<(), String>>,
    tally: Arc<Tally>,
) {
    let mut ready = Some(ready);
    let mut timing = Timing::default();
    let mut closing = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                timing.on_publish(&p, Instant::now(), &tally);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session: subscriptions are renewed on every connect. try_* never blocks
                // the loop that has to drain the very queue it writes to.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    tracing::warn!(error = %e, "{NAME}: could not queue subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                if let Some(tx) = ready.take() {
                    let _ = tx.send(if refused {
                        Err(format!("{:?}", ack.return_codes))
                    } else {
                        Ok(())
                    });
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => closing = true,
            Ok(_) => {}
            Err(_) if closing => return,
            Err(e) => {
                tracing::warn!(error = %e, "{NAME}: MQTT connection lost; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use parkpay_protocol::{
        encode, BarrierAction, DecisionReason, Direction, DisplayText, GatewayId, LaneId, Money,
        ReadQuality,
    };
    use uuid::Uuid;

    fn publish(topic: &str, payload: Vec<u8>) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, payload)
    }

    fn event(id: EventId) -> Vec<u8> {
        let ev = PassageEvent {
            event_id: id,
            lot: LotId::parse("lot1").unwrap(),
            lane: LaneId::parse("out-1").unwrap(),
            gateway: GatewayId::parse("gw-lot1").unwrap(),
            direction: Direction::Exit,
            captured_at: Utc::now(),
            candidates: vec![],
            quality: ReadQuality::NoRead,
            evidence_digest: None,
            resent: false,
        };
        encode(&ev, Utc::now(), None)
    }

    fn decision(id: EventId, session: Uuid, fen: i64) -> Vec<u8> {
        let d = Decision {
            event_id: id,
            lot: LotId::parse("lot1").unwrap(),
            lane: LaneId::parse("out-1").unwrap(),
            action: BarrierAction::Open,
            reason: DecisionReason::Mandate,
            plate: None,
            session_id: Some(session),
            fee: Some(Money::cny(fen)),
            owed: None,
            pay_url: None,
            display: DisplayText::default(),
            decided_at: Utc::now(),
        };
        encode(&d, Utc::now(), None)
    }

    #[test]
    fn a_decision_is_timed_from_its_events_first_publication_and_only_once() {
        let tally = Tally::new();
        let mut timing = Timing::default();
        let events = "parkpay/v1/lots/lot1/lanes/out-1/events";
        let decisions = "parkpay/v1/lots/lot1/lanes/out-1/decisions";
        let (a, b) = (EventId(Uuid::from_u128(1)), EventId(Uuid::from_u128(2)));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        timing.on_publish(&publish(events, event(a)), t0, &tally);
        timing.on_publish(&publish(events, event(a)), t0 + ms(5), &tally);
        timing.on_publish(&publish(events, event(b)), t0 + ms(1), &tally);
        let stay = Uuid::from_u128(9);
        timing.on_publish(
            &publish(decisions, decision(a, stay, 300)),
            t0 + ms(3),
            &tally,
        );
        timing.on_publish(
            &publish(decisions, decision(a, stay, 300)),
            t0 + ms(9),
            &tally,
        );
        timing.on_publish(
            &publish(decisions, decision(b, Uuid::from_u128(8), 0)),
            t0 + ms(8),
            &tally,
        );
        // A decision for an event never seen (a corrected plate's new event id).
        let c = EventId(Uuid::from_u128(3));
        timing.on_publish(
            &publish(decisions, decision(c, stay, 300)),
            t0 + ms(9),
            &tally,
        );
        let s = tally.snapshot();
        assert_eq!(s.latency.count, 2);
        assert_eq!(s.latency.p50, Some(ms(3)));
        assert_eq!(s.latency.max, Some(ms(7)));
        // One stay with a fee, however many decisions named it; a free stay is not a charge.
        assert_eq!(s.charged, 1);
    }
}
