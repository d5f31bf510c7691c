//! The slice of the server's HTTP API (docs/api.md) that a driver app and an operator use, and
//! that the simulator uses the same way.

use chrono::{DateTime, Utc};
use parkpay_protocol::{Direction, GatewayId, LaneId, Money, PlateColour};
use parkpay_server::tariff::Tariff;
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

use crate::error::SimError;

/// How many times a request answered 503 or 429 is sent in all.
const UNAVAILABLE_TRIES: u32 = 10;

/// The server's own status types: the simulator speaks the API it is built against.
pub use parkpay_server::domain::{ChargeStatus, SessionStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: Uuid,
    pub lot: String,
    pub plate: String,
    pub status: SessionStatus,
    #[serde(default)]
    pub entry_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub exit_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub fee: Option<Money>,
    #[serde(default)]
    pub charge_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub id: Uuid,
    pub session_id: Uuid,
    #[serde(default)]
    pub driver_id: Option<Uuid>,
    pub amount: Money,
    pub status: ChargeStatus,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Created {
    id: Uuid,
}

#[derive(Debug, Clone, Deserialize)]
struct Quote {
    total: Money,
}

/// A typed client for the server's HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    /// The API token operator calls carry (`Authorization: Bearer ...`).
    token: Option<String>,
    /// The sandbox provider's secret, for the calls that stand for the provider.
    sandbox: Option<String>,
}

