//! Training runs that end early through the CLI. An interrupt signal writes a checkpoint
//! of the last finished step. With `--watch`, an edit of the model file recompiles it and
//! training goes on from a checkpoint, or keeps the old model when the edit does not check.
//!
//! Each test trains the tiny pix2pix of `tests/net/tiny_pix2pix.net` on six real facades
//! pairs through the `netc` binary on lavapipe, and signals it with `kill`.

use netc::train::checkpoint;
use netc::train::report::{read_losses, LOSSES_FILE};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use support::facades_train;

const TINY: &str = include_str!("net/tiny_pix2pix.net");

/// How long any one wait of these tests may take before it fails.
const TIMEOUT: Duration = Duration::from_secs(240);

/// Creates a folder with `tiny.net` and the first six real pairs in `data/facades/train/`.
fn workspace() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let train = work.path().join("data/facades/train");
    std::fs::create_dir_all(&train).unwrap();
    for i in 1..=6 {
        let name = format!("{i}.jpg");
        std::fs::copy(facades_train().join(&name), train.join(&name)).unwrap();
    }
    std::fs::write(work.path().join("tiny.net"), TINY).unwrap();
    work
}

/// A running `netc` whose standard output and error are collected by reader threads.
struct Run {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Run {
    fn start(work: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["run", "tiny.net", "--train", "facades", "--data", "data"];
        args.extend(["--steps", "1000000", "--quiet"]);
        args.extend(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_netc"))
            .current_dir(work)
            .args(&args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |stream: Box<dyn std::io::Read + Send>| {
            let text = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&text);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut sink = sink.lock().unwrap();
                    sink.push_str(&line);
                    sink.push('\n');
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Run { child, stdout, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `ready` holds, failing with the output so far after [`TIMEOUT`].
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Run) -> bool) {
        let started = Instant::now();
        while !ready(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("netc exited with {status} while waiting for {what}:\n{}", self.stderr());
            }
            if started.elapsed() > TIMEOUT {
                self.child.kill().unwrap();
                panic!("no {what} after {TIMEOUT:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and returns the exit code and standard output.
    fn terminate(mut self) -> (Option<i32>, String, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success(), "kill -TERM {pid} failed");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > TIMEOUT {
                self.child.kill().unwrap();
                panic!("netc did not stop after SIGTERM:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader threads finish once the pipes close.
        std::thread::sleep(Duration::from_millis(200));
        let stdout = self.stdout.lock().unwrap().clone();
        (status.code(), stdout, self.stderr())
    }
}

/// Returns the steps listed in the run's `losses.csv`, or none before it has rows.
fn logged_steps(run: &Path) -> Vec<u64> {
    match read_losses(&run.join(LOSSES_FILE)) {
        Ok((_, rows)) => rows.iter().map(|r| r.step).collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes `text` to `path` the way many editors save: a new file renamed over the old.
fn save(path: &Path, text: &str) {
    let temporary = path.with_extension("net.swp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[test]
fn sigterm_checkpoints_last_step() {
    let work = workspace();
    let run_dir = work.path().join("run");
    // No periodic checkpoints: the only one is the one the signal writes.
    let extra = ["--checkpoint-every", "0", "--images-every", "0", "--out", "run"];
    let mut run = Run::start(work.path(), &extra);
    run.wait_until("three logged steps", |_| logged_steps(&run_dir).len() >= 3);
    let (code, stdout, stderr) = run.terminate();

    assert_eq!(code, Some(130), "{stderr}");
    let last = *logged_steps(&run_dir).last().unwrap();
    assert!(stdout.contains(&format!("trained steps 1..{last} ")), "{stdout}");
    let record = checkpoint::load(&run_dir).unwrap().record;
    assert_eq!(record.step, last);
    assert!(
        stderr.contains(
            "continue with: netc run tiny.net --train facades --data data --steps 1000000 \
             --images-every 0 --checkpoint-every 0 --resume run"
        ),
        "{stderr}"
    );

    // The interrupted run resumes from its checkpoint.
    let total = (last + 2).to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_netc"))
        .current_dir(work.path())
        .args(["run", "tiny.net", "--train", "facades", "--data", "data", "--quiet"])
        .args(["--steps", &total, "--resume", "run"])
        .output()
        .unwrap();
    let resumed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(resumed.contains(&format!("trained steps {}..{total} ", last + 1)), "{resumed}");
}

#[test]
fn watch_recompiles_after_edit() {
    let work = workspace();
    // No --out: the run stays in its default folder across edits.
    let (file, run_dir) = (work.path().join("tiny.net"), work.path().join("runs/tiny-facades"));
    let mut run = Run::start(work.path(), &["--watch", "--images-every", "0"]);
    run.wait_until("three logged steps", |_| logged_steps(&run_dir).len() >= 3);

    // Widen the inner decoder layer: its weights are re-initialized, the rest carry over.
    let widened = TINY
        .replace("conv_transpose2d(ngf) -> batch_norm", "conv_transpose2d(ngf * 2) -> batch_norm");
    assert_ne!(widened, TINY);
    save(&file, &widened);
    run.wait_until("a recompile", |r| r.stderr().contains("recompiled with"));
    let stderr = run.stderr();
    let line = stderr.lines().find(|l| l.contains("recompiled with")).unwrap();
    let counts: Vec<usize> = line.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    let [reused, compiled] = counts[..] else { panic!("no shader counts in {line:?}") };
    assert!(reused > 0, "{line}");
    assert!(compiled > 0, "{line}");
    let edited_at = *logged_steps(&run_dir).last().unwrap();
    run.wait_until("steps of the edited model", |_| {
        logged_steps(&run_dir).last().is_some_and(|&s| s >= edited_at + 3)
    });

    // An edit that does not check leaves the widened model training.
    save(&file, &widened.replace("net generator", "net generator("));
    run.wait_until("the rejected edit", |r| r.stderr().contains("the edit does not apply"));
    let rejected_at = *logged_steps(&run_dir).last().unwrap();
    run.wait_until("steps after the rejected edit", |_| {
        logged_steps(&run_dir).last().is_some_and(|&s| s >= rejected_at + 3)
    });
    let (code, _, stderr) = run.terminate();

    assert_eq!(code, Some(130), "{stderr}");
    let saved = checkpoint::load(&run_dir).unwrap();
    assert_eq!(saved.record.model.source, widened);
    let steps = logged_steps(&run_dir);
    assert_eq!(steps, (1..=saved.record.step).collect::<Vec<_>>(), "one row per step");
    let weight = saved.weights.iter().find(|t| t.name == "generator.d2.conv_transpose.weight");
    let shape = weight.map(|t| t.shape.dims().to_vec());
    assert_eq!(shape, Some(vec![8, 8, 4, 4]), "d2 takes e2's 8 channels and makes 8");
    for entry in std::fs::read_dir(run_dir.join("checkpoints")).unwrap() {
        let nested = entry.unwrap().path().join("checkpoints");
        assert!(!nested.exists(), "a run folder inside a checkpoint: {}", nested.display());
    }
}

#[test]
fn resume_keeps_checkpoint_set_values() {
    let work = workspace();
    let netc = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_netc"))
            .current_dir(work.path())
            .args(["run", "tiny.net", "--train", "facades", "--data", "data", "--quiet"])
            .args(["--out", "run"])
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "netc {args:?} failed:\n{stderr}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    netc(&["--steps", "2", "--set", "ngf=2"]);

    // Setting one value again keeps the checkpoint's ngf=2, which the weights need.
    let stdout = netc(&["--steps", "3", "--resume", "run", "--set", "size=16"]);
    assert!(stdout.contains("trained steps 3..3 "), "{stdout}");
    let record = checkpoint::load(&work.path().join("run")).unwrap().record;
    assert_eq!(record.model.overrides, ["ngf=2", "size=16"]);
}
