//! parkpay-tests: the harness the end-to-end scenarios and the storage conformance suite share.
//!
//! Every test runs against real parts. By default: a fresh SQLite file and an in-process broker
//! on a free port. With `PARKPAY_TEST_DATABASE_URL` (a PostgreSQL server URL) and
//! `PARKPAY_TEST_MQTT_URL` (e.g. `mqtt://127.0.0.1:1883`) set: a fresh PostgreSQL database per
//! test and the external broker, with topics kept apart by a unique lot id per test.

use std::future::Future;
use std::time::Duration;

pub mod world;

use parkpay_server::broker::EmbeddedBroker;
use sqlx::Connection;

/// Where a test's database and broker are.
pub struct Backend {
    pub database_url: String,
    pub mqtt_url: String,
    /// Keeps the SQLite file alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
    _broker: Option<EmbeddedBroker>,
    pg_admin: Option<(String, String)>,
}

impl Backend {
    /// A fresh database and a broker, chosen by the environment.
    pub async fn fresh() -> Backend {
        let db = std::env::var("PARKPAY_TEST_DATABASE_URL")
            .ok()
            .filter(|s| !s.is_empty());
        let mqtt = std::env::var("PARKPAY_TEST_MQTT_URL")
            .ok()
            .filter(|s| !s.is_empty());
        let (database_url, dir, pg_admin) = match db {
            Some(admin) => {
                let name = format!("parkpay_t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("PARKPAY_TEST_DATABASE_URL {admin} is not reachable: {e}")
                    });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("creating a test database");
                (with_database(&admin, &name), None, Some((admin, name)))
            }
            None => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("parkpay.db").display());
                (url, Some(dir), None)
            }
        };
        let (mqtt_url, broker) = match mqtt {
            Some(url) => (url, None),
            None => {
                let b = EmbeddedBroker::start(([127, 0, 0, 1], 0).into())
                    .expect("an in-process broker");
                (b.url(), Some(b))
            }
        };
        Backend {
            database_url,
            mqtt_url,
            _dir: dir,
            _broker: broker,
            pg_admin,
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg_admin.is_some()
    }

    /// Drops a PostgreSQL test database; SQLite files go with their directory.
    pub async fn cleanup(self) {
        if let Some((admin, name)) = &self.pg_admin {
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A lot id no other test (or earlier run against a shared broker) uses.
pub fn unique_lot() -> String {
    format!("lot-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Polls `check` until it yields a value or `within` passes. Readiness is observed, never slept on.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Mosquitto of the test's own, with extra configuration lines, on a free port; killed when
/// dropped. `None` when the `mosquitto` binary is not installed.
pub struct OwnMosquitto {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl OwnMosquitto {
    pub async fn start(extra: &str) -> Option<OwnMosquitto> {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}\n"),
            )
            .expect("the broker's configuration is written");
            let child = match std::process::Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("cannot start mosquitto: {e}"),
            };
            let mut broker = OwnMosquitto {
                child,
                url: format!("mqtt://127.0.0.1:{port}"),
                _dir: dir,
            };
            // Readiness is observed: the port accepts, or the broker exited (port taken: retry).
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Some(broker);
                }
                if broker.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        panic!("mosquitto did not start on a free port in 5 attempts");
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
