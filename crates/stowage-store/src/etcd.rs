//! The cluster store: etcd, through the `etcd-client` crate. Every key
//! lives under a prefix (`/stowage/` by default), as
//! `<prefix><collection>/<key>`; a revision is etcd's own. Every write
//! is committed by a quorum, so [`Durability`] asks nothing more here.
//!
//! The [`Store`] trait is synchronous (the service runs on blocking
//! threads); the store runs etcd's async client on a small runtime of its
//! own and waits for each answer, with a deadline on every request.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, EventType,
    GetOptions, Identity, KvClient, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use stowage_core::store::{
    prefix_end, Action, Change, Collection, Durability, LeaseId, Listed, Op, Precondition,
    Revision, Store, StoreError, Versioned, Watcher,
};
use tokio::runtime::Runtime;

/// Keys a list asks for in one request. etcd refuses a request over
/// 1.5 MiB and a gRPC client an answer over 4 MiB; a volume record is a
/// few hundred bytes, so 512 of them fit with room to spare.
const PAGE: i64 = 512;
/// Keys alone are small: a list of revisions asks for more at once.
const KEYS_PAGE: i64 = 8192;
/// Largest answer this client accepts (etcd's largest value is 1.5 MiB,
/// so one page of the biggest records still fits).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// How long a request that etcd refused before proposing it waits before
/// it is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    /// Prepended to every key: several Stowage clusters may share an etcd.
    pub prefix: String,
    /// The deadline of every request: a write that misses it is
    /// indeterminate, a read unavailable.
    pub timeout: Duration,
}

/// Client TLS: the CA that signed etcd's certificate, and this client's
/// own certificate and key when etcd asks for one.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    /// Endpoints from `etcd://host:port[,host:port...]`, or from a list of
    /// URLs: `etcd://` becomes `https://` when TLS is configured.
    pub fn parse_endpoints(url: &str, tls: bool) -> Result<Vec<String>, String> {
        let scheme = if tls { "https" } else { "http" };
        let hosts = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("{url:?}: an etcd store is named etcd://HOST:PORT[,HOST:PORT...]")
        })?;
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim().trim_end_matches('/'))
            .map(|h| {
                let (host, port) = h
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{h:?}: an etcd endpoint is HOST:PORT"))?;
                port.parse::<u16>()
                    .map_err(|_| format!("{h:?}: {port:?} is not a port"))?;
                if host.is_empty() || host.contains(['/', '@', '?', '#']) {
                    return Err(format!("{h:?}: {host:?} is not a host"));
                }
                Ok(format!("{scheme}://{h}"))
            })
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(format!("{url:?} names no etcd endpoint"));
        }
        Ok(endpoints)
    }
}

pub struct EtcdStore {
    /// Taken only by `drop`.
    runtime: Option<Runtime>,
    client: Client,
    /// For lists: it takes answers larger than gRPC's default 4 MiB.
    kv: KvClient,
    prefix: String,
    timeout: Duration,
}

/// What a failed request could have done: a read changed nothing, a
/// write may have committed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Request {
    Read,
    Write,
}

impl Request {
    /// A request that got no clear answer: a read did nothing, a write
    /// may have committed.
    fn unsure(self, what: String) -> StoreError {
        match self {
            Request::Read => StoreError::Unavailable(what),
            Request::Write => StoreError::Indeterminate(what),
        }
    }
}

fn failed(e: etcd_client::Error, request: Request) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let unsure = |what: String| request.unsure(what);
    match e {
        E::GRpcStatus(status) => {
            let message = status.message().to_string();
            match status.code() {
                // No leader, or no quorum: etcd refused before proposing.
                Code::Unavailable if !message.contains("timed out") => {
                    StoreError::Unavailable(message)
                }
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    unsure(message)
                }
                Code::ResourceExhausted => StoreError::Full(message),
                _ => StoreError::Backend(format!("{:?}: {message}", status.code())),
            }
        }
        E::TransportError(e) => unsure(format!("cannot reach etcd: {e}")),
        E::IoError(e) => unsure(format!("cannot reach etcd: {e}")),
        other => StoreError::Backend(other.to_string()),
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision()) as Revision
}

