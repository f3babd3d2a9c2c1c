//! `bamba bench --cpu-profile PREFIX`: a sampling profile of the host while the timed runs of each
//! test go (warm-up and loading excluded), to see where the host time of a launch goes. A decode
//! step is hundreds of launches, and at batch 1 their host time, not the GPU, bounds it.
//!
//! Each test writes `PREFIX-<test>.svg` (a flame graph) and `PREFIX-<test>.txt` (the functions
//! with the most samples, inclusive and self). Built only with the `cpu-profile` feature (pprof-rs,
//! SIGPROF sampling of all threads' CPU time).

use std::path::{Path, PathBuf};

use anyhow::Result;

/// A running profile of one test, written out by [`CpuProfile::finish`].
pub struct CpuProfile {
    #[cfg(feature = "cpu-profile")]
    guard: pprof::ProfilerGuard<'static>,
    prefix: PathBuf,
    label: String,
}

/// Samples per second of CPU time.
#[cfg(feature = "cpu-profile")]
const FREQUENCY: i32 = 2000;

impl CpuProfile {
    /// Starts sampling for the test `label` (e.g. `tg16 b1`).
    pub fn start(prefix: &Path, label: &str) -> Result<Self> {
        #[cfg(feature = "cpu-profile")]
        {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(FREQUENCY)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()?;
            Ok(CpuProfile { guard, prefix: prefix.to_path_buf(), label: label.replace(' ', "-") })
        }
        #[cfg(not(feature = "cpu-profile"))]
        {
            let _ = (prefix, label);
            anyhow::bail!("--cpu-profile needs a bamba built with the cpu-profile feature")
        }
    }

    /// Stops sampling and writes the flame graph and the text summary; returns the summary's path.
    pub fn finish(self) -> Result<PathBuf> {
        let base = format!("{}-{}", self.prefix.display(), self.label);
        #[cfg(feature = "cpu-profile")]
        {
            let report = self.guard.report().build()?;
            report.flamegraph(std::fs::File::create(format!("{base}.svg"))?)?;
            let stacks: Vec<(Vec<String>, u64)> = report
                .data
                .iter()
                .map(|(frames, &count)| {
                    let names = frames.frames.iter().flatten().map(|s| s.name()).collect();
                    (names, count.max(0) as u64)
                })
                .collect();
            std::fs::write(format!("{base}.txt"), summary(&stacks))?;
        }
        Ok(PathBuf::from(format!("{base}.txt")))
    }
}

/// The functions with the most samples: inclusive (anywhere on the stack, counted once per stack)
/// and self (the innermost frame). `stacks` are innermost first.
#[cfg_attr(not(feature = "cpu-profile"), allow(dead_code))]
fn summary(stacks: &[(Vec<String>, u64)]) -> String {
    use std::collections::{HashMap, HashSet};
    use std::fmt::Write;
    let total: u64 = stacks.iter().map(|(_, n)| n).sum::<u64>().max(1);
    let (mut inclusive, mut own) = (HashMap::<&str, u64>::new(), HashMap::<&str, u64>::new());
    for (names, count) in stacks {
        if let Some(first) = names.first() {
            *own.entry(first).or_default() += count;
        }
        let unique: HashSet<&str> = names.iter().map(String::as_str).collect();
        for name in unique {
            *inclusive.entry(name).or_default() += count;
        }
    }
    let mut out = format!("{total} samples\n");
    for (title, table, rows) in [("inclusive", &inclusive, 120), ("self", &own, 60)] {
        let mut sorted: Vec<_> = table.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(out, "\n## {title}");
        for (name, count) in sorted.into_iter().take(rows) {
            let _ = writeln!(out, "{:6.2}% {count:7} {name}", 100.0 * *count as f64 / total as f64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn summary_counts_a_function_once_per_stack() {
        let stacks = vec![
            (vec!["leaf".to_string(), "mid".into(), "main".into(), "mid".into()], 3),
            (vec!["mid".to_string(), "main".into()], 1),
        ];
        let text = summary(&stacks);
        assert!(text.starts_with("4 samples"), "{text}");
        // `mid` twice on the first stack still counts its 3 samples once: 4 inclusive, 1 self.
        assert!(text.contains("100.00%       4 mid"), "{text}");
        assert!(text.contains(" 75.00%       3 leaf"), "{text}");
        assert!(text.contains(" 25.00%       1 mid"), "{text}");
    }
}
