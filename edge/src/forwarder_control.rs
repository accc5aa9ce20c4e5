//! The operator's handle on the forwarder: pause/resume (admin API) and the state `GET /status`
//! shows. The forwarder task updates it; nothing here does I/O.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// The operator's handle on a running forwarder (admin API): pause/resume and its state.
#[derive(Debug)]
pub struct ForwarderControl {
    pub(crate) paused: watch::Sender<bool>,
    /// [`ForwarderState`] as a number.
    state: AtomicU8,
    frames_acked: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What the forwarder is doing, as `GET /status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwarderState {
    /// Nothing sent yet since start.
    Idle = 0,
    /// The last frame was acked.
    Forwarding = 1,
    /// The last send failed; resending from the acked position after a backoff.
    Retrying = 2,
}

impl Default for ForwarderControl {
    fn default() -> Self {
        Self {
            paused: watch::Sender::new(false),
            state: AtomicU8::new(ForwarderState::Idle as u8),
            frames_acked: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl ForwarderControl {
    /// Stops sending new frames (those in flight are still settled); the WAL keeps growing.
    /// Returns whether it was running.
    pub fn pause(&self) -> bool {
        !self.paused.send_replace(true)
    }

    /// Returns whether it was paused.
    pub fn resume(&self) -> bool {
        self.paused.send_replace(false)
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    pub fn state(&self) -> ForwarderState {
        match self.state.load(Ordering::Relaxed) {
            1 => ForwarderState::Forwarding,
            2 => ForwarderState::Retrying,
            _ => ForwarderState::Idle,
        }
    }

    /// Frames core acknowledged since start.
    pub fn frames_acked(&self) -> u64 {
        self.frames_acked.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn acked(&self) {
        self.frames_acked.fetch_add(1, Ordering::Relaxed);
        self.state.store(ForwarderState::Forwarding as u8, Ordering::Relaxed);
    }

    /// A send failed with `error` (a `forward::SendError`; only its text is kept, so this stays
    /// a leaf the forwarder imports).
    pub(crate) fn failed(&self, error: &dyn std::fmt::Display) {
        self.state.store(ForwarderState::Retrying as u8, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

impl ForwarderState {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwarderState::Idle => "idle",
            ForwarderState::Forwarding => "forwarding",
            ForwarderState::Retrying => "retrying",
        }
    }
}
