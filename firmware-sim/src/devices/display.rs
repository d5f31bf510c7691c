//! The lane display: shows what the gateway tells it, including the pay-by-QR link.

use chrono::{DateTime, Utc};
use parkpay_protocol::{decode, DeviceId, DisplayCommand, DisplayText, Topic};
use tokio::sync::watch;

use crate::error::SimError;
use crate::mqtt::{DeviceContext, Link, Task};

/// What the display shows now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisplayState {
    pub text: DisplayText,
    pub qr: Option<String>,
    /// Commands shown so far; lets a driver tell a fresh message from one meant for the car
    /// before.
    pub updates: u64,
    pub at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct Display {
    link: Link,
    state: watch::Receiver<DisplayState>,
    _task: Task,
}

impl Display {
    /// Starts blank; returns once its display subscription is acknowledged.
    pub async fn start(ctx: &DeviceContext, id: DeviceId) -> Result<Display, SimError> {
        let (link, mut inbox) =
            Link::start(ctx, id.clone(), vec![Topic::Display(id.clone())]).await?;
        let (tx, state) = watch::channel(DisplayState::default());
        let task = tokio::spawn(async move {
            while let Some(p) = inbox.recv().await {
                match decode::<DisplayCommand>(&p.payload, None) {
                    Ok(cmd) => tx.send_modify(|s| {
                        s.text = cmd.body.text;
                        s.qr = cmd.body.qr;
                        s.updates += 1;
                        s.at = Some(cmd.body.at);
                    }),
                    Err(e) => {
                        tracing::warn!(device = %id, error = %e, "ignoring malformed display command")
                    }
                }
            }
        });
        Ok(Display {
            link,
            state,
            _task: Task(task),
        })
    }

    pub fn id(&self) -> &DeviceId {
        self.link.device()
    }

    pub fn watch(&self) -> watch::Receiver<DisplayState> {
        self.state.clone()
    }

    pub fn state(&self) -> DisplayState {
        self.state.borrow().clone()
    }

    pub async fn shutdown(self) {
        let Display { link, _task, .. } = self;
        drop(_task);
        link.shutdown().await;
    }
}
