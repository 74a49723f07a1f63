//! `mvrun-bench`: mvrun's benchmarks, each against its peers in the same run.
//!
//! `mvrun-bench [--quick] [--runs N] [--max-n N] [--append] [--report] [--out DIR] [--only NAME]...` writes
//! `results.json`, `results.csv`, `notes.json`, one PNG per measured figure and `summary.md` to DIR (default
//! `bench-results/`), and prints the summary table. `--quick` runs one iteration with small N: the test suite runs it
//! so the harness cannot rot. `--runs N` sets every benchmark's iterations (density's N stays 1, 2, 4, ... up to
//! `--max-n`); `--append` keeps the series of the benchmarks not run now from DIR's results.json, so benchmarks can
//! run one at a time into one directory; `--report` only rewrites DIR's summary and plots.
//!
//! Benchmarks: `cold-start` (mvrun run vs runc run of the same rootfs), `vmm-peer` (QEMU microvm vs mvrun vm boot
//! on the same kernel and initramfs, time to init's marker), `kernel-boot` (the guest kernel's boot to init: boot
//! timer, kernel clock at "Run /init", emulated instructions), `vmm-overhead` (VMM setup time and RSS from
//! `mvrun vm boot --timings`, VMM instructions for building a VM under callgrind), `density` (N idle sandboxes:
//! host memory per sandbox, start throughput), `rootfs-format` (erofs vs ext4: the guest's mount time and first
//! exec), `io` (sequential read from the rootfs device and stdout through vsock, guest vs host).

mod benches;
mod containerd;
mod guest_io;
mod kernel_boot;
mod plot;
mod stats;

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One measured figure of one subject over repeated runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    /// Benchmark name, e.g. `cold-start`.
    pub bench: String,
    /// What was measured, e.g. `mvrun run` or `runc run`.
    pub subject: String,
    /// The figure, e.g. `wall time`.
    pub metric: String,
    /// Its unit.
    pub unit: String,
    /// Whether the figure would carry over to a hardware-virtualization host (VMM-side) or is dominated by this
    /// host's emulated guest.
    pub carries_to_hardware: bool,
    /// Every run's value.
    pub values: Vec<f64>,
}

/// Settings shared by every benchmark.
pub struct Ctx {
    /// One iteration, small N.
    pub quick: bool,
    /// Iterations of every benchmark, instead of each one's own full count (`--runs`).
    pub runs: Option<usize>,
    /// The largest N of `density` (`--max-n`; default 8 where guests are emulated, 32 on a hardware-KVM host).
    pub max_n: usize,
    /// Where the results go.
    pub out: PathBuf,
    /// The `mvrun` binary.
    pub mvrun: PathBuf,
    /// Scratch space.
    pub scratch: PathBuf,
    /// What a benchmark could not measure though it ran (the summary's "Not run" list).
    pub notes: std::cell::RefCell<Vec<String>>,
}

impl Ctx {
    /// Records what a benchmark could not measure.
    pub fn note(&self, what: String) {
        eprintln!("   {what}");
        self.notes.borrow_mut().push(what);
    }
}

impl Ctx {
    /// Iterations for a benchmark whose full run takes `full`.
    pub fn iterations(&self, full: usize) -> usize {
        if self.quick {
            1
        } else {
            self.runs.unwrap_or(full)
        }
    }
}