impl EtcdStore {
    /// Connects to etcd; fails if no endpoint answers within the timeout.
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the etcd client: {e}")))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_timeout(config.timeout)
            // A connection to a member that went silent (its host cut
            // off) is dropped within 3 s, and its requests go elsewhere.
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum refuses at once, instead of
            // holding the request until the deadline.
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let endpoints = config.endpoints.clone();
        let timeout = config.timeout;
        let silent = |_| StoreError::Unavailable("no etcd endpoint answered".into());
        let client = runtime.block_on(async move {
            let connect = Client::connect(endpoints, Some(options));
            let mut client = tokio::time::timeout(timeout, connect)
                .await
                .map_err(silent)?
                .map_err(|e| failed(e, Request::Read))?;
            // The channel connects lazily: one read proves etcd answers.
            tokio::time::timeout(timeout, client.status())
                .await
                .map_err(silent)?
                .map_err(|e| failed(e, Request::Read))?;
            Ok::<_, StoreError>(client)
        })?;
        Ok(EtcdStore {
            runtime: Some(runtime),
            kv: client.kv_client().max_decoding_message_size(MAX_ANSWER),
            client,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
        })
    }

    /// Runs `f` with a clone of `client` on the store's runtime, within
    /// the deadline, from any thread (an async one included).
    ///
    /// A request that etcd refused before proposing it (an endpoint that
    /// refuses connections, a member without a leader) did nothing, so it
    /// is tried again until the deadline: the client spreads requests over
    /// every endpoint and sends some to a member that is down, where
    /// etcd's own clients would go to the next one.
    fn run<C, T, F>(
        &self,
        request: Request,
        client: &C,
        f: impl Fn(C) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        C: Clone + Send + 'static,
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let timeout = self.timeout;
        let client = client.clone();
        self.runtime().spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let out = loop {
                match tokio::time::timeout_at(deadline, f(client.clone())).await {
                    Ok(Ok(answer)) => break Ok(answer),
                    Ok(Err(e)) => match failed(e, request) {
                        StoreError::Unavailable(_)
                            if tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
                        {
                            tokio::time::sleep(RETRY_PAUSE).await
                        }
                        other => break Err(other),
                    },
                    Err(_) => break Err(request.unsure(format!("no answer within {timeout:?}"))),
                }
            };
            let _ = tx.send(out);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Backend("the etcd client stopped".into())))
    }

    fn runtime(&self) -> &Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    fn key(&self, collection: Collection, key: &str) -> String {
        format!("{}{}/{key}", self.prefix, collection.as_str())
    }

    /// The first key of a collection, and the first key after it.
    fn range(&self, collection: Collection) -> (String, String) {
        let start = format!("{}{}/", self.prefix, collection.as_str());
        // '0' follows '/': every key of the collection sorts before it.
        let end = format!("{}{}0", self.prefix, collection.as_str());
        (start, end)
    }

    fn strip(&self, collection: Collection, key: &[u8]) -> Result<String, StoreError> {
        let (start, _) = self.range(collection);
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(start.as_str()))
            .map(str::to_string)
            .ok_or_else(|| StoreError::Corrupt(format!("a key outside {start}")))
    }

    /// Every key of `collection` at one revision, a page at a time.
    fn list_pages(
        &self,
        collection: Collection,
        prefix: &str,
        keys_only: bool,
    ) -> Result<Listed<Versioned>, StoreError> {
        let (start, mut end) = self.range(collection);
        let mut from = format!("{start}{prefix}");
        if let Some(prefix_end) = prefix_end(prefix) {
            end = format!("{start}{prefix_end}");
        }
        let mut revision = 0i64;
        let mut items = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(if keys_only { KEYS_PAGE } else { PAGE });
            if keys_only {
                options = options.with_keys_only();
            }
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let key = from.clone();
            let mut page = self.run(Request::Read, &self.kv, move |mut kv| {
                let (key, options) = (key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            for kv in page.take_kvs() {
                items.push(Versioned {
                    key: self.strip(collection, kv.key())?,
                    revision: kv.mod_revision() as Revision,
                    value: kv.value().to_vec(),
                });
            }
            match (more, items.last()) {
                (true, Some(last)) => from = format!("{}\0", self.key(collection, &last.key)),
                _ => break,
            }
        }
        Ok(Listed {
            items,
            revision: revision as Revision,
        })
    }
}

impl Drop for EtcdStore {
    /// Without waiting for the client's tasks: the store may be dropped on
    /// an async thread, where a runtime cannot block.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| StoreError::Backend(format!("reading {}: {e}", p.display())))
    };
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Backend(
                "a client certificate needs its key, and a key its certificate".into(),
            ))
        }
    }
    Ok(options)
}

