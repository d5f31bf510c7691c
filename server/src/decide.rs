//! The rules of the barrier, as pure functions: [`decide_entry`] and [`decide_exit`] take the
//! facts the use case loaded (the event, the lot's tariff, the open session of the plate, the
//! driver's mandates and arrears, the server's clock) and return a [`Plan`]: what the lane is
//! told and what must be written. Nothing here touches the database, the broker or a clock, so
//! the table of tests at the bottom is the specification of every decision the server makes.
//!
//! The rules, in the order they are tried:
//!
//! | step | entry | exit |
//! | --- | --- | --- |
//! | lot not configured | hold `unknown_lot` | hold `unknown_lot` |
//! | captured too far from the server's clock | hold `clock_skew` | hold `clock_skew` |
//! | no plate, or not read surely | hold `unreadable` / `low_confidence` | the same |
//! | plate on the black list | hold `blacklisted` (an alarm for the operator) | an alarm, and go on |
//! | car locked by its owner | — | hold `locked` |
//! | lot full (counting reserved spaces for all but pass and white-list holders) | hold `lot_full` | — |
//! | plate already inside | close the stale session as an exception, open anew | — |
//! | no open session, but the plate's stay here ended at an exit within the tariff's `exit_window_minutes` | — | open `paid` when it was settled; hold `payment_required` again (same fee, paying opens this lane) while it waits for payment |
//! | no open session with exactly this plate | — | hold `no_entry` (similar plates are named for the attendant, never charged) |
//! | captured before its entry | — | hold `exit_before_entry` |
//! | tariff cannot price the stay (white list, pass and free visitor windows are free; class and visitor discount apply) | — | hold `cannot_price` |
//! | fee is zero | — | open `whitelisted`, `pass` or `visitor` when a list made it so, else `grace` |
//! | active mandate within its caps, no arrears | — | open `mandate`, charge after |
//! | otherwise | — | hold `arrears` (showing all that is owed) or `payment_required` |
//! | a confident read | open `entered` | — |
//!
//! Matching is by the **exact** plate only. A read that merely resembles an open session's plate
//! (a confusable character, one edit away, a lesser candidate) is far more often another car
//! whose entry was missed than a misread, because the reader only vouches for reads it is sure
//! of; charging that session would charge a stranger. So such an exit is held and the attendant
//! is shown the look-alike sessions; a wrong guess costs a hold, never somebody else's money.

use chrono::{DateTime, TimeDelta, Utc};
use parkpay_protocol::plate::edit_distance;
use parkpay_protocol::{
    BarrierAction, DecisionReason, DisplayText, Money, PassageEvent, Plate, ReadQuality,
};
use uuid::Uuid;

use crate::domain::{
    ExceptionKind, ListEntry, ListKind, Mandate, MandateStatus, Session, SessionStatus, Validation,
    VehicleClass,
};
use crate::store::OpenSession;
use crate::tariff::{self, Cover, Discount, Quote, Tariff, Terms, ValidationTerms};

/// How far a capture instant may lie from the server's clock when the event is received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    /// A capture instant ahead of the server's clock by more than this is not believed.
    pub max_ahead: TimeDelta,
    /// A live event captured longer ago than this is not believed.
    pub max_age: TimeDelta,
    /// The same for an event the gateway replays from its journal (`resent`) after an outage.
    pub max_resent_age: TimeDelta,
}

impl TimeLimits {
    /// No limits: for a passage whose instant was already checked when it first arrived.
    pub fn unbounded() -> TimeLimits {
        TimeLimits {
            max_ahead: TimeDelta::MAX,
            max_age: TimeDelta::MAX,
            max_resent_age: TimeDelta::MAX,
        }
    }
}

impl Default for TimeLimits {
    fn default() -> Self {
        TimeLimits {
            max_ahead: TimeDelta::minutes(5),
            max_age: TimeDelta::hours(24),
            max_resent_age: TimeDelta::days(7),
        }
    }
}

/// A plate as read: its canonical text and its confusable-folded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub plate: String,
    pub key: String,
}

impl Read {
    pub fn new(plate: &Plate) -> Read {
        Read {
            plate: plate.as_str().to_string(),
            key: plate.match_key(),
        }
    }
}

/// The event's candidates that are plates, best first, each once. Anything that does not parse
/// as a plate of some region (control characters, garbage) is dropped here.
pub fn reads(ev: &PassageEvent) -> Vec<Read> {
    let mut out: Vec<Read> = Vec::new();
    for c in &ev.candidates {
        if let Ok(p) = Plate::parse(&c.plate) {
            if !out.iter().any(|r| r.plate == p.as_str()) {
                out.push(Read::new(&p));
            }
        }
    }
    out
}

/// Something an operator must look at, raised with the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub kind: ExceptionKind,
    pub plate: Option<String>,
    pub session: Option<Uuid>,
    pub detail: String,
}

/// How a fee is to be collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// By deduction under this mandate, after the car has left.
    Mandate(Uuid),
    /// By the driver, at the exit (QR code) or later: the car waits.
    PayAtExit,
}

/// What the passage changes besides the event row.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    None,
    /// Entry: open a session; sessions of the same plate still open are closed as stale.
    Open {
        read: Read,
        driver: Option<Uuid>,
        stale: Vec<Uuid>,
    },
    /// Exit: close the session, and charge it when the fee is not zero.
    Close {
        session: Uuid,
        status: SessionStatus,
        exit_at: DateTime<Utc>,
        quote: Box<Quote>,
        driver: Option<Uuid>,
        collect: Option<Collect>,
        /// The plate the stay is recorded under from now on, when it differs from the entry's
        /// (an attendant matched this exit to a session whose entry was misread).
        rename: Option<Read>,
        /// Merchant validations this exit redeems.
        redeem: Vec<Uuid>,
    },
    /// Exit: a stay held for payment whose car came back to an exit: paying it now opens this
    /// passage's lane.
    MoveHeldExit {
        session: Uuid,
    },
}

/// A decision and what makes it true, before ids and timestamps are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: BarrierAction,
    pub reason: DecisionReason,
    /// The best read's plate, parsed: shown on the display and recorded with the event and the
    /// decision.
    pub plate: Option<String>,
    pub session: Option<Uuid>,
    pub fee: Option<Money>,
    pub owed: Option<Money>,
    pub effect: Effect,
    pub issues: Vec<Issue>,
}

impl Plan {
    fn hold(reason: DecisionReason, plate: Option<&str>, issue: Issue) -> Plan {
        Plan {
            action: BarrierAction::Hold,
            reason,
            plate: plate.map(str::to_string),
            session: issue.session,
            fee: None,
            owed: None,
            effect: Effect::None,
            issues: vec![issue],
        }
    }
}

/// What an entry is decided on.
#[derive(Debug, Clone)]
pub struct EntryFacts<'a> {
    pub now: DateTime<Utc>,
    pub limits: TimeLimits,
    pub event: &'a PassageEvent,
    pub lot_known: bool,
    pub reads: &'a [Read],
    /// The driver whose vehicle has exactly the best read's plate.
    pub owner: Option<Uuid>,
    /// The open session with exactly the best read's plate, if the car is already inside.
    pub inside: Option<OpenSession>,
    /// The best read's entries on this lot's lists, whatever their validity.
    pub lists: &'a [ListEntry],
    /// The lot's spaces, when it counts them (a capacity above 0).
    pub spaces: Option<Spaces>,
}

