//! The embedded MQTT broker (rumqttd), so a newcomer runs one process with nothing to install.
//! Production points the server at an external broker instead (see docs/operations.md).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind the embedded broker to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the embedded broker did not start listening on {0}")]
    NotListening(SocketAddr),
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// A running in-process broker. rumqttd has no shutdown: the broker lives as long as the process.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker on `bind` (port 0 picks a free port) and returns once it accepts
    /// connections.
    pub fn start(bind: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
        // rumqttd cannot report the port it bound, so resolve port 0 ourselves first.
        let addr = if bind.port() == 0 {
            let probe = TcpListener::bind(bind)
                .map_err(|source| BrokerError::Bind { addr: bind, source })?;
            probe
                .local_addr()
                .map_err(|source| BrokerError::Bind { addr: bind, source })?
        } else {
            bind
        };
        let settings = ServerSettings {
            name: "parkpay-v4".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                // Camera frames travel base64-encoded: allow a few megabytes.
                max_payload_size: 8 * 1024 * 1024,
                max_inflight_count: 256,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_000,
                max_outgoing_packet_count: 1_000,
                // rumqttd keeps every message of a subscription filter in memory, in segments,
                // until the oldest segment is dropped: up to size x (count + 1) per filter.
                // 64 MiB x 10 let a 30-minute soak at 500 events/s grow by ~180 MB every 4
                // minutes. 4 MiB x 10 is ~44 MiB per filter at most, ~30,000 passages of
                // backlog for a subscriber that falls behind (a site's hours of traffic).
                max_segment_size: 4 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v4: Some(HashMap::from([("v4".to_string(), settings)])),
            ..Default::default()
        };
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        // Readiness is observed, not assumed: poll until the broker answers an MQTT CONNECT.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_connect(addr) {
            if Instant::now() > deadline {
                return Err(BrokerError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(EmbeddedBroker { addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Sends a minimal MQTT 3.1.1 CONNECT, expects CONNACK "accepted", then disconnects politely
/// (a bare TCP probe would make the broker log a protocol error).
fn answers_connect(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    const CONNECT: [u8; 19] = [
        0x10, 17, // CONNECT, remaining length
        0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0,
        10, // protocol, level 4, clean session, keep-alive 10 s
        0, 5, b'p', b'r', b'o', b'b', b'e', // client id "probe"
    ];
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut ack = [0u8; 4];
    let ok =
        s.write_all(&CONNECT).is_ok() && s.read_exact(&mut ack).is_ok() && ack == [0x20, 2, 0, 0];
    let _ = s.write_all(&[0xE0, 0]);
    ok
}