impl Api {
    pub fn new(base: &Url) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.as_str().trim_end_matches('/').to_string(),
            token: None,
            sandbox: None,
        }
    }

    /// The same API through `client` (its own pooling and timeouts) instead of a default one.
    pub fn with_client(mut self, client: reqwest::Client) -> Api {
        self.http = client;
        self
    }

    /// Calls as the holder of this API token.
    pub fn with_token(mut self, token: impl Into<String>) -> Api {
        self.token = Some(token.into());
        self
    }

    /// Plays the sandbox provider too (settling QR payments, funding wallets).
    pub fn with_sandbox_secret(mut self, secret: impl Into<String>) -> Api {
        self.sandbox = Some(secret.into());
        self
    }

    fn url(&self, path: &str) -> Result<Url, SimError> {
        Url::parse(&format!("{}{path}", self.base))
            .map_err(|_| SimError::BaseUrl(self.base.clone()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<serde_json::Value>,
    ) -> Result<T, SimError> {
        let verb = match method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            _ => "REQUEST",
        };
        let wrap = |source| SimError::Http {
            method: verb,
            path: path.to_string(),
            source,
        };
        let mut url = self.url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let bearer = if path.starts_with("/api/sandbox/") {
            self.sandbox.as_deref()
        } else {
            self.token.as_deref()
        };
        // A 503 is the server saying the database failed for a moment, a 429 that this address
        // asked too often: either way the request is sent again after its Retry-After (at most
        // 5 s), as a driver's app would, a few times.
        let mut tries = 0;
        let resp = loop {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            if let Some(body) = &body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(wrap)?;
            tries += 1;
            let passing = resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                || resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS;
            if !passing || tries >= UNAVAILABLE_TRIES {
                break resp;
            }
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1)
                .min(5);
            tracing::info!(
                path,
                tries,
                wait,
                status = resp.status().as_u16(),
                "the server asked to wait; trying again"
            );
            tokio::time::sleep(Duration::from_secs(wait)).await;
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(SimError::Api {
                method: verb,
                path: path.to_string(),
                status: status.as_u16(),
                body,
            });
        }
        resp.json().await.map_err(wrap)
    }

    /// Registers a driver; returns the driver's id.
    pub async fn create_driver(&self, name: &str, phone: &str) -> Result<Uuid, SimError> {
        let body = serde_json::json!({ "name": name, "phone": phone });
        let d: Created = self
            .call(Method::POST, "/api/drivers", &[], Some(body))
            .await?;
        Ok(d.id)
    }

    pub async fn add_vehicle(
        &self,
        driver: Uuid,
        plate: &str,
        colour: PlateColour,
    ) -> Result<(), SimError> {
        let body = serde_json::json!({ "plate": plate, "colour": colour.as_str() });
        let path = format!("/api/drivers/{driver}/vehicles");
        self.call::<serde_json::Value>(Method::POST, &path, &[], Some(body))
            .await
            .map(drop)
    }

    pub async fn create_wallet(&self, reference: &str, balance: Money) -> Result<(), SimError> {
        let body = serde_json::json!({ "reference": reference, "balance": balance });
        self.call::<serde_json::Value>(Method::POST, "/api/sandbox/wallets", &[], Some(body))
            .await
            .map(drop)
    }

    /// Signs a sandbox deduction mandate over the wallet; returns the mandate's id.
    pub async fn create_mandate(&self, driver: Uuid, wallet: &str) -> Result<Uuid, SimError> {
        self.create_mandate_with(driver, "sandbox", wallet).await
    }

    /// A mandate with `provider` (the server's configured one) under the driver's reference
    /// there (a wallet, an openid).
    pub async fn create_mandate_with(
        &self,
        driver: Uuid,
        provider: &str,
        reference: &str,
    ) -> Result<Uuid, SimError> {
        let body = serde_json::json!({ "provider": provider, "provider_ref": reference });
        let path = format!("/api/drivers/{driver}/mandates");
        let m: Created = self.call(Method::POST, &path, &[], Some(body)).await?;
        Ok(m.id)
    }

    pub async fn sessions(
        &self,
        lot: Option<&str>,
        plate: Option<&str>,
        status: Option<SessionStatus>,
    ) -> Result<Vec<Session>, SimError> {
        let mut q: Vec<(&str, String)> = vec![("limit", "100000".to_string())];
        if let Some(lot) = lot {
            q.push(("lot", lot.to_string()));
        }
        if let Some(plate) = plate {
            q.push(("plate", plate.to_string()));
        }
        if let Some(s) = status {
            q.push(("status", s.as_str().to_string()));
        }
        self.call(Method::GET, "/api/sessions", &q, None).await
    }

    /// Pays a held session by QR, as the driver's phone does after scanning the display: it
    /// opens the pay page's view of the stay (public, by the stay's id), pays the amount shown
    /// in the provider's app, and the provider (here the sandbox) tells the server.
    pub async fn pay_session(&self, session: Uuid) -> Result<Charge, SimError> {
        #[derive(Deserialize)]
        struct Due {
            amount: Money,
        }
        #[derive(Deserialize)]
        struct View {
            charge: Option<Due>,
        }
        let view: View = self
            .call(Method::GET, &format!("/api/pay/{session}"), &[], None)
            .await?;
        let Some(due) = view.charge else {
            return Err(SimError::Api {
                method: "GET",
                path: format!("/api/pay/{session}"),
                status: 409,
                body: "nothing to pay".into(),
            });
        };
        if self.sandbox.is_none() {
            // No sandbox to play: the driver pays at the booth.
            let body = serde_json::json!({ "amount": due.amount });
            return self
                .call(
                    Method::POST,
                    &format!("/api/sessions/{session}/cash"),
                    &[],
                    Some(body),
                )
                .await;
        }
        let body = serde_json::json!({ "session": session, "amount": due.amount });
        self.call(Method::POST, "/api/sandbox/settle", &[], Some(body))
            .await
    }

    /// Open exceptions of a lot: (id, kind, lane).
    pub async fn open_exceptions(&self, lot: &str) -> Result<Vec<OpenException>, SimError> {
        let q = [
            ("lot", lot.to_string()),
            ("open", "true".to_string()),
            ("limit", "1000".to_string()),
        ];
        self.call(Method::GET, "/api/exceptions", &q, None).await
    }

    /// An attendant reads the plate off the car itself and corrects the passage; with `session`,
    /// also says which open stay (whose entry was misread) this car is. Having looked at the car,
    /// the attendant confirms the correction even when it settles nothing (an exit whose entry
    /// was never recorded).
    pub async fn correct_plate(
        &self,
        exception: Uuid,
        plate: &str,
        session: Option<Uuid>,
    ) -> Result<(), SimError> {
        let body = serde_json::json!({ "plate": plate, "session": session, "confirmed": true });
        let path = format!("/api/exceptions/{exception}/correct");
        self.call::<serde_json::Value>(Method::POST, &path, &[], Some(body))
            .await
            .map(drop)
    }

    /// Lifts a lane's barrier by hand, as an operator does from the dashboard (audited).
    pub async fn open_barrier(&self, lot: &str, lane: &str, reason: &str) -> Result<(), SimError> {
        let body = serde_json::json!({ "reason": reason });
        self.call::<serde_json::Value>(
            Method::POST,
            &format!("/api/lots/{lot}/lanes/{lane}/open"),
            &[],
            Some(body),
        )
        .await
        .map(|_| ())
    }

    pub async fn charges(&self) -> Result<Vec<Charge>, SimError> {
        // The whole ledger, not the API's default page.
        let q = [("limit", "100000".to_string())];
        self.call(Method::GET, "/api/charges", &q, None).await
    }

    pub async fn lot_exists(&self, lot: &str) -> Result<bool, SimError> {
        match self
            .call::<serde_json::Value>(Method::GET, &format!("/api/lots/{lot}"), &[], None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_status(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn create_lot(
        &self,
        lot: &str,
        name: &str,
        capacity: u32,
        tariff: &serde_json::Value,
        lanes: &[(LaneId, Direction)],
        gateway: &GatewayId,
    ) -> Result<(), SimError> {
        let lanes: Vec<serde_json::Value> = lanes
            .iter()
            .map(|(id, direction)| serde_json::json!({"id": id, "direction": direction, "gateway": gateway}))
            .collect();
        let body = serde_json::json!({
            "id": lot, "name": name, "capacity": capacity, "tariff": tariff, "lanes": lanes,
        });
        self.call::<serde_json::Value>(Method::POST, "/api/lots", &[], Some(body))
            .await
            .map(drop)
    }

    /// The lot's current tariff, as the server holds it.
    pub async fn lot_tariff(&self, lot: &str) -> Result<Tariff, SimError> {
        #[derive(Deserialize)]
        struct Lot {
            tariff: Tariff,
        }
        let l: Lot = self
            .call(Method::GET, &format!("/api/lots/{lot}"), &[], None)
            .await?;
        Ok(l.tariff)
    }

    /// The lot's tariff applied to one stay by the server, in minor units.
    pub async fn quote(
        &self,
        lot: &str,
        entry: DateTime<Utc>,
        exit: DateTime<Utc>,
    ) -> Result<i64, SimError> {
        let q = [("entry", entry.to_rfc3339()), ("exit", exit.to_rfc3339())];
        let path = format!("/api/lots/{lot}/tariff/preview");
        let quote: Quote = self.call(Method::GET, &path, &q, None).await?;
        Ok(quote.total.minor)
    }
}

/// An exception in the operator's queue, as the attendant sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenException {
    pub id: Uuid,
    pub kind: String,
    pub lane: Option<String>,
    pub plate: Option<String>,
    /// For `no_entry`: the one look-alike session inside, when there is exactly one.
    pub session_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The example tariff of docs/api.md (the server's `Tariff::example_cn`), used when the
/// simulator has to create its lot.
pub fn example_tariff() -> serde_json::Value {
    // A plain struct of numbers and strings: serialising it cannot fail.
    serde_json::to_value(Tariff::example_cn()).expect("a tariff serialises to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each connection with the next of `answers` (status line, extra
    /// headers, body) and counts the requests it read.
    async fn serve(
        answers: Vec<(&'static str, &'static str, String)>,
    ) -> (Url, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let mut served = 0;
            for (status, headers, body) in answers {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Headers, then the body its Content-Length names.
                loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                served += 1;
                let reply = format!(
                    "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(reply.as_bytes()).await.unwrap();
            }
            served
        });
        (url, task)
    }

    #[tokio::test]
    async fn a_503_is_sent_again_after_its_retry_after() {
        let id = Uuid::from_u128(42);
        let unavailable = r#"{"error":"unavailable","message":"try again"}"#.to_string();
        let (url, served) = serve(vec![
            (
                "503 Service Unavailable",
                "retry-after: 0\r\n",
                unavailable.clone(),
            ),
            ("503 Service Unavailable", "retry-after: 0\r\n", unavailable),
            ("201 Created", "", format!(r#"{{"id":"{id}"}}"#)),
        ])
        .await;
        let got = Api::new(&url)
            .create_driver("Driver 1", "13800000001")
            .await
            .unwrap();
        assert_eq!(got, id);
        assert_eq!(served.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_429_is_sent_again_after_its_retry_after() {
        let id = Uuid::from_u128(43);
        let (url, served) = serve(vec![
            (
                "429 Too Many Requests",
                "retry-after: 0\r\n",
                r#"{"error":"too_many_requests","message":"try again in 1 s"}"#.to_string(),
            ),
            ("201 Created", "", format!(r#"{{"id":"{id}"}}"#)),
        ])
        .await;
        let got = Api::new(&url)
            .create_driver("Driver 1", "13800000001")
            .await
            .unwrap();
        assert_eq!(got, id);
        assert_eq!(served.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_500_is_not_sent_again() {
        let (url, served) = serve(vec![(
            "500 Internal Server Error",
            "",
            r#"{"error":"internal","message":"internal error"}"#.to_string(),
        )])
        .await;
        let err = Api::new(&url)
            .create_driver("Driver 1", "13800000001")
            .await
            .unwrap_err();
        assert!(matches!(err, SimError::Api { status: 500, .. }), "{err:?}");
        assert_eq!(served.await.unwrap(), 1);
    }
}
