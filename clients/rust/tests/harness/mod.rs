//! Starts the real snapbusd on loopback for the tests: free ports, a ready
//! file, its own data directory; stopped with SIGTERM by PID and expected
//! to exit 0.
//!
//! Environment (set by ctest; defaults for a run from clients/rust):
//!   SBRS_SNAPBUSD  the broker binary (default ../../build/snapbusd)
//!   SBRS_CLI       the snapbus CLI   (default ../../build/snapbus)
//! (Not SNAPBUS_*: snapbusd refuses unknown variables of that prefix, and
//! they are removed from the children's environment.)

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin(var: &str, name: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../build")
            .join(name),
    }
}

pub fn cli() -> Command {
    let mut c = Command::new(bin("SBRS_CLI", "snapbus"));
    clean_env(&mut c);
    c
}

fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SNAPBUS_") {
            c.env_remove(k);
        }
    }
}

pub struct Broker {
    pub child: Child,
    pub dir: PathBuf,
    pub ingest: String,
    pub pubs: String,
    pub query: String,
}

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "sbrs.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Broker {
    pub fn start(extra: &[&str]) -> Broker {
        let dir = tempdir();
        let ready = dir.join("ready");
        let path = bin("SBRS_SNAPBUSD", "snapbusd");
        let mut c = Command::new(&path);
        clean_env(&mut c);
        c.args([
            "--ingest",
            "tcp://127.0.0.1:*",
            "--pub",
            "tcp://127.0.0.1:*",
        ])
        .args(["--query", "tcp://127.0.0.1:*", "--ready-file"])
        .arg(&ready)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("broker.log")).unwrap());
        let mut child = c.spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {} (set SBRS_SNAPBUSD)", path.display(), e)
        });
        // Bounded only so that a broken build cannot hang the suite.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                let get = |k: &str| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(&format!("{}=", k)).map(str::to_string))
                };
                if let (Some(i), Some(p), Some(q)) = (get("ingest"), get("pub"), get("query")) {
                    return Broker {
                        child,
                        dir,
                        ingest: i,
                        pubs: p,
                        query: q,
                    };
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("snapbusd exited at start ({}): {}", st, log(&dir));
            }
            assert!(Instant::now() < deadline, "snapbusd wrote no ready file");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{}", sig))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM by PID; asserts a clean exit.
    pub fn stop(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "snapbusd exit {}: {}", st, log(&self.dir));
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("snapbusd did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn log(dir: &std::path::Path) -> String {
    let s = std::fs::read(dir.join("broker.log")).unwrap_or_default();
    String::from_utf8_lossy(&s[s.len().saturating_sub(4000)..]).into_owned()
}
