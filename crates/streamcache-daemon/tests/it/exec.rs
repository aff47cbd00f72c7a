//! `streamcache exec` against running the command directly: stdout, stderr, exit codes,
//! stdin, caching of successes only, the allow-list and failing open.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

use crate::support::{count_lines, script, signal, text, Daemon, BIN};

/// 4 MiB holding every byte value, in an order that is not periodic in 256.
fn binary_data() -> Vec<u8> {
    let mut data = Vec::with_capacity(4 << 20);
    let mut x: u32 = 1;
    while data.len() < 4 << 20 {
        for b in 0..=255u8 {
            data.push(b);
        }
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        data.extend_from_slice(&x.to_le_bytes());
    }
    data
}

fn direct(command: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(command[0]);
    cmd.args(&command[1..]);
    crate::support::run_with_stdin(cmd, stdin)
}

/// The exit code a shell reports for a direct run: the code, or 128 + the signal.
fn shell_code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap())
}

fn assert_same(through: &Output, direct: &Output) {
    assert_eq!(through.stdout.len(), direct.stdout.len(), "stdout length");
    assert!(through.stdout == direct.stdout, "stdout differs");
    assert!(
        through.stderr == direct.stderr,
        "stderr differs: {:?} vs {:?}",
        text(&through.stderr[..through.stderr.len().min(200)]),
        text(&direct.stderr[..direct.stderr.len().min(200)])
    );
    assert_eq!(through.status.code(), Some(shell_code(direct)), "exit code");
}

#[test]
fn binary_stdout_is_byte_identical_to_a_direct_run_on_a_miss_and_a_hit() {
    let daemon = Daemon::start(&["--allow", "cat"]);
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, binary_data()).unwrap();
    let path = file.to_str().unwrap();
    let expected = direct(&["cat", path], b"");
    assert_eq!(expected.stdout.len(), binary_data().len());
    let miss = daemon.exec(false, &["cat", path], b"");
    let hit = daemon.exec(false, &["cat", path], b"");
    assert_same(&miss, &expected);
    assert_same(&hit, &expected);
    assert_eq!(
        (daemon.stat("misses_total"), daemon.stat("hits_total")),
        (1, 1)
    );
    assert_eq!(daemon.stat("children_started_total"), 1);
}

#[test]
fn stdin_reaches_the_command_and_different_stdin_is_a_different_entry() {
    let daemon = Daemon::start(&["--allow", "cat"]);
    let big: Vec<u8> = binary_data()[..(3 << 20) / 2].to_vec();
    for input in [
        &b"want 1\n--not\n\n"[..],
        &b"want 2\n--not\n\n"[..],
        &big[..],
    ] {
        let out = daemon.exec(false, &["cat"], input);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout == input, "stdout is not the stdin");
    }
    assert_eq!(daemon.stat("misses_total"), 3);
    assert_eq!(daemon.stat("hits_total"), 0);
}

#[test]
fn stderr_over_a_mebibyte_and_interleaved_stdout_match_a_direct_run() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, &binary_data()[..(3 << 20) / 2]).unwrap();
    let body = format!(
        "echo start; cat {f} >&2; echo middle; cat {f}; echo end >&2",
        f = file.display()
    );
    let command = ["sh", "-c", body.as_str()];
    let expected = direct(&command, b"");
    assert!(expected.stderr.len() > 1 << 20);
    let through = daemon.exec(false, &command, b"");
    assert_same(&through, &expected);
}

#[test]
fn exit_codes_and_signals_match_a_direct_run_and_failures_are_not_cached() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let count = daemon.dir.path().join("runs");
    for (body, code) in [
        ("echo ok; exit 0", 0),
        ("echo out; echo err >&2; exit 1", 1),
        ("echo dying; kill -KILL $$", 128 + 9),
        ("echo dying >&2; kill -TERM $$", 128 + 15),
    ] {
        let body = format!("echo run >> {}; {body}", count.display());
        let command = ["sh", "-c", body.as_str()];
        let before = count_lines(&count);
        let expected = direct(&command, b"");
        assert_eq!(shell_code(&expected), code);
        let first = daemon.exec(false, &command, b"");
        let second = daemon.exec(false, &command, b"");
        assert_same(&first, &expected);
        assert_same(&second, &expected);
        // The direct run, then the daemon once if it succeeded (the second call hits),
        // twice if it failed (a failure is never cached).
        let daemon_runs = if code == 0 { 1 } else { 2 };
        assert_eq!(count_lines(&count) - before, 1 + daemon_runs, "{body}");
    }
    assert_eq!(daemon.stat("failures_total"), 6);
    assert_eq!(daemon.stat("hits_total"), 1);
}