/// How full a lot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spaces {
    /// Cars inside now (open sessions).
    pub occupancy: i64,
    pub capacity: i64,
    /// Kept for pass and white-list holders.
    pub reserved: i64,
}

/// The driver's mandates, each with what it has carried this calendar month.
#[derive(Debug, Clone)]
pub struct MandateFacts {
    pub mandate: Mandate,
    pub spent_this_month: i64,
}

/// What an exit is decided on.
#[derive(Debug, Clone)]
pub struct ExitFacts<'a> {
    pub now: DateTime<Utc>,
    pub limits: TimeLimits,
    pub event: &'a PassageEvent,
    /// The lot's tariff; `None` when the lot is not configured.
    pub tariff: Option<&'a Tariff>,
    pub reads: &'a [Read],
    /// The open session with exactly the best read's plate, or the one an attendant matched
    /// this exit to.
    pub session: Option<&'a Session>,
    /// Other open sessions the read resembles; only consulted to help the attendant.
    pub look_alikes: &'a [OpenSession],
    /// When no session is open for the plate: its latest stay on this lot that ended at an exit
    /// (closed, or held there for payment), for a car that comes back to an exit within the
    /// tariff's exit window.
    pub settled: Option<&'a Session>,
    /// The session's driver, or the owner of its plate.
    pub driver: Option<Uuid>,
    pub mandates: &'a [MandateFacts],
    /// The driver's unpaid arrears, in the fee's minor units.
    pub arrears: i64,
    /// The best read's entries on this lot's lists, whatever their validity.
    pub lists: &'a [ListEntry],
    /// The class the vehicle is priced as.
    pub class: VehicleClass,
    /// The owner has locked the car with the best read's plate.
    pub locked: bool,
    /// The session's merchant validations not yet redeemed.
    pub validations: &'a [Validation],
    /// Why the payment provider will not deduct for this stay (WeChat: PAUSE, OVERDUE,
    /// OUT_SERVICE, EVALUATION_FAILED), if it said so.
    pub blocked: Option<&'a str>,
}

/// The entry of `kind` in force at `t`, if any.
fn listed(lists: &[ListEntry], kind: ListKind, t: DateTime<Utc>) -> Option<&ListEntry> {
    lists.iter().find(|e| e.kind == kind && e.in_force_at(t))
}

fn blacklisted_issue(read: &Read, entry: &ListEntry, detail: &str) -> Issue {
    Issue {
        kind: ExceptionKind::Blacklisted,
        plate: Some(read.plate.clone()),
        session: None,
        detail: format!(
            "{} is on the black list ({}): {detail}",
            read.plate, entry.reason
        ),
    }
}

/// What the lists change in the price of a stay from `entry` to `exit`: the white list, passes
/// and free visitor grants cover the parts of the stay they overlap; a visitor discount in force
/// at the exit takes its percentage off.
pub fn terms_for(
    lists: &[ListEntry],
    validations: &[Validation],
    class: VehicleClass,
    entry: DateTime<Utc>,
    exit: DateTime<Utc>,
) -> Terms {
    let covered = lists
        .iter()
        .filter(|e| e.overlaps(entry, exit))
        .filter_map(|e| {
            let label = match (e.kind, e.percent_off) {
                (ListKind::White, _) => "white list",
                (ListKind::Pass, _) => "pass",
                (ListKind::Visitor, None) => "visitor",
                (ListKind::Visitor, Some(_)) | (ListKind::Black, _) => return None,
            };
            Some(Cover {
                from: e.valid_from,
                until: e.covers_until(),
                label: label.to_string(),
            })
        })
        .collect();
    let discount = lists
        .iter()
        .filter(|e| e.kind == ListKind::Visitor && e.in_force_at(exit))
        .filter_map(|e| e.percent_off)
        .max()
        .map(|percent| Discount {
            percent,
            label: "visitor".to_string(),
        });
    let validation = (!validations.is_empty()).then(|| {
        let mut names: Vec<&str> = validations.iter().map(|v| v.merchant.as_str()).collect();
        names.dedup();
        ValidationTerms {
            minutes_off: validations
                .iter()
                .map(|v| u32::try_from(v.minutes_off).unwrap_or(0))
                .fold(0u32, u32::saturating_add),
            amount_off: validations
                .iter()
                .map(|v| v.amount_off.minor)
                .fold(0i64, i64::saturating_add),
            label: format!("validation {}", names.join(", ")),
        }
    });
    Terms {
        class: Some(class),
        covered,
        discount,
        validation,
    }
}

/// The reason a stay that costs nothing gives: the list that made it free, else the grace period.
fn free_reason(lists: &[ListEntry], entry: DateTime<Utc>, exit: DateTime<Utc>) -> DecisionReason {
    let covering = |kind: ListKind| {
        lists
            .iter()
            .any(|e| e.kind == kind && e.percent_off.is_none() && e.overlaps(entry, exit))
    };
    if covering(ListKind::White) {
        DecisionReason::Whitelisted
    } else if covering(ListKind::Pass) {
        DecisionReason::Pass
    } else if covering(ListKind::Visitor) {
        DecisionReason::Visitor
    } else {
        DecisionReason::Grace
    }
}

fn unknown_lot(ev: &PassageEvent, reads: &[Read]) -> Plan {
    let plate = reads.first().map(|r| r.plate.as_str());
    Plan::hold(
        DecisionReason::UnknownLot,
        plate,
        Issue {
            kind: ExceptionKind::UnknownLot,
            plate: plate.map(str::to_string),
            session: None,
            detail: format!("lot {} is not configured", ev.lot),
        },
    )
}

/// Why the capture instant cannot be believed, if it cannot.
fn time_issue(ev: &PassageEvent, now: DateTime<Utc>, limits: &TimeLimits) -> Option<String> {
    let ahead = ev.captured_at.signed_duration_since(now);
    if ahead > limits.max_ahead {
        return Some(format!(
            "captured at {} is {} s ahead of the server clock (limit {} s)",
            ev.captured_at,
            ahead.num_seconds(),
            limits.max_ahead.num_seconds()
        ));
    }
    let (max, kind) = if ev.resent {
        (limits.max_resent_age, "a resent")
    } else {
        (limits.max_age, "a live")
    };
    let age = -ahead;
    (age > max).then(|| {
        format!(
            "captured at {} is {} s before it was received (limit {} s for {kind} event)",
            ev.captured_at,
            age.num_seconds(),
            max.num_seconds()
        )
    })
}

fn clock_skew(ev: &PassageEvent, reads: &[Read], detail: String) -> Plan {
    let plate = reads.first().map(|r| r.plate.as_str());
    Plan::hold(
        DecisionReason::ClockSkew,
        plate,
        Issue {
            kind: ExceptionKind::ClockSkew,
            plate: plate.map(str::to_string),
            session: None,
            detail: format!("{} at {}: {detail}", ev.direction.as_str(), ev.lane),
        },
    )
}

