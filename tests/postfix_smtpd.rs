//! The network-namespace and private-Postfix harness itself: a namespace
//! keeps in-process servers and external programs on its own loopback, a
//! private Postfix accepts and queues mail there, consults a policy server
//! running in the test, and everything is gone afterwards.
//!
//! Needs root, `ip`, Postfix and swaks (`.ci/run` installs them); without
//! them these tests fail, unless `SKIP_POSTFIX_TESTS=1` is set.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::WAIT;
use common::netns::{self, Netns, current_thread_netns_id, process_alive};
use common::postfix::{Mail, Postfix, PostfixOptions, SENDER};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOOLS: &[&str] = &["postfix", "postqueue", "swaks"];

#[test]
fn sockets_made_on_a_namespace_thread_live_in_the_namespace() {
    let Some(ns) = Netns::for_test("tlspd-ns", &["bash"]) else {
        return;
    };

    // `ip netns exec` gives programs the namespace's own resolver files.
    let out = ns.run("cat", &["/etc/resolv.conf", "/etc/hosts"]);
    let files = String::from_utf8_lossy(&out.stdout);
    assert!(files.starts_with("nameserver 127.0.0.1\n"), "{files}");
    assert_eq!(files.matches("nameserver").count(), 1, "{files}");
    assert!(files.contains("localhost"), "{files}");

    // A thread that joined the namespace is in it; this one is not.
    assert_eq!(ns.run_in(current_thread_netns_id), ns.id());
    assert_ne!(current_thread_netns_id(), ns.id());

    // A listener bound there is reachable from `ip netns exec` ...
    let listener = ns.tcp_listener("127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let out = ns.run(
        "bash",
        &["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")],
    );
    assert!(
        out.status.success(),
        "connect from inside: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(accept_within(&listener, WAIT), "no connection from inside");

    // ... and not from the host's loopback (which may have something else
    // on that port: what matters is that this listener sees nothing).
    let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), WAIT);
    assert!(
        !accept_within(&listener, Duration::from_millis(200)),
        "a connection from the host namespace reached the namespace's listener"
    );

    // Nothing routes out of the namespace.
    let err = ns
        .tcp_connect("192.0.2.1:25")
        .expect_err("connected to 192.0.2.1 from inside the namespace");
    assert_eq!(err.kind(), io::ErrorKind::NetworkUnreachable, "{err}");

    // A tokio runtime built on a namespace thread: its workers (and
    // blocking threads started from them) are inside too, and so are its
    // listeners.
    let ns_id = ns.id();
    let (ids, tokio_port, server) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = ns.spawn_in(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut ids = Vec::new();
                for _ in 0..4 {
                    ids.push(
                        tokio::spawn(async { current_thread_netns_id() })
                            .await
                            .unwrap(),
                    );
                }
                ids.push(
                    tokio::task::spawn_blocking(current_thread_netns_id)
                        .await
                        .unwrap(),
                );
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send((ids, l.local_addr().unwrap().port())).unwrap();
                let (mut s, _) = l.accept().await.unwrap();
                s.write_all(b"hello from inside\n").await.unwrap();
            });
        });
        let (ids, port) = rx.recv_timeout(WAIT).expect("runtime in the namespace");
        (ids, port, server)
    };
    assert!(ids.iter().all(|&id| id == ns_id), "{ids:?} vs {ns_id}");
    let out = ns.run(
        "bash",
        &[
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{tokio_port}; head -n1 <&3"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from inside\n");
    server.join().unwrap();
}

