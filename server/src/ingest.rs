//! MQTT ingest: every message the server receives ends decided or dead-lettered, and is
//! acknowledged either way, so nothing a device sends can stall the lanes of another.
//!
//! A passage event is believed only when all of this holds, in this order; the first failure
//! is a dead letter with its reason (and no answer to whoever sent it):
//!
//! 1. it is at most [`MAX_MESSAGE_BYTES`] (`oversized`) and a well-formed envelope of a known
//!    version (`malformed`, `version`, `wrong_type`, `invalid_body`);
//! 2. its body names the lot and lane of the topic it came on (`topic_mismatch`);
//! 3. the lane is configured (`unknown_lane`) and served by the gateway the body names
//!    (`wrong_gateway`);
//! 4. it carries a valid signature by *that lane's* gateway key over the exact bytes received
//!    (`bad_signature`, `unsigned`); with `require_signatures` (the default), a lane whose
//!    gateway has no key is refused (`unsigned`);
//! 5. its direction is the lane's (`wrong_direction`).
//!
//! Then [`App::handle_passage`] decides it. A transient failure (the database restarting) is
//! retried until it passes or the server stops, and the event is acknowledged only after its
//! transaction commits; any other failure is dead-lettered (`processing_failed`) and the lane is
//! told to hold the car for an attendant.
//!
//! A gateway's status, lane states and command acknowledgements are likewise believed only when
//! signed by the gateway they concern (its own topic, or the lane's configured gateway).
//!
//! Acknowledgements go out in arrival order, whatever order the work finishes in: MQTT 3.1.1
//! lets a broker require it, and rumqttd (the embedded broker) does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parkpay_protocol::{
    CommandAck, DecodeError, Evidence, GatewayStatus, LaneId, LaneState, LotId, Opened,
    PassageEvent, Topic, MAX_EVIDENCE_IMAGE, MAX_EVIDENCE_PAYLOAD,
};
use rumqttc::{AsyncClient, Publish};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::App;
use crate::domain::{AuditEntry, DeadLetter};

/// The largest message the server will read. Larger ones are dead letters (the first
/// [`KEPT_BYTES`] kept); the MQTT client itself accepts anything a broker delivers, so one huge
/// publish can never cut the server off from its broker.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How much of an oversized payload the dead-letter table keeps.
pub const KEPT_BYTES: usize = 4 * 1024;

/// Passage events handled at once.
const CONCURRENCY: u32 = 64;