/// The best read, when the gateway vouches for it; otherwise the hold that says why not.
fn sure_read<'r>(ev: &PassageEvent, reads: &'r [Read]) -> Result<&'r Read, Box<Plan>> {
    match (ev.quality, reads.first()) {
        (ReadQuality::Confident, Some(r)) => Ok(r),
        (quality, top) => {
            let low = quality == ReadQuality::LowConfidence && top.is_some();
            let (reason, kind) = if low {
                (DecisionReason::LowConfidence, ExceptionKind::LowConfidence)
            } else {
                (DecisionReason::Unreadable, ExceptionKind::Unreadable)
            };
            let plate = top.map(|r| r.plate.as_str());
            Err(Box::new(Plan::hold(
                reason,
                plate,
                Issue {
                    kind,
                    plate: plate.map(str::to_string),
                    session: None,
                    detail: format!(
                        "{} read at {} {}",
                        quality.as_str(),
                        ev.direction.as_str(),
                        ev.lane
                    ),
                },
            )))
        }
    }
}

/// Decides an entry.
pub fn decide_entry(f: &EntryFacts) -> Plan {
    let ev = f.event;
    if !f.lot_known {
        return unknown_lot(ev, f.reads);
    }
    if let Some(why) = time_issue(ev, f.now, &f.limits) {
        return clock_skew(ev, f.reads, why);
    }
    let read = match sure_read(ev, f.reads) {
        Ok(r) => r,
        Err(hold) => return *hold,
    };
    let at = ev.captured_at;
    if let Some(black) = listed(f.lists, ListKind::Black, at) {
        return Plan::hold(
            DecisionReason::Blacklisted,
            Some(&read.plate),
            blacklisted_issue(read, black, &format!("entry refused at {}", ev.lane)),
        );
    }
    if let Some(sp) = f.spaces {
        let privileged = listed(f.lists, ListKind::White, at).is_some()
            || listed(f.lists, ListKind::Pass, at).is_some();
        // A car already inside gives its space back when it enters again.
        let occupied = sp.occupancy - i64::from(f.inside.is_some());
        let free_to_all = sp.capacity - sp.reserved;
        if !privileged && occupied >= free_to_all {
            return Plan {
                action: BarrierAction::Hold,
                reason: DecisionReason::LotFull,
                plate: Some(read.plate.clone()),
                session: None,
                fee: None,
                owed: None,
                effect: Effect::None,
                issues: Vec::new(),
            };
        }
    }
    // The same plate still inside means its exit was missed: close that stay as an exception
    // rather than keep two open (a different car with a look-alike plate is not touched).
    let issues = f
        .inside
        .iter()
        .map(|s| Issue {
            kind: ExceptionKind::StaleEntry,
            plate: Some(s.plate.clone()),
            session: Some(s.id),
            detail: format!(
                "{} entered again while session {} was open",
                read.plate, s.id
            ),
        })
        .collect();
    Plan {
        action: BarrierAction::Open,
        reason: DecisionReason::Entered,
        plate: Some(read.plate.clone()),
        session: None,
        fee: None,
        owed: None,
        effect: Effect::Open {
            read: read.clone(),
            driver: f.owner,
            stale: f.inside.iter().map(|s| s.id).collect(),
        },
        issues,
    }
}

/// The first active mandate that may carry `fee` under its per-charge and monthly caps.
pub fn usable_mandate(mandates: &[MandateFacts], fee: Money) -> Option<&Mandate> {
    mandates
        .iter()
        .filter(|m| match m.mandate.status {
            MandateStatus::Active => true,
            MandateStatus::Pending | MandateStatus::Paused | MandateStatus::Revoked => false,
        })
        .filter(|m| {
            m.mandate
                .per_charge_cap
                .is_none_or(|cap| cap.currency == fee.currency && fee.minor <= cap.minor)
        })
        .filter(|m| {
            m.mandate.monthly_cap.is_none_or(|cap| {
                cap.currency == fee.currency
                    && m.spent_this_month
                        .checked_add(fee.minor)
                        .is_some_and(|total| total <= cap.minor)
            })
        })
        .map(|m| &m.mandate)
        .next()
}

/// Decides an exit.
pub fn decide_exit(f: &ExitFacts) -> Plan {
    let ev = f.event;
    let Some(tariff) = f.tariff else {
        return unknown_lot(ev, f.reads);
    };
    if let Some(why) = time_issue(ev, f.now, &f.limits) {
        return clock_skew(ev, f.reads, why);
    }
    let read = match sure_read(ev, f.reads) {
        Ok(r) => r,
        Err(hold) => return *hold,
    };
    if f.locked {
        return Plan::hold(
            DecisionReason::Locked,
            Some(&read.plate),
            Issue {
                kind: ExceptionKind::LockedExit,
                plate: Some(read.plate.clone()),
                session: f.session.map(|s| s.id),
                detail: format!(
                    "{} tried to leave at {} while locked by its owner",
                    read.plate, ev.lane
                ),
            },
        );
    }
    let alarm = listed(f.lists, ListKind::Black, ev.captured_at)
        .map(|black| blacklisted_issue(read, black, &format!("leaving at {}", ev.lane)));
    let Some(session) = f.session else {
        if let Some(mut plan) = f
            .settled
            .and_then(|s| come_back(ev, read, s, tariff.exit_window_minutes))
        {
            plan.issues.extend(alarm);
            return plan;
        }
        let mut plan = no_entry(ev, read, f.look_alikes);
        plan.issues.extend(alarm);
        return plan;
    };
    if ev.captured_at < session.entry_at {
        return Plan::hold(
            DecisionReason::ExitBeforeEntry,
            Some(&read.plate),
            Issue {
                kind: ExceptionKind::ExitBeforeEntry,
                plate: Some(read.plate.clone()),
                session: Some(session.id),
                detail: format!(
                    "exit captured at {} is before the entry at {}",
                    ev.captured_at, session.entry_at
                ),
            },
        );
    }
    // An exit in the same millisecond as its entry is a stay of one millisecond, not of none.
    let exit_at = ev
        .captured_at
        .max(session.entry_at + TimeDelta::milliseconds(1));
    let terms = terms_for(f.lists, f.validations, f.class, session.entry_at, exit_at);
    let quote = match tariff::quote_with(tariff, session.entry_at, exit_at, &terms) {
        Ok(q) => q,
        Err(e) => {
            return Plan::hold(
                DecisionReason::CannotPrice,
                Some(&read.plate),
                Issue {
                    kind: ExceptionKind::PricingFailed,
                    plate: Some(read.plate.clone()),
                    session: Some(session.id),
                    detail: format!("the tariff cannot price this stay: {e}"),
                },
            )
        }
    };
    let fee = quote.total;
    let rename = (session.plate != read.plate).then(|| read.clone());
    let close = |status, collect| Effect::Close {
        session: session.id,
        status,
        exit_at,
        quote: Box::new(quote.clone()),
        driver: f.driver,
        collect,
        rename: rename.clone(),
        redeem: f.validations.iter().map(|v| v.id).collect(),
    };
    let mut plan = Plan {
        action: BarrierAction::Open,
        reason: DecisionReason::Grace,
        plate: Some(read.plate.clone()),
        session: Some(session.id),
        fee: Some(fee),
        owed: None,
        effect: Effect::None,
        issues: alarm.into_iter().collect(),
    };
    if fee.is_zero() {
        plan.reason = free_reason(f.lists, session.entry_at, exit_at);
        plan.effect = close(SessionStatus::Closed, None);
        return plan;
    }
    let mandate = f.driver.and_then(|_| usable_mandate(f.mandates, fee));
    match mandate {
        Some(_) if f.blocked.is_some() && f.arrears == 0 => {
            plan.action = BarrierAction::Hold;
            plan.effect = close(SessionStatus::AwaitingPayment, Some(Collect::PayAtExit));
            plan.reason = DecisionReason::DeductionBlocked;
        }
        Some(m) if f.arrears == 0 => {
            plan.reason = DecisionReason::Mandate;
            plan.effect = close(SessionStatus::Closed, Some(Collect::Mandate(m.id)));
        }
        _ => {
            plan.action = BarrierAction::Hold;
            plan.effect = close(SessionStatus::AwaitingPayment, Some(Collect::PayAtExit));
            if f.arrears > 0 {
                plan.reason = DecisionReason::Arrears;
                plan.owed = f
                    .arrears
                    .checked_add(fee.minor)
                    .map(|owed| Money::new(owed, fee.currency));
            } else {
                plan.reason = DecisionReason::PaymentRequired;
            }
        }
    }
    plan
}

