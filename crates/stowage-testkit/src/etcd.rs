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
    /// `127.0.0.1:PORT`, where clients reach it.
    pub endpoint: String,
    tls: bool,
}

/// A port free on loopback now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
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
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let scheme = if certs.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(["--log-level", "warn"]);
        if let Some(c) = certs {
            cmd.arg("--cert-file")
                .arg(&c.server_cert)
                .arg("--key-file")
                .arg(&c.server_key)
                .arg("--trusted-ca-file")
                .arg(&c.ca)
                .arg("--client-cert-auth");
        }
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server)");
        let etcd = Etcd {
            child: Some(child),
            dir,
            endpoint: format!("127.0.0.1:{client}"),
            tls: certs.is_some(),
        };
        etcd.wait_healthy(certs);
        etcd
    }

    /// The URL of its client port.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn wait_healthy(&self, certs: Option<&Certs>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut cmd = Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.url(), "endpoint", "health"]);
            if let Some(c) = certs {
                cmd.arg(format!("--cacert={}", c.ca.display()))
                    .arg(format!("--cert={}", c.client_cert.display()))
                    .arg(format!("--key={}", c.client_key.display()));
            }
            let ok = cmd
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