/// Poll a non-blocking listener for a connection.
fn accept_within(listener: &std::net::TcpListener, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn smtpd_queues_a_message_for_a_deferred_transport() {
    let Some(ns) = Netns::for_test("tlspd-pf", TOOLS) else {
        return;
    };
    let pf = Postfix::start(&ns, PostfixOptions::default().defer("smtp"));

    let s = pf.send(&Mail::to(&["user@dest.example"]).header("X-Test: queued"));
    assert!(s.status.success(), "swaks: {}\n{}", s.status, s.transcript);
    let rcpt = s.rcpt_reply("user@dest.example");
    assert!(rcpt.starts_with("250 "), "RCPT: {rcpt}\n{}", s.transcript);
    assert!(s.data_reply().starts_with("354 "), "{}", s.transcript);
    assert!(
        s.end_of_data_reply().starts_with("250 "),
        "{}",
        s.transcript
    );
    let id = s.queue_id().expect("queued as ID");

    // Queued and deferred ("deferred transport"), not delivered. The
    // queue is listed file by file: while qmgr moves the message, one
    // listing can show it in both queues, so wait for one showing it only
    // in the deferred queue.
    let q = pf.wait_for_queue(
        |q| q.len() == 1 && q[0].queue_id == id && q[0].queue_name == "deferred",
        WAIT,
    );
    assert_eq!(q.len(), 1, "{q:#?}");
    assert_eq!(q[0].sender, SENDER);
    assert_eq!(q[0].recipient_addresses(), ["user@dest.example"]);
    assert_eq!(q[0].recipients[0].delay_reason, "deferred transport");

    pf.wait_for_log(
        |l| l.contains(&format!("{id}: to=<user@dest.example>")) && l.contains("status=deferred"),
        WAIT,
    );
    assert_eq!(pf.queue_ids_from_log(), std::slice::from_ref(&id));
    let log = pf.log_for(&id);
    assert!(
        log.iter()
            .any(|l| l.contains("client=localhost[127.0.0.1]")),
        "{log:#?}"
    );
}

/// What the in-test policy server was asked: each request's attributes.
type Requests = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// A tiny policy delegation server on a tokio runtime inside a namespace:
/// `DEFER_IF_PERMIT 4.7.10 test says no` for `no@dest.example`, `DUNNO`
/// otherwise. Stops when dropped.
struct PolicyServer {
    port: u16,
    requests: Requests,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PolicyServer {
    fn start(ns: &Netns) -> PolicyServer {
        let requests = Requests::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let reqs = requests.clone();
        let thread = ns.spawn_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                let serve = async {
                    loop {
                        let (sock, _) = listener.accept().await.unwrap();
                        tokio::spawn(policy_connection(sock, reqs.clone()));
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    _ = serve => {}
                }
            });
        });
        let port = port_rx.recv_timeout(WAIT).expect("policy server port");
        PolicyServer {
            port,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<BTreeMap<String, String>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn policy_connection(sock: tokio::net::TcpStream, requests: Requests) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut attrs = BTreeMap::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if !line.is_empty() {
            let (name, value) = line.split_once('=').unwrap_or((&line, ""));
            attrs.insert(name.to_string(), value.to_string());
            continue;
        }
        let no = attrs.get("protocol_state").is_some_and(|s| s == "RCPT")
            && attrs
                .get("recipient")
                .is_some_and(|r| r == "no@dest.example");
        let action = if no {
            "DEFER_IF_PERMIT 4.7.10 test says no"
        } else {
            "DUNNO"
        };
        requests.lock().unwrap().push(std::mem::take(&mut attrs));
        if w.write_all(format!("action={action}\n\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn smtpd_asks_a_policy_server_running_in_the_test() {
    let Some(ns) = Netns::for_test("tlspd-pf", TOOLS) else {
        return;
    };
    let policy = PolicyServer::start(&ns);
    let check = format!("check_policy_service inet:127.0.0.1:{}", policy.port);
    let pf = Postfix::start(
        &ns,
        PostfixOptions::default()
            .defer("smtp")
            .set(
                "smtpd_recipient_restrictions",
                format!("{check}, permit_mynetworks, reject"),
            )
            .set("smtpd_end_of_data_restrictions", check.clone()),
    );

    // Accepted, refused, accepted: queue_id at the second accepted RCPT.
    let one = pf.send(&Mail::to(&[
        "a@dest.example",
        "no@dest.example",
        "b@dest.example",
    ]));
    assert!(one.status.success(), "{}", one.transcript);
    assert!(one.rcpt_reply("a@dest.example").starts_with("250 "));
    let refused = one.rcpt_reply("no@dest.example");
    assert!(
        refused.starts_with("450 4.7.10 ") && refused.contains("test says no"),
        "{refused}\n{}",
        one.transcript
    );
    assert!(one.rcpt_reply("b@dest.example").starts_with("250 "));
    assert!(one.data_reply().starts_with("354 "), "{}", one.transcript);
    let id_one = one.queue_id().expect("first message queued");
    let after_one = policy.requests().len();

    // Refused first, then accepted; and a single recipient.
    let two = pf.send(&Mail::to(&["no@dest.example", "c@dest.example"]));
    assert!(two.rcpt_reply("no@dest.example").starts_with("450 4.7.10 "));
    assert!(two.rcpt_reply("c@dest.example").starts_with("250 "));
    let id_two = two.queue_id().expect("second message queued");
    let after_two = policy.requests().len();
    let three = pf.send(&Mail::to(&["d@dest.example"]));
    let id_three = three.queue_id().expect("third message queued");

    let reqs = policy.requests();
    println!("policy requests, in order (attributes with a value):");
    for r in &reqs {
        let set: Vec<String> = r
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  {}", set.join(" "));
    }
    let names: Vec<&str> = reqs[0].keys().map(String::as_str).collect();
    println!("attribute names sent: {}", names.join(" "));

    let (m1, rest) = reqs.split_at(after_one);
    let (m2, m3) = rest.split_at(after_two - after_one);
    let states = |m: &[BTreeMap<String, String>]| -> Vec<String> {
        m.iter().map(|r| r["protocol_state"].clone()).collect()
    };
    assert_eq!(states(m1), ["RCPT", "RCPT", "RCPT", "END-OF-MESSAGE"]);
    assert_eq!(states(m2), ["RCPT", "RCPT", "END-OF-MESSAGE"]);
    assert_eq!(states(m3), ["RCPT", "END-OF-MESSAGE"]);
    for r in &reqs {
        assert_eq!(r["request"], "smtpd_access_policy");
        assert_eq!(r["protocol_name"], "ESMTP");
        assert_eq!(r["client_address"], "127.0.0.1");
        assert_eq!(r["helo_name"], common::postfix::CLIENT_HELO);
        assert_eq!(r["sender"], SENDER);
        assert!(!r["instance"].is_empty(), "{r:?}");
    }

    // The queue file (and so the queue id) exists only once a recipient
    // has been accepted: not at the first RCPT, nor after a refused one.
    assert_eq!(m1[0]["queue_id"], "", "first RCPT");
    assert_eq!(m1[1]["queue_id"], id_one, "RCPT after an accepted one");
    assert_eq!(m1[2]["queue_id"], id_one);
    assert_eq!(m2[0]["queue_id"], "", "refused first RCPT");
    assert_eq!(m2[1]["queue_id"], "", "RCPT after a refused one");
    assert_eq!(m3[0]["queue_id"], "");
    // End of message: the queue id, the accepted recipients' count and,
    // only for a single recipient, the recipient.
    let eom = |m: &[BTreeMap<String, String>]| m.last().unwrap().clone();
    assert_eq!(eom(m1)["queue_id"], id_one);
    assert_eq!(eom(m1)["recipient_count"], "2");
    assert_eq!(eom(m1)["recipient"], "");
    assert_eq!(eom(m2)["queue_id"], id_two);
    assert_eq!(eom(m2)["recipient_count"], "1");
    assert_eq!(eom(m2)["recipient"], "c@dest.example");
    assert_eq!(eom(m3)["queue_id"], id_three);
    assert_eq!(eom(m3)["recipient"], "d@dest.example");
    assert_ne!(eom(m1)["size"], "0");
    // `instance` is the same for every request about one message and
    // differs between messages.
    for m in [m1, m2, m3] {
        assert!(
            m.iter().all(|r| r["instance"] == m[0]["instance"]),
            "{m:#?}"
        );
    }
    assert_ne!(m1[0]["instance"], m2[0]["instance"]);
    assert_ne!(m2[0]["instance"], m3[0]["instance"]);

    let q = pf.wait_for_queue(|q| q.len() == 3, WAIT);
    let rcpts = |id: &str| {
        let m = q.iter().find(|m| m.queue_id == id).expect("queued");
        let mut r = m.recipient_addresses();
        r.sort();
        r.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(rcpts(&id_one), ["a@dest.example", "b@dest.example"]);
    assert_eq!(rcpts(&id_two), ["c@dest.example"]);
}

#[test]
fn namespaces_processes_and_directories_are_removed() {
    let Some(ns) = Netns::for_test("tlspd-pfclean", TOOLS) else {
        return;
    };

    // Normal end of a test.
    let pf = Postfix::start(&ns, PostfixOptions::default().defer("smtp"));
    assert!(pf.send(&Mail::to(&["user@dest.example"])).status.success());
    let mut stray = ns
        .cmd("sleep")
        .arg("600")
        .spawn()
        .expect("start a process in the namespace");
    // `ip netns exec` joins the namespace a moment after it is spawned.
    let stray_pid = i32::try_from(stray.id()).unwrap();
    let deadline = Instant::now() + WAIT;
    let left = loop {
        let left = Leftovers::of(&pf);
        if left.pids.contains(&stray_pid) || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(left.pids.contains(&left.master), "{left:?}");
    assert!(left.pids.contains(&stray_pid), "{left:?}");
    let t = Instant::now();
    drop(pf);
    drop(ns);
    eprintln!("stop and delete took {:.2?}", t.elapsed());
    left.assert_gone();
    assert!(stray.wait().unwrap().code().is_none(), "killed by a signal");

    // A test that panics while it has a namespace and a Postfix.
    let seen: Arc<Mutex<Option<Leftovers>>> = Arc::default();
    let s = seen.clone();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let ns = Netns::new("tlspd-pfclean");
        let pf = Postfix::start(&ns, PostfixOptions::default());
        *s.lock().unwrap() = Some(Leftovers::of(&pf));
        panic!("deliberate failure with Postfix running");
    }));
    assert!(failed.is_err());
    let left = seen.lock().unwrap().take().expect("the closure ran");
    left.assert_gone();

    let ours: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&format!("tlspd-pfclean-{}-", std::process::id())))
        .collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");
}

/// What an instance leaves behind if cleanup fails.
#[derive(Debug)]
struct Leftovers {
    netns: String,
    master: i32,
    pids: Vec<i32>,
    dir: PathBuf,
}

impl Leftovers {
    fn of(pf: &Postfix) -> Leftovers {
        Leftovers {
            netns: pf.netns().name().to_string(),
            master: pf.master_pid().expect("running"),
            pids: pf.netns().pids(),
            dir: pf.dir().to_path_buf(),
        }
    }

    fn assert_gone(&self) {
        assert!(
            !netns::list().contains(&self.netns),
            "namespace {} still exists",
            self.netns
        );
        assert!(!Path::new("/var/run/netns").join(&self.netns).exists());
        assert!(!Path::new("/etc/netns").join(&self.netns).exists());
        assert!(!self.dir.exists(), "{} still exists", self.dir.display());
        let alive: Vec<i32> = self
            .pids
            .iter()
            .copied()
            .filter(|&p| process_alive(p))
            .collect();
        assert!(alive.is_empty(), "still running: {alive:?}");
        assert!(!process_alive(self.master));
        let _ = io::stderr().flush();
    }
}