/// A car at an exit whose stay already ended at an exit of this lot, `window_minutes` ago at
/// most: its barrier did not open (a decision lost on the way, a payment that came late) or it
/// turned back. A settled stay lets it out, as the exit window after paying does in real lots; a
/// stay still held for payment asks for the same fee again, and paying it now opens this lane.
/// Anything else (no such stay, or the window has passed) is for [`no_entry`].
fn come_back(ev: &PassageEvent, read: &Read, s: &Session, window_minutes: u32) -> Option<Plan> {
    let left = s.exit_at?;
    let since = ev.captured_at - left;
    if s.plate != read.plate
        || s.lot != ev.lot
        || since < TimeDelta::zero()
        || since > TimeDelta::minutes(i64::from(window_minutes))
    {
        return None;
    }
    let plan = |action, reason, effect| Plan {
        action,
        reason,
        plate: Some(read.plate.clone()),
        session: Some(s.id),
        fee: s.fee,
        owed: None,
        effect,
        issues: Vec::new(),
    };
    match s.status {
        SessionStatus::Closed => Some(plan(
            BarrierAction::Open,
            DecisionReason::Paid,
            Effect::None,
        )),
        SessionStatus::AwaitingPayment => Some(plan(
            BarrierAction::Hold,
            DecisionReason::PaymentRequired,
            Effect::MoveHeldExit { session: s.id },
        )),
        SessionStatus::Open | SessionStatus::Exception => None,
    }
}

fn no_entry(ev: &PassageEvent, read: &Read, look_alikes: &[OpenSession]) -> Plan {
    let mut detail = format!("exit of {} at {} with no open session", read.plate, ev.lane);
    if !look_alikes.is_empty() {
        let names: Vec<&str> = look_alikes.iter().map(|s| s.plate.as_str()).collect();
        detail.push_str(&format!(
            "; similar plates inside: {} (check the evidence before correcting)",
            names.join(", ")
        ));
    }
    let only = match look_alikes {
        [one] => Some(one.id),
        _ => None,
    };
    Plan::hold(
        DecisionReason::NoEntry,
        Some(&read.plate),
        Issue {
            kind: ExceptionKind::NoEntry,
            plate: Some(read.plate.clone()),
            session: only,
            detail,
        },
    )
}

