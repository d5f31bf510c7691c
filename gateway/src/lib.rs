//! parkpay-gateway: the edge process at a site's barriers.
//!
//! One gateway serves the lanes of one site. Per lane it listens to a camera, an induction loop
//! and a barrier arm, and drives the arm and a display; it talks to the server only through
//! MQTT, in the envelopes of `parkpay-protocol`.
//!
//! How data flows (the hot path, a car leaving):
//!
//! ```text
//! hw/{camera}/frame ──decode──► reader (blocking thread) ──► burst collector ──┐
//! hw/{camera}/plate ───────────────────────────────────────────────────────────┴► Lane
//! Lane: vote, dedupe ──► PassageEvent ──► journal (fsync) ──► lots/../events (QoS 1, signed)
//! lots/../decisions ──► Lane ──► hw/{barrier}/barrier/cmd + hw/{display}/display, journal entry removed
//! no decision within 5 s, 10 s, 20 s, .. 60 s ──► the journal entry is published again, resent: true
//! hw/{loop}/loop clears after an open ──► Lane ──► close the arm
//! no decision within the timeout ──► Lane: open for allowlisted confident plates, else hold
//! ```
//!
//! Where to start reading:
//! - [`lane`]: the pure state machine that makes every decision a lane makes; its tests are
//!   the behaviour's specification.
//! - [`gateway`]: [`Gateway::build`] and [`Gateway::run`], the MQTT shell that decodes, routes
//!   to lanes and carries out their outputs.
//! - [`mqtt`]: the connection (persistent session, last will, `tcp_nodelay`, backoff) and the
//!   task that keeps the event loop polled.
//! - [`journal`]: store-and-forward of undecided events, replayed on every (re)connect.
//! - [`resend`]: when an undecided event is sent again between connects, until it is decided.
//! - [`burst`]: collecting a camera burst's per-frame reads for the vote.
//! - [`config`]: the TOML file and its environment and flag overrides.
//! - [`reader`]: the plate reader interface and the cross-frame vote.

pub mod burst;
pub mod config;
pub mod gateway;
pub mod journal;
pub mod lane;
pub mod mqtt;
pub mod reader;
pub mod resend;

pub use config::{GatewayConfig, LaneConfig, MqttUrl, Overrides, Secret};
pub use gateway::{Counters, Gateway, GatewayError, GatewayHandle, NoFrameReader};
pub use journal::Journal;