fn main() {
    let mut quick = false;
    let mut runs = None;
    let mut append = false;
    let mut report = false;
    let mut max_n = None;
    let mut out = PathBuf::from("bench-results");
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--append" => append = true,
            "--report" => report = true,
            "--max-n" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => max_n = Some(n),
                _ => {
                    eprintln!("mvrun-bench: --max-n takes a positive number");
                    std::process::exit(2);
                }
            },
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "--only" => only.extend(args.next()),
            "--runs" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => runs = Some(n),
                _ => {
                    eprintln!("mvrun-bench: --runs takes a positive number");
                    std::process::exit(2);
                }
            },
            "--bench" => {} // passed by `cargo bench`
            "-h" | "--help" => {
                // A closed pipe (`| head`) is not an error worth a panic.
                let _ = writeln!(std::io::stdout(), "{HELP}");
                return;
            }
            other => {
                eprintln!("mvrun-bench: unknown argument {other:?} (see --help)");
                std::process::exit(2);
            }
        }
    }
    if let Some(bad) = only
        .iter()
        .find(|o| !benches::ALL.iter().any(|(name, _)| name == o))
    {
        let names: Vec<&str> = benches::ALL.iter().map(|(name, _)| *name).collect();
        eprintln!(
            "mvrun-bench: no benchmark named {bad:?}; the benchmarks are {}",
            names.join(", ")
        );
        std::process::exit(2);
    }
    // --report runs nothing: it rewrites the summary and plots from the directory's results.
    let append = append || report;
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("mvrun-bench: cannot create {}: {e}", out.display());
        std::process::exit(1);
    }
    let scratch = tempfile::tempdir().expect("scratch directory");
    let ctx = Ctx {
        quick,
        runs,
        max_n: max_n.unwrap_or_else(default_max_n),
        out: out.clone(),
        mvrun: sibling("mvrun"),
        scratch: scratch.path().to_path_buf(),
        notes: Default::default(),
    };
    let mut results: Vec<Series> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut earlier: Vec<Series> = Vec::new();
    let mut earlier_notes: Vec<String> = Vec::new();
    if append {
        // Benchmarks run one at a time into one results directory: keep the others' series and notes.
        let read = |file: &str| std::fs::read_to_string(out.join(file)).ok();
        let parsed = read("results.json")
            .map(|t| serde_json::from_str::<Vec<Series>>(&t).map(|s| earlier = s))
            .into_iter()
            .chain(
                read("notes.json")
                    .map(|t| serde_json::from_str::<Vec<String>>(&t).map(|n| earlier_notes = n)),
            )
            .collect::<Result<(), _>>();
        if let Err(e) = parsed {
            eprintln!("mvrun-bench: cannot append to {}: {e}", out.display());
            std::process::exit(1);
        }
    }
    for (name, f) in benches::ALL {
        if report || (!only.is_empty() && !only.iter().any(|o| o == name)) {
            continue;
        }
        earlier.retain(|s| s.bench != *name);
        // Notes name their benchmark first (`name` ...).
        earlier_notes.retain(|n| !n.starts_with(&format!("`{name}`")));
        eprintln!("== {name}");
        match f(&ctx) {
            Ok(mut r) => results.append(&mut r),
            Err(e) => {
                eprintln!("   {name} did not run: {e}");
                notes.push(format!("`{name}` did not run: {e}"));
            }
        }
    }
    notes.append(&mut ctx.notes.borrow_mut());
    // A figure a run could not read (a missing --timings line) is named, not written as an empty series.
    results.retain(|s| {
        if s.values.is_empty() {
            notes.push(format!(
                "`{}`: no values for {} / {}",
                s.bench, s.subject, s.metric
            ));
        }
        !s.values.is_empty()
    });
    if append {
        earlier.append(&mut results);
        // In the benchmarks' own order.
        let rank = |s: &Series| benches::ALL.iter().position(|(n, _)| *n == s.bench);
        earlier.sort_by_key(rank);
        results = earlier;
        earlier_notes.append(&mut notes);
        notes = earlier_notes;
    }
    if let Err(e) = write_results(&out, &results, &notes) {
        eprintln!("mvrun-bench: {e}");
        std::process::exit(1);
    }
}

/// `density`'s largest N when `--max-n` is not given: each emulated guest boot takes a core for half a minute, so
/// 8 on such hosts; on a hardware-KVM host boots take milliseconds and 32 idle sandboxes fit in a few GiB.
fn default_max_n() -> usize {
    if mvrun::kernel::Variant::for_this_host() == mvrun::kernel::Variant::Emulated {
        8
    } else {
        32
    }
}

const HELP: &str = "\
Runs mvrun's benchmarks, each against its peers in the same run, and writes results.json, results.csv, one PNG
plot per figure and summary.md (min/median/p95/max, ratio to the first subject, whether the figure carries to a
hardware-KVM host) to the output directory; prints the summary.

Usage: mvrun-bench [OPTIONS]

Options:
  --out DIR     where the results go (default: bench-results)
  --only NAME   run only this benchmark (repeatable): vmm-overhead, vmm-peer, kernel-boot, cold-start, density,
                rootfs-format, io
  --runs N      iterations of every benchmark, instead of each one's own count
  --max-n N     density's largest N (N = 1, 2, 4, ... up to it; default 8 where guests are emulated, else 32)
  --append      keep the series of the benchmarks not run now from DIR/results.json (run them one at a time)
  --report      run nothing: rewrite DIR's summary.md and plots from its results.json
  --quick       one iteration, N = 1: checks the harness, not the figures
  -h, --help    this text