impl Store for EtcdStore {
    fn revision(&self) -> Result<Revision, StoreError> {
        let key = self.prefix.clone();
        let got = self.run(Request::Read, &self.client, move |mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        })?;
        Ok(revision_of(got.header()))
    }

    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError> {
        let full = self.key(collection, key);
        let mut got = self.run(Request::Read, &self.client, move |mut c| {
            let full = full.clone();
            async move { c.get(full, None).await }
        })?;
        Ok(got.take_kvs().into_iter().next().map(|kv| Versioned {
            key: key.to_string(),
            revision: kv.mod_revision() as Revision,
            value: kv.value().to_vec(),
        }))
    }

    fn list_prefix(
        &self,
        collection: Collection,
        prefix: &str,
    ) -> Result<Listed<Versioned>, StoreError> {
        self.list_pages(collection, prefix, false)
    }

    fn list_revisions(
        &self,
        collection: Collection,
    ) -> Result<Listed<(String, Revision)>, StoreError> {
        let listed = self.list_pages(collection, "", true)?;
        Ok(Listed {
            items: (listed.items.into_iter())
                .map(|v| (v.key, v.revision))
                .collect(),
            revision: listed.revision,
        })
    }

    fn commit(&self, ops: Vec<Op>, _: Durability) -> Result<Revision, StoreError> {
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for op in &ops {
            let key = self.key(op.collection, &op.key);
            match op.expect {
                Precondition::Absent => {
                    compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0))
                }
                Precondition::Revision(r) => compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    r as i64,
                )),
                Precondition::Any => {}
            }
            if op.expect != Precondition::Any {
                reads.push(TxnOp::get(
                    key.clone(),
                    Some(GetOptions::new().with_keys_only()),
                ));
            }
            match &op.action {
                Action::Put { value, lease } => {
                    let options = lease.map(|l| PutOptions::new().with_lease(l));
                    writes.push(TxnOp::put(key, value.clone(), options));
                }
                Action::Delete => writes.push(TxnOp::delete(key, None)),
                Action::Check => {}
            }
        }
        let lease = ops.iter().find_map(|op| match op.action {
            Action::Put { lease, .. } => lease,
            _ => None,
        });
        // On failure, the keys' revisions now say which precondition failed.
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let answer = self.run(Request::Write, &self.client, move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        });
        let answer = match lease {
            Some(lease) => lease_ended(answer, lease)?,
            None => answer?,
        };
        if answer.succeeded() {
            return Ok(revision_of(answer.header()));
        }
        let mut found = answer.op_responses().into_iter().map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        for op in ops.iter().filter(|op| op.expect != Precondition::Any) {
            let current = found.next().flatten().map(|r| r as Revision);
            if !op.expect.holds(current) {
                return Err(StoreError::Conflict {
                    key: op.key.clone(),
                });
            }
        }
        // Changed back between the compare and the reads.
        Err(StoreError::Conflict {
            key: ops.first().map(|op| op.key.clone()).unwrap_or_default(),
        })
    }

    fn watch(
        &self,
        collection: Collection,
        after: Revision,
    ) -> Result<Box<dyn Watcher>, StoreError> {
        let (start, end) = self.range(collection);
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(after as i64 + 1);
        let stream = self.run(Request::Read, &self.client, move |mut c| {
            let (start, options) = (start.clone(), options.clone());
            async move { c.watch(start, Some(options)).await }
        })?;
        let (tx, rx) = mpsc::channel();
        let prefix = self.range(collection).0;
        let task = self.runtime().spawn(async move {
            let (_requests, mut responses) = stream.split();
            loop {
                let batch = match responses.message().await {
                    Ok(Some(answer)) => changes_of(&prefix, after, &answer),
                    Ok(None) => Err(StoreError::Unavailable("etcd ended the watch".into())),
                    Err(e) => Err(failed(e, Request::Read)),
                };
                // The answer that confirms the watch, and progress
                // notices, carry no change.
                if batch.as_ref().is_ok_and(Vec::is_empty) {
                    continue;
                }
                let done = batch.is_err();
                if tx.send(batch).is_err() || done {
                    return;
                }
            }
        });
        Ok(Box::new(EtcdWatcher { rx, task }))
    }

    fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let options = CompactionOptions::new().with_physical();
        match self.run(Request::Write, &self.client, move |mut c| {
            let options = options.clone();
            async move { c.compact(revision as i64, Some(options)).await }
        }) {
            Err(StoreError::Backend(m)) if m.contains("compacted") => Ok(()),
            other => other.map(drop),
        }
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let granted = self.run(Request::Write, &self.client, move |mut c| async move {
            c.lease_grant(seconds, None).await
        })?;
        Ok(granted.id())
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let answer = self.run(Request::Write, &self.client, move |mut c| async move {
            let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            answers.message().await
        });
        match lease_ended(answer, lease)? {
            Some(a) if a.ttl() > 0 => Ok(Duration::from_secs(a.ttl() as u64)),
            _ => Err(StoreError::LeaseExpired(lease)),
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let revoked = self.run(Request::Write, &self.client, move |mut c| async move {
            c.lease_revoke(lease).await
        });
        match lease_ended(revoked, lease) {
            Err(StoreError::LeaseExpired(_)) => Ok(()),
            other => other.map(drop),
        }
    }
}

