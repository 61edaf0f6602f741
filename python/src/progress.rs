//! The engine's `Progress` for Python calls: an optional bar on standard error, and the cancel flag
//! that Ctrl-C sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use engine::index::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar {
    show: bool,
    bar: Mutex<Option<ProgressBar>>,
    pub cancel: Arc<AtomicBool>,
}

impl Bar {
    pub fn new(show: bool) -> Self {
        Bar {
            show,
            bar: Mutex::new(None),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: Option<u64>) {
        if !self.show {
            return;
        }
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr())
                .with_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        bar.set_message(name.to_string());
        if let Some(old) = self.current().replace(bar) {
            old.finish_and_clear();
        }
    }

    fn set(&self, pos: u64) {
        if let Some(b) = self.current().as_ref() {
            b.set_position(pos);
        }
    }

    fn finish_stage(&self) {
        if let Some(b) = self.current().take() {
            b.finish();
        }
    }

    fn message(&self, msg: &str) {
        if !self.show {
            return;
        }
        match self.current().as_ref() {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = self.current().take() {
            b.abandon();
        }
    }
}
