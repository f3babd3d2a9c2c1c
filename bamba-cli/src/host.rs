//! The host's memory, for budgets the user did not give.

/// Half the memory this machine has available now, in bytes (Linux: `MemAvailable` of
/// /proc/meminfo), if known: the default budget where the host holds the weights and caches.
pub fn half_available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib = field.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib.saturating_mul(1024) / 2)
}