/// Open sessions whose plate resembles one of the reads (the same folded key, a lesser
/// candidate, or one edit from the best read), for the attendant's eyes only.
pub fn look_alikes(reads: &[Read], open: &[OpenSession]) -> Vec<OpenSession> {
    let mut out: Vec<OpenSession> = open
        .iter()
        .filter(|s| {
            reads
                .iter()
                .any(|r| r.plate == s.plate || r.key == s.plate_key)
                || reads.first().is_some_and(|r| {
                    r.key.chars().count() >= 5 && edit_distance(&r.key, &s.plate_key) <= 1
                })
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| a.plate.cmp(&b.plate));
    out.dedup_by_key(|s| s.id);
    out
}

/// The two lines the lane display shows for a decision.
pub fn display(
    reason: DecisionReason,
    plate: Option<&str>,
    fee: Option<Money>,
    owed: Option<Money>,
) -> DisplayText {
    let shown = plate
        .map(|p| {
            Plate::parse(p)
                .map(|p| p.display())
                .unwrap_or_else(|_| p.to_string())
        })
        .unwrap_or_else(|| "--".to_string());
    let line1 = match fee {
        Some(fee) if !fee.is_zero() => format!("{shown}  {fee}"),
        _ => shown,
    };
    let line2 = match reason {
        DecisionReason::Entered => "Welcome".to_string(),
        DecisionReason::Grace => "Free stay, goodbye".to_string(),
        DecisionReason::Whitelisted | DecisionReason::Pass | DecisionReason::Visitor => {
            "Goodbye".to_string()
        }
        DecisionReason::Mandate => "Charged to your account".to_string(),
        DecisionReason::Paid => "Paid, goodbye".to_string(),
        DecisionReason::PaymentRequired => "Scan to pay".to_string(),
        DecisionReason::DeductionBlocked => "Deduction paused: scan to pay".to_string(),
        DecisionReason::Arrears => match owed {
            Some(owed) => format!("Owed {owed} with arrears: scan to pay"),
            None => "Unpaid arrears: scan to pay".to_string(),
        },
        DecisionReason::NoEntry => "No entry record: staff coming".to_string(),
        DecisionReason::Unreadable => "Plate not read: scan for a ticket or wait".to_string(),
        DecisionReason::LowConfidence => "Plate unclear: staff coming".to_string(),
        DecisionReason::Ambiguous
        | DecisionReason::ClockSkew
        | DecisionReason::ExitBeforeEntry
        | DecisionReason::CannotPrice
        | DecisionReason::Rejected => "Please wait: staff coming".to_string(),
        DecisionReason::Blacklisted => "Entry refused: see the office".to_string(),
        DecisionReason::Locked => "Vehicle locked by its owner".to_string(),
        DecisionReason::LotFull => "Car park full".to_string(),
        DecisionReason::Operator => "Opened by staff".to_string(),
        DecisionReason::UnknownLot => "Lane not configured".to_string(),
    };
    DisplayText { line1, line2 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parkpay_protocol::{Currency, Direction, EventId, GatewayId, LaneId, LotId};
    use parkpay_protocol::{PlateCandidate, PlateColour};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const NOW: &str = "2026-11-25T10:00:00Z";

    fn event(
        direction: Direction,
        plates: &[&str],
        quality: ReadQuality,
        at: &str,
    ) -> PassageEvent {
        PassageEvent {
            event_id: EventId::new(),
            lot: LotId::parse("lot-1").unwrap(),
            lane: LaneId::parse("lane-1").unwrap(),
            gateway: GatewayId::parse("gw-1").unwrap(),
            direction,
            captured_at: t(at),
            candidates: plates
                .iter()
                .map(|p| PlateCandidate {
                    plate: p.to_string(),
                    confidence: 0.97,
                    colour: PlateColour::Blue,
                })
                .collect(),
            quality,
            evidence_digest: None,
            resent: false,
        }
    }

    fn open(plate: &str) -> OpenSession {
        let p = Plate::parse(plate).unwrap();
        OpenSession {
            id: Uuid::now_v7(),
            plate: p.as_str().to_string(),
            plate_key: p.match_key(),
        }
    }

    fn session(plate: &str, entry: &str, driver: Option<Uuid>) -> Session {
        Session {
            id: Uuid::now_v7(),
            lot: LotId::parse("lot-1").unwrap(),
            plate: plate.to_string(),
            status: SessionStatus::Open,
            driver_id: driver,
            entry_event_id: None,
            entry_lane: None,
            entry_at: t(entry),
            exit_event_id: None,
            exit_lane: None,
            exit_at: None,
            fee: None,
            quote: None,
            updated_at: t(entry),
        }
    }

    fn mandate(
        driver: Uuid,
        status: MandateStatus,
        per_charge: Option<i64>,
        monthly: Option<i64>,
    ) -> Mandate {
        Mandate {
            id: Uuid::now_v7(),
            driver_id: driver,
            provider: "sandbox".into(),
            provider_ref: "w-1".into(),
            status,
            per_charge_cap: per_charge.map(Money::cny),
            monthly_cap: monthly.map(Money::cny),
            channel: "test".into(),
            signed_at: t("2026-01-01T00:00:00Z"),
            revoked_at: None,
        }
    }

    struct Entry {
        ev: PassageEvent,
        lot_known: bool,
        owner: Option<Uuid>,
        inside: Option<OpenSession>,
        lists: Vec<ListEntry>,
        spaces: Option<Spaces>,
    }

    impl Entry {
        fn new(plates: &[&str], quality: ReadQuality) -> Entry {
            Entry {
                ev: event(Direction::Entry, plates, quality, NOW),
                lot_known: true,
                owner: None,
                inside: None,
                lists: Vec::new(),
                spaces: None,
            }
        }

        fn decide(&self) -> Plan {
            let reads = reads(&self.ev);
            decide_entry(&EntryFacts {
                now: t(NOW),
                limits: TimeLimits::default(),
                event: &self.ev,
                lot_known: self.lot_known,
                reads: &reads,
                owner: self.owner,
                inside: self.inside.clone(),
                lists: &self.lists,
                spaces: self.spaces,
            })
        }
    }

    struct Exit {
        ev: PassageEvent,
        tariff: Option<Tariff>,
        session: Option<Session>,
        look_alikes: Vec<OpenSession>,
        driver: Option<Uuid>,
        mandates: Vec<MandateFacts>,
        arrears: i64,
        lists: Vec<ListEntry>,
        class: VehicleClass,
        locked: bool,
        validations: Vec<Validation>,
        blocked: Option<String>,
        settled: Option<Session>,
    }

    impl Exit {
        /// A car read surely at the exit, two hours after entering.
        fn new(plate: &str) -> Exit {
            Exit {
                ev: event(Direction::Exit, &[plate], ReadQuality::Confident, NOW),
                tariff: Some(Tariff::example_cn()),
                session: Some(session(plate, "2026-11-25T08:00:00Z", None)),
                look_alikes: Vec::new(),
                driver: None,
                mandates: Vec::new(),
                arrears: 0,
                lists: Vec::new(),
                class: VehicleClass::Small,
                locked: false,
                validations: Vec::new(),
                blocked: None,
                settled: None,
            }
        }

        fn with_mandate(
            mut self,
            status: MandateStatus,
            per: Option<i64>,
            monthly: Option<i64>,
            spent: i64,
        ) -> Exit {
            let driver = self.driver.unwrap_or_else(Uuid::now_v7);
            self.driver = Some(driver);
            self.mandates.push(MandateFacts {
                mandate: mandate(driver, status, per, monthly),
                spent_this_month: spent,
            });
            self
        }

        fn decide(&self) -> Plan {
            let reads = reads(&self.ev);
            decide_exit(&ExitFacts {
                now: t(NOW),
                limits: TimeLimits::default(),
                event: &self.ev,
                tariff: self.tariff.as_ref(),
                reads: &reads,
                session: self.session.as_ref(),
                look_alikes: &self.look_alikes,
                driver: self.driver,
                mandates: &self.mandates,
                arrears: self.arrears,
                lists: &self.lists,
                class: self.class,
                locked: self.locked,
                validations: &self.validations,
                blocked: self.blocked.as_deref(),
                settled: self.settled.as_ref(),
            })
        }
    }

    fn is(plan: &Plan, action: BarrierAction, reason: DecisionReason) {
        assert_eq!((plan.action, plan.reason), (action, reason), "{plan:#?}");
    }

    fn issue(plan: &Plan) -> ExceptionKind {
        assert_eq!(plan.issues.len(), 1, "{plan:#?}");
        plan.issues[0].kind
    }

    fn collect(plan: &Plan) -> Option<Collect> {
        match &plan.effect {
            Effect::Close { collect, .. } => *collect,
            other => panic!("not a close: {other:?}"),
        }
    }

    // ---- entry -----------------------------------------------------------------------------

    #[test]
    fn entry_with_a_sure_read_opens_a_session_for_the_plates_owner() {
        let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
        let owner = Uuid::now_v7();
        e.owner = Some(owner);
        let p = e.decide();
        is(&p, BarrierAction::Open, DecisionReason::Entered);
        assert!(p.issues.is_empty());
        match p.effect {
            Effect::Open {
                read,
                driver,
                stale,
            } => {
                assert_eq!(read.plate, "沪B12345");
                assert_eq!(driver, Some(owner));
                assert!(stale.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entry_of_a_plate_already_inside_closes_the_stale_session_as_an_exception() {
        let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
        let stale = open("沪B12345");
        e.inside = Some(stale.clone());
        let p = e.decide();
        is(&p, BarrierAction::Open, DecisionReason::Entered);
        assert_eq!(issue(&p), ExceptionKind::StaleEntry);
        assert!(matches!(p.effect, Effect::Open { stale: ref s, .. } if s == &vec![stale.id]));
    }

    #[test]
    fn entry_holds_without_a_sure_read() {
        let p = Entry::new(&[], ReadQuality::NoRead).decide();
        is(&p, BarrierAction::Hold, DecisionReason::Unreadable);
        assert_eq!(issue(&p), ExceptionKind::Unreadable);
        let p = Entry::new(&["沪B12345"], ReadQuality::LowConfidence).decide();
        is(&p, BarrierAction::Hold, DecisionReason::LowConfidence);
        assert_eq!(issue(&p), ExceptionKind::LowConfidence);
        // A "confident" event whose candidates are not plates at all is no read.
        let p = Entry::new(&["\u{0}\u{0}", "!!"], ReadQuality::Confident).decide();
        is(&p, BarrierAction::Hold, DecisionReason::Unreadable);
    }

    #[test]
    fn entry_on_an_unknown_lot_holds() {
        let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
        e.lot_known = false;
        is(&e.decide(), BarrierAction::Hold, DecisionReason::UnknownLot);
    }

    #[test]
    fn capture_instants_far_from_the_server_clock_are_not_believed() {
        for (at, resent, held) in [
            ("2026-11-25T10:04:59Z", false, false), // within 5 min ahead
            ("2026-11-25T10:05:01Z", false, true),  // just past it
            ("2026-11-27T10:00:00Z", false, true),  // two days ahead
            ("2026-11-24T10:00:01Z", false, false), // a live event queued for a day
            ("2026-11-24T09:59:59Z", false, true),
            ("2026-11-20T10:00:00Z", true, false), // a journal replay after an outage
            ("2026-11-18T09:59:59Z", true, true),
            ("1970-01-01T00:00:00Z", true, true),
        ] {
            let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
            e.ev.captured_at = t(at);
            e.ev.resent = resent;
            let p = e.decide();
            if held {
                is(&p, BarrierAction::Hold, DecisionReason::ClockSkew);
                assert_eq!(issue(&p), ExceptionKind::ClockSkew);
            } else {
                is(&p, BarrierAction::Open, DecisionReason::Entered);
            }
        }
    }

    /// A list entry for `plate` valid from `from` until `until` (RFC 3339; `None`: open-ended).
    fn listed(kind: ListKind, plate: &str, from: &str, until: Option<&str>) -> ListEntry {
        ListEntry {
            id: Uuid::now_v7(),
            kind,
            lot: None,
            plate: plate.into(),
            valid_from: t(from),
            valid_until: until.map(t),
            grace_minutes: 0,
            percent_off: None,
            reason: "test".into(),
            created_by: "test".into(),
            created_at: t(from),
            revoked_at: None,
            revoked_by: None,
        }
    }

    #[test]
    fn a_black_listed_plate_is_refused_at_entry_with_an_alarm_while_its_entry_is_in_force() {
        for (from, until, refused) in [
            ("2026-01-01T00:00:00Z", None, true),
            ("2026-01-01T00:00:00Z", Some("2026-11-25T10:00:01Z"), true),
            ("2026-01-01T00:00:00Z", Some("2026-11-25T10:00:00Z"), false), // ended at capture
            ("2026-11-25T10:00:01Z", None, false),                         // not yet
        ] {
            let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
            e.lists = vec![listed(ListKind::Black, "沪B12345", from, until)];
            let p = e.decide();
            if refused {
                is(&p, BarrierAction::Hold, DecisionReason::Blacklisted);
                assert_eq!(issue(&p), ExceptionKind::Blacklisted);
                assert_eq!(p.effect, Effect::None);
            } else {
                is(&p, BarrierAction::Open, DecisionReason::Entered);
            }
        }
        // A revoked entry refuses nobody.
        let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
        let mut black = listed(ListKind::Black, "沪B12345", "2026-01-01T00:00:00Z", None);
        black.revoked_at = Some(t("2026-11-01T00:00:00Z"));
        e.lists = vec![black];
        is(&e.decide(), BarrierAction::Open, DecisionReason::Entered);
    }

    #[test]
    fn a_full_lot_refuses_all_but_pass_and_white_list_holders() {
        let full = |occupancy, reserved| Spaces {
            occupancy,
            capacity: 10,
            reserved,
        };
        for (occupancy, reserved, list, opens) in [
            (9, 0, None, true),
            (10, 0, None, false),
            (8, 2, None, false), // the last two spaces are reserved
            (8, 2, Some(ListKind::Pass), true),
            (10, 0, Some(ListKind::White), true),
            (10, 0, Some(ListKind::Visitor), false),
        ] {
            let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
            e.spaces = Some(full(occupancy, reserved));
            e.lists = list
                .map(|k| {
                    listed(
                        k,
                        "沪B12345",
                        "2026-01-01T00:00:00Z",
                        Some("2027-01-01T00:00:00Z"),
                    )
                })
                .into_iter()
                .collect();
            let p = e.decide();
            if opens {
                is(&p, BarrierAction::Open, DecisionReason::Entered);
            } else {
                is(&p, BarrierAction::Hold, DecisionReason::LotFull);
                assert!(p.issues.is_empty(), "a full lot is not an exception");
                assert_eq!(
                    display(p.reason, p.plate.as_deref(), None, None).line2,
                    "Car park full"
                );
            }
        }
        // The same plate inside already holds a space, which it gives back.
        let mut e = Entry::new(&["沪B12345"], ReadQuality::Confident);
        e.spaces = Some(full(10, 0));
        e.inside = Some(open("沪B12345"));
        is(&e.decide(), BarrierAction::Open, DecisionReason::Entered);
    }

    #[test]
    fn a_locked_car_is_held_at_the_exit_whatever_it_owes() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.locked = true;
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::Locked);
        assert_eq!(issue(&p), ExceptionKind::LockedExit);
        assert_eq!(p.effect, Effect::None, "the session stays open");
        // Locked with no entry on record: still held as locked, not merely "no entry".
        let mut x = Exit::new("沪B12345");
        x.session = None;
        x.locked = true;
        is(&x.decide(), BarrierAction::Hold, DecisionReason::Locked);
    }

    #[test]
    fn lists_price_the_stay_and_name_the_reason() {
        // The session entered 08:00Z, the exit is at 10:00Z (two hours: 500 + 2 x 300 fen).
        let full_fee = 500 + 2 * 300;
        let year = ("2026-01-01T00:00:00Z", Some("2027-01-01T00:00:00Z"));
        for (entry, reason, fee) in [
            (
                listed(ListKind::White, "沪B12345", year.0, None),
                DecisionReason::Whitelisted,
                0,
            ),
            (
                listed(ListKind::Pass, "沪B12345", year.0, year.1),
                DecisionReason::Pass,
                0,
            ),
            (
                listed(ListKind::Visitor, "沪B12345", year.0, year.1),
                DecisionReason::Visitor,
                0,
            ),
            // A pass that ended at 09:00Z: the hour after it is priced as a stay of its own.
            (
                listed(
                    ListKind::Pass,
                    "沪B12345",
                    year.0,
                    Some("2026-11-25T09:00:00Z"),
                ),
                DecisionReason::Mandate,
                500,
            ),
            // A pass for another plate changes nothing.
            (
                listed(ListKind::Pass, "沪B99999", year.0, year.1),
                DecisionReason::Mandate,
                full_fee,
            ),
        ] {
            let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
            x.lists = vec![entry.clone()]
                .into_iter()
                .filter(|e| e.plate == "沪B12345")
                .collect();
            let p = x.decide();
            assert_eq!(
                (p.reason, p.fee.map(|f| f.minor)),
                (reason, Some(fee)),
                "{entry:?}"
            );
            assert_eq!(p.action, BarrierAction::Open);
        }
        // A pass whose grace runs past the exit covers the stay.
        let mut x = Exit::new("沪B12345");
        let mut pass = listed(
            ListKind::Pass,
            "沪B12345",
            year.0,
            Some("2026-11-25T09:00:00Z"),
        );
        pass.grace_minutes = 61;
        x.lists = vec![pass];
        is(&x.decide(), BarrierAction::Open, DecisionReason::Pass);
        // A visitor discount takes its share off the whole fee, rounded in the driver's favour.
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        let mut visitor = listed(ListKind::Visitor, "沪B12345", year.0, year.1);
        visitor.percent_off = Some(33);
        x.lists = vec![visitor];
        let p = x.decide();
        is(&p, BarrierAction::Open, DecisionReason::Mandate);
        assert_eq!(p.fee, Some(Money::cny(full_fee * 67 / 100)));
    }

    #[test]
    fn a_black_listed_car_inside_leaves_as_usual_but_raises_the_alarm() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.lists = vec![listed(
            ListKind::Black,
            "沪B12345",
            "2026-01-01T00:00:00Z",
            None,
        )];
        let p = x.decide();
        is(&p, BarrierAction::Open, DecisionReason::Mandate);
        assert_eq!(issue(&p), ExceptionKind::Blacklisted);
    }

    #[test]
    fn validations_take_time_then_money_off_and_are_redeemed_by_the_exit() {
        let validation = |minutes, amount| Validation {
            id: Uuid::now_v7(),
            merchant_id: Uuid::now_v7(),
            merchant: "Cafe".into(),
            lot: LotId::parse("lot-1").unwrap(),
            code: None,
            session_id: None,
            minutes_off: minutes,
            amount_off: Money::cny(amount),
            issued_at: t("2026-11-25T09:00:00Z"),
            bound_at: None,
            redeemed_at: None,
        };
        // Two hours (1100) less one hour is the first hour alone (500); then 200 off.
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.validations = vec![validation(60, 200)];
        let p = x.decide();
        assert_eq!(p.fee, Some(Money::cny(300)));
        match &p.effect {
            Effect::Close { redeem, .. } => assert_eq!(redeem, &vec![x.validations[0].id]),
            other => panic!("{other:?}"),
        }
        // More time off than the stay, or more money than the fee: free, never negative.
        for v in [validation(180, 0), validation(0, 5000)] {
            let mut x = Exit::new("沪B12345");
            x.validations = vec![v];
            let p = x.decide();
            is(&p, BarrierAction::Open, DecisionReason::Grace);
            assert_eq!(p.fee, Some(Money::cny(0)));
        }
    }

    #[test]
    fn the_class_scales_the_fee() {
        let mut tariff = Tariff::example_cn();
        tariff.classes = vec![
            tariff::ClassRule {
                class: VehicleClass::Large,
                percent: 200,
            },
            tariff::ClassRule {
                class: VehicleClass::NewEnergy,
                percent: 50,
            },
        ];
        for (class, fee) in [
            (VehicleClass::Small, 1100),
            (VehicleClass::Large, 2200),
            (VehicleClass::NewEnergy, 550),
            (VehicleClass::Motorcycle, 1100), // not listed: priced as small
        ] {
            let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
            x.tariff = Some(tariff.clone());
            x.class = class;
            assert_eq!(x.decide().fee, Some(Money::cny(fee)), "{class:?}");
        }
    }

    // ---- exit ------------------------------------------------------------------------------

    #[test]
    fn exit_with_an_active_mandate_opens_and_charges_after() {
        let x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        let p = x.decide();
        is(&p, BarrierAction::Open, DecisionReason::Mandate);
        assert!(p.fee.is_some_and(|f| f.minor > 0));
        let m = x.mandates[0].mandate.id;
        assert_eq!(collect(&p), Some(Collect::Mandate(m)));
        assert!(matches!(
            p.effect,
            Effect::Close {
                status: SessionStatus::Closed,
                ..
            }
        ));
    }

    #[test]
    fn exit_within_grace_opens_free_even_without_a_mandate() {
        let mut x = Exit::new("沪B12345");
        x.session = Some(session("沪B12345", "2026-11-25T09:50:00Z", None));
        let p = x.decide();
        is(&p, BarrierAction::Open, DecisionReason::Grace);
        assert_eq!(p.fee, Some(Money::cny(0)));
        assert_eq!(collect(&p), None);
    }

    #[test]
    fn exit_without_a_usable_mandate_holds_for_payment() {
        let unusable = [
            Exit::new("沪B12345"), // no driver
            Exit::new("沪B12345").with_mandate(MandateStatus::Paused, None, None, 0), // paused
            Exit::new("沪B12345").with_mandate(MandateStatus::Revoked, None, None, 0), // revoked
            Exit::new("沪B12345").with_mandate(MandateStatus::Pending, None, None, 0), // not signed
            Exit::new("沪B12345").with_mandate(MandateStatus::Active, Some(100), None, 0), // per charge
            Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, Some(5000), 4900), // month
        ];
        for x in unusable {
            let p = x.decide();
            is(&p, BarrierAction::Hold, DecisionReason::PaymentRequired);
            assert_eq!(collect(&p), Some(Collect::PayAtExit));
            assert!(matches!(
                p.effect,
                Effect::Close {
                    status: SessionStatus::AwaitingPayment,
                    ..
                }
            ));
            assert_eq!(p.owed, None);
        }
        // The monthly cap is inclusive: exactly reaching it is allowed.
        let fee = Exit::new("沪B12345")
            .with_mandate(MandateStatus::Active, None, None, 0)
            .decide()
            .fee
            .unwrap();
        let x = Exit::new("沪B12345").with_mandate(
            MandateStatus::Active,
            Some(fee.minor),
            Some(10_000),
            10_000 - fee.minor,
        );
        is(&x.decide(), BarrierAction::Open, DecisionReason::Mandate);
    }

    #[test]
    fn a_stay_the_provider_will_not_deduct_is_held_and_says_why() {
        let mut x = Exit::new("京A12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.blocked = Some("PAUSE".into());
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::DeductionBlocked);
        assert!(matches!(
            p.effect,
            Effect::Close {
                status: SessionStatus::AwaitingPayment,
                collect: Some(Collect::PayAtExit),
                ..
            }
        ));
        x.blocked = None;
        is(&x.decide(), BarrierAction::Open, DecisionReason::Mandate);
    }

    #[test]
    fn arrears_block_open_now_and_the_display_shows_all_that_is_owed() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.arrears = 1234;
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::Arrears);
        let fee = p.fee.unwrap();
        assert_eq!(p.owed, Some(Money::cny(fee.minor + 1234)));
        let d = display(p.reason, p.plate.as_deref(), p.fee, p.owed);
        assert!(
            d.line2.contains(&Money::cny(fee.minor + 1234).to_string()),
            "{d:?}"
        );
    }

    #[test]
    fn exit_matches_only_the_exact_plate_and_holds_a_look_alike() {
        // 浙C40192 leaves; only 浙C40162 (one edit away) is inside: never charge it.
        let mut x = Exit::new("浙C40192").with_mandate(MandateStatus::Active, None, None, 0);
        x.session = None;
        x.look_alikes = vec![open("浙C40162")];
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::NoEntry);
        assert_eq!(p.effect, Effect::None);
        assert_eq!(issue(&p), ExceptionKind::NoEntry);
        assert_eq!(p.issues[0].session, Some(x.look_alikes[0].id));
        assert!(p.issues[0].detail.contains("浙C40162"), "{:?}", p.issues[0]);
    }

    /// A stay of `plate` that ended at an exit at `left`, in `status`, with a fee of 12 yuan.
    fn ended(plate: &str, left: &str, status: SessionStatus) -> Session {
        let mut s = session(plate, "2026-11-25T08:00:00Z", None);
        s.status = status;
        s.exit_at = Some(t(left));
        s.fee = Some(Money::cny(1200));
        s
    }

    #[test]
    fn a_car_back_at_the_exit_within_the_window_of_its_settled_stay_leaves() {
        // Closed five minutes ago (paid, or deducted), but the barrier did not open.
        let mut x = Exit::new("沪B12345");
        x.session = None;
        x.settled = Some(ended(
            "沪B12345",
            "2026-11-25T09:55:00Z",
            SessionStatus::Closed,
        ));
        let p = x.decide();
        is(&p, BarrierAction::Open, DecisionReason::Paid);
        assert_eq!(p.effect, Effect::None, "nothing is charged again");
        assert_eq!(p.session, x.settled.as_ref().map(|s| s.id));
        assert!(p.issues.is_empty(), "{p:?}");
    }

    #[test]
    fn a_car_back_at_the_exit_while_its_stay_awaits_payment_is_asked_the_same_fee() {
        let mut x = Exit::new("沪B12345");
        x.session = None;
        let held = ended(
            "沪B12345",
            "2026-11-25T09:58:00Z",
            SessionStatus::AwaitingPayment,
        );
        x.settled = Some(held.clone());
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::PaymentRequired);
        assert_eq!(p.fee, Some(Money::cny(1200)));
        assert_eq!(p.effect, Effect::MoveHeldExit { session: held.id });
    }

    #[test]
    fn past_the_exit_window_or_for_another_plate_a_settled_stay_lets_nobody_out() {
        // The window is 15 minutes: 16 minutes after the stay closed is a new exit with no
        // entry.
        let mut x = Exit::new("沪B12345");
        x.session = None;
        x.settled = Some(ended(
            "沪B12345",
            "2026-11-25T09:44:00Z",
            SessionStatus::Closed,
        ));
        is(&x.decide(), BarrierAction::Hold, DecisionReason::NoEntry);
        // A longer window lets it out.
        x.tariff.as_mut().unwrap().exit_window_minutes = 20;
        is(&x.decide(), BarrierAction::Open, DecisionReason::Paid);
        // Never for a look-alike plate, nor for a stay that "ended" after this capture.
        x.settled = Some(ended(
            "沪B12346",
            "2026-11-25T09:55:00Z",
            SessionStatus::Closed,
        ));
        is(&x.decide(), BarrierAction::Hold, DecisionReason::NoEntry);
        x.settled = Some(ended(
            "沪B12345",
            "2026-11-25T10:01:00Z",
            SessionStatus::Closed,
        ));
        is(&x.decide(), BarrierAction::Hold, DecisionReason::NoEntry);
        // Nor for a stay closed as an exception (a second entry), nor for a locked car.
        x.settled = Some(ended(
            "沪B12345",
            "2026-11-25T09:55:00Z",
            SessionStatus::Exception,
        ));
        is(&x.decide(), BarrierAction::Hold, DecisionReason::NoEntry);
        x.settled = Some(ended(
            "沪B12345",
            "2026-11-25T09:55:00Z",
            SessionStatus::Closed,
        ));
        x.locked = true;
        is(&x.decide(), BarrierAction::Hold, DecisionReason::Locked);
    }

    #[test]
    fn exit_before_its_entry_is_an_exception_not_a_free_stay() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.session = Some(session("沪B12345", "2026-11-25T10:30:00Z", x.driver));
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::ExitBeforeEntry);
        assert_eq!(issue(&p), ExceptionKind::ExitBeforeEntry);
        assert_eq!(p.effect, Effect::None);
    }

    #[test]
    fn exit_the_tariff_cannot_price_holds_for_an_operator() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        // A stored tariff the engine refuses (it fails validation) prices nothing.
        let mut broken = Tariff::example_cn();
        broken.unit_minutes = 0;
        x.tariff = Some(broken);
        let p = x.decide();
        is(&p, BarrierAction::Hold, DecisionReason::CannotPrice);
        assert_eq!(issue(&p), ExceptionKind::PricingFailed);
        assert_eq!(p.effect, Effect::None);
    }

    #[test]
    fn exit_holds_for_unknown_lot_skew_and_unsure_reads_before_anything_else() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.tariff = None;
        is(&x.decide(), BarrierAction::Hold, DecisionReason::UnknownLot);

        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.ev.captured_at = t("2026-11-30T10:00:00Z");
        is(&x.decide(), BarrierAction::Hold, DecisionReason::ClockSkew);

        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.ev.quality = ReadQuality::LowConfidence;
        is(
            &x.decide(),
            BarrierAction::Hold,
            DecisionReason::LowConfidence,
        );

        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.ev.candidates.clear();
        x.ev.quality = ReadQuality::NoRead;
        is(&x.decide(), BarrierAction::Hold, DecisionReason::Unreadable);
    }

    #[test]
    fn a_currency_mismatch_never_lets_a_cap_pass() {
        let mut x = Exit::new("沪B12345").with_mandate(MandateStatus::Active, None, None, 0);
        x.mandates[0].mandate.per_charge_cap = Some(Money::new(1_000_000, Currency::EUR));
        is(
            &x.decide(),
            BarrierAction::Hold,
            DecisionReason::PaymentRequired,
        );
    }

    #[test]
    fn look_alikes_are_folded_one_edit_or_lesser_candidates() {
        let inside = vec![
            open("京AYBKPH"),
            open("浙C40162"),
            open("沪B12345"),
            open("粤Z99999"),
        ];
        let names = |v: Vec<OpenSession>| v.into_iter().map(|s| s.plate).collect::<Vec<_>>();
        let r = |p: &[&str]| {
            p.iter()
                .map(|p| Read::new(&Plate::parse(p).unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(look_alikes(&r(&["京AY8KPH"]), &inside)),
            vec!["京AYBKPH"]
        );
        assert_eq!(
            names(look_alikes(&r(&["浙C40192"]), &inside)),
            vec!["浙C40162"]
        );
        assert_eq!(
            names(look_alikes(&r(&["苏E00000", "沪B12345"]), &inside)),
            vec!["沪B12345"]
        );
        assert!(look_alikes(&r(&["苏E00000"]), &inside).is_empty());
    }
}
