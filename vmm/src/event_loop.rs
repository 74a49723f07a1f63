//! The VMM's one event loop (event-manager): devices register their fds here; the VM's exit wakes it.

use crate::exit::ExitSignal;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;

/// The event manager type every subscriber is registered with.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Watches the exit eventfd so the loop returns as soon as the VM ends.
pub struct ExitWatcher {
    exit: Arc<ExitSignal>,
}

impl ExitWatcher {
    /// A watcher of `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        ExitWatcher { exit }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let _ = self.exit.event().read();
        } else {
            tracing::warn!(
                "unexpected event on the exit eventfd: {:?}",
                events.event_set()
            );
            let _ = ops.remove(events);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event(), EventSet::IN)) {
            tracing::error!("failed to watch the exit eventfd: {e:?}");
        }
    }
}
