//! Progress display: indicatif bars on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use engine::index::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    tty: bool,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    name: String,
    total: Option<u64>,
    started: Instant,
    last_log: Instant,
    pos: u64,
    /// Where this run of the stage began (a resumed build's first position): rates and ETAs count
    /// from it, not from zero.
    base: Option<u64>,
}

impl Bars {
    pub fn new() -> Self {
        Bars {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                bar: None,
                name: String::new(),
                total: None,
                started: Instant::now(),
                last_log: Instant::now(),
                pos: 0,
                base: None,
            }),
        }
    }
}

fn unit(name: &str) -> &'static str {
    match name {
        "reading" => "bytes",
        "encoding" => "passages",
        _ => "vectors",
    }
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: Option<u64>) {
        let mut s = self.state.lock().unwrap();
        s.name = name.to_string();
        s.total = total;
        s.started = Instant::now();
        s.last_log = Instant::now();
        s.pos = 0;
        s.base = None;
        if self.tty {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let tmpl = if name == "reading" {
                "{prefix:>9} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})"
            } else {
                "{prefix:>9} [{bar:40}] {human_pos}/{human_len} ({per_sec}, eta {eta})"
            };
            bar.set_style(
                ProgressStyle::with_template(tmpl)
                    .unwrap()
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            s.bar = Some(bar);
        } else {
            eprintln!(
                "{name}: started ({} {})",
                total.map(|t| t.to_string()).unwrap_or("?".into()),
                unit(name)
            );
        }
    }

    fn set(&self, pos: u64) {
        let mut s = self.state.lock().unwrap();
        s.pos = pos;
        let first = s.base.is_none();
        let base = *s.base.get_or_insert(pos);
        if let Some(b) = &s.bar {
            b.set_position(pos);
            if first && pos > 0 {
                // Resumed: the rows done before are not this run's speed.
                b.reset_eta();
            }
        } else if s.last_log.elapsed().as_secs() >= 10 {
            s.last_log = Instant::now();
            let rate =
                pos.saturating_sub(base) as f64 / s.started.elapsed().as_secs_f64().max(1e-9);
            let eta = s
                .total
                .map(|t| (t.saturating_sub(pos)) as f64 / rate.max(1e-9));
            eprintln!(
                "{}: {pos}/{} {} ({rate:.1}/s{})",
                s.name,
                s.total.map(|t| t.to_string()).unwrap_or("?".into()),
                unit(&s.name),
                eta.map(|e| format!(", eta {e:.0} s")).unwrap_or_default()
            );
        }
    }

    fn finish_stage(&self) {
        let mut s = self.state.lock().unwrap();
        let secs = s.started.elapsed().as_secs_f64();
        if let Some(b) = s.bar.take() {
            b.finish();
        } else {
            let pos = s.total.unwrap_or(s.pos).saturating_sub(s.base.unwrap_or(0));
            eprintln!(
                "{}: done in {secs:.1} s ({:.1} {}/s)",
                s.name,
                pos as f64 / secs.max(1e-9),
                unit(&s.name)
            );
        }
    }

    fn message(&self, msg: &str) {
        let s = self.state.lock().unwrap();
        match &s.bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}