/// `LeaseExpired` for etcd's answer that it knows no such lease.
fn lease_ended<T>(result: Result<T, StoreError>, lease: LeaseId) -> Result<T, StoreError> {
    match result {
        Err(StoreError::Backend(m)) if m.contains("lease not found") => {
            Err(StoreError::LeaseExpired(lease))
        }
        other => other,
    }
}

/// The changes in one watch answer, or why the watch ended.
fn changes_of(
    prefix: &str,
    after: Revision,
    answer: &etcd_client::WatchResponse,
) -> Result<Vec<Change>, StoreError> {
    if answer.compact_revision() > 0 {
        return Err(StoreError::Compacted {
            requested: after,
            compacted: answer.compact_revision() as Revision,
        });
    }
    if answer.canceled() {
        return Err(StoreError::Unavailable(format!(
            "etcd cancelled the watch: {}",
            answer.cancel_reason()
        )));
    }
    let mut changes = Vec::new();
    for event in answer.events() {
        let Some(kv) = event.kv() else { continue };
        let key = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
            .ok_or_else(|| StoreError::Corrupt("a watched key outside its collection".into()))?
            .to_string();
        let revision = kv.mod_revision() as Revision;
        changes.push(match event.event_type() {
            EventType::Put => Change::Put(Versioned {
                key,
                value: kv.value().to_vec(),
                revision,
            }),
            EventType::Delete => Change::Delete { key, revision },
        });
    }
    Ok(changes)
}

struct EtcdWatcher {
    rx: mpsc::Receiver<Result<Vec<Change>, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher for EtcdWatcher {
    fn next(&mut self, timeout: Duration) -> Result<Vec<Change>, StoreError> {
        let mut out = match self.rx.recv_timeout(timeout) {
            Ok(batch) => batch?,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(Vec::new()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StoreError::Unavailable("the watch has ended".into()))
            }
        };
        // Whatever else has arrived comes along.
        while let Ok(batch) = self.rx.try_recv() {
            out.extend(batch?);
        }
        Ok(out)
    }
}

