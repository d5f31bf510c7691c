//! The storage conformance suite: the same contract checked against whichever backend the
//! environment selects (SQLite by default, PostgreSQL in the second CI pass).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use parkpay_protocol::{
    BarrierAction, Decision, DecisionReason, DisplayText, EventId, LaneId, LotId, Money,
};
use parkpay_server::domain::*;
use parkpay_server::store::*;
use parkpay_server::tariff::Tariff;
use parkpay_tests::world::{World, WorldOptions};
use parkpay_tests::{unique_lot, Backend};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T08:00:00Z")
        .unwrap()
        .into()
}

async fn store() -> (Arc<dyn Store>, Backend, LotId) {
    let b = Backend::fresh().await;
    let s = connect(&b.database_url)
        .await
        .expect("store connects and migrates");
    let lot = LotId::parse(unique_lot()).unwrap();
    s.insert_lot(
        &Lot {
            id: lot.clone(),
            name: "Test".into(),
            capacity: 10,
            reserved_spaces: 0,
            tariff: Tariff::example_cn(),
            tariff_version: 1,
            created_at: t0(),
        },
        &[],
    )
    .await
    .unwrap();
    (s, b, lot)
}

fn decision(lot: &LotId, event: Uuid) -> Decision {
    Decision {
        event_id: EventId(event),
        lot: lot.clone(),
        lane: LaneId::parse("in-1").unwrap(),
        action: BarrierAction::Open,
        reason: DecisionReason::Entered,
        plate: Some("京A12345".into()),
        session_id: None,
        fee: None,
        owed: None,
        pay_url: None,
        display: DisplayText::default(),
        decided_at: t0(),
    }
}

fn entry(lot: &LotId, plate: &str, at: DateTime<Utc>) -> (PassageWrite, Uuid) {
    let event = Uuid::now_v7();
    let session = Uuid::now_v7();
    let w = PassageWrite {
        event: NewEvent {
            event_id: event,
            lot: lot.clone(),
            lane: "in-1".into(),
            gateway: "gw".into(),
            direction: "entry".into(),
            captured_at: at,
            received_at: at,
            plate: Some(plate.into()),
            quality: "confident".into(),
            resent: false,
            payload: "{}".into(),
        },
        resolves: None,
        redeem: Vec::new(),
        ticket: None,
        audit: Vec::new(),
        session_id: Some(session),
        decision: decision(lot, event),
        sessions: vec![SessionChange::Open(
            Session {
                id: session,
                lot: lot.clone(),
                plate: plate.into(),
                status: SessionStatus::Open,
                driver_id: None,
                entry_event_id: Some(event),
                entry_lane: Some(LaneId::parse("in-1").unwrap()),
                entry_at: at,
                exit_event_id: None,
                exit_lane: None,
                exit_at: None,
                fee: None,
                quote: None,
                updated_at: at,
            },
            parkpay_protocol::plate::match_key(plate),
        )],
        charge: None,
        exceptions: vec![],
        outbox: OutboxMessage {
            id: Uuid::now_v7(),
            topic: "t".into(),
            payload: b"d".to_vec(),
        },
    };
    (w, session)
}

fn pending_charge(lot: &LotId, session: Uuid, amount: i64, at: DateTime<Utc>) -> Charge {
    let id = Uuid::now_v7();
    Charge {
        id,
        session_id: session,
        lot: lot.clone(),
        driver_id: None,
        mandate_id: None,
        amount: Money::cny(amount),
        status: ChargeStatus::Pending,
        method: ChargeMethod::Mandate,
        idempotency_key: id.simple().to_string(),
        attempts: 0,
        next_attempt_at: None,
        provider_txn: None,
        last_error: None,
        created_at: at,
        updated_at: at,
        settled_at: None,
        refunded: Money::cny(0),
        advanced: false,
    }
}

fn exit(lot: &LotId, session: Uuid, fee: i64, at: DateTime<Utc>) -> PassageWrite {
    let event = Uuid::now_v7();
    let (mut w, _) = entry(lot, "unused", at);
    w.event.event_id = event;
    w.event.direction = "exit".into();
    w.decision = decision(lot, event);
    w.sessions = vec![SessionChange::Close {
        id: session,
        status: SessionStatus::Closed,
        exit_event_id: event,
        exit_lane: "out-1".into(),
        exit_at: at,
        fee: Money::cny(fee),
        quote_json: serde_json::to_string(
            &parkpay_server::tariff::quote(&Tariff::example_cn(), t0(), at).unwrap(),
        )
        .unwrap(),
        driver_id: None,
        plate: None,
    }];
    w.charge = Some(pending_charge(lot, session, fee, at));
    w
}

