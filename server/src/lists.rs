//! Use cases of the lot's own rules: the white and black lists, passes and visitor grants, the
//! owner's lock on a car, and the spaces a lot counts. The decision reads them
//! ([`crate::decide`]); this module only keeps them, each change audited.

use chrono::{DateTime, TimeDelta, Utc};
use parkpay_protocol::{LotId, Plate};
use serde::Deserialize;
use uuid::Uuid;

use crate::app::{App, AppError, AppResult};
use crate::domain::*;
use crate::store::ListFilter;

/// The longest grace a pass may have after it ends: 31 days.
pub const MAX_PASS_GRACE_MINUTES: i64 = 31 * 24 * 60;

/// A list entry as an operator (or an integration) asks for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewListEntry {
    pub kind: ListKind,
    /// `None`: every lot (needs a grant covering every lot).
    #[serde(default)]
    pub lot: Option<LotId>,
    pub plate: String,
    /// Defaults to now.
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    /// Required for passes and visitors; open-ended lists may leave it out.
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
    /// Passes only.
    #[serde(default)]
    pub grace_minutes: i64,
    /// Visitors only: a discount instead of a free window (1-99).
    #[serde(default)]
    pub percent_off: Option<u32>,
    pub reason: String,
}

fn unprocessable(field: &str, why: impl std::fmt::Display) -> AppError {
    AppError::Unprocessable(format!("{field}: {why}"))
}

