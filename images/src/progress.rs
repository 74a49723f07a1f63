//! Pull progress: one indicatif bar per blob on a terminal, one plain line per blob otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

/// Receives pull and import progress.
pub trait Progress: Send + Sync {
    /// A blob download starts (`size` from its descriptor).
    fn start(&self, id: &str, what: &str, size: u64);
    /// Bytes received so far for `id`.
    fn advance(&self, id: &str, done: u64);
    /// The blob is in the store (`cached`: it already was).
    fn finish(&self, id: &str, cached: bool);
    /// A one-line note (retries, resolved digests).
    fn note(&self, msg: &str);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn advance(&self, _: &str, _: u64) {}
    fn finish(&self, _: &str, _: bool) {}
    fn note(&self, _: &str) {}
}

/// Progress on stderr: bars when it is a terminal, quiet lines when not.
pub struct ConsoleProgress {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl ConsoleProgress {
    /// Bars if stderr is a terminal.
    pub fn auto() -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

impl Progress for ConsoleProgress {
    fn start(&self, id: &str, what: &str, size: u64) {
        match &self.multi {
            Some(m) => {
                let bar = m.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} {msg:<7} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(id).to_string());
                bar.set_message(what.to_string());
                if let Ok(mut bars) = self.bars.lock() {
                    bars.insert(id.to_string(), bar);
                }
            }
            None => eprintln!("{} {what}: pulling ({size} bytes)", short(id)),
        }
    }
    fn advance(&self, id: &str, done: u64) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(b) = bars.get(id) {
                b.set_position(done);
            }
        }
    }
    fn finish(&self, id: &str, cached: bool) {
        let status = if cached { "already present" } else { "done" };
        match self.bars.lock().ok().and_then(|mut b| b.remove(id)) {
            Some(bar) => bar.finish_with_message(status),
            None if self.multi.is_none() => eprintln!("{} {status}", short(id)),
            None => {}
        }
    }
    fn note(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }
}
