//! [`LocalBus`]: one node, no log. The process gives each change its seq and delivers
//! it at once; alerts' notifications follow right after the change that raised them.

use std::sync::Arc;

use super::{notifications, BoxFuture, Bus, BusError, Start};
use crate::alerts::Alert;
use crate::fanout::change::Change;
use crate::fanout::Inlet;

pub struct LocalBus {
    inlet: Inlet,
}

impl LocalBus {
    pub fn new(inlet: Inlet) -> LocalBus {
        LocalBus { inlet }
    }

    /// Sequences and delivers `changes`, then the notifications of the alerts they
    /// raise (and of those the notifications raise, until none is raised).
    fn deliver(&self, changes: &[Change]) -> Vec<u64> {
        let (seqs, mut raised) = self.inlet.sequence(changes);
        while !raised.is_empty() {
            raised = self.inlet.sequence(&notifications(&raised)).1;
        }
        seqs
    }
}

impl Bus for LocalBus {
    fn publish(&self, changes: Vec<Change>) -> BoxFuture<'_, Result<Vec<u64>, BusError>> {
        let seqs = self.deliver(&changes);
        Box::pin(async move { Ok(seqs) })
    }

    fn announce(&self, alerts: Vec<Alert>) {
        self.deliver(&notifications(&alerts));
    }

    fn start(self: Arc<Self>, _start: Start) {}
}