impl App {
    /// Puts a plate on a list. The plate is stored in its canonical form, so it matches exactly
    /// the reads of that plate and nothing that merely resembles it.
    pub async fn add_list_entry(&self, n: NewListEntry, actor: &str) -> AppResult<ListEntry> {
        let plate = Plate::parse(&n.plate).map_err(|e| unprocessable("plate", e))?;
        let now = self.clock.now();
        let valid_from = n.valid_from.unwrap_or(now);
        if let Some(until) = n.valid_until {
            if until <= valid_from {
                return Err(unprocessable("valid_until", "must be after valid_from"));
            }
        }
        match n.kind {
            ListKind::Pass | ListKind::Visitor if n.valid_until.is_none() => {
                return Err(unprocessable(
                    "valid_until",
                    format!("a {} needs an end", n.kind),
                ));
            }
            _ => {}
        }
        if n.grace_minutes != 0
            && (n.kind != ListKind::Pass
                || !(0..=MAX_PASS_GRACE_MINUTES).contains(&n.grace_minutes))
        {
            return Err(unprocessable(
                "grace_minutes",
                format!("only a pass has one, of 0 to {MAX_PASS_GRACE_MINUTES} minutes"),
            ));
        }
        if let Some(p) = n.percent_off {
            if n.kind != ListKind::Visitor || !(1..=99).contains(&p) {
                return Err(unprocessable(
                    "percent_off",
                    "only a visitor grant has one, of 1 to 99 (leave it out for a free stay)",
                ));
            }
        }
        let reason = n.reason.trim();
        if reason.is_empty() || reason.chars().count() > 200 || reason.chars().any(char::is_control)
        {
            return Err(unprocessable("reason", "1-200 printable characters"));
        }
        if let Some(lot) = &n.lot {
            if self.store.lot(lot).await?.is_none() {
                return Err(AppError::NotFound(format!("lot {lot}")));
            }
        }
        let e = ListEntry {
            id: Uuid::now_v7(),
            kind: n.kind,
            lot: n.lot,
            plate: plate.as_str().to_string(),
            valid_from,
            valid_until: n.valid_until,
            grace_minutes: n.grace_minutes,
            percent_off: n.percent_off,
            reason: reason.to_string(),
            created_by: actor.to_string(),
            created_at: now,
            revoked_at: None,
            revoked_by: None,
        };
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: format!("list.{}_added", e.kind),
            subject: format!("plate {}", e.plate),
            detail: format!(
                "lot {}, {} to {}: {}",
                e.lot.as_ref().map_or("every lot", |l| l.as_str()),
                e.valid_from,
                e.valid_until
                    .map_or_else(|| "open-ended".to_string(), |u| u.to_string()),
                e.reason
            ),
        };
        self.store.insert_list_entry(&e, &audit).await?;
        self.allowlists_due.notify_one();
        Ok(e)
    }

    /// Takes a plate off a list for good (the entry stays, revoked, for the record).
    pub async fn revoke_list_entry(&self, id: Uuid, actor: &str) -> AppResult<ListEntry> {
        let now = self.clock.now();
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: "list.revoked".to_string(),
            subject: format!("list entry {id}"),
            detail: String::new(),
        };
        let e = self.store.revoke_list_entry(id, actor, now, &audit).await?;
        self.allowlists_due.notify_one();
        Ok(e)
    }

    pub async fn list_entries(&self, f: &ListFilter) -> AppResult<Vec<ListEntry>> {
        Ok(self.store.list_entries(f).await?)
    }

    /// The owner locks (`true`) or unlocks their car: a locked car's exit is held, and it is
    /// never let out by an offline gateway.
    pub async fn lock_vehicle(&self, plate: &str, lock: bool, actor: &str) -> AppResult<Vehicle> {
        let plate = Plate::parse(plate).map_err(|e| unprocessable("plate", e))?;
        let now = self.clock.now();
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: if lock {
                "vehicle.locked"
            } else {
                "vehicle.unlocked"
            }
            .to_string(),
            subject: format!("plate {}", plate.as_str()),
            detail: String::new(),
        };
        self.store
            .set_vehicle_lock(plate.as_str(), lock.then_some(now), &audit)
            .await?;
        self.allowlists_due.notify_one();
        if !lock {
            self.release_held_exits(plate.as_str(), actor).await?;
        }
        self.store
            .vehicle(plate.as_str())
            .await?
            .ok_or_else(|| AppError::NotFound(format!("vehicle {}", plate.as_str())))
    }

    /// After an unlock: the newest exit the lock held is decided again (the car may still be at
    /// the barrier), and older ones are resolved.
    async fn release_held_exits(&self, plate: &str, actor: &str) -> AppResult<()> {
        let mut held: Vec<ExceptionRecord> = self
            .store
            .exceptions(None, true, 1000)
            .await?
            .into_iter()
            .filter(|x| x.kind == ExceptionKind::LockedExit && x.plate.as_deref() == Some(plate))
            .collect();
        held.sort_by_key(|x| x.created_at);
        let Some(newest) = held.pop() else {
            return Ok(());
        };
        let now = self.clock.now();
        for x in held {
            match self
                .store
                .resolve_exception(x.id, "the owner unlocked the car", now)
                .await
            {
                Ok(()) | Err(crate::store::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: "exception.decided_again".to_string(),
            subject: format!("exception {}", newest.id),
            detail: format!("{plate} unlocked by its owner"),
        };
        match self
            .decide_again(&newest, "the owner unlocked the car".to_string(), audit)
            .await
        {
            // Resolved meanwhile (another unlock, an operator): nothing left to do.
            Ok(_) | Err(AppError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets how many spaces a lot counts (0: it does not count) and how many of them are kept
    /// for pass and white-list holders.
    pub async fn set_spaces(
        &self,
        lot: &LotId,
        capacity: i64,
        reserved: i64,
        actor: &str,
    ) -> AppResult<Lot> {
        if !(0..=1_000_000).contains(&capacity) {
            return Err(unprocessable("capacity", "0 to 1000000 (0: not counted)"));
        }
        if !(0..=capacity).contains(&reserved) {
            return Err(unprocessable("reserved_spaces", "0 to the capacity"));
        }
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: self.clock.now(),
            actor: actor.to_string(),
            action: "lot.spaces_changed".to_string(),
            subject: format!("lot {lot}"),
            detail: format!("capacity {capacity}, reserved {reserved}"),
        };
        self.store
            .update_lot_spaces(lot, capacity, reserved, &audit)
            .await?;
        self.reloaded_lot(lot).await
    }

    /// The plates a lot's gateways may let out while they cannot reach the server: drivers with
    /// an active mandate and no arrears who park there, and plates on the white list or holding
    /// a pass in force now, minus the black list and locked cars.
    pub async fn offline_plates(&self, lot: &LotId, limit: i64) -> AppResult<Vec<String>> {
        let now = self.clock.now();
        let since = now - TimeDelta::days(ALLOWLIST_DAYS);
        let mut plates: std::collections::BTreeSet<String> = self
            .store
            .trusted_plates(lot, since, limit)
            .await?
            .into_iter()
            .collect();
        let current = |kind| ListFilter {
            kind: Some(kind),
            lot: Some(lot.clone()),
            plate: None,
            current_at: Some(now),
            limit,
        };
        for kind in [ListKind::White, ListKind::Pass] {
            for e in self.store.list_entries(&current(kind)).await? {
                if e.in_force_at(now) {
                    plates.insert(e.plate);
                }
            }
        }
        for e in self.store.list_entries(&current(ListKind::Black)).await? {
            if e.in_force_at(now) {
                plates.remove(&e.plate);
            }
        }
        for plate in self.store.locked_plates().await? {
            plates.remove(&plate);
        }
        Ok(plates
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }
}

/// A lot's allowlist holds the plates parked there or seen there within this many days.
pub const ALLOWLIST_DAYS: i64 = 90;

/// A pass bought for a registered plate, paid under its driver's mandate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPurchase {
    /// The buyer's idempotency key: a retry with the same id never pays twice.
    pub purchase_id: Uuid,
    pub lot: LotId,
    pub plate: String,
    pub months: u32,
}

/// The most months one purchase buys.
pub const MAX_PASS_MONTHS: u32 = 12;

/// `t` plus `months` calendar months on the lot's wall clock (the 31st becomes the month's last
/// day); an instant the zone skips becomes the next that exists.
fn add_months(t: DateTime<Utc>, months: u32, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    use chrono::TimeZone;
    let local = t.with_timezone(&tz).naive_local();
    let later = local.checked_add_months(chrono::Months::new(months))?;
    (0..3)
        .find_map(|h| {
            tz.from_local_datetime(&(later + TimeDelta::hours(h)))
                .earliest()
        })
        .map(|d| d.with_timezone(&Utc))
}

impl App {
    /// Sells a pass of `months` for a registered plate at a lot that sells them
    /// (`tariff.pass_month_price`), debited at once under the driver's mandate through the
    /// payment provider. A plate that holds a pass at the lot renews it: the new one starts
    /// where the last ends. Returns the purchase, its pass, and whether this was a replay of an
    /// earlier request with the same `purchase_id`.
    pub async fn buy_pass(
        &self,
        n: NewPurchase,
        actor: &str,
    ) -> AppResult<(PassPurchase, ListEntry, bool)> {
        let plate = Plate::parse(&n.plate).map_err(|e| unprocessable("plate", e))?;
        if let Some(done) = self.replayed_purchase(&n, plate.as_str()).await? {
            return Ok(done);
        }
        if !(1..=MAX_PASS_MONTHS).contains(&n.months) {
            return Err(unprocessable("months", format!("1 to {MAX_PASS_MONTHS}")));
        }
        let lot = self
            .store
            .lot(&n.lot)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("lot {}", n.lot)))?;
        let price = lot
            .tariff
            .pass_month_price
            .ok_or_else(|| unprocessable("lot", format!("lot {} does not sell passes", lot.id)))?;
        let amount = price
            .minor
            .checked_mul(i64::from(n.months))
            .map(|m| parkpay_protocol::Money::new(m, price.currency))
            .ok_or_else(|| unprocessable("months", "too many"))?;
        let vehicle = self.store.vehicle(plate.as_str()).await?.ok_or_else(|| {
            unprocessable(
                "plate",
                format!("{} is not registered to a driver", plate.as_str()),
            )
        })?;
        let now = self.clock.now();
        let (facts, arrears) = self
            .store
            .payer_facts(vehicle.driver_id, crate::app::month_start(now, &lot.tariff))
            .await?;
        if arrears > 0 {
            return Err(AppError::Conflict(
                "the driver has unpaid arrears; settle them first".to_string(),
            ));
        }
        let facts: Vec<crate::decide::MandateFacts> = facts
            .into_iter()
            .map(|(mandate, spent)| crate::decide::MandateFacts {
                mandate,
                spent_this_month: spent,
            })
            .collect();
        let mandate = crate::decide::usable_mandate(&facts, amount)
            .cloned()
            .ok_or_else(|| {
                unprocessable(
                    "plate",
                    "the driver has no active mandate that may carry this amount",
                )
            })?;
        // A renewal starts where the pass in force (or already bought ahead) ends.
        let start = self
            .store
            .lists_of_plate(plate.as_str(), &lot.id)
            .await?
            .iter()
            .filter(|e| e.kind == ListKind::Pass && e.lot.as_ref() == Some(&lot.id))
            .filter_map(|e| e.valid_until.filter(|u| *u > now))
            .max()
            .unwrap_or(now);
        let until = add_months(start, n.months, lot.tariff.time_zone)
            .ok_or_else(|| unprocessable("months", "out of range"))?;
        let outcome = self
            .provider
            .debit(&crate::payments::DebitRequest {
                idempotency_key: n.purchase_id.simple().to_string(),
                provider_ref: mandate.provider_ref.clone(),
                amount,
                description: format!(
                    "{}-month pass for {} at {}",
                    n.months,
                    plate.as_str(),
                    lot.name
                ),
                stay: None,
            })
            .await;
        let txn = match outcome {
            Ok(crate::payments::ProviderOutcome::Succeeded { txn, .. }) => txn,
            Ok(crate::payments::ProviderOutcome::Declined { reason })
            | Ok(crate::payments::ProviderOutcome::Failed { reason }) => {
                return Err(AppError::Unprocessable(format!(
                    "the payment was declined: {reason}"
                )))
            }
            Ok(crate::payments::ProviderOutcome::Accepted { .. }) | Err(_) => {
                return Err(AppError::Conflict(
                    "the payment is not confirmed yet; send the same request (same purchase_id) \
                     again"
                        .to_string(),
                ))
            }
        };
        let pass = ListEntry {
            id: Uuid::now_v7(),
            kind: ListKind::Pass,
            lot: Some(lot.id.clone()),
            plate: plate.as_str().to_string(),
            valid_from: start,
            valid_until: Some(until),
            grace_minutes: 0,
            percent_off: None,
            reason: format!("bought: {} month(s)", n.months),
            created_by: actor.to_string(),
            created_at: now,
            revoked_at: None,
            revoked_by: None,
        };
        let purchase = PassPurchase {
            id: n.purchase_id,
            lot: lot.id.clone(),
            plate: pass.plate.clone(),
            driver_id: vehicle.driver_id,
            mandate_id: mandate.id,
            months: i64::from(n.months),
            amount,
            provider_txn: txn,
            list_entry_id: pass.id,
            created_at: now,
        };
        let audit = AuditEntry {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.to_string(),
            action: "pass.bought".to_string(),
            subject: format!("plate {}", pass.plate),
            detail: format!(
                "{} month(s) at lot {} for {}, {} to {}, purchase {}",
                n.months, lot.id, amount, start, until, n.purchase_id
            ),
        };
        match self
            .store
            .record_pass_purchase(&purchase, &pass, &audit)
            .await
        {
            Ok(()) => {
                self.allowlists_due.notify_one();
                Ok((purchase, pass, false))
            }
            // A concurrent retry recorded it first: the provider debited once (same key).
            Err(crate::store::StoreError::Duplicate(_)) => self
                .replayed_purchase(&n, plate.as_str())
                .await?
                .ok_or_else(|| AppError::Conflict("the purchase changed meanwhile".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// The purchase already made under `n.purchase_id`, if any; `Conflict` if that id was used
    /// for another purchase.
    async fn replayed_purchase(
        &self,
        n: &NewPurchase,
        plate: &str,
    ) -> AppResult<Option<(PassPurchase, ListEntry, bool)>> {
        let Some(p) = self.store.pass_purchase(n.purchase_id).await? else {
            return Ok(None);
        };
        if p.lot != n.lot || p.plate != plate || p.months != i64::from(n.months) {
            return Err(AppError::Conflict(format!(
                "purchase_id {} was used for another purchase",
                n.purchase_id
            )));
        }
        let pass = self
            .store
            .list_entry(p.list_entry_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("pass {}", p.list_entry_id)))?;
        Ok(Some((p, pass, true)))
    }
}
