//! parkpay-server: the central service.
//!
//! Data flows: MQTT `events` -> [`mqtt::process`] (decode, verify, dead-letter what is bad) ->
//! [`app::App::handle_passage`] (match the session with [`matching`], price it with [`tariff`],
//! decide, and write everything in one transaction through the [`store::Store`] seam) -> the
//! decision is published back to the lane -> the gateway opens the barrier. Charges are then
//! collected by the [`payments`] worker, never on the barrier's time. [`http`] serves the API,
//! the operator dashboard and the metrics; [`server::Server`] wires it all together.
//!
//! Start reading at `app.rs`: one function per use case.

pub mod app;
pub mod broker;
pub mod config;
pub mod domain;
pub mod http;
pub mod live;
pub mod matching;
pub mod metrics;
pub mod mqtt;
pub mod payments;
pub mod server;
pub mod store;
pub mod tariff;

pub use config::ServerConfig;
pub use server::{Server, ServerError};