impl Drop for EtcdWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed_from_an_etcd_url() {
        assert_eq!(
            EtcdConfig::parse_endpoints("etcd://10.0.0.1:2379,10.0.0.2:2379", false).unwrap(),
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(
            EtcdConfig::parse_endpoints("etcd://e1:2379", true).unwrap(),
            ["https://e1:2379"]
        );
        for bad in [
            "http://e1:2379",
            "etcd://",
            "etcd://e1",
            "etcd://e1:99999",
            "etcd://user@e1:2379",
            "etcd://:2379",
        ] {
            assert!(EtcdConfig::parse_endpoints(bad, false).is_err(), "{bad}");
        }
    }
}

/// The conformance suite and the failures, against a real etcd.
#[cfg(test)]
mod on_etcd {
    use super::*;
    use stowage_testkit::etcd::{Certs, Etcd};

    fn config(etcd: &Etcd, tls: Option<EtcdTls>) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![etcd.url()],
            tls,
            prefix: "/stowage-test/".into(),
            timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn conforms() {
        let etcd = Etcd::start();
        let store = EtcdStore::connect(&config(&etcd, None)).unwrap();
        stowage_core::store::conformance::run(&store);
    }

    #[test]
    fn two_prefixes_share_an_etcd_apart() {
        let etcd = Etcd::start();
        let a = EtcdStore::connect(&config(&etcd, None)).unwrap();
        let b = EtcdStore::connect(&EtcdConfig {
            prefix: "/other/".into(),
            ..config(&etcd, None)
        })
        .unwrap();
        a.put(Collection::Volumes, "x", b"1", Precondition::Absent)
            .unwrap();
        assert!(b.list(Collection::Volumes).unwrap().items.is_empty());
        assert!(b.get(Collection::Volumes, "x").unwrap().is_none());
    }

    #[test]
    fn tls_with_a_client_certificate() {
        let certs = Certs::make(&["127.0.0.1"]);
        let etcd = Etcd::start_tls(&certs);
        let tls = EtcdTls {
            ca: certs.ca.clone(),
            cert: Some(certs.client_cert.clone()),
            key: Some(certs.client_key.clone()),
        };
        let store = EtcdStore::connect(&config(&etcd, Some(tls.clone()))).unwrap();
        let r = store
            .put(Collection::Volumes, "tls", b"x", Precondition::Absent)
            .unwrap();
        assert_eq!(
            store
                .get(Collection::Volumes, "tls")
                .unwrap()
                .unwrap()
                .revision,
            r
        );
        // Without a client certificate, etcd refuses the connection.
        let anonymous = EtcdTls {
            cert: None,
            key: None,
            ..tls
        };
        assert!(EtcdStore::connect(&config(&etcd, Some(anonymous))).is_err());
        // Without TLS at all, too.
        assert!(EtcdStore::connect(&EtcdConfig {
            endpoints: vec![format!("http://{}", etcd.endpoint)],
            ..config(&etcd, None)
        })
        .is_err());
    }

    #[test]
    fn a_stopped_etcd_is_unavailable_fast_and_a_write_is_never_called_failed() {
        let mut etcd = Etcd::start();
        let store = EtcdStore::connect(&config(&etcd, None)).unwrap();
        store
            .put(Collection::Volumes, "before", b"x", Precondition::Absent)
            .unwrap();
        etcd.kill();
        let started = std::time::Instant::now();
        match store.get(Collection::Volumes, "before") {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("a read with etcd gone: {other:?}"),
        }
        match store.put(Collection::Volumes, "after", b"y", Precondition::Absent) {
            Err(StoreError::Unavailable(_) | StoreError::Indeterminate(_)) => {}
            other => panic!("a write with etcd gone: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
    }
}
