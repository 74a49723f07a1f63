//! How a kernel build shows its progress on stderr: a spinner with the current step and make's current line on a
//! terminal, the build script's step lines ("==> ...") otherwise, or nothing.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub(crate) enum Progress {
    Quiet,
    Lines,
    Spinner {
        bar: ProgressBar,
        step: String,
        objects: u64,
    },
}

impl Progress {
    pub(crate) fn new(show: bool) -> Self {
        if !show {
            return Progress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::Spinner {
            bar,
            step: String::new(),
            objects: 0,
        }
    }

    /// Says something outside the build script's own output.
    pub(crate) fn note(&mut self, text: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("mvrun: kernel: {text}"),
            Progress::Spinner { bar, .. } => bar.println(format!("mvrun: kernel: {text}")),
        }
    }

    /// One line of the build script's output.
    pub(crate) fn line(&mut self, line: &str) {
        let step = line.strip_prefix("==> ");
        match self {
            Progress::Quiet => {}
            Progress::Lines => {
                if let Some(step) = step {
                    eprintln!("mvrun: kernel: {step}");
                }
            }
            Progress::Spinner {
                bar,
                step: current,
                objects,
            } => {
                if let Some(step) = step {
                    bar.println(format!("mvrun: kernel: {step}"));
                    *current = step.to_string();
                    *objects = 0;
                    bar.set_prefix(current.clone());
                    bar.set_message("");
                } else if let Some(made) = make_step(line) {
                    *objects += 1;
                    bar.set_message(format!("({objects}) {made}"));
                }
            }
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Progress::Spinner { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// make's short lines ("  CC      fs/ext4/inode.o") as "CC fs/ext4/inode.o".
fn make_step(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let verb = words.next()?;
    let what = words.next()?;
    let is_verb = verb.len() <= 8 && verb.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
    (line.starts_with("  ") && is_verb && words.next().is_none()).then(|| format!("{verb} {what}"))
}

#[cfg(test)]
mod tests {
    use super::make_step;

    #[test]
    fn make_lines_are_recognised() {
        assert_eq!(
            make_step("  CC      fs/ext4/inode.o").as_deref(),
            Some("CC fs/ext4/inode.o")
        );
        assert_eq!(
            make_step("  LD      vmlinux").as_deref(),
            Some("LD vmlinux")
        );
        assert_eq!(make_step("make[1]: Entering directory"), None);
        assert_eq!(make_step("fs/x.c:1:2: warning: unused"), None);
    }
}