/// Handles incoming messages until `stop` is cancelled or the channel closes, then drains: the
/// events in hand are finished (within a bound) and acknowledged; what was not taken is left to
/// the broker to deliver again.
pub async fn process(
    app: App,
    client: AsyncClient,
    mut rx: mpsc::Receiver<Publish>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY as usize));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<(Publish, oneshot::Receiver<bool>)>();
    let acker = tokio::spawn(ack_in_order(client, ack_rx));
    let done = |p: &Publish| {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(true);
        (p.clone(), rx)
    };
    loop {
        let p = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let received = Instant::now();
        let most = max_bytes(&p.topic);
        if p.payload.len() > most {
            let detail = format!(
                "{} bytes, more than the {most} a message on this topic may have",
                p.payload.len()
            );
            dead_letter(&app, &p, "oversized", detail).await;
            let _ = ack_tx.send(done(&p));
            continue;
        }
        match Topic::parse(&p.topic) {
            Ok(Topic::Events(lot, lane)) => {
                let permit = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let (tx, rx) = oneshot::channel();
                if ack_tx.send((p.clone(), rx)).is_err() {
                    break;
                }
                let (app, stop) = (app.clone(), stop.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let ack = event(&app, &p, lot, lane, received, &stop).await;
                    let _ = tx.send(ack);
                });
            }
            Ok(Topic::GatewayStatus(lot, gateway)) => {
                match from_gateway::<GatewayStatus>(&app, &p, gateway.as_str()).await {
                    Ok(s) if s.lot != lot || s.gateway != gateway => {
                        let detail = format!(
                            "status of {}/{} published on the topic of {lot}/{gateway}",
                            s.lot, s.gateway
                        );
                        dead_letter(&app, &p, "topic_mismatch", detail).await;
                    }
                    Ok(s) => {
                        if s.online {
                            app.allowlists_due.notify_one();
                        }
                        app.live.gateway_status(s);
                        app.metrics.gateways_online.set(app.live.gateways_online());
                    }
                    Err((reason, detail)) => dead_letter(&app, &p, reason, detail).await,
                }
                let _ = ack_tx.send(done(&p));
            }
            Ok(Topic::LaneState(lot, lane)) => {
                match from_lane::<LaneState>(&app, &p, &lot, &lane).await {
                    Ok(s) => app.live.lane_state(s),
                    Err((reason, detail)) => dead_letter(&app, &p, reason, detail).await,
                }
                let _ = ack_tx.send(done(&p));
            }
            Ok(Topic::Evidence(lot, lane)) => {
                if let Err((reason, detail)) = evidence(&app, &p, &lot, &lane).await {
                    dead_letter(&app, &p, reason, detail).await;
                }
                let _ = ack_tx.send(done(&p));
            }
            Ok(Topic::Acks(lot, lane)) => {
                match from_lane::<CommandAck>(&app, &p, &lot, &lane).await {
                    Ok(a) => {
                        let entry = AuditEntry {
                            id: Uuid::now_v7(),
                            at: app.clock.now(),
                            actor: format!("lane {lot}/{lane}"),
                            action: if a.ok {
                                "command.done".into()
                            } else {
                                "command.failed".into()
                            },
                            subject: format!("command {}", a.command_id),
                            detail: clean(&a.detail),
                        };
                        if let Err(e) = app.store.insert_audit(&entry).await {
                            tracing::warn!(error = %e, "could not audit a command ack");
                        }
                    }
                    Err((reason, detail)) => dead_letter(&app, &p, reason, detail).await,
                }
                let _ = ack_tx.send(done(&p));
            }
            Ok(_) => {
                let _ = ack_tx.send(done(&p));
            }
            Err(e) => {
                dead_letter(&app, &p, "unknown_topic", e.to_string()).await;
                let _ = ack_tx.send(done(&p));
            }
        }
    }
    // Drain: wait for the events in hand, then for their acknowledgements to be handed over.
    let drained = tokio::time::timeout(Duration::from_secs(10), permits.acquire_many(CONCURRENCY));
    if drained.await.is_err() {
        tracing::warn!("passages still in hand after 10 s; the broker will deliver them again");
    }
    drop(ack_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
}

