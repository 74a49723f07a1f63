//! virtio-net in the event loop: the activate eventfd until DRIVER_OK; then the two queues and the tap fd
//! (edge-triggered, so a guest without receive buffers does not make the loop spin).

use super::device::{RXQ, TXQ};
use super::Net;
use crate::devices::virtio::tokens::{
    PROCESS_ACTIVATE, PROCESS_BACKEND, PROCESS_QUEUE_BASE, PROCESS_RATE_LIMITER,
};
use crate::devices::virtio::watch_queues;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use vmm_sys_util::epoll::EventSet;

const PROCESS_RXQ: u32 = PROCESS_QUEUE_BASE + RXQ as u32;
const PROCESS_TXQ: u32 = PROCESS_QUEUE_BASE + TXQ as u32;
const PROCESS_TX_LIMITER: u32 = PROCESS_RATE_LIMITER;
const PROCESS_RX_LIMITER: u32 = PROCESS_RATE_LIMITER + 1;

impl MutEventSubscriber for Net {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let used = match events.data() {
            PROCESS_ACTIVATE => {
                let _ = self.common.activate_evt.read();
                watch_queues(&self.common, ops, &mut self.queues_watched);
                if !self.backend_watched {
                    let fd = self.backend.as_raw_fd();
                    let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
                    match ops.add(Events::with_data_raw(fd, PROCESS_BACKEND, set)) {
                        Ok(()) => self.backend_watched = true,
                        Err(e) => tracing::error!("virtio-net: failed to watch the tap: {e:?}"),
                    }
                }
                if !self.limiters_watched {
                    self.limiters_watched = true;
                    for (l, token) in [
                        (self.tx_limiter.as_ref(), PROCESS_TX_LIMITER),
                        (self.rx_limiter.as_ref(), PROCESS_RX_LIMITER),
                    ] {
                        let Some(l) = l else { continue };
                        if let Err(e) =
                            ops.add(Events::with_data_raw(l.as_raw_fd(), token, EventSet::IN))
                        {
                            tracing::error!("virtio-net: failed to watch a rate limiter: {e:?}");
                        }
                    }
                }
                self.backend_readable = true;
                self.process_tx() | self.process_rx()
            }
            PROCESS_TX_LIMITER => {
                if let Some(l) = self.tx_limiter.as_mut() {
                    l.on_timer();
                }
                self.process_tx()
            }
            PROCESS_RX_LIMITER => {
                if let Some(l) = self.rx_limiter.as_mut() {
                    l.on_timer();
                }
                self.process_rx()
            }
            PROCESS_RXQ => {
                let _ = self.common.queue_evts[RXQ].read();
                self.process_rx()
            }
            PROCESS_TXQ => {
                let _ = self.common.queue_evts[TXQ].read();
                self.process_tx()
            }
            PROCESS_BACKEND => {
                self.backend_readable = true;
                self.process_rx()
            }
            other => {
                tracing::warn!(token = other, "virtio-net: unexpected event");
                let _ = ops.remove(events);
                false
            }
        };
        if used {
            self.common.signal_used();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.common.activate_evt, PROCESS_ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            tracing::error!("virtio-net: failed to watch the activate eventfd: {e:?}");
        }
    }
}
