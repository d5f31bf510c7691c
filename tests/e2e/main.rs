//! All end-to-end scenarios, built as one test binary. Each runs against SQLite and the
//! in-process broker by default, and against PostgreSQL and an external broker when
//! `PARKPAY_TEST_DATABASE_URL` and `PARKPAY_TEST_MQTT_URL` are set.

mod browser;
mod browser_evidence;
mod browser_portal;
mod browser_reports;
mod chaos;
mod evidence;
mod fleet;
mod frames;
mod history;
mod journal;
mod operations;
mod payments;
mod portal;
mod reports;
mod rules;
mod scenarios;
mod security;
mod store;
mod trust;