/// Why a message is refused: the dead-letter reason and its detail.
type Refusal = (&'static str, String);

/// Checks an envelope was signed by `gateway` (when it has a key, or keys are required).
async fn signed_by(app: &App, env: &Opened<'_>, gateway: &str) -> Result<(), Refusal> {
    let key = app.keys.key(gateway).await.map_err(|e| {
        (
            "processing_failed",
            format!("cannot look up the key of gateway {gateway}: {e}"),
        )
    })?;
    let verified = match key {
        Some(key) => env.verify(&key),
        None if app.keys.required() => Err(DecodeError::Unsigned),
        None => Ok(()),
    };
    verified.map_err(|e| (e.reason(), format!("{e} (gateway {gateway})")))
}

/// A message a gateway publishes about itself, signed by it.
async fn from_gateway<M: parkpay_protocol::Message>(
    app: &App,
    p: &Publish,
    gateway: &str,
) -> Result<M, Refusal> {
    let env = Opened::new(&p.payload).map_err(|e| (e.reason(), e.to_string()))?;
    let body = env.body::<M>().map_err(|e| (e.reason(), e.to_string()))?;
    signed_by(app, &env, gateway).await?;
    Ok(body)
}

/// The broker's report of what it dropped. Anything it dropped may have been an event: say so
/// loudly (the gateways resend what is not decided, so the cars wait rather than pass unpaid).
pub(crate) fn broker_dropped(app: &App, payload: &[u8]) {
    let Some(total) = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    else {
        tracing::warn!("the broker's dropped-message count is not a number");
        return;
    };
    let new = app.metrics.broker_dropped(total);
    if new > 0 {
        tracing::error!(
            dropped = new,
            total,
            "the broker dropped messages: raise its queue limit (docs/operations.md, \"The broker\")"
        );
    }
}

/// A message about a lane, signed by the gateway configured for that lane.
async fn from_lane<M: parkpay_protocol::Message>(
    app: &App,
    p: &Publish,
    lot: &LotId,
    lane: &LaneId,
) -> Result<M, Refusal> {
    let env = Opened::new(&p.payload).map_err(|e| (e.reason(), e.to_string()))?;
    let body = env.body::<M>().map_err(|e| (e.reason(), e.to_string()))?;
    let config = app
        .store
        .lane(lot, lane)
        .await
        .map_err(|e| ("processing_failed", e.to_string()))?
        .ok_or_else(|| {
            (
                "unknown_lane",
                format!("lane {lot}/{lane} is not configured"),
            )
        })?;
    signed_by(app, &env, config.gateway.as_str()).await?;
    Ok(body)
}

/// How large a message on `topic` may be: an evidence picture more than anything else.
fn max_bytes(topic: &str) -> usize {
    if is_evidence(topic) {
        MAX_EVIDENCE_PAYLOAD
    } else {
        MAX_MESSAGE_BYTES
    }
}

fn is_evidence(topic: &str) -> bool {
    matches!(Topic::parse(topic), Ok(Topic::Evidence(..)))
}

/// Keeps the picture of a passage, once its lane's gateway is shown to have sent it and the
/// picture is what it says it is (a JPEG or PNG file with the digest it names, within
/// [`MAX_EVIDENCE_IMAGE`]). The passage itself may arrive after it. When the passage is known and
/// names another picture (`evidence_digest`), this one is refused (`evidence_mismatch`).
async fn evidence(app: &App, p: &Publish, lot: &LotId, lane: &LaneId) -> Result<(), Refusal> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let ev: Evidence = from_lane(app, p, lot, lane).await?;
    if ev.lot != *lot || ev.lane != *lane {
        return Err((
            "topic_mismatch",
            format!(
                "evidence for {}/{} published on the topic of {lot}/{lane}",
                ev.lot, ev.lane
            ),
        ));
    }
    let bad = |why: String| {
        (
            "invalid_image",
            format!("evidence of event {}: {why}", ev.event_id),
        )
    };
    let image = base64::engine::general_purpose::STANDARD
        .decode(ev.image.as_bytes())
        .map_err(|e| bad(format!("image is not base64: {e}")))?;
    if image.len() > MAX_EVIDENCE_IMAGE {
        return Err((
            "oversized",
            format!(
                "evidence image of {} bytes, more than the {MAX_EVIDENCE_IMAGE} it may have",
                image.len()
            ),
        ));
    }
    match parkpay_protocol::image_format(&image) {
        Some(f) if f == ev.format => {}
        Some(f) => return Err(bad(format!("format says {:?}, the file is {f}", ev.format))),
        None => return Err(bad("neither a JPEG nor a PNG file".into())),
    }
    let digest = hex::encode(sha2::Sha256::digest(&image));
    if !digest.eq_ignore_ascii_case(&ev.digest) {
        return Err(bad("digest does not match the image".into()));
    }
    let stored = app
        .store
        .event_payload(ev.event_id.0)
        .await
        .map_err(|e| ("processing_failed", e.to_string()))?;
    if let Some(payload) = stored {
        let named = parkpay_protocol::decode::<PassageEvent>(payload.as_bytes(), None)
            .ok()
            .and_then(|d| d.body.evidence_digest);
        if named.is_some_and(|n| !n.eq_ignore_ascii_case(&digest)) {
            return Err((
                "evidence_mismatch",
                format!("event {} names another picture than this one", ev.event_id),
            ));
        }
    }
    let picture = crate::domain::EvidencePicture {
        event_id: ev.event_id.0,
        lot: ev.lot,
        lane: ev.lane,
        format: ev.format,
        digest,
        image,
        captured_at: ev.captured_at,
        received_at: app.clock.now(),
    };
    app.store
        .insert_evidence(&picture)
        .await
        .map_err(|e| ("processing_failed", e.to_string()))?;
    Ok(())
}

