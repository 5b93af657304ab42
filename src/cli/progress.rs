//! Progress for byte transfers: bars on a terminal, one log line per blob otherwise
//! (batch jobs and CI logs should not fill with escape codes).

use std::io::IsTerminal;
use std::time::Instant;

use bytesize::ByteSize;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::pull::{Progress, ProgressTask, Silent};

pub enum Reporter {
    Bars(MultiProgress),
    Lines,
    Quiet,
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        if quiet {
            Reporter::Quiet
        } else if std::io::stderr().is_terminal() {
            Reporter::Bars(MultiProgress::new())
        } else {
            Reporter::Lines
        }
    }
}

impl Progress for Reporter {
    fn start(&self, label: &str, size: u64) -> Box<dyn ProgressTask> {
        match self {
            Reporter::Bars(multi) => {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:50!} {bar:30} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec}",
                    )
                    .expect("the template is valid"),
                );
                bar.set_message(label.to_string());
                Box::new(bar)
            }
            Reporter::Lines => Box::new(LogLine {
                label: label.to_string(),
                size,
                started: Instant::now(),
            }),
            Reporter::Quiet => Box::new(Silent),
        }
    }
}

impl ProgressTask for ProgressBar {
    fn advance(&self, bytes: u64) {
        self.inc(bytes);
    }

    fn finish(&self, outcome: &str) {
        self.finish_with_message(format!("{} {outcome}", self.message()));
    }
}

struct LogLine {
    label: String,
    size: u64,
    started: Instant,
}

impl ProgressTask for LogLine {
    fn advance(&self, _: u64) {}

    fn finish(&self, outcome: &str) {
        tracing::info!(
            "{}: {outcome} ({}, {:.1}s)",
            self.label,
            ByteSize::b(self.size).display().iec(),
            self.started.elapsed().as_secs_f64()
        );
    }
}
