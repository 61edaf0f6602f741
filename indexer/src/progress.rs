//! Progress display: indicatif bars on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// The stage's first reported position, and when: rates count from it, not from zero at the
    /// stage's start (a resumed build's first position is work done before this run).
    first: Option<(u64, Instant)>,
}

/// A rate over less time than this is noise (a stage that was over at once): none is shown.
const MIN_TIMED: Duration = Duration::from_millis(100);

/// A plain log (stderr not a terminal) prints a stage's position at most this often: the engine
/// reports it after every forward pass, so a line comes about this often while work moves.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
                first: None,
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

/// Units per second from the first report `(pos, at)` to `pos` at `now`; none where that cannot be
/// timed: no earlier report, no progress since it, or too little time.
fn rate(first: Option<(u64, Instant)>, pos: u64, now: Instant) -> Option<f64> {
    let (from, at) = first?;
    let secs = now.saturating_duration_since(at);
    (pos > from && secs >= MIN_TIMED).then(|| (pos - from) as f64 / secs.as_secs_f64())
}

/// A rate as people read it: `569 MB/s` for bytes (SI units, three significant digits),
/// `48,213 vectors/s` or `3.25 passages/s` for counts.
fn human_rate(per_sec: f64, unit: &str) -> String {
    if unit == "bytes" {
        let (v, u) = [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
            .into_iter()
            .find(|(s, _)| per_sec >= *s)
            .map_or((per_sec, "B"), |(s, u)| (per_sec / s, u));
        format!("{} {u}/s", three_digits(v))
    } else {
        format!("{} {unit}/s", three_digits(per_sec))
    }
}

/// A byte count as people read it (`12.3 MB`).
fn human_bytes(bytes: u64) -> String {
    human_rate(bytes as f64, "bytes")
        .trim_end_matches("/s")
        .to_string()
}

/// Three significant digits below 1,000 (`3.25`, `45.2`, `569`); whole numbers with thousands
/// separators above (`48,213`).
fn three_digits(v: f64) -> String {
    if v < 9.995 {
        format!("{v:.2}")
    } else if v < 99.95 {
        format!("{v:.1}")
    } else {
        thousands(&format!("{:.0}", v))
    }
}

/// Digits with thousands separators (`1,234,567`).
fn thousands(digits: &str) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A stage's time in seconds (`0.003 s`, `4.2 s`, `5123.4 s`): scripts read the `graph: done in
/// S s` line.
fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{secs:.3} s")
    } else {
        format!("{secs:.1} s")
    }
}

/// A time left as people read it: `35 ms`, `4.2 s`, `3 min 05 s`, `2 h 07 min`.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let s = secs.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

impl State {
    /// `pos` in the stage's unit, as people read it (`12.3 MB`, `12,288`).
    fn amount(&self, pos: u64) -> String {
        match unit(&self.name) {
            "bytes" => human_bytes(pos),
            _ => thousands(&pos.to_string()),
        }
    }

    /// A new position: the line a plain log prints now, if one is due (`LOG_EVERY` since the last
    /// line, or since the stage began). Positions reported out of order by worker threads never
    /// move it back.
    fn advance(&mut self, pos: u64, now: Instant) -> Option<String> {
        self.pos = self.pos.max(pos);
        self.first.get_or_insert((pos, now));
        if now.saturating_duration_since(self.last_log) < LOG_EVERY {
            return None;
        }
        self.last_log = now;
        Some(self.log_line(now))
    }

    /// The line a plain log prints every so often: position, rate and time left, where known.
    fn log_line(&self, now: Instant) -> String {
        let u = unit(&self.name);
        let mut tail = Vec::new();
        if let Some(r) = rate(self.first, self.pos, now) {
            tail.push(human_rate(r, u));
            if let Some(t) = self.total {
                let left = t.saturating_sub(self.pos) as f64 / r;
                tail.push(format!(
                    "eta {}",
                    human_duration(Duration::from_secs_f64(left.min(1e9)))
                ));
            }
        }
        let total = self.total.map_or("?".into(), |t| self.amount(t));
        let pos = self.amount(self.pos);
        let unit = if u == "bytes" { "" } else { u };
        let line = format!("{}: {pos}/{total} {unit}", self.name);
        let line = line.trim_end().to_string();
        if tail.is_empty() {
            line
        } else {
            format!("{line} ({})", tail.join(", "))
        }
    }