#[tokio::test]
async fn lots_and_vehicles_reject_duplicates() {
    let (s, b, lot) = store().await;
    let again = s.lot(&lot).await.unwrap().expect("lot stored");
    assert_eq!(again.tariff_version, 1);
    assert!(matches!(
        s.insert_lot(&again, &[]).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(
        s.update_tariff(
            &lot,
            &serde_json::to_string(&Tariff::example_cn()).unwrap(),
            again.tariff.currency,
            &AuditEntry {
                id: Uuid::now_v7(),
                at: t0(),
                actor: "test".into(),
                action: "lot.tariff_changed".into(),
                subject: format!("lot {lot}"),
                detail: String::new(),
            }
        )
        .await
        .unwrap(),
        2
    );

    let d = Driver {
        id: Uuid::now_v7(),
        name: "Li".into(),
        phone: None,
        created_at: t0(),
    };
    s.insert_driver(&d).await.unwrap();
    let v = Vehicle {
        plate: "京A12345".into(),
        colour: parkpay_protocol::PlateColour::Blue,
        driver_id: d.id,
        class: None,
        locked_at: None,
        created_at: t0(),
    };
    s.insert_vehicle(&v, "k").await.unwrap();
    assert!(matches!(
        s.insert_vehicle(&v, "k").await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(
        s.vehicle("京A12345").await.unwrap().unwrap().driver_id,
        d.id
    );
    b.cleanup().await;
}

#[tokio::test]
async fn an_event_is_stored_once_and_replays_its_decision() {
    let (s, b, lot) = store().await;
    let (w, session) = entry(&lot, "京A12345", t0());
    assert!(matches!(
        s.commit_passage(&w).await.unwrap(),
        PassageOutcome::Committed
    ));
    match s.commit_passage(&w).await.unwrap() {
        PassageOutcome::Duplicate(d) => assert_eq!(*d, w.decision),
        other => panic!("second commit was {other:?}"),
    }
    // The duplicate wrote nothing: still one session, one event.
    let all = s
        .sessions(&SessionFilter {
            lot: Some(lot.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, session);
    b.cleanup().await;
}

#[tokio::test]
async fn concurrent_duplicates_commit_once() {
    let (s, b, lot) = store().await;
    let (w, _) = entry(&lot, "京A12345", t0());
    let tries = (0..8).map(|_| {
        let (s, w) = (s.clone(), w.clone());
        tokio::spawn(async move { s.commit_passage(&w).await })
    });
    let mut committed = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(PassageOutcome::Committed) => committed += 1,
            Ok(PassageOutcome::Duplicate(_)) | Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(s.open_sessions(&lot).await.unwrap().len(), 1);
    b.cleanup().await;
}

/// Passages arriving together are committed in one transaction, each in its own savepoint: a
/// passage that conflicts is undone alone (its event not stored) and every other one is kept.
#[tokio::test]
async fn passages_committed_together_fail_alone() {
    let (s, b, lot) = store().await;
    let plates: Vec<String> = (0..40).map(|i| format!("京B{:05}", 10_000 + i)).collect();
    let mut writes: Vec<PassageWrite> = plates.iter().map(|p| entry(&lot, p, t0()).0).collect();
    // Four entries of one plate (one may open a stay) and a resent copy of one write.
    let same: Vec<PassageWrite> = (0..4).map(|_| entry(&lot, "京C00001", t0()).0).collect();
    writes.extend(same.iter().cloned());
    writes.push(writes[7].clone());
    let tasks: Vec<_> = writes
        .iter()
        .cloned()
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move { s.commit_passage(&w).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    for (i, o) in outcomes[..40].iter().enumerate() {
        if i == 7 {
            // Either copy of the resent write may have gone first.
            continue;
        }
        assert!(matches!(o, Ok(PassageOutcome::Committed)), "{i}: {o:?}");
    }
    let copies = [&outcomes[7], &outcomes[44]];
    let committed = copies
        .iter()
        .filter(|o| matches!(o, Ok(PassageOutcome::Committed)))
        .count();
    let replayed = copies
        .iter()
        .filter(|o| matches!(o, Ok(PassageOutcome::Duplicate(d)) if d.event_id == writes[7].decision.event_id))
        .count();
    assert_eq!((committed, replayed), (1, 1), "{copies:?}");
    let mut opened = 0;
    for (w, o) in same.iter().zip(&outcomes[40..44]) {
        let stored = s.event_decision(w.event.event_id).await.unwrap();
        match o {
            Ok(PassageOutcome::Committed) => {
                opened += 1;
                assert!(stored.is_some());
            }
            Err(StoreError::Conflict(_)) => {
                assert!(stored.is_none(), "a conflicting passage left its event")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(opened, 1);
    assert_eq!(s.open_sessions(&lot).await.unwrap().len(), 41);
    b.cleanup().await;
}

#[tokio::test]
async fn one_open_session_per_plate_and_one_charge_per_session() {
    let (s, b, lot) = store().await;
    let (w1, session) = entry(&lot, "京A12345", t0());
    s.commit_passage(&w1).await.unwrap();
    let (w2, _) = entry(&lot, "京A12345", t0());
    assert!(matches!(
        s.commit_passage(&w2).await,
        Err(StoreError::Conflict(_))
    ));
    // The failed transaction left nothing behind: its event is not stored.
    assert!(s.event_decision(w2.event.event_id).await.unwrap().is_none());

    let x = exit(&lot, session, 500, t0() + Duration::hours(1));
    s.commit_passage(&x).await.unwrap();
    let closed = s.session(session).await.unwrap().unwrap();
    assert_eq!(
        (closed.status, closed.fee),
        (SessionStatus::Closed, Some(Money::cny(500)))
    );
    // Closing again (another exit event for the same session) conflicts and charges nothing.
    let x2 = exit(&lot, session, 500, t0() + Duration::hours(2));
    assert!(matches!(
        s.commit_passage(&x2).await,
        Err(StoreError::Conflict(_))
    ));
    let charges = s
        .charges(&ChargeFilter {
            session: Some(session),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(charges.len(), 1);
    b.cleanup().await;
}

/// `n` stays in `lot`, each closed an hour after its entry with a pending charge of 100 + i.
async fn stays_with_charges(s: &Arc<dyn Store>, lot: &LotId, plate_prefix: &str, n: i64) {
    for i in 0..n {
        let (w, session) = entry(lot, &format!("{plate_prefix}{i}"), t0());
        s.commit_passage(&w).await.unwrap();
        s.commit_passage(&exit(lot, session, 100 + i, t0() + Duration::hours(1)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn leases_are_exclusive_and_a_lost_lease_conflicts() {
    let (s, b, lot) = store().await;
    stays_with_charges(&s, &lot, "京A1234", 6).await;
    let now = t0() + Duration::hours(2);
    let (a, c) = tokio::join!(
        s.lease_due_charges("a", now, now + Duration::minutes(1), 4),
        s.lease_due_charges("c", now, now + Duration::minutes(1), 4)
    );
    let (a, c) = (a.unwrap(), c.unwrap());
    assert!(
        a.iter().all(|x| c.iter().all(|y| x.id != y.id)),
        "no charge leased twice"
    );
    // Under PostgreSQL a lease that lost the race for a row skips it (it sees the row leased
    // once the winner commits): the next round leases what it missed.
    let rest = s
        .lease_due_charges("d", now, now + Duration::minutes(1), 10)
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = a.iter().chain(&c).chain(&rest).map(|x| x.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (ids.len(), a.len() + c.len() + rest.len()),
        (6, 6),
        "every due charge leased once"
    );
    // Nothing more is due while the leases hold.
    assert!(s
        .lease_due_charges("d", now, now + Duration::minutes(1), 10)
        .await
        .unwrap()
        .is_empty());

    let (owner, other, mine) = match a.first() {
        Some(x) => ("a", "c", x),
        None => ("c", "a", &c[0]),
    };
    let upd = |owner: &str| ChargeUpdate {
        id: mine.id,
        lease_owner: owner.into(),
        status: ChargeStatus::Succeeded,
        attempts: 1,
        next_attempt_at: None,
        provider_txn: Some("t1".into()),
        last_error: None,
        settled_at: Some(now),
        advanced: false,
        attempt: ChargeAttempt {
            attempt: 1,
            at: now,
            outcome: "succeeded".into(),
            detail: "t1".into(),
        },
        exception: None,
    };
    assert!(matches!(
        s.update_charge(&upd(other)).await,
        Err(StoreError::Conflict(_))
    ));
    s.update_charge(&upd(owner)).await.unwrap();
    let done = s.charge(mine.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.provider_txn.as_deref()),
        (ChargeStatus::Succeeded, Some("t1"))
    );
    assert_eq!(s.charge_attempts(mine.id).await.unwrap().len(), 1);
    // An expired lease comes back.
    let later = now + Duration::minutes(5);
    assert_eq!(
        s.lease_due_charges("e", later, later + Duration::minutes(1), 10)
            .await
            .unwrap()
            .len(),
        5
    );
    b.cleanup().await;
}

#[tokio::test]
async fn a_lease_returns_what_it_leased_not_what_its_owner_held_before() {
    let (s, b, lot) = store().await;
    stays_with_charges(&s, &lot, "京B5678", 5).await;
    let now = t0() + Duration::hours(2);
    let until = now + Duration::minutes(1);
    let first = s.lease_due_charges("w", now, until, 2).await.unwrap();
    let second = s.lease_due_charges("w", now, until, 2).await.unwrap();
    let third = s.lease_due_charges("w", now, until, 2).await.unwrap();
    assert_eq!((first.len(), second.len(), third.len()), (2, 2, 1));
    let mut ids: Vec<Uuid> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        5,
        "each round leases charges no earlier round leased"
    );
    assert!(s
        .lease_due_charges("w", now, until, 2)
        .await
        .unwrap()
        .is_empty());
    b.cleanup().await;
}

#[tokio::test]
async fn an_instances_leases_are_freed_by_name_and_nobody_elses() {
    let (s, b, lot) = store().await;
    stays_with_charges(&s, &lot, "京B1234", 4).await;
    let now = t0() + Duration::hours(2);
    let until = now + Duration::minutes(2);
    // Worker tokens are "{instance}:{uuid}"; "node_1" must not free "node_10"'s leases (an
    // underscore is a LIKE wildcard), nor "node" those of "node_1".
    let one = s
        .lease_due_charges("node_1:aa", now, until, 2)
        .await
        .unwrap();
    let ten = s
        .lease_due_charges("node_10:bb", now, until, 2)
        .await
        .unwrap();
    assert_eq!((one.len(), ten.len()), (2, 2));
    assert_eq!(s.release_leases_of("node").await.unwrap(), 0);
    assert_eq!(s.release_leases_of("node_1").await.unwrap(), 2);
    // Freed: due again now, long before the lease would have run out.
    let again = s
        .lease_due_charges("other:cc", now, until, 10)
        .await
        .unwrap();
    let mut got: Vec<_> = again.iter().map(|c| c.id).collect();
    let mut want: Vec<_> = one.iter().map(|c| c.id).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "exactly node_1's charges came back");
    assert_eq!(s.release_leases_of("node_10").await.unwrap(), 2);

    // Heartbeats count per instance; an instance not seen for a day is forgotten.
    assert_eq!(s.beat("a", now).await.unwrap(), vec![("a".to_string(), 1)]);
    s.beat("b", now).await.unwrap();
    assert_eq!(
        s.beat("a", now).await.unwrap(),
        vec![("a".to_string(), 2), ("b".to_string(), 1)]
    );
    let next_day = now + Duration::hours(25);
    assert_eq!(
        s.beat("a", next_day).await.unwrap(),
        vec![("a".to_string(), 3)]
    );
    b.cleanup().await;
}

/// A running server takes over the charges leased by an instance that stopped beating within
/// seconds, and a restarted instance takes back its own at once: neither waits for the leases
/// to run out (here they never would: the clock stands still and they last until tomorrow).
#[tokio::test]
async fn charges_of_a_dead_or_restarted_instance_are_taken_over_without_waiting_for_the_lease() {
    let origin = t0() + Duration::hours(2);
    let mut w = World::start(
        WorldOptions::default(),
        Arc::new(parkpay_protocol::ManualClock::new(origin)),
    )
    .await;
    let s = w.app().store.clone();
    let own = w.instance();
    w.stop_server().await;
    let mut charges = Vec::new();
    for plate in ["京C11111", "京C22222", "京C33333"] {
        let (e, session) = entry(&w.lot, plate, t0());
        s.commit_passage(&e).await.unwrap();
        let x = exit(&w.lot, session, 300, t0() + Duration::hours(1));
        charges.push(x.charge.as_ref().unwrap().id);
        s.commit_passage(&x).await.unwrap();
    }
    let tomorrow = origin + Duration::days(1);
    // The first charge is held by an instance that beat once and went silent, the second by this
    // instance before its restart, the third by a live instance that keeps beating.
    let ghost = s
        .lease_due_charges("ghost:1", origin, tomorrow, 1)
        .await
        .unwrap();
    let before = s
        .lease_due_charges(&format!("{own}:before"), origin, tomorrow, 1)
        .await
        .unwrap();
    let alive = s
        .lease_due_charges("alive:1", origin, tomorrow, 1)
        .await
        .unwrap();
    assert_eq!(
        [&ghost, &before, &alive].map(|l| l.iter().map(|c| c.id).collect::<Vec<_>>()),
        [vec![charges[0]], vec![charges[1]], vec![charges[2]]]
    );
    s.beat("ghost", origin).await.unwrap();

    let beating = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                s.beat("alive", origin).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    w.start_server().await;
    for (id, whose) in [
        (charges[0], "the silent instance's"),
        (charges[1], "its own"),
    ] {
        let s = s.clone();
        parkpay_tests::eventually(
            &format!("{whose} charge to be attempted"),
            std::time::Duration::from_secs(30),
            || {
                let s = s.clone();
                async move { (!s.charge_attempts(id).await.unwrap().is_empty()).then_some(()) }
            },
        )
        .await;
    }
    // The instance that keeps beating keeps its charge, however long it holds it.
    assert!(s.charge_attempts(charges[2]).await.unwrap().is_empty());
    beating.abort();
    w.stop().await;
}

#[tokio::test]
async fn sandbox_debits_once_per_key_and_never_below_zero() {
    let (s, b, _lot) = store().await;
    s.put_wallet(
        &Wallet {
            reference: "w1".into(),
            balance: Money::cny(1000),
            fail_next: 1,
        },
        t0(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.sandbox_debit("k1", "w1", Money::cny(600), t0())
            .await
            .unwrap(),
        DebitResult::Unavailable
    );
    let tries = (0..6).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.sandbox_debit("k1", "w1", Money::cny(600), t0()).await })
    });
    let mut txns = Vec::new();
    for t in tries {
        match t.await.unwrap().unwrap() {
            DebitResult::Succeeded { txn_id } => txns.push(txn_id),
            other => panic!("{other:?}"),
        }
    }
    txns.dedup();
    assert_eq!(txns.len(), 1, "one transaction for one key");
    assert_eq!(
        s.wallet("w1").await.unwrap().unwrap().balance,
        Money::cny(400)
    );
    assert!(matches!(
        s.sandbox_debit("k2", "w1", Money::cny(600), t0())
            .await
            .unwrap(),
        DebitResult::Declined { .. }
    ));
    assert_eq!(
        s.wallet("w1").await.unwrap().unwrap().balance,
        Money::cny(400)
    );
    // A decline is not remembered: after a top-up the same key goes through.
    s.put_wallet(
        &Wallet {
            reference: "w1".into(),
            balance: Money::cny(700),
            fail_next: 0,
        },
        t0(),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.sandbox_debit("k2", "w1", Money::cny(600), t0())
            .await
            .unwrap(),
        DebitResult::Succeeded { .. }
    ));
    assert_eq!(
        s.wallet("w1").await.unwrap().unwrap().balance,
        Money::cny(100)
    );
    b.cleanup().await;
}

#[tokio::test]
async fn outbox_dead_letters_and_audit_round_trip() {
    let (s, b, lot) = store().await;
    let (w, _) = entry(&lot, "京A12345", t0());
    s.commit_passage(&w).await.unwrap();
    let pending = s
        .unpublished(t0() + Duration::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].payload, b"d");
    s.mark_published(&[pending[0].id], t0()).await.unwrap();
    assert!(s
        .unpublished(t0() + Duration::seconds(1), 10)
        .await
        .unwrap()
        .is_empty());

    let dl = DeadLetter {
        id: Uuid::now_v7(),
        received_at: t0(),
        topic: "parkpay/v1/x".into(),
        reason: "malformed".into(),
        detail: "not json".into(),
        payload: String::new(),
    };
    s.insert_dead_letter(&dl, b"\xff\x00garbage").await.unwrap();
    let back = s.dead_letters(10).await.unwrap();
    assert_eq!((back.len(), back[0].reason.as_str()), (1, "malformed"));
    assert!(back[0].payload.contains("garbage"));

    s.insert_audit(&AuditEntry {
        id: Uuid::now_v7(),
        at: t0(),
        actor: "op".into(),
        action: "a".into(),
        subject: "s".into(),
        detail: "d".into(),
    })
    .await
    .unwrap();
    assert_eq!(s.audit(10).await.unwrap().len(), 1);
    b.cleanup().await;
}

#[tokio::test]
async fn trusted_plates_are_mandated_and_owe_nothing() {
    let (s, b, lot) = store().await;
    let mut drivers = Vec::new();
    for (plate, mandate) in [("京A11111", true), ("京A22222", false), ("京A33333", true)] {
        let d = Driver {
            id: Uuid::now_v7(),
            name: plate.into(),
            phone: None,
            created_at: t0(),
        };
        s.insert_driver(&d).await.unwrap();
        let v = Vehicle {
            plate: plate.into(),
            colour: parkpay_protocol::PlateColour::Blue,
            driver_id: d.id,
            class: None,
            locked_at: None,
            created_at: t0(),
        };
        s.insert_vehicle(&v, &parkpay_protocol::plate::match_key(plate))
            .await
            .unwrap();
        if mandate {
            s.insert_mandate(&Mandate {
                id: Uuid::now_v7(),
                driver_id: d.id,
                provider: "sandbox".into(),
                provider_ref: format!("w-{plate}"),
                status: MandateStatus::Active,
                per_charge_cap: None,
                monthly_cap: None,
                channel: "api".into(),
                signed_at: t0(),
                revoked_at: None,
            })
            .await
            .unwrap();
        }
        drivers.push(d.id);
    }
    let since = t0() - Duration::days(90);
    // A lot's list holds only plates that park there: nobody has yet.
    assert!(s.trusted_plates(&lot, since, 100).await.unwrap().is_empty());
    let (w, _) = entry(&lot, "京A11111", t0());
    s.commit_passage(&w).await.unwrap();
    let (w, session) = entry(&lot, "京A33333", t0());
    s.commit_passage(&w).await.unwrap();
    let (w, _) = entry(&lot, "京A22222", t0());
    s.commit_passage(&w).await.unwrap();
    assert_eq!(
        s.trusted_plates(&lot, since, 100).await.unwrap(),
        vec!["京A11111".to_string(), "京A33333".to_string()],
        "parked with a mandate (京A22222 has none)"
    );
    let elsewhere = LotId::parse(format!("{lot}-x")).unwrap();
    assert!(
        s.trusted_plates(&elsewhere, since, 100)
            .await
            .unwrap()
            .is_empty(),
        "another lot's gateways get none of these plates"
    );

    // Unpaid arrears take a driver off the list.
    let mut x = exit(&lot, session, 800, t0() + Duration::hours(2));
    if let Some(c) = x.charge.as_mut() {
        c.driver_id = Some(drivers[2]);
        c.status = ChargeStatus::Arrears;
    }
    s.commit_passage(&x).await.unwrap();
    assert_eq!(s.arrears_of(drivers[2]).await.unwrap(), 800);
    assert_eq!(
        s.trusted_plates(&lot, since, 100).await.unwrap(),
        vec!["京A11111".to_string()]
    );
    b.cleanup().await;
}

#[tokio::test]
async fn payer_facts_sum_each_mandates_month_and_the_drivers_arrears_in_one_query() {
    let (s, b, lot) = store().await;
    let d = Driver {
        id: Uuid::now_v7(),
        name: "Wang".into(),
        phone: None,
        created_at: t0(),
    };
    s.insert_driver(&d).await.unwrap();
    let month_start = t0() + Duration::days(10);
    // Without a mandate the arrears are still found.
    let (none, owed) = s.payer_facts(d.id, month_start).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(owed, 0);
    let mandate = |cap: Option<i64>, at| Mandate {
        id: Uuid::now_v7(),
        driver_id: d.id,
        provider: "sandbox".into(),
        provider_ref: "w".into(),
        status: MandateStatus::Active,
        per_charge_cap: None,
        monthly_cap: cap.map(Money::cny),
        channel: "api".into(),
        signed_at: at,
        revoked_at: None,
    };
    let capped = mandate(Some(10_000), t0() - Duration::days(40));
    let plain = mandate(None, t0() - Duration::days(30));
    s.insert_mandate(&capped).await.unwrap();
    s.insert_mandate(&plain).await.unwrap();
    // Under the capped mandate: 300 last month, 500 and 700 this month, 900 this month waived;
    // under no mandate: 1,100 of arrears.
    let charges = [
        (
            Some(capped.id),
            300,
            month_start - Duration::days(3),
            ChargeStatus::Succeeded,
        ),
        (
            Some(capped.id),
            500,
            month_start + Duration::days(1),
            ChargeStatus::Succeeded,
        ),
        (
            Some(capped.id),
            700,
            month_start + Duration::days(2),
            ChargeStatus::Pending,
        ),
        (
            Some(capped.id),
            900,
            month_start + Duration::days(2),
            ChargeStatus::Waived,
        ),
        (
            None,
            1_100,
            month_start + Duration::days(3),
            ChargeStatus::Arrears,
        ),
    ];
    for (i, (m, amount, at, status)) in charges.into_iter().enumerate() {
        let (w, session) = entry(&lot, &format!("京D1000{i}"), at - Duration::hours(1));
        s.commit_passage(&w).await.unwrap();
        let mut x = exit(&lot, session, amount, at);
        if let Some(c) = x.charge.as_mut() {
            c.driver_id = Some(d.id);
            c.mandate_id = m;
            c.status = status;
            c.created_at = at;
        }
        s.commit_passage(&x).await.unwrap();
    }
    let (mandates, arrears) = s.payer_facts(d.id, month_start).await.unwrap();
    let got: Vec<(Uuid, i64)> = mandates.iter().map(|(m, spent)| (m.id, *spent)).collect();
    assert_eq!(
        got,
        vec![(capped.id, 1_200), (plain.id, 0)],
        "oldest mandate first"
    );
    assert_eq!(mandates[0].0.monthly_cap, Some(Money::cny(10_000)));
    assert_eq!(arrears, 1_100);
    b.cleanup().await;
}

fn audit_row(action: &str) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        at: t0(),
        actor: "op".into(),
        action: action.into(),
        subject: "s".into(),
        detail: String::new(),
    }
}

#[tokio::test]
async fn a_correction_commits_its_resolution_audit_and_passage_together_or_not_at_all() {
    let (s, b, lot) = store().await;
    // The held passage and its exception.
    let (mut held, _) = entry(&lot, "京A12345", t0());
    held.sessions.clear();
    held.session_id = None;
    let x = ExceptionRecord {
        id: Uuid::now_v7(),
        lot: lot.clone(),
        lane: None,
        kind: ExceptionKind::Unreadable,
        plate: None,
        event_id: Some(held.event.event_id),
        session_id: None,
        charge_id: None,
        detail: "no read".into(),
        created_at: t0(),
        resolved_at: None,
        resolution: None,
    };
    held.exceptions = vec![x.clone()];
    s.commit_passage(&held).await.unwrap();

    let (mut fix, _) = entry(&lot, "京A12345", t0());
    fix.resolves = Some((x.id, "corrected".into()));
    fix.audit = vec![audit_row("exception.plate_corrected")];
    let racing = fix.clone();
    s.commit_passage(&fix).await.unwrap();
    assert!(s
        .exception(x.id)
        .await
        .unwrap()
        .unwrap()
        .resolved_at
        .is_some());
    assert_eq!(s.audit(10).await.unwrap().len(), 1);

    // A second correction of the same exception writes nothing at all: no event, no session,
    // no audit row.
    let (mut second, _) = entry(&lot, "京B54321", t0());
    second.resolves = racing.resolves.clone();
    second.audit = vec![audit_row("exception.plate_corrected")];
    assert!(matches!(
        s.commit_passage(&second).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s
        .event_decision(second.event.event_id)
        .await
        .unwrap()
        .is_none());
    assert!(s.open_session_of(&lot, "京B54321").await.unwrap().is_none());
    assert_eq!(s.audit(10).await.unwrap().len(), 1);
    b.cleanup().await;
}

#[tokio::test]
async fn revocation_is_final_and_decided_in_one_statement() {
    let (s, b, _lot) = store().await;
    let d = Driver {
        id: Uuid::now_v7(),
        name: "Li".into(),
        phone: None,
        created_at: t0(),
    };
    s.insert_driver(&d).await.unwrap();
    let m = Mandate {
        id: Uuid::now_v7(),
        driver_id: d.id,
        provider: "sandbox".into(),
        provider_ref: "w".into(),
        status: MandateStatus::Active,
        per_charge_cap: None,
        monthly_cap: None,
        channel: "api".into(),
        signed_at: t0(),
        revoked_at: None,
    };
    s.insert_mandate(&m).await.unwrap();
    // Two revocations at once: exactly one wins.
    let (a, c) = tokio::join!(
        s.set_mandate_status(m.id, MandateStatus::Revoked, t0()),
        s.set_mandate_status(m.id, MandateStatus::Revoked, t0())
    );
    assert_eq!(
        [a.is_ok(), c.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {c:?}"
    );
    // Nothing brings a revoked mandate back.
    assert!(matches!(
        s.set_mandate_status(m.id, MandateStatus::Active, t0())
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.mandate(m.id).await.unwrap().unwrap().status,
        MandateStatus::Revoked
    );
    assert!(matches!(
        s.set_mandate_status(Uuid::now_v7(), MandateStatus::Revoked, t0())
            .await,
        Err(StoreError::NotFound(_))
    ));
    b.cleanup().await;
}

#[tokio::test]
async fn lanes_are_configured_with_their_lot_and_changed_with_an_audit_row() {
    let b = Backend::fresh().await;
    let s = connect(&b.database_url).await.unwrap();
    let lot = LotId::parse(unique_lot()).unwrap();
    let lane = |id: &str, direction, gw: &str| Lane {
        lot: lot.clone(),
        id: LaneId::parse(id).unwrap(),
        direction,
        gateway: parkpay_protocol::GatewayId::parse(gw).unwrap(),
        created_at: t0(),
    };
    let lot_row = Lot {
        id: lot.clone(),
        name: "Test".into(),
        capacity: 10,
        reserved_spaces: 0,
        tariff: Tariff::example_cn(),
        tariff_version: 1,
        created_at: t0(),
    };
    s.insert_lot(
        &lot_row,
        &[
            lane("in-1", parkpay_protocol::Direction::Entry, "gw-a"),
            lane("out-1", parkpay_protocol::Direction::Exit, "gw-a"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(s.lanes(&lot).await.unwrap().len(), 2);
    // Reconfiguring a lane replaces it.
    let moved = lane("out-1", parkpay_protocol::Direction::Exit, "gw-b");
    s.put_lane(&moved, &audit_row("lane.configured"))
        .await
        .unwrap();
    assert_eq!(
        s.lane(&lot, &LaneId::parse("out-1").unwrap())
            .await
            .unwrap(),
        Some(moved)
    );
    s.delete_lane(
        &lot,
        &LaneId::parse("in-1").unwrap(),
        &audit_row("lane.removed"),
    )
    .await
    .unwrap();
    assert!(s
        .lane(&lot, &LaneId::parse("in-1").unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        s.delete_lane(
            &lot,
            &LaneId::parse("in-1").unwrap(),
            &audit_row("lane.removed")
        )
        .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.audit(10).await.unwrap().len(), 2);
    b.cleanup().await;
}

#[tokio::test]
async fn accounts_logins_tokens_and_gateway_keys_keep_only_what_they_must() {
    let (s, b, lot) = store().await;
    let name = format!("op-{lot}");
    let grant = Grant {
        role: Role::Operator,
        lots: Some(vec![lot.clone()]),
    };
    let account = Account {
        id: Uuid::now_v7(),
        username: name.clone(),
        grant: grant.clone(),
        created_at: t0(),
        disabled_at: None,
    };
    s.insert_account(&account, "$argon2id$hash", &audit_row("account.created"))
        .await
        .unwrap();
    let again = Account {
        id: Uuid::now_v7(),
        ..account.clone()
    };
    assert!(matches!(
        s.insert_account(&again, "h", &audit_row("account.created"))
            .await,
        Err(StoreError::Duplicate(_))
    ));
    let (found, hash) = s.account_by_name(&name).await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.grant.clone(), hash.as_str()),
        (account.id, grant.clone(), "$argon2id$hash")
    );
    assert!(s.account_by_name("nobody").await.unwrap().is_none());

    // A login is found by its digest until it expires or is deleted.
    let login = Login {
        token_hash: format!("digest-{lot}"),
        account_id: account.id,
        csrf: "csrf".into(),
        created_at: t0(),
        expires_at: t0() + Duration::hours(12),
    };
    s.insert_login(&login).await.unwrap();
    let (l, a) = s
        .login(&login.token_hash, t0() + Duration::hours(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (l.csrf.as_str(), a.username.as_str()),
        ("csrf", name.as_str())
    );
    assert!(
        s.login(&login.token_hash, t0() + Duration::hours(13))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    s.delete_login(&login.token_hash).await.unwrap();
    assert!(
        s.login(&login.token_hash, t0()).await.unwrap().is_none(),
        "signed out"
    );

    let token = ApiToken {
        id: Uuid::now_v7(),
        name: "billing".into(),
        grant: Grant {
            role: Role::Finance,
            lots: None,
        },
        created_by: "cli".into(),
        created_at: t0(),
        revoked_at: None,
    };
    s.insert_api_token(&token, &format!("t-{lot}"), &audit_row("token.created"))
        .await
        .unwrap();
    let t = s.api_token(&format!("t-{lot}")).await.unwrap().unwrap();
    assert_eq!(
        (t.name.as_str(), t.grant.role, t.grant.lots),
        ("billing", Role::Finance, None)
    );
    assert!(s.api_token("t-unknown").await.unwrap().is_none());

    let gw = parkpay_protocol::GatewayId::parse(format!("gw-{lot}")).unwrap();
    s.put_gateway_key(&gw, "aa", false, &audit_row("gateway.key_created"))
        .await
        .unwrap();
    assert!(matches!(
        s.put_gateway_key(&gw, "bb", false, &audit_row("gateway.key_created"))
            .await,
        Err(StoreError::Duplicate(_))
    ));
    s.put_gateway_key(&gw, "cc", true, &audit_row("gateway.key_rotated"))
        .await
        .unwrap();
    let keys = s.gateway_keys().await.unwrap();
    assert!(
        keys.contains(&(gw.to_string(), "cc".to_string())),
        "{keys:?}"
    );
    let actions: Vec<String> = s
        .audit(100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in [
        "account.created",
        "token.created",
        "gateway.key_created",
        "gateway.key_rotated",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} audited with its write: {actions:?}"
        );
    }
    b.cleanup().await;
}

#[tokio::test]
async fn an_exits_combined_reads_find_what_the_single_reads_find() {
    let (s, b, lot) = store().await;
    let driver = Driver {
        id: Uuid::now_v7(),
        name: "Wang".into(),
        phone: None,
        created_at: t0(),
    };
    s.insert_driver(&driver).await.unwrap();
    let vehicle = Vehicle {
        plate: "京C11111".into(),
        colour: parkpay_protocol::PlateColour::Blue,
        driver_id: driver.id,
        class: None,
        locked_at: Some(t0()),
        created_at: t0(),
    };
    s.insert_vehicle(&vehicle, &parkpay_protocol::plate::match_key("京C11111"))
        .await
        .unwrap();
    let listed = |plate: &str, lot: Option<LotId>| ListEntry {
        id: Uuid::now_v7(),
        kind: ListKind::Black,
        lot,
        plate: plate.into(),
        valid_from: t0(),
        valid_until: None,
        grace_minutes: 0,
        percent_off: None,
        reason: "test".into(),
        created_by: "op".into(),
        created_at: t0(),
        revoked_at: None,
        revoked_by: None,
    };
    let on_every_lot = listed("京C22222", None);
    s.insert_list_entry(&on_every_lot, &audit_row("list.added"))
        .await
        .unwrap();
    let elsewhere = LotId::parse("elsewhere").unwrap();
    s.insert_list_entry(
        &listed("京C11111", Some(elsewhere)),
        &audit_row("list.added"),
    )
    .await
    .unwrap();

    // A registered plate listed only for another lot; a listed plate nobody registered; a
    // plate nobody knows.
    for plate in ["京C11111", "京C22222", "京C33333"] {
        let facts = s.plate_facts(plate, &lot).await.unwrap();
        let (one, lists) = (
            s.vehicle(plate).await.unwrap(),
            s.lists_of_plate(plate, &lot).await.unwrap(),
        );
        assert_eq!(
            facts
                .vehicle
                .as_ref()
                .map(|v| (&v.plate, v.driver_id, v.locked_at)),
            one.as_ref().map(|v| (&v.plate, v.driver_id, v.locked_at)),
            "{plate}"
        );
        assert_eq!(facts.lists, lists, "{plate}");
    }
    let facts = s.plate_facts("京C22222", &lot).await.unwrap();
    assert_eq!(
        (facts.vehicle.is_none(), facts.lists),
        (true, vec![on_every_lot])
    );
    assert!(s
        .plate_facts("京C11111", &lot)
        .await
        .unwrap()
        .lists
        .is_empty());

    // Two open stays, one the provider tracks (and blocks); a plate with no open stay.
    let (w, tracked) = entry(&lot, "京C11111", t0());
    s.commit_passage(&w).await.unwrap();
    let (w, plain) = entry(&lot, "京C44444", t0());
    s.commit_passage(&w).await.unwrap();
    let parking = ProviderParking {
        session_id: tracked,
        provider: "wechat".into(),
        out_parking_no: format!("P{}", tracked.simple()),
        parking_id: Some("wx1".into()),
        state: ParkingState::Blocked,
        block_reason: Some("PAUSE".into()),
        updated_at: t0(),
    };
    s.put_provider_parking(&parking).await.unwrap();
    let stay = s.open_stay_of(&lot, "京C11111").await.unwrap().unwrap();
    assert_eq!(stay.session.id, tracked);
    let provider = stay.provider.expect("the provider's view of the stay");
    assert_eq!(
        (provider.state, provider.block_reason.as_deref()),
        (ParkingState::Blocked, Some("PAUSE"))
    );
    assert!(stay.validations.is_empty());
    let stay = s.open_stay_of(&lot, "京C44444").await.unwrap().unwrap();
    assert_eq!(stay.session.id, plain);
    assert!(stay.provider.is_none() && stay.validations.is_empty());
    assert!(s.open_stay_of(&lot, "京C33333").await.unwrap().is_none());
    b.cleanup().await;
}

/// The hot path's reads are gathered across passages into one statement per batch: many made
/// at once must each get the answer for their own key, whatever shares their statement.
#[tokio::test]
async fn reads_made_at_once_each_get_their_own_keys_answer() {
    let (s, b, lot) = store().await;
    const N: usize = 40;
    let plate = |i: usize| format!("京E{i:05}");
    // Each driver's month, spending and arrears differ from every other's, so an answer given
    // to the wrong key shows.
    let month_start = |i: usize| t0() + Duration::hours(3) + Duration::minutes(i as i64);
    let spent = |i: usize, k: usize| (100 + 2 * i + k) as i64 * 10;
    let owes = |i: usize| if i % 3 == 1 { 1_000 + 2 * i as i64 } else { 0 };
    let mut drivers = Vec::new();
    for i in 0..N {
        let d = Driver {
            id: Uuid::now_v7(),
            name: format!("driver {i}"),
            phone: None,
            created_at: t0(),
        };
        s.insert_driver(&d).await.unwrap();
        drivers.push(d.id);
        // Even plates are registered (to their own driver), every third is listed here, every
        // fourth has an open stay, every fifth driver has two mandates.
        if i % 2 == 0 {
            let v = Vehicle {
                plate: plate(i),
                colour: parkpay_protocol::PlateColour::Blue,
                driver_id: d.id,
                class: None,
                locked_at: None,
                created_at: t0(),
            };
            s.insert_vehicle(&v, &parkpay_protocol::plate::match_key(&plate(i)))
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            let e = ListEntry {
                id: Uuid::now_v7(),
                kind: ListKind::White,
                lot: Some(lot.clone()),
                plate: plate(i),
                valid_from: t0(),
                valid_until: None,
                grace_minutes: 0,
                percent_off: None,
                reason: "test".into(),
                created_by: "op".into(),
                created_at: t0(),
                revoked_at: None,
                revoked_by: None,
            };
            s.insert_list_entry(&e, &audit_row("list.added"))
                .await
                .unwrap();
        }
        if i % 4 == 0 {
            s.commit_passage(&entry(&lot, &plate(i), t0()).0)
                .await
                .unwrap();
        }
        // A charge of this driver's own: under `mandate`, or in arrears without one.
        let charge = |mandate: Option<Uuid>, fen: i64, at: DateTime<Utc>, status| {
            let (s, lot, driver, plate) = (s.clone(), lot.clone(), d.id, format!("京F{fen:05}"));
            async move {
                let (w, session) = entry(&lot, &plate, at - Duration::hours(1));
                s.commit_passage(&w).await.unwrap();
                let mut x = exit(&lot, session, fen, at);
                if let Some(c) = x.charge.as_mut() {
                    c.driver_id = Some(driver);
                    c.mandate_id = mandate;
                    c.status = status;
                    c.created_at = at;
                }
                s.commit_passage(&x).await.unwrap();
            }
        };
        if i % 5 == 0 {
            for k in 0..2 {
                let m = Mandate {
                    id: Uuid::now_v7(),
                    driver_id: d.id,
                    provider: "sandbox".into(),
                    provider_ref: format!("w{i}-{k}"),
                    status: MandateStatus::Active,
                    per_charge_cap: None,
                    monthly_cap: None,
                    channel: "api".into(),
                    signed_at: t0() + Duration::minutes(k),
                    revoked_at: None,
                };
                s.insert_mandate(&m).await.unwrap();
                // Spent in this driver's month: one charge; before it: another, which does
                // not count.
                let fen = spent(i, k as usize);
                charge(
                    Some(m.id),
                    fen,
                    month_start(i) + Duration::hours(1),
                    ChargeStatus::Succeeded,
                )
                .await;
                charge(
                    Some(m.id),
                    fen + 1,
                    month_start(i) - Duration::minutes(30),
                    ChargeStatus::Succeeded,
                )
                .await;
            }
        }
        if owes(i) > 0 {
            charge(
                None,
                owes(i),
                t0() + Duration::hours(2),
                ChargeStatus::Arrears,
            )
            .await;
        }
    }
    // Each key asked three times at once, in a shuffled order.
    let mut order: Vec<usize> = (0..3 * N).map(|k| k % N).collect();
    order.sort_by_key(|i| (i * 7919) % N);
    let asks = order.iter().map(|&i| {
        let (s, lot, plate, driver) = (s.clone(), lot.clone(), plate(i), drivers[i]);
        async move {
            let (facts, stay, session, payer) = tokio::join!(
                s.plate_facts(&plate, &lot),
                s.open_stay_of(&lot, &plate),
                s.open_session_of(&lot, &plate),
                s.payer_facts(driver, month_start(i))
            );
            (
                i,
                plate,
                driver,
                facts.unwrap(),
                stay.unwrap(),
                session.unwrap(),
                payer.unwrap(),
            )
        }
    });
    let asks: Vec<_> = asks.map(tokio::spawn).collect();
    for ask in asks {
        let (i, plate, driver, facts, stay, session, (mandates, arrears)) = ask.await.unwrap();
        assert_eq!(
            facts.vehicle.map(|v| (v.plate, v.driver_id)),
            (i % 2 == 0).then(|| (plate.clone(), driver)),
            "{plate}'s vehicle"
        );
        assert_eq!(
            facts
                .lists
                .iter()
                .map(|l| l.plate.as_str())
                .collect::<Vec<_>>(),
            if i % 3 == 0 {
                vec![plate.as_str()]
            } else {
                vec![]
            },
            "{plate}'s lists"
        );
        assert_eq!(
            stay.as_ref().map(|s| s.session.plate.as_str()),
            (i % 4 == 0).then_some(plate.as_str())
        );
        assert_eq!(
            session.map(|s| s.plate),
            (i % 4 == 0).then(|| plate.clone())
        );
        assert_eq!(
            mandates
                .iter()
                .map(|(m, fen)| (m.driver_id, m.provider_ref.clone(), *fen))
                .collect::<Vec<_>>(),
            if i % 5 == 0 {
                (0..2)
                    .map(|k| (driver, format!("w{i}-{k}"), spent(i, k)))
                    .collect()
            } else {
                vec![]
            },
            "{plate}'s driver's mandates, oldest first, each with its month's spending"
        );
        assert_eq!(arrears, owes(i), "{plate}'s driver's arrears");
    }
    b.cleanup().await;
}
