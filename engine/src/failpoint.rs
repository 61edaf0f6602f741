//! Named stops for crash tests: when the environment variable `SIMLM_FAILPOINT` names a point that a
//! command reaches, the process aborts there, as a `kill -9` or a power cut would stop it. Tests run a
//! command once per point, then run it again and check that nothing was lost or left half-written.
//! `SIMLM_FAILPOINT=name=error` makes the point fail with an I/O error instead (a full disk).

use std::sync::OnceLock;

fn armed() -> Option<&'static (String, bool)> {
    static POINT: OnceLock<Option<(String, bool)>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let v = std::env::var("SIMLM_FAILPOINT").ok()?;
            Some(match v.strip_suffix("=error") {
                Some(name) => (name.to_string(), true),
                None => (v, false),
            })
        })
        .as_ref()
}

/// A point armed by the library's own unit tests, which stop a build in-process: it always fails
/// with an error (an abort would end the test run). Armed through [`stopped_at`].
#[cfg(test)]
static TEST_POINT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Runs `f` with `point` armed (see `TEST_POINT`). The point is process-wide: tests that arm one
/// take turns, and it is disarmed when `f` returns or panics.
#[cfg(test)]
pub(crate) fn stopped_at<T>(point: &str, f: impl FnOnce() -> T) -> T {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            *TEST_POINT.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    *TEST_POINT.lock().unwrap_or_else(|e| e.into_inner()) = Some(point.to_string());
    let _disarm = Disarm;
    f()
}

/// Aborts the process (or returns an I/O error) when `SIMLM_FAILPOINT` names `name`.
pub fn hit(name: &str) -> std::io::Result<()> {
    #[cfg(test)]
    if TEST_POINT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        == Some(name)
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("failpoint {name}: no space left on device"),
        ));
    }
    match armed() {
        Some((point, error)) if point == name => {
            if *error {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("failpoint {name}: no space left on device"),
                ));
            }
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
        _ => Ok(()),
    }
}