    /// The line that ends a stage: its time, and its rate where it can be timed.
    fn finish_line(&self, now: Instant) -> String {
        let took = seconds(now.saturating_duration_since(self.started));
        let end = self.total.unwrap_or(self.pos).max(self.pos);
        match rate(self.first, end, now) {
            Some(r) => format!(
                "{}: done in {took} ({})",
                self.name,
                human_rate(r, unit(&self.name))
            ),
            None => format!("{}: done in {took}", self.name),
        }
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
        s.first = None;
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
            // Plain digits: scripts/slurm/index.sh reads `encoding: started (N`.
            let total = match total {
                Some(t) if unit(name) != "bytes" => t.to_string(),
                Some(t) => s.amount(t),
                None => "?".into(),
            };
            let u = unit(name);
            eprintln!(
                "{name}: started ({total}{})",
                if u == "bytes" {
                    String::new()
                } else {
                    format!(" {u}")
                }
            );
        }
    }

    fn set(&self, pos: u64) {
        let mut s = self.state.lock().unwrap();
        let first = s.first.is_none();
        let line = s.advance(pos, Instant::now());
        if let Some(b) = &s.bar {
            b.set_position(s.pos);
            if first && pos > 0 {
                // Resumed: the rows done before are not this run's speed.
                b.reset_eta();
            }
        } else if let Some(line) = line {
            eprintln!("{line}");
        }
    }

    fn finish_stage(&self) {
        let mut s = self.state.lock().unwrap();
        if let Some(b) = s.bar.take() {
            b.finish();
        } else {
            eprintln!("{}", s.finish_line(Instant::now()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, total: Option<u64>, started: Instant) -> State {
        State {
            bar: None,
            name: name.into(),
            total,
            started,
            last_log: started,
            pos: 0,
            first: None,
        }
    }

    #[test]
    fn rates_and_sizes_read_as_people_write_them() {
        assert_eq!(human_rate(596_176_324.7, "bytes"), "596 MB/s");
        assert_eq!(human_rate(1_234_567_890.0, "bytes"), "1.23 GB/s");
        assert_eq!(human_rate(45_210.0, "bytes"), "45.2 kB/s");
        assert_eq!(human_rate(512.0, "bytes"), "512 B/s");
        assert_eq!(human_rate(48_213.4, "vectors"), "48,213 vectors/s");
        assert_eq!(human_rate(1_234_567.0, "vectors"), "1,234,567 vectors/s");
        assert_eq!(human_rate(3.254, "passages"), "3.25 passages/s");
        assert_eq!(human_rate(99.96, "passages"), "100 passages/s");
        assert_eq!(human_bytes(8_800_000_000), "8.80 GB");
        assert_eq!(human_duration(Duration::from_millis(35)), "35 ms");
        assert_eq!(seconds(Duration::from_millis(35)), "0.035 s");
        assert_eq!(seconds(Duration::from_millis(5_123_400)), "5123.4 s");
        assert_eq!(human_duration(Duration::from_millis(4_240)), "4.2 s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(human_duration(Duration::from_secs(7_620)), "2 h 07 min");
    }

    /// A tiny graph reports its only position at its end, at once: no rate is made up of that.
    #[test]
    fn a_stage_too_short_to_time_shows_no_rate() {
        let t0 = Instant::now();
        let mut s = state("graph", Some(50), t0);
        s.first = Some((50, t0 + Duration::from_millis(2)));
        s.pos = 50;
        let line = s.finish_line(t0 + Duration::from_millis(3));
        assert_eq!(line, "graph: done in 0.003 s");
        // Bytes read in 2 ms: a time, no rate.
        let mut s = state("reading", Some(1_000_000), t0);
        s.first = Some((0, t0));
        s.pos = 900_000;
        assert_eq!(
            s.finish_line(t0 + Duration::from_millis(2)),
            "reading: done in 0.002 s"
        );
    }

    /// A plain log prints a line once LOG_EVERY has passed since the last (or the stage's start),
    /// however often positions come, and none in between; late reports never move it back.
    #[test]
    fn plain_log_lines_come_every_ten_seconds_while_work_moves() {
        let t0 = Instant::now();
        let mut s = state("encoding", Some(100_000), t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(s.advance(0, at(0)), None);
        assert_eq!(s.advance(700, at(4_000)), None);
        assert_eq!(s.advance(1_400, at(9_900)), None);
        assert_eq!(
            s.advance(1_500, at(10_000)).as_deref(),
            Some("encoding: 1,500/100,000 passages (150 passages/s, eta 10 min 57 s)")
        );
        assert_eq!(s.advance(2_000, at(15_000)), None);
        // A worker's report that arrives after a later one's.
        assert_eq!(s.advance(1_900, at(16_000)), None);
        assert_eq!(s.pos, 2_000);
        let line = s.advance(3_000, at(20_000)).unwrap();
        assert!(
            line.starts_with("encoding: 3,000/100,000 passages ("),
            "{line}"
        );
    }

    /// The rate counts from the first report, in position and in time: a resumed stage's earlier
    /// rows are not this run's speed, and a first report late in the stage does not dilute it.
    #[test]
    fn rates_count_from_the_first_report() {
        let t0 = Instant::now();
        let mut s = state("encoding", Some(10_000), t0);
        s.first = Some((4_000, t0));
        s.pos = 10_000;
        assert_eq!(
            s.finish_line(t0 + Duration::from_secs(3)),
            "encoding: done in 3.0 s (2,000 passages/s)"
        );
        let mut s = state("graph", Some(40_000), t0);
        s.first = Some((16_384, t0 + Duration::from_secs(2)));
        s.pos = 32_768;
        let now = t0 + Duration::from_secs(4);
        assert_eq!(
            s.log_line(now),
            "graph: 32,768/40,000 vectors (8,192 vectors/s, eta 882 ms)"
        );
        let mut s = state("reading", Some(2_000_000_000), t0);
        s.first = Some((0, t0));
        s.pos = 1_000_000_000;
        assert_eq!(
            s.log_line(t0 + Duration::from_secs(2)),
            "reading: 1.00 GB/2.00 GB (500 MB/s, eta 2.0 s)"
        );
        assert_eq!(
            s.finish_line(t0 + Duration::from_millis(3_500)),
            "reading: done in 3.5 s (571 MB/s)"
        );
    }
}
