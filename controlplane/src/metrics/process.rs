//! The daemon's own process metrics, from `/proc/self` (prometheus-client has no process
//! collector): the standard `process_*` series every Prometheus client library exports, under
//! their usual names so existing dashboards and alerts apply.
use std::path::Path;

/// One reading of the process's resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
}

/// Fields of `/proc/<pid>/stat` after the command name (which may hold spaces and parentheses,
/// so the line is cut at its last `)`): utime, stime, starttime (clock ticks), vsize (bytes),
/// rss (pages), num_threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u64,
    pub starttime: u64,
    pub vsize: u64,
    pub rss_pages: u64,
}

pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    // after the name: state is field 3 of proc(5); this slice starts at it
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        num_threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits` (None when unlimited or absent).
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Reads the calling process's figures.
pub fn read_self() -> Option<ProcessStats> {
    read(Path::new("/proc/self"), Path::new("/proc/stat"))
}

fn read(proc_dir: &Path, proc_stat: &Path) -> Option<ProcessStats> {
    let stat = parse_stat(&std::fs::read_to_string(proc_dir.join("stat")).ok()?)?;
    // SAFETY: sysconf only reads configuration values
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    let boot = std::fs::read_to_string(proc_stat).ok().and_then(|s| parse_boot_time(&s)).unwrap_or(0);
    let open_fds = std::fs::read_dir(proc_dir.join("fd")).map(|d| d.count() as u64).unwrap_or(0);
    let max_fds = std::fs::read_to_string(proc_dir.join("limits")).ok().and_then(|s| parse_max_fds(&s)).unwrap_or(0);
    Some(ProcessStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_memory_bytes: stat.rss_pages * page,
        virtual_memory_bytes: stat.vsize,
        start_time_seconds: boot as f64 + stat.starttime as f64 / ticks,
        // the directory listing's own descriptor is among those counted
        open_fds: open_fds.saturating_sub(1),
        max_fds,
        threads: stat.num_threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_a_name_holding_spaces_and_parentheses() {
        // a real line of /proc/<pid>/stat, its name changed to one that would fool a split
        let line = "4242 (net (bee) d) S 1 4242 4242 0 -1 4194560 2113 0 0 0 \
                    150 75 0 0 20 0 9 0 123456 1234567890 4321 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17663 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat { utime: 150, stime: 75, num_threads: 9, starttime: 123456, vsize: 1234567890, rss_pages: 4321 }
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None, "a truncated line is refused, not read as zeros");
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1048576));
        assert_eq!(parse_max_fds("Max open files unlimited unlimited files"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1764441234\nprocesses 5\n"), Some(1764441234));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let p = read_self().expect("/proc/self is readable");
        assert!(p.resident_memory_bytes > 0 && p.virtual_memory_bytes >= p.resident_memory_bytes);
        assert!(p.open_fds >= 1, "{p:?}");
        assert!(p.threads >= 1 && p.start_time_seconds > 1.0e9, "{p:?}");
    }
}
