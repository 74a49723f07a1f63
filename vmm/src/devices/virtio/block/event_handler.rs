//! virtio-blk in the event loop: only the activate eventfd until DRIVER_OK, then the request queue.

use super::Block;
use crate::devices::virtio::tokens::{PROCESS_ACTIVATE, PROCESS_QUEUE_BASE, PROCESS_RATE_LIMITER};
use crate::devices::virtio::watch_queues;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use vmm_sys_util::epoll::EventSet;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            PROCESS_ACTIVATE => {
                let _ = self.common.activate_evt.read();
                watch_queues(&self.common, ops, &mut self.queues_watched);
                if let (Some(l), false) = (self.limiter.as_ref(), self.limiter_watched) {
                    let ev =
                        Events::with_data_raw(l.as_raw_fd(), PROCESS_RATE_LIMITER, EventSet::IN);
                    match ops.add(ev) {
                        Ok(()) => self.limiter_watched = true,
                        Err(e) => {
                            tracing::error!("virtio-blk: failed to watch the rate limiter: {e:?}")
                        }
                    }
                }
                if self.process_queue() {
                    self.common.signal_used();
                }
            }
            PROCESS_QUEUE_BASE => {
                // Drained even when inactive, so a notify during a reset does not spin the loop.
                let _ = self.common.queue_evts[0].read();
                if self.process_queue() {
                    self.common.signal_used();
                }
            }
            PROCESS_RATE_LIMITER => {
                if let Some(l) = self.limiter.as_mut() {
                    l.on_timer();
                }
                if self.process_queue() {
                    self.common.signal_used();
                }
            }
            other => {
                tracing::warn!(token = other, "virtio-blk: unexpected event");
                let _ = ops.remove(events);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let ev = Events::with_data(&self.common.activate_evt, PROCESS_ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(ev) {
            tracing::error!("virtio-blk: failed to watch the activate eventfd: {e:?}");
        }
    }
}
