//! A real etcd for tests: one member on loopback, with or without TLS,
//! on a temporary data directory, stopped and removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Certificates made for one test: a CA, a server certificate for the
/// addresses given, and a client certificate, all signed by the CA.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// Makes them with `openssl`, for a server reached at `ips`.
    pub fn make(ips: &[&str]) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("openssl (Debian openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &key[..],
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat()
            .into_iter()
            .chain(["-days", "2", "-subj", "/CN=stowage test CA"])
            .collect::<Vec<_>>(),
        );
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        for (name, usage, san) in [
            (
                "server",
                "serverAuth",
                format!("subjectAltName={}\n", sans.join(",")),
            ),
            ("client", "clientAuth", String::new()),
        ] {
            let (k, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            std::fs::write(p(&ext), format!("{san}extendedKeyUsage={usage}\n")).unwrap();
            let subject = format!("/CN=stowage test {name}");
            openssl(
                &[
                    &["req"],
                    &key[..],
                    &["-keyout", &k, "-out", &csr, "-subj", &subject],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Certs {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            _dir: dir,
        }
    }
}

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `HOST:PORT`, where clients reach it.
    pub endpoint: String,
    tls: bool,
    /// What the member runs in: empty, or `nsenter` into a test host.
    prefix: Vec<String>,
    /// Its arguments, kept to start it again after a kill.
    args: Vec<std::ffi::OsString>,
    /// The client certificate etcdctl checks its health with.
    client_tls: Vec<String>,
}

/// A port free on loopback now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Where one member listens and whom it starts a cluster with.
struct MemberPlan {
    name: String,
    client_url: String,
    peer_url: String,
    initial_cluster: String,
    prefix: Vec<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::launch(None)
    }

    /// A member that serves clients over TLS with `certs`, and asks them
    /// for a certificate signed by the same CA.
    pub fn start_tls(certs: &Certs) -> Etcd {
        Etcd::launch(Some(certs))
    }

    fn launch(certs: Option<&Certs>) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let scheme = if certs.is_some() { "https" } else { "http" };
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd = Etcd::spawn_member(
            MemberPlan {
                name: "test".into(),
                client_url: format!("{scheme}://127.0.0.1:{client}"),
                initial_cluster: format!("test={peer_url}"),
                peer_url,
                prefix: Vec::new(),
            },
            certs,
        );
        etcd.wait_healthy();
        etcd
    }

    /// One member on each of `hosts`, as one cluster; returns once every
    /// member is healthy.
    pub fn cluster(hosts: &[crate::netns::Host]) -> Vec<Etcd> {
        let peer_url = |h: &crate::netns::Host| format!("http://{}:2380", h.addr);
        let initial_cluster = (hosts.iter().enumerate())
            .map(|(i, h)| format!("m{i}={}", peer_url(h)))
            .collect::<Vec<_>>()
            .join(",");
        // All are started before any is waited for: none is healthy alone.
        let members: Vec<Etcd> = (hosts.iter().enumerate())
            .map(|(i, h)| {
                Etcd::spawn_member(
                    MemberPlan {
                        name: format!("m{i}"),
                        client_url: format!("http://{}:2379", h.addr),
                        peer_url: peer_url(h),
                        initial_cluster: initial_cluster.clone(),
                        prefix: h.prefix(),
                    },
                    None,
                )
            })
            .collect();
        for m in &members {
            m.wait_healthy();
        }
        members
    }

    fn spawn_member(plan: MemberPlan, certs: Option<&Certs>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<std::ffi::OsString> = vec!["--name".into(), plan.name.into()];
        args.extend(["--data-dir".into(), dir.path().join("data").into()]);
        for (flag, value) in [
            ("--listen-client-urls", &plan.client_url),
            ("--advertise-client-urls", &plan.client_url),
            ("--listen-peer-urls", &plan.peer_url),
            ("--initial-advertise-peer-urls", &plan.peer_url),
            ("--initial-cluster", &plan.initial_cluster),
        ] {
            args.extend([flag.into(), value.into()]);
        }
        args.extend(["--log-level".into(), "warn".into()]);
        let mut client_tls = Vec::new();
        if let Some(c) = certs {
            for (flag, path) in [
                ("--cert-file", &c.server_cert),
                ("--key-file", &c.server_key),
                ("--trusted-ca-file", &c.ca),
            ] {
                args.extend([flag.into(), path.into()]);
            }
            args.push("--client-cert-auth".into());
            client_tls = vec![
                format!("--cacert={}", c.ca.display()),
                format!("--cert={}", c.client_cert.display()),
                format!("--key={}", c.client_key.display()),
            ];
        }
        let endpoint = plan.client_url.split_once("://").unwrap().1.to_string();
        let mut etcd = Etcd {
            child: None,
            dir,
            endpoint,
            tls: certs.is_some(),
            prefix: plan.prefix,
            args,
            client_tls,
        };
        etcd.spawn();
        etcd
    }

    /// `program` as this member runs it: on its host, if it has one.
    fn command(&self, program: &str) -> Command {
        match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = self
            .command("etcd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server)");
        self.child = Some(child);
    }

    /// Starts a killed member again on its data, and waits until it is
    /// healthy (for a cluster's member: back in its quorum).
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    /// The URL of its client port.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .command("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.url(), "endpoint", "health"])
                .args(&self.client_tls)
                .stdin(Stdio::null())
                .output()
                .expect("etcdctl (Debian etcd-client)")
                .status
                .success();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it with SIGKILL, keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