Build first: cargo build --release -p mvrun --bins (mvrun, mvrun-vmm, the shim and this binary sit side by side).
On a host whose guests are emulated, run the guest-booting benchmarks under the guest lock:
  flock /tmp/mvrun-guest.lock target/release/mvrun-bench --out DIR";

/// A figure for the summary: two decimals, or three significant digits below 1 (a throughput of 0.0034 sandboxes
/// per second, a ratio of 0.00045), so no value prints as 0.00.
fn figure(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        let decimals = (2 - v.abs().log10().floor() as i32).max(2) as usize;
        format!("{v:.decimals$}")
    }
}

/// A binary built next to this one.
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // `cargo bench` puts bench binaries in deps/; `cargo run` next to the others.
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A file name for a metric: letters, digits and single dashes.
fn file_stem(metric: &str) -> String {
    let mut out = String::new();
    for c in metric.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn write_results(out: &Path, results: &[Series], notes: &[String]) -> Result<(), String> {
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.json"), json).map_err(|e| e.to_string())?;
    let mut csv = String::from("bench,subject,metric,unit,run,value\n");
    for s in results {
        for (i, v) in s.values.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},{},{},{i},{v}\n",
                csv_field(&s.bench),
                csv_field(&s.subject),
                csv_field(&s.metric),
                csv_field(&s.unit)
            ));
        }
    }
    std::fs::write(out.join("results.csv"), csv).map_err(|e| e.to_string())?;
    let notes_json = serde_json::to_string_pretty(notes).map_err(|e| e.to_string())?;
    std::fs::write(out.join("notes.json"), notes_json).map_err(|e| e.to_string())?;

    plot::init_font()?;
    let mut md = String::from("# mvrun benchmark summary\n\n");
    let mut figures = String::from("\n## Plots\n");
    md.push_str("| benchmark | subject | metric | n | min | median | p95 | max | ratio to first | carries to hardware KVM |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mut groups: Vec<(String, String)> = Vec::new();
    for s in results {
        let key = (s.bench.clone(), s.metric.clone());
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (bench, metric) in &groups {
        let members: Vec<&Series> = results
            .iter()
            .filter(|s| &s.bench == bench && &s.metric == metric)
            .collect();
        // A phase breakdown's subjects are parts of one whole, not peers: no ratio between them.
        let base = members
            .first()
            .filter(|_| !metric.contains("phases"))
            .and_then(|s| stats::summarize(&s.values))
            .map(|s| s.median);
        for s in &members {
            if let Some(sum) = stats::summarize(&s.values) {
                let ratio = base
                    .filter(|b| *b > 0.0)
                    .map(|b| format!("{}x", figure(sum.median / b)))
                    .unwrap_or_default();
                md.push_str(&format!(
                    "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} |\n",
                    s.bench,
                    s.subject,
                    s.metric,
                    s.unit,
                    sum.n,
                    figure(sum.min),
                    figure(sum.median),
                    figure(sum.p95),
                    figure(sum.max),
                    ratio,
                    if s.carries_to_hardware {
                        "yes"
                    } else {
                        "no (emulated guest)"
                    }
                ));
            }
        }
        let file = format!("{}-{}.png", bench, file_stem(metric));
        let series: Vec<(String, Vec<f64>)> = members
            .iter()
            .map(|s| (s.subject.clone(), s.values.clone()))
            .collect();
        let unit = members.first().map(|s| s.unit.clone()).unwrap_or_default();
        plot::strip_plot(
            &out.join(&file),
            &format!("{bench}: {metric}"),
            &unit,
            &series,
        )?;
        figures.push_str(&format!("\n![{bench} {metric}]({file})\n"));
    }
    md.push_str(&figures);
    if !notes.is_empty() {
        md.push_str("\n## Notes (what did not run or could not be read)\n\n");
        for n in notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    std::fs::write(out.join("summary.md"), &md).map_err(|e| e.to_string())?;
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::figure;

    #[test]
    fn small_figures_keep_three_significant_digits() {
        assert_eq!(figure(71911.14), "71911.14");
        assert_eq!(figure(1.0), "1.00");
        assert_eq!(figure(0.5), "0.500");
        assert_eq!(figure(0.0034464), "0.00345");
        assert_eq!(figure(0.00045), "0.000450");
        assert_eq!(figure(0.0), "0.00");
    }
}
