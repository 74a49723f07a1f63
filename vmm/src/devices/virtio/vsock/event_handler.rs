//! virtio-vsock in the event loop: the activate eventfd until DRIVER_OK; then the three queues and the
//! backend's epoll fd.

use super::device::{EVQ, RXQ, TXQ};
use super::Vsock;
use crate::devices::virtio::tokens::{PROCESS_ACTIVATE, PROCESS_BACKEND, PROCESS_QUEUE_BASE};
use crate::devices::virtio::watch_queues;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

const PROCESS_RXQ: u32 = PROCESS_QUEUE_BASE + RXQ as u32;
const PROCESS_TXQ: u32 = PROCESS_QUEUE_BASE + TXQ as u32;
const PROCESS_EVQ: u32 = PROCESS_QUEUE_BASE + EVQ as u32;

impl Vsock {
    fn signal_if(&self, used: bool) {
        if used {
            self.common.signal_used();
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            PROCESS_ACTIVATE => {
                let _ = self.common.activate_evt.read();
                watch_queues(&self.common, ops, &mut self.queues_watched);
                if !self.backend_watched {
                    let fd = self.backend.as_raw_fd();
                    match ops.add(Events::with_data_raw(fd, PROCESS_BACKEND, EventSet::IN)) {
                        Ok(()) => self.backend_watched = true,
                        Err(e) => {
                            tracing::error!("virtio-vsock: failed to watch the backend: {e:?}")
                        }
                    }
                }
                let used = self.process_tx() | self.process_rx();
                self.signal_if(used);
            }
            PROCESS_RXQ => {
                let _ = self.common.queue_evts[RXQ].read();
                let used = self.process_rx();
                self.signal_if(used);
            }
            PROCESS_TXQ => {
                let _ = self.common.queue_evts[TXQ].read();
                // Replies (RESPONSE, RST, credit) may follow from what the guest sent.
                let used = self.process_tx() | self.process_rx();
                self.signal_if(used);
            }
            PROCESS_EVQ => {
                let _ = self.common.queue_evts[EVQ].read();
            }
            PROCESS_BACKEND => {
                self.backend.notify();
                let used = self.process_rx();
                self.signal_if(used);
            }
            other => {
                tracing::warn!(token = other, "virtio-vsock: unexpected event");
                let _ = ops.remove(events);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.common.activate_evt, PROCESS_ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            tracing::error!("virtio-vsock: failed to watch the activate eventfd: {e:?}");
        }
    }
}
