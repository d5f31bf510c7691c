//! The broker ACL of docs/operations.md, checked against a real Mosquitto: a gateway may speak
//! and listen only on its own lanes and its own gateway topics, and nobody connects without a
//! password.
//!
//! Runs when `PARKPAY_TEST_ACL_MQTT_URL` points at a broker configured like `.ci/acl-broker`
//! (lot `lot1`; gw-north serves in-1 and out-1, gw-south in-2 and out-2; passwords
//! `<user>-secret`); without it the test says it was skipped and passes.
//!
//! Nothing waits for readiness by sleeping. Subscriptions are in place once their SubAck has
//! arrived. A message that must not be delivered is followed, on the same connection, by a
//! marker that must be: the broker handles one client's packets in order and delivers to one
//! subscriber in order, so once the marker has arrived the forbidden message would already have.

use std::time::Duration;

use parkpay_gateway::MqttUrl;
use parkpay_protocol::{GatewayId, LaneId, LotId, Topic};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const ENV: &str = "PARKPAY_TEST_ACL_MQTT_URL";
/// How long any single expected event may take.
const WAIT: Duration = Duration::from_secs(10);

fn lot() -> LotId {
    LotId::parse("lot1").unwrap()
}
fn lane(id: &str) -> LaneId {
    LaneId::parse(id).unwrap()
}
fn events(l: &str) -> String {
    Topic::Events(lot(), lane(l)).to_string()
}
fn decisions(l: &str) -> String {
    Topic::Decisions(lot(), lane(l)).to_string()
}
fn allowlist(gw: &str) -> String {
    Topic::Allowlist(lot(), GatewayId::parse(gw).unwrap()).to_string()
}

/// A connected client whose event loop runs in a task, forwarding what matters.
struct Conn {
    client: AsyncClient,
    /// Publishes received: (topic, payload).
    messages: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    subacks: mpsc::UnboundedReceiver<()>,
    pubacks: mpsc::UnboundedReceiver<()>,
    /// Only payloads carrying this run's nonce count: other runs may share the broker.
    nonce: String,
}

fn options(url: &MqttUrl, who: &str, credentials: Option<(&str, &str)>) -> MqttOptions {
    let id = format!(
        "acl-test-{who}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut o = MqttOptions::new(id, url.host.clone(), url.port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((user, pass)) = credentials {
        o.set_credentials(user, pass);
    }
    o
}

/// Polls until the ConnAck; the broker's refusal comes back as the error.
async fn handshake(mut el: EventLoop) -> Result<EventLoop, ConnectionError> {
    loop {
        match timeout(WAIT, el.poll())
            .await
            .expect("no ConnAck in time")?
        {
            Event::Incoming(Incoming::ConnAck(_)) => return Ok(el),
            _ => continue,
        }
    }
}

async fn connect(url: &MqttUrl, user: &str, nonce: &str) -> Conn {
    let pass = format!("{user}-secret");
    let (client, el) = AsyncClient::new(options(url, user, Some((user, &pass))), 64);
    let mut el = handshake(el)
        .await
        .unwrap_or_else(|e| panic!("{user} could not connect: {e}"));
    let (mtx, messages) = mpsc::unbounded_channel();
    let (stx, subacks) = mpsc::unbounded_channel();
    let (ptx, pubacks) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = mtx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = stx.send(());
                }
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    let _ = ptx.send(());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    Conn {
        client,
        messages,
        subacks,
        pubacks,
        nonce: nonce.to_string(),
    }
}

impl Conn {
    /// Subscribes and waits for the broker's SubAck (granted or not).
    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        timeout(WAIT, self.subacks.recv())
            .await
            .expect("no SubAck in time")
            .expect("connection closed");
    }

    /// Publishes at QoS 1 and waits for the broker's PubAck. Mosquitto acks a publish the ACL
    /// denies too, and drops it: the ack says only that the broker has handled it.
    async fn publish(&mut self, topic: &str, what: &str) {
        let payload = format!("{} {what}", self.nonce);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        timeout(WAIT, self.pubacks.recv())
            .await
            .expect("no PubAck in time")
            .expect("connection closed");
    }

    /// The next message of this run: (topic, what).
    async fn next(&mut self) -> (String, String) {
        loop {
            let (topic, payload) = timeout(WAIT, self.messages.recv())
                .await
                .expect("nothing delivered in time")
                .expect("connection closed");
            let text = String::from_utf8_lossy(&payload).into_owned();
            if let Some(what) = text.strip_prefix(&format!("{} ", self.nonce)) {
                return (topic, what.to_string());
            }
        }
    }

    async fn disconnect(self) {
        let _ = self.client.disconnect().await;
    }
}

