//! parkpay-server: the central service.
//!
//! Data flows: MQTT `events` -> [`ingest::process`] (decode; check the lane, its gateway, the
//! signature over the exact bytes and the direction; dead-letter what is bad) ->
//! [`app::App::handle_passage`] (load the facts: the lot, the open session of exactly this plate,
//! the driver's mandates and arrears) -> [`decide`] (the pure rules, priced with [`tariff`]) ->
//! one transaction through the [`store::Store`] seam -> the decision is published back to the
//! lane through the [`app::Outbound`] port -> the gateway opens the barrier. Charges are then
//! collected by the [`payments`] worker, never on the barrier's time. [`http`] serves the API,
//! the operator dashboard and the metrics, and the drivers' pages ([`portal`]: sign-in by SMS
//! code, their stays and debts); [`server::Server`] wires it all together.
//!
//! Start reading at `decide.rs` (the rules and their table of tests), then `app.rs` (one
//! function per use case).

pub mod access;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cache;
pub mod config;
pub mod decide;
pub mod domain;
pub mod evidence;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod lists;
pub mod live;
pub mod merchants;
pub mod metrics;
pub mod money;
pub mod mqtt;
pub mod payments;
pub mod portal;
pub mod reports;
pub mod server;
pub mod store;
pub mod tariff;
pub mod tickets;
pub mod wechat;

pub use config::ServerConfig;
pub use server::{Server, ServerError};
