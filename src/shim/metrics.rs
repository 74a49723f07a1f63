//! Task Stats: the container's cgroup v2 figures, read by guest-init inside the VM (`Stats` in the agent protocol),
//! as containerd's cgroup v2 `Metrics`, the message the runc shim returns on a cgroup v2 host. The host's own
//! cgroups would only show the VMM: guest RAM, vCPU threads, the device model.
//!
//! The figures come from the guest, so they are the guest's word: only copied, never trusted for anything.

use agent_protocol::CgroupStats;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};

/// The type URL containerd's `typeurl` resolves to its cgroup v2 Metrics (the Go shims marshal it under its plain
/// proto name; the `type.googleapis.com/` prefix rust-protobuf's `Any::pack` would add is not found by ctr 1.6).
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// `max` (no limit) as runc's shim reports it for memory and pids limits.
const NO_LIMIT: u64 = u64::MAX;

/// The guest's figures as containerd's cgroup v2 Metrics.
pub fn metrics(s: &CgroupStats) -> Metrics {
    let k =
        |m: &std::collections::BTreeMap<String, u64>, key: &str| m.get(key).copied().unwrap_or(0);
    let ms = &s.memory_stat;
    let memory = MemoryStat {
        anon: k(ms, "anon"),
        file: k(ms, "file"),
        kernel_stack: k(ms, "kernel_stack"),
        slab: k(ms, "slab"),
        sock: k(ms, "sock"),
        shmem: k(ms, "shmem"),
        file_mapped: k(ms, "file_mapped"),
        file_dirty: k(ms, "file_dirty"),
        file_writeback: k(ms, "file_writeback"),
        anon_thp: k(ms, "anon_thp"),
        inactive_anon: k(ms, "inactive_anon"),
        active_anon: k(ms, "active_anon"),
        inactive_file: k(ms, "inactive_file"),
        active_file: k(ms, "active_file"),
        unevictable: k(ms, "unevictable"),
        slab_reclaimable: k(ms, "slab_reclaimable"),
        slab_unreclaimable: k(ms, "slab_unreclaimable"),
        pgfault: k(ms, "pgfault"),
        pgmajfault: k(ms, "pgmajfault"),
        workingset_refault: k(ms, "workingset_refault"),
        workingset_activate: k(ms, "workingset_activate"),
        workingset_nodereclaim: k(ms, "workingset_nodereclaim"),
        pgrefill: k(ms, "pgrefill"),
        pgscan: k(ms, "pgscan"),
        pgsteal: k(ms, "pgsteal"),
        pgactivate: k(ms, "pgactivate"),
        pgdeactivate: k(ms, "pgdeactivate"),
        pglazyfree: k(ms, "pglazyfree"),
        pglazyfreed: k(ms, "pglazyfreed"),
        thp_fault_alloc: k(ms, "thp_fault_alloc"),
        thp_collapse_alloc: k(ms, "thp_collapse_alloc"),
        usage: s.memory_current.unwrap_or(0),
        usage_limit: s.memory_max.unwrap_or(NO_LIMIT),
        swap_usage: s.swap_current.unwrap_or(0),
        swap_limit: s.swap_max.unwrap_or(NO_LIMIT),
        max_usage: s.memory_peak.unwrap_or(0),
        ..Default::default()
    };
    let cs = &s.cpu_stat;
    let cpu = CPUStat {
        usage_usec: k(cs, "usage_usec"),
        user_usec: k(cs, "user_usec"),
        system_usec: k(cs, "system_usec"),
        nr_periods: k(cs, "nr_periods"),
        nr_throttled: k(cs, "nr_throttled"),
        throttled_usec: k(cs, "throttled_usec"),
        nr_bursts: k(cs, "nr_bursts"),
        burst_usec: k(cs, "burst_usec"),
        ..Default::default()
    };
    let me = &s.memory_events;
    let events = MemoryEvents {
        low: k(me, "low"),
        high: k(me, "high"),
        max: k(me, "max"),
        oom: k(me, "oom"),
        oom_kill: k(me, "oom_kill"),
        oom_group_kill: k(me, "oom_group_kill"),
        ..Default::default()
    };
    let io = IOStat {
        usage: s
            .io
            .iter()
            .map(|d| IOEntry {
                major: d.major,
                minor: d.minor,
                rbytes: d.rbytes,
                wbytes: d.wbytes,
                rios: d.rios,
                wios: d.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids_current.unwrap_or(0),
            limit: s.pids_max.unwrap_or(NO_LIMIT),
            ..Default::default()
        }),
        cpu: MessageField::some(cpu),
        memory: MessageField::some(memory),
        io: MessageField::some(io),
        memory_events: MessageField::some(events),
        ..Default::default()
    }
}

/// The Metrics packed as containerd's Stats response carries them.
pub fn packed(s: &CgroupStats) -> Result<Any, containerd_shim::protos::protobuf::Error> {
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics(s).write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_guest_files_and_packs_them_for_ctr() {
        let s = CgroupStats {
            memory_current: Some(3 << 20),
            memory_max: Some(16 << 20),
            memory_stat: [("anon".to_string(), 1 << 20), ("file".to_string(), 4096)].into(),
            memory_events: [("oom_kill".to_string(), 2)].into(),
            cpu_stat: [("usage_usec".to_string(), 1500)].into(),
            pids_current: Some(3),
            pids_max: None,
            io: vec![agent_protocol::IoStat {
                major: 254,
                minor: 0,
                rbytes: 8192,
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = metrics(&s);
        assert_eq!(m.memory.usage, 3 << 20);
        assert_eq!(m.memory.usage_limit, 16 << 20);
        assert_eq!(m.memory.anon, 1 << 20);
        assert_eq!(m.memory.swap_limit, u64::MAX);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!((m.pids.current, m.pids.limit), (3, u64::MAX));
        assert_eq!(m.io.usage[0].rbytes, 8192);
        let any = packed(&s).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }
}
