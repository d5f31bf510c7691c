//! Notifications: encrypted resource, signed POST, at-least-once delivery on the documented schedule.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use crate::{crypto, Inner, NotificationRecord};

/// The documented retry intervals after a failed delivery, in seconds
/// (15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h; then abandoned).
pub(crate) const RETRY_SCHEDULE: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];

pub(crate) fn beijing(t: chrono::DateTime<Utc>) -> String {
    let tz = chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00");
    t.with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// Builds, records and (unless held or dropped) starts delivering one notification.
pub(crate) fn send(
    inner: &Arc<Inner>,
    url: &str,
    event_type: &str,
    summary: &str,
    original_type: &str,
    associated_data: &str,
    resource: &Value,
) {
    let id = uuid::Uuid::new_v4().to_string();
    let nonce = crypto::random_string(12);
    let ciphertext = match crypto::encrypt_resource(
        &inner.merchant.apiv3_key,
        &nonce,
        associated_data,
        &resource.to_string(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("notification not encrypted: {e}");
            return;
        }
    };
    let body = json!({
        "id": id,
        "create_time": beijing(inner.now()),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": associated_data,
            "nonce": nonce,
        }
    })
    .to_string();
    let (index, start) = {
        let mut st = inner.lock();
        let dropped = take(&mut st.drop_left);
        let record = NotificationRecord {
            id,
            event_type: event_type.to_string(),
            url: url.to_string(),
            body,
            attempts: 0,
            delivered: false,
            last_status: None,
            bad_signature_first: take(&mut st.bad_signature_left),
            stale: take(&mut st.stale_left),
            duplicate: take(&mut st.duplicate_left),
        };
        st.notifications.push(record);
        let index = st.notifications.len() - 1;
        if dropped {
            (index, false)
        } else if st.hold {
            st.held.push(index);
            (index, false)
        } else {
            (index, true)
        }
    };
    if start {
        let task_inner = inner.clone();
        inner.spawn(async move { deliver(task_inner, index, false).await });
    }
}

fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

/// The first attempt (unless `first_done`), then the retries on the schedule.
pub(crate) async fn deliver(inner: Arc<Inner>, index: usize, first_done: bool) {
    if !first_done && attempt(&inner, index).await {
        return;
    }
    for secs in RETRY_SCHEDULE {
        tokio::time::sleep(Duration::from_secs_f64(secs as f64 * inner.retry_scale)).await;
        if attempt(&inner, index).await {
            return;
        }
    }
}

/// One POST; true when a 2xx came back (a duplicate is then sent once more, same id).
async fn attempt(inner: &Arc<Inner>, index: usize) -> bool {
    let ok = post_once(inner, index).await;
    if ok {
        let duplicate = {
            let mut st = inner.lock();
            let n = &mut st.notifications[index];
            std::mem::replace(&mut n.duplicate, false)
        };
        if duplicate {
            post_once(inner, index).await;
        }
    }
    ok
}

async fn post_once(inner: &Arc<Inner>, index: usize) -> bool {
    let (url, body, bad, stale) = {
        let mut st = inner.lock();
        let n = &mut st.notifications[index];
        let bad = std::mem::replace(&mut n.bad_signature_first, false);
        (n.url.clone(), n.body.clone(), bad, n.stale)
    };
    let mut ts = Utc::now().timestamp();
    if stale {
        ts -= 600;
    }
    let timestamp = ts.to_string();
    let nonce = crypto::random_string(32);
    let id = inner.identity();
    let signed = if bad {
        format!("{timestamp}\n{nonce}\n{body} \n")
    } else {
        format!("{timestamp}\n{nonce}\n{body}\n")
    };
    let signature = id.sign(&signed);
    let result = inner
        .http
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Wechatpay-Timestamp", &timestamp)
        .header("Wechatpay-Nonce", &nonce)
        .header("Wechatpay-Signature", &signature)
        .header("Wechatpay-Serial", &id.serial)
        .header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
        .timeout(Duration::from_secs(5))
        .body(body)
        .send()
        .await;
    let status = result.ok().map(|r| r.status().as_u16());
    let ok = matches!(status, Some(200..=299));
    let mut st = inner.lock();
    let n = &mut st.notifications[index];
    n.attempts += 1;
    n.last_status = status;
    if ok {
        n.delivered = true;
    }
    ok
}

/// Delivers the held notifications newest first (first attempts in that order), then stops holding.
pub(crate) async fn release(inner: &Arc<Inner>) {
    let held = {
        let mut st = inner.lock();
        st.hold = false;
        std::mem::take(&mut st.held)
    };
    for index in held.into_iter().rev() {
        let delivered = attempt(inner, index).await;
        if !delivered {
            let task_inner = inner.clone();
            inner.spawn(async move { deliver(task_inner, index, true).await });
        }
    }
}

/// A probe: a notification-shaped body whose signature starts with WECHATPAY/SIGNTEST/.
pub(crate) async fn probe(inner: &Arc<Inner>, url: &str) -> u16 {
    let body = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "create_time": beijing(inner.now()),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": crypto::random_string(64),
            "associated_data": "transaction",
            "nonce": crypto::random_string(12),
        }
    })
    .to_string();
    let signature = format!("WECHATPAY/SIGNTEST/{}", crypto::random_string(64));
    let id = inner.identity();
    let result = inner
        .http
        .post(url)
        .header("Content-Type", "application/json")
        .header("Wechatpay-Timestamp", Utc::now().timestamp().to_string())
        .header("Wechatpay-Nonce", crypto::random_string(32))
        .header("Wechatpay-Signature", signature)
        .header("Wechatpay-Serial", &id.serial)
        .header("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048")
        .body(body)
        .send()
        .await;
    result.map(|r| r.status().as_u16()).unwrap_or(0)
}