/// Handles one passage event; returns whether to acknowledge it.
async fn event(
    app: &App,
    p: &Publish,
    lot: LotId,
    lane: LaneId,
    received: Instant,
    stop: &CancellationToken,
) -> bool {
    let env = match Opened::new(&p.payload) {
        Ok(env) => env,
        Err(e) => {
            dead_letter(app, p, e.reason(), e.to_string()).await;
            return true;
        }
    };
    let ev: PassageEvent = match env.body() {
        Ok(ev) => ev,
        Err(e) => {
            dead_letter(app, p, e.reason(), e.to_string()).await;
            return true;
        }
    };
    if ev.lot != lot || ev.lane != lane {
        let detail = format!(
            "event for {}/{} published on the topic of {lot}/{lane}",
            ev.lot, ev.lane
        );
        dead_letter(app, p, "topic_mismatch", detail).await;
        return true;
    }
    let Some(config) = retry(stop, || app.lane(&lot, &lane)).await else {
        return false;
    };
    let Some(config) = config else {
        let detail = format!("lane {lot}/{lane} is not configured");
        dead_letter(app, p, "unknown_lane", detail).await;
        return true;
    };
    if ev.gateway != config.gateway {
        let detail = format!(
            "lane {lot}/{lane} is served by gateway {}, not {}",
            config.gateway, ev.gateway
        );
        dead_letter(app, p, "wrong_gateway", detail).await;
        return true;
    }
    if let Err((reason, detail)) = signed_by(app, &env, config.gateway.as_str()).await {
        if reason == "processing_failed" {
            // The key could not be looked up (the database): not the sender's fault. Leave
            // the event unacknowledged; the broker delivers it again.
            tracing::warn!(%detail, "passage left for redelivery");
            return false;
        }
        let detail = format!("{detail}, for lane {lot}/{lane}");
        dead_letter(app, p, reason, detail).await;
        return true;
    }
    if ev.direction != config.direction {
        let detail = format!(
            "{} event on {} lane {lot}/{lane}",
            ev.direction.as_str(),
            config.direction.as_str()
        );
        dead_letter(app, p, "wrong_direction", detail).await;
        return true;
    }
    let text = String::from_utf8_lossy(&p.payload);
    let mut wait = Duration::from_millis(100);
    loop {
        match app.handle_passage(&ev, &text, received).await {
            Ok(_) => return true,
            Err(e) if e.is_transient() => {
                tracing::warn!(event = %ev.event_id, error = %e, retry_in = ?wait, "passage not handled yet");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(event = %ev.event_id, error = %e, "passage cannot be handled");
                dead_letter(app, p, "processing_failed", e.to_string()).await;
                app.reject_passage(&ev).await;
                return true;
            }
        }
    }
}

/// Runs `op` until it succeeds or fails for good; `None` when the server stops first. A failure
/// for good is logged and treated as absent (the event then becomes an `unknown_lane` dead
/// letter, which keeps it, rather than a message that can never be acknowledged).
async fn retry<T, F, Fut>(stop: &CancellationToken, mut op: F) -> Option<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::store::StoreResult<Option<T>>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?wait, "database unavailable");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, "lane lookup failed");
                return Some(None);
            }
        }
    }
}

async fn ack_in_order(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<(Publish, oneshot::Receiver<bool>)>,
) {
    while let Some((p, handled)) = rx.recv().await {
        if handled.await.unwrap_or(false) {
            if let Err(e) = client.ack(&p).await {
                tracing::warn!(error = %e, "ack failed");
            }
        }
    }
}

/// Text as it may be stored and shown: control characters (a NUL breaks PostgreSQL text)
/// replaced, and at most 2,000 characters.
pub fn clean(s: &str) -> String {
    s.chars()
        .take(2000)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Keeps a rejected message with its reason, and counts it. Never fails the caller.
pub async fn dead_letter(app: &App, p: &Publish, reason: &str, detail: String) {
    let detail = clean(&detail);
    tracing::warn!(topic = %clean(&p.topic), reason, %detail, "message rejected");
    app.metrics.dead_letter(reason);
    let d = DeadLetter {
        id: Uuid::now_v7(),
        received_at: app.clock.now(),
        topic: clean(&p.topic),
        reason: reason.to_string(),
        detail,
        payload: String::new(),
    };
    // A picture is personal data and large: a refused one keeps only its first bytes too.
    let kept = if p.payload.len() > MAX_MESSAGE_BYTES || is_evidence(&p.topic) {
        &p.payload[..KEPT_BYTES.min(p.payload.len())]
    } else {
        &p.payload[..]
    };
    if let Err(e) = app.store.insert_dead_letter(&d, kept).await {
        tracing::error!(error = %e, "could not store a dead letter");
    }
}
