//! Human-readable output in docker's style: relative durations (go-units
//! `HumanDuration`), container status strings, and tabwriter-like tables.

use std::time::Duration;

/// Same thresholds and rounding as go-units `HumanDuration`, so `ps` output matches docker.
pub fn human_duration(d: Duration) -> String {
    const MINUTE: u128 = 60;
    const HOUR: u128 = 60 * MINUTE;
    let nanos = d.as_nanos();
    let seconds = d.as_secs();
    if seconds < 1 {
        return "Less than a second".to_string();
    }
    if seconds == 1 {
        return "1 second".to_string();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".to_string();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Go's Duration.Round(time.Hour): halves round away from zero.
    let hour_nanos = HOUR * 1_000_000_000;
    let hours = (nanos + hour_nanos / 2) / hour_nanos;
    if hours == 1 {
        return "About an hour".to_string();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    // go-units uses the truncated hour count for years.
    format!("{} years", u128::from(seconds) / HOUR / 24 / 365)
}

pub fn status_running(since: Duration) -> String {
    format!("Up {}", human_duration(since))
}

pub fn status_exited(code: i32, ago: Duration) -> String {
    format!("Exited ({code}) {} ago", human_duration(ago))
}

pub fn status_created() -> String {
    "Created".to_string()
}

/// Docker's CLI tables use `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`: every column
/// but the last is as wide as its widest cell plus 3 spaces, and at least 10.
const MIN_CELL_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Renders a table like docker's CLI. Rows shorter than the header are padded with
/// empty cells; widths count characters, not bytes; trailing spaces are removed.
pub fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).chain([headers.len()]).max().unwrap_or(0);
    let lines: Vec<Vec<&str>> = std::iter::once(headers.to_vec())
        .chain(rows.iter().map(|r| r.iter().map(String::as_str).collect()))
        .map(|mut cells| {
            cells.resize(columns, "");
            cells
        })
        .collect();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let widest = lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0);
            (widest + PADDING).max(MIN_CELL_WIDTH)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            text.push_str(cell);
            if c + 1 < columns {
                let pad = widths[c] - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end_matches(' '));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    #[test]
    fn seconds_and_minutes() {
        assert_eq!(human_duration(Duration::ZERO), "Less than a second");
        assert_eq!(human_duration(Duration::from_millis(999)), "Less than a second");
        assert_eq!(human_duration(secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_millis(1999)), "1 second");
        assert_eq!(human_duration(secs(3)), "3 seconds");
        assert_eq!(human_duration(secs(59)), "59 seconds");
        assert_eq!(human_duration(secs(60)), "About a minute");
        assert_eq!(human_duration(secs(119)), "About a minute");
        assert_eq!(human_duration(secs(120)), "2 minutes");
        assert_eq!(human_duration(secs(5 * MIN)), "5 minutes");
        assert_eq!(human_duration(secs(59 * MIN + 59)), "59 minutes");
    }

    #[test]
    fn hours_round_like_go() {
        assert_eq!(human_duration(secs(HOUR)), "About an hour");
        assert_eq!(human_duration(secs(HOUR + 29 * MIN + 59)), "About an hour");
        // Exactly half an hour rounds up, as Go's Duration.Round does.
        assert_eq!(human_duration(secs(HOUR + 30 * MIN)), "2 hours");
        assert_eq!(human_duration(secs(3 * HOUR)), "3 hours");
        assert_eq!(human_duration(secs(47 * HOUR)), "47 hours");
        assert_eq!(human_duration(secs(47 * HOUR + 29 * MIN)), "47 hours");
        assert_eq!(human_duration(secs(47 * HOUR + 30 * MIN)), "2 days");
    }

    #[test]
    fn days_weeks_months_years() {
        assert_eq!(human_duration(secs(2 * DAY)), "2 days");
        assert_eq!(human_duration(secs(13 * DAY + 23 * HOUR)), "13 days");
        assert_eq!(human_duration(secs(14 * DAY)), "2 weeks");
        assert_eq!(human_duration(secs(21 * DAY)), "3 weeks");
        assert_eq!(human_duration(secs(59 * DAY)), "8 weeks");
        assert_eq!(human_duration(secs(60 * DAY)), "2 months");
        assert_eq!(human_duration(secs(120 * DAY)), "4 months");
        assert_eq!(human_duration(secs(729 * DAY)), "24 months");
        assert_eq!(human_duration(secs(730 * DAY)), "2 years");
        assert_eq!(human_duration(secs(3650 * DAY)), "10 years");
        assert!(human_duration(Duration::MAX).ends_with(" years"));
    }

    #[test]
    fn statuses() {
        assert_eq!(status_running(secs(3)), "Up 3 seconds");
        assert_eq!(status_running(Duration::from_millis(10)), "Up Less than a second");
        assert_eq!(status_running(secs(2 * HOUR)), "Up 2 hours");
        assert_eq!(status_exited(0, secs(3)), "Exited (0) 3 seconds ago");
        assert_eq!(status_exited(137, secs(5 * MIN)), "Exited (137) 5 minutes ago");
        assert_eq!(status_exited(-1, secs(60)), "Exited (-1) About a minute ago");
        assert_eq!(status_created(), "Created");
    }

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn table_matches_docker_network_ls() {
        let out = format_table(
            &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
            &[
                row(&["8f2b5e3c1a0d", "bridge", "bridge", "local"]),
                row(&["1d4e6f7a8b9c", "host", "host", "local"]),
                row(&["9a8b7c6d5e4f", "none", "null", "local"]),
            ],
        );
        let expected = "\
NETWORK ID     NAME      DRIVER    SCOPE
8f2b5e3c1a0d   bridge    bridge    local
1d4e6f7a8b9c   host      host      local
9a8b7c6d5e4f   none      null      local
";
        assert_eq!(out, expected);
    }

    #[test]
    fn table_padding_and_trailing_spaces() {
        let out = format_table(&["A", "LONGER HEADER", "C"], &[row(&["a-very-long-cell", "x", ""])]);
        assert_eq!(out, "A                  LONGER HEADER   C\na-very-long-cell   x\n");
        for line in out.lines() {
            assert!(!line.ends_with(' '));
        }
    }

    #[test]
    fn table_edge_cases() {
        assert_eq!(format_table(&[], &[]), "\n");
        assert_eq!(format_table(&["ONLY"], &[]), "ONLY\n");
        assert_eq!(format_table(&["ONLY"], &[row(&["value"])]), "ONLY\nvalue\n");
        // Short rows are padded, long rows widen the table.
        assert_eq!(format_table(&["A", "B"], &[row(&["1"])]), "A         B\n1\n");
        assert_eq!(format_table(&["A"], &[row(&["1", "2"])]), "A\n1         2\n");
        // Width counts characters, not bytes.
        assert_eq!(format_table(&["NAME", "X"], &[row(&["ééééééééééé", "1"])]), "NAME          X\nééééééééééé   1\n");
    }
}
