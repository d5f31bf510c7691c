//! Tickets for cars without a plate (无牌车). An entry whose plate was not read is held, and its
//! display shows a code leading to `/ticket/{event}`. Scanning it there takes a ticket: the held
//! passage is decided again as a stay under a ticket number, the barrier opens, and the phone
//! keeps the ticket's secret. At an exit held the same way, the same phone hands the secret back:
//! the stay is priced like any other and paid on the pay page, which opens the barrier.
//!
//! Both steps go through the ordinary passage pipeline ([`App::decide_again`]'s path), so a
//! full lot, the tariff and the payment rules apply to a ticket as to a plate, and the held
//! exception is resolved in the same transaction.

use std::time::Instant;

use chrono::TimeDelta;
use parkpay_protocol::{encode, Decision, Direction, PassageEvent, ReadQuality};
use uuid::Uuid;

use crate::app::{App, AppError, AppResult, Extra};
use crate::auth::{random_hex, token_hash};
use crate::decide::Read;
use crate::domain::*;

/// How long after a held passage its driver may still take a ticket (or leave with one) there.
pub const TICKET_WINDOW: TimeDelta = TimeDelta::minutes(15);

/// A ticket as the phone gets it: the secret is shown once and proves the stay is the phone's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ticket {
    pub ticket: String,
    pub plate: String,
    pub session_id: Option<Uuid>,
    pub decision: Decision,
}

/// What a ticket page shows of the passage it was opened for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldPassage {
    pub lot: parkpay_protocol::LotId,
    pub lane: parkpay_protocol::LaneId,
    pub direction: Direction,
    /// Still held for an unread plate, and recent enough for a ticket.
    pub waiting: bool,
}

impl App {
    /// The passage a ticket page is for, and whether it still waits for a ticket.
    pub async fn ticket_passage(&self, event_id: Uuid) -> AppResult<HeldPassage> {
        let x = self.store.open_exceptions_of_event(event_id).await?;
        let held = x
            .iter()
            .find(|x| x.kind == ExceptionKind::Unreadable)
            .cloned();
        let ev = match &held {
            Some(x) => self.held_passage(x).await?,
            None => {
                let payload = self
                    .store
                    .event_payload(event_id)
                    .await?
                    .ok_or_else(|| AppError::NotFound(format!("passage {event_id}")))?;
                parkpay_protocol::decode::<PassageEvent>(payload.as_bytes(), None)
                    .map_err(|e| AppError::Unprocessable(format!("stored event: {e}")))?
                    .body
            }
        };
        let recent = self.clock.now() - ev.captured_at <= TICKET_WINDOW;
        Ok(HeldPassage {
            lot: ev.lot,
            lane: ev.lane,
            direction: ev.direction,
            waiting: held.is_some() && recent,
        })
    }

    /// The passage held for an unread plate that a ticket is asked for, and its exception.
    async fn held_for_ticket(
        &self,
        event_id: Uuid,
        direction: Direction,
    ) -> AppResult<(PassageEvent, ExceptionRecord)> {
        let x = self
            .store
            .open_exceptions_of_event(event_id)
            .await?
            .into_iter()
            .find(|x| x.kind == ExceptionKind::Unreadable)
            .ok_or_else(|| {
                AppError::Conflict("this passage is not waiting for a ticket".to_string())
            })?;
        let ev = self.held_passage(&x).await?;
        if ev.direction != direction {
            return Err(AppError::Unprocessable(format!(
                "this is an {} lane: {}",
                ev.direction.as_str(),
                match ev.direction {
                    Direction::Entry => "take a ticket here",
                    Direction::Exit => "show the ticket you took at the entry",
                }
            )));
        }
        if self.clock.now() - ev.captured_at > TICKET_WINDOW {
            return Err(AppError::Conflict(
                "this passage was held too long ago; ask the attendant".to_string(),
            ));
        }
        Ok((ev, x))
    }

    /// Takes a ticket for a plateless car held at an entry: its stay opens under a ticket
    /// number and the barrier opens. A held passage gets one ticket.
    pub async fn take_ticket(&self, event_id: Uuid) -> AppResult<Ticket> {
        let (ev, x) = self.held_for_ticket(event_id, Direction::Entry).await?;
        let secret = format!("tk_{}", random_hex(16));
        let plate = format!("TICKET-{}", random_hex(3).to_uppercase());
        let mut again = ev.clone();
        again.event_id = parkpay_protocol::EventId::new();
        again.quality = ReadQuality::Confident;
        let extra = Extra {
            resolves: Some((x.id, format!("ticket {plate} taken by the driver"))),
            audit: vec![AuditEntry {
                id: Uuid::now_v7(),
                at: self.clock.now(),
                actor: "driver with a ticket".to_string(),
                action: "ticket.taken".to_string(),
                subject: format!("ticket {plate}"),
                detail: format!("entry {} at {} held unread", ev.event_id, ev.lane),
            }],
            time_checked: true,
            reads: Some(vec![Read {
                plate: plate.clone(),
                key: plate.clone(),
            }]),
            ticket: Some((token_hash(&secret), ev.event_id.0)),
            ..Extra::default()
        };
        let text = String::from_utf8_lossy(&encode(&again, self.clock.now(), None)).into_owned();
        let decision = self.passage(&again, &text, Instant::now(), extra).await?;
        Ok(Ticket {
            ticket: secret,
            plate,
            session_id: decision.session_id,
            decision,
        })
    }

    /// A plateless car held at an exit leaves with its ticket: the stay is priced and closed, and
    /// the decision (open, or hold with the pay page) goes to the lane.
    pub async fn leave_with_ticket(&self, secret: &str, event_id: Uuid) -> AppResult<Decision> {
        let session_id = self
            .store
            .ticket_session(&token_hash(secret))
            .await?
            .ok_or_else(|| AppError::NotFound("ticket".to_string()))?;
        let session = self
            .store
            .session(session_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("session {session_id}")))?;
        if session.status != crate::domain::SessionStatus::Open {
            return Err(AppError::Conflict(
                "this ticket's stay has ended".to_string(),
            ));
        }
        let (ev, x) = self.held_for_ticket(event_id, Direction::Exit).await?;
        if ev.lot != session.lot {
            return Err(AppError::Unprocessable(format!(
                "this ticket is for lot {}, not {}",
                session.lot, ev.lot
            )));
        }
        let mut again = ev.clone();
        again.event_id = parkpay_protocol::EventId::new();
        again.quality = ReadQuality::Confident;
        let extra = Extra {
            resolves: Some((x.id, format!("left with ticket {}", session.plate))),
            audit: vec![AuditEntry {
                id: Uuid::now_v7(),
                at: self.clock.now(),
                actor: "driver with a ticket".to_string(),
                action: "ticket.used".to_string(),
                subject: format!("ticket {}", session.plate),
                detail: format!("exit {} at {} held unread", ev.event_id, ev.lane),
            }],
            time_checked: true,
            session: Some(session.id),
            reads: Some(vec![Read {
                plate: session.plate.clone(),
                key: session.plate.clone(),
            }]),
            ..Extra::default()
        };
        let text = String::from_utf8_lossy(&encode(&again, self.clock.now(), None)).into_owned();
        self.passage(&again, &text, Instant::now(), extra).await
    }
}
