//! What the machine allows: open files and ephemeral ports, checked before connecting.

use crate::opts::Opts;

/// Open files the loadgen needs besides its connections (stdio, epoll, AMQP, scrapes).
const FD_RESERVE: u64 = 64;

/// Raises the open-file soft limit to the hard limit and checks `needed` fits.
pub fn check_open_files(needed: u64) -> Result<u64, String> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    let soft = rlimit::increase_nofile_limit(hard)
        .map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if needed + FD_RESERVE > soft {
        return Err(format!(
            "{needed} connections need {} open files, but the limit is {soft} (hard {hard}): \
             lower --ws/--sse, or raise `ulimit -n` (this machine allows 20,000)",
            needed + FD_RESERVE
        ));
    }
    Ok(soft)
}

/// Each source address has the ephemeral port range to itself.
pub fn check_ports(o: &Opts) -> Result<(), String> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2 && v[1] >= v[0]).then(|| v[1] - v[0] + 1)
        })
        .unwrap_or(28_000);
    let per_ip = o.connections().div_ceil(o.source_ips) as u64;
    // Leave room for the other users of loopback on this machine.
    if per_ip + 1000 > range {
        return Err(format!(
            "{per_ip} connections per source address exceed the {range} ephemeral ports: \
             raise --source-ips (now {})",
            o.source_ips
        ));
    }
    Ok(())
}