async fn refused(url: &MqttUrl, credentials: Option<(&str, &str)>) -> ConnectReturnCode {
    let (_client, el) = AsyncClient::new(options(url, "refused", credentials), 8);
    match handshake(el).await {
        Ok(_) => panic!(
            "connection with {:?} was accepted",
            credentials.map(|c| c.0)
        ),
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refused ConnAck, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_are_confined_to_their_own_lanes() {
    let Ok(url) = std::env::var(ENV) else {
        eprintln!("skipped: set {ENV} (see .ci/acl-broker) to check the broker ACL");
        return;
    };
    let url = MqttUrl::parse(&url).unwrap();
    let nonce = uuid::Uuid::new_v4().simple().to_string();

    let mut server = connect(&url, "parkpay-server", &nonce).await;
    let mut north = connect(&url, "gw-north", &nonce).await;
    let mut south = connect(&url, "gw-south", &nonce).await;

    // 1. gw-north's own lane: its event reaches the server (the positive control).
    server
        .subscribe("parkpay/v1/lots/lot1/lanes/+/events")
        .await;
    north.publish(&events("in-1"), "own-lane event").await;
    assert_eq!(
        server.next().await,
        (events("in-1"), "own-lane event".into())
    );

    // 2. gw-north speaking for gw-south's lane: dropped. The marker after it arrives first.
    north.publish(&events("in-2"), "forged event").await;
    north.publish(&events("out-1"), "marker").await;
    assert_eq!(
        server.next().await,
        (events("out-1"), "marker".into()),
        "gw-north's event on lane in-2 was delivered"
    );

    // 2b. Nor may a gateway publish decisions, even on its own lane: only the server does.
    let mut watcher = connect(&url, "parkpay-server", &nonce).await;
    watcher.subscribe(&decisions("in-1")).await;
    watcher.subscribe(&events("out-1")).await;
    north.publish(&decisions("in-1"), "forged decision").await;
    north.publish(&events("out-1"), "marker 2").await;
    assert_eq!(
        watcher.next().await,
        (events("out-1"), "marker 2".into()),
        "gw-north published a decision"
    );
    assert_eq!(server.next().await, (events("out-1"), "marker 2".into()));
    watcher.disconnect().await;

    // 3. gw-north listening to gw-south's decisions hears nothing; gw-south, the owner, does.
    north.subscribe(&decisions("in-2")).await;
    north.subscribe(&decisions("in-1")).await;
    south.subscribe(&decisions("in-2")).await;
    server
        .publish(&decisions("in-2"), "decision for in-2")
        .await;
    server
        .publish(&decisions("in-1"), "decision for in-1")
        .await;
    assert_eq!(
        south.next().await,
        (decisions("in-2"), "decision for in-2".into())
    );
    assert_eq!(
        north.next().await,
        (decisions("in-1"), "decision for in-1".into()),
        "gw-north received a decision for gw-south's lane"
    );

    // 4. gw-north cannot read gw-south's allowlist; each gateway reads its own.
    north.subscribe(&allowlist("gw-south")).await;
    north.subscribe(&allowlist("gw-north")).await;
    south.subscribe(&allowlist("gw-south")).await;
    server
        .publish(&allowlist("gw-south"), "south allowlist")
        .await;
    server
        .publish(&allowlist("gw-north"), "north allowlist")
        .await;
    assert_eq!(
        south.next().await,
        (allowlist("gw-south"), "south allowlist".into())
    );
    assert_eq!(
        north.next().await,
        (allowlist("gw-north"), "north allowlist".into()),
        "gw-north read gw-south's allowlist"
    );

    // Nothing else of this run arrived anywhere.
    for (who, conn) in [
        ("server", &mut server),
        ("gw-north", &mut north),
        ("gw-south", &mut south),
    ] {
        while let Ok(m) = conn.messages.try_recv() {
            assert!(
                !String::from_utf8_lossy(&m.1).starts_with(&nonce),
                "{who} got an unexpected {m:?}"
            );
        }
    }
    for c in [server, north, south] {
        c.disconnect().await;
    }

    // 5. No anonymous clients, no wrong passwords.
    let anonymous = refused(&url, None).await;
    assert!(
        matches!(
            anonymous,
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
        ),
        "{anonymous:?}"
    );
    let wrong = refused(&url, Some(("gw-north", "gw-south-secret"))).await;
    assert!(
        matches!(
            wrong,
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
        ),
        "{wrong:?}"
    );
    let unknown = refused(&url, Some(("gw-west", "gw-west-secret"))).await;
    assert!(
        matches!(
            unknown,
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
        ),
        "{unknown:?}"
    );
}