#[test]
fn the_allow_list_refuses_other_programs_and_the_client_runs_them_itself() {
    let daemon = Daemon::start(&[]);
    let command = ["sh", "-c", "echo hello; echo warn >&2; exit 3"];
    let quiet = daemon.exec(false, &command, b"");
    assert_eq!(quiet.status.code(), Some(3));
    assert_eq!(text(&quiet.stdout), "hello\n");
    assert_eq!(
        text(&quiet.stderr),
        "warn\n",
        "without -v the client says nothing"
    );
    let verbose = daemon.exec(true, &command, b"");
    assert_eq!(verbose.status.code(), Some(3));
    assert_eq!(text(&verbose.stdout), "hello\n");
    let err = text(&verbose.stderr);
    assert!(err.contains("daemon refused"), "{err}");
    assert!(err.contains("not on the allow-list"), "{err}");
    assert!(err.contains("git:pack-objects"), "{err}");
    assert!(err.ends_with("warn\n"), "{err}");
    assert_eq!(daemon.stat("refused_total"), 2);
    assert_eq!(daemon.stat("children_started_total"), 0);
    // git with another subcommand is refused too.
    let other = daemon.exec(true, &["git", "--version"], b"");
    assert!(other.status.success());
    assert!(text(&other.stdout).starts_with("git version"));
    assert!(text(&other.stderr).contains("not on the allow-list"));
}

#[test]
fn without_a_daemon_the_client_runs_the_command_itself_with_its_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-listens.sock");
    let run = |verbose: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec").arg("--socket").arg(&socket);
        if verbose {
            cmd.arg("-v");
        }
        cmd.args(["--", "sh", "-c", "cat; exit 4"]);
        crate::support::run_with_stdin(cmd, b"the stdin")
    };
    let quiet = run(false);
    assert_eq!(quiet.status.code(), Some(4));
    assert_eq!(text(&quiet.stdout), "the stdin");
    assert_eq!(text(&quiet.stderr), "");
    let verbose = run(true);
    assert_eq!(text(&verbose.stdout), "the stdin");
    assert!(
        text(&verbose.stderr).contains("cannot reach the daemon"),
        "{}",
        text(&verbose.stderr)
    );
}

#[test]
fn a_program_that_cannot_run_fails_like_a_shell_would() {
    let daemon = Daemon::start(&["--allow", "/nonexistent/program"]);
    let out = daemon.exec(true, &["/nonexistent/program"], b"");
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    // The daemon's producer failed before any output, so the client ran it itself.
    assert!(
        err.contains("running /nonexistent/program directly"),
        "{err}"
    );
    assert!(err.contains("cannot run /nonexistent/program"), "{err}");
}

#[test]
fn a_closed_stdout_makes_the_client_exit_quietly_with_a_failure() {
    let daemon = Daemon::start(&["--allow", "cat"]);
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, binary_data()).unwrap();
    let mut child = daemon
        .exec_cmd(false, &["cat", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(first, binary_data()[..10]);
    assert_eq!(status.code(), Some(141));
    assert_eq!(stderr, "");
}

#[test]
fn sigterm_kills_the_client_quietly_and_the_producer_serves_the_next_caller() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let gate = daemon.dir.path().join("gate");
    crate::support::fifo(&gate);
    let body = format!("echo before; read line < {}; echo after", gate.display());
    let command = ["sh", "-c", body.as_str()];
    let mut first = daemon
        .exec_cmd(false, &command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 7];
    first
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"before\n");
    // A second caller joins the same running command.
    let second = daemon
        .exec_cmd(false, &command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    daemon.wait_for_log(&["serving", "status=hit"]);
    signal(first.id(), rustix::process::Signal::TERM);
    let killed = first.wait_with_output().unwrap();
    assert_eq!(killed.status.signal(), Some(15));
    assert_eq!(text(&killed.stderr), "");
    std::fs::write(&gate, b"go\n").unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "before\nafter\n");
    assert_eq!(daemon.stat("children_started_total"), 1);
    assert_eq!(daemon.stat("failures_total"), 0);
}

#[test]
fn extra_key_material_and_forwarded_variables_split_entries() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    let command = ["sh", "-c", "echo \"$GIT_PROTOCOL/$TENANT/$OTHER\""];
    let run = |key: Option<&str>, protocol: &str| {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec")
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["--env", "TENANT"]);
        if let Some(k) = key {
            cmd.args(["--key", k]);
        }
        cmd.arg("--").args(command);
        cmd.env("GIT_PROTOCOL", protocol)
            .env("TENANT", "t1")
            .env("OTHER", "not-sent");
        let out = crate::support::run_with_stdin(cmd, b"");
        assert!(out.status.success());
        text(&out.stdout)
    };
    // Only forwarded variables reach the command.
    assert_eq!(run(None, "version=2"), "version=2/t1/\n");
    assert_eq!(run(None, "version=2"), "version=2/t1/\n");
    assert_eq!(run(None, "version=1"), "version=1/t1/\n");
    assert_eq!(run(Some("repo-7"), "version=2"), "version=2/t1/\n");
    assert_eq!(daemon.stat("misses_total"), 3);
    assert_eq!(daemon.stat("hits_total"), 1);
}

#[test]
fn a_script_on_the_allow_list_runs_in_the_clients_working_directory() {
    // Named by absolute path: a relative one would be the client's choice (it is
    // refused, see `security::a_client_chosen_path_cannot_change_which_binary_runs`).
    let dir = tempfile::tempdir().unwrap();
    let where_sh = dir.path().join("where.sh");
    script(&where_sh, "pwd");
    let daemon = Daemon::start(&["--allow", where_sh.to_str().unwrap()]);
    let work = daemon.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut cmd = daemon.exec_cmd(false, &[where_sh.to_str().unwrap()]);
    cmd.current_dir(&work);
    let out = crate::support::run_with_stdin(cmd, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim_end(),
        work.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(daemon.stat("misses_total"), 1);
}

#[test]
fn with_min_occurrences_one_the_first_call_bypasses_the_cache_and_still_gets_everything() {
    let daemon = Daemon::start(&["--allow", "cat", "--min-occurrences", "1"]);
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, binary_data()).unwrap();
    let path = file.to_str().unwrap();
    let expected = direct(&["cat", path], b"");
    for _ in 0..3 {
        assert_same(&daemon.exec(false, &["cat", path], b""), &expected);
    }
    assert_eq!(daemon.stat("bypassed_total"), 1);
    assert_eq!(daemon.stat("misses_total"), 1);
    assert_eq!(daemon.stat("hits_total"), 1);
    assert_eq!(daemon.stat("children_started_total"), 2);
}

#[test]
fn stdout_into_a_file_is_copied_and_into_a_pipe_is_spliced_with_the_same_bytes() {
    let daemon = Daemon::start(&["--allow", "cat"]);
    let file = daemon.dir.path().join("data.bin");
    std::fs::write(&file, binary_data()).unwrap();
    let path = file.to_str().unwrap();
    for round in 0..2 {
        let out_path = daemon.dir.path().join(format!("out-{round}.bin"));
        let status = daemon
            .exec_cmd(false, &["cat", path])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .status()
            .unwrap();
        assert!(status.success());
        assert!(
            std::fs::read(&out_path).unwrap() == binary_data(),
            "round {round}"
        );
        let piped = daemon.exec(false, &["cat", path], b"");
        assert!(piped.stdout == binary_data(), "round {round}");
    }
}

/// Runs `program` with the redirection `close` (`>&-`, `2>&-`: closed), as a shell would.
fn with_closed(close: &str, program: &[&OsStr]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec \"$@\" {close}"))
        .arg("sh")
        .args(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn with_stdout_or_stderr_closed_exec_exits_as_the_command_run_directly_does() {
    let daemon = Daemon::start(&["--allow", "sh"]);
    for (close, body) in [(">&-", "echo hi"), ("2>&-", "echo hi >&2")] {
        let command = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(body)];
        let direct = with_closed(close, &command);
        assert_ne!(direct.status.code(), Some(0), "{close} fails a direct run");
        let mut through = vec![
            OsStr::new(BIN),
            OsStr::new("exec"),
            OsStr::new("-v"),
            OsStr::new("--socket"),
            daemon.socket.as_os_str(),
            OsStr::new("--"),
        ];
        through.extend(command);
        let through = with_closed(close, &through);
        assert_eq!(
            through.status.code(),
            direct.status.code(),
            "sh -c {body:?} with {close}: {}",
            text(&through.stderr)
        );
        assert_eq!(through.stdout, direct.stdout, "{close}");
    }
    // The command ran where it could see the closed descriptor: in the client.
    assert_eq!(daemon.stat("children_started_total"), 0);
    // A /dev/null opened read-write, the very file the runtime puts in place of a
    // closed descriptor (and what Python's subprocess.DEVNULL passes), is no closed
    // stdout: that command succeeds, through the daemon.
    let through = [
        OsStr::new(BIN),
        OsStr::new("exec"),
        OsStr::new("--socket"),
        daemon.socket.as_os_str(),
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new("echo hi"),
    ];
    let out = with_closed("1<>/dev/null", &through);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(daemon.stat("children_started_total"), 1);
}
