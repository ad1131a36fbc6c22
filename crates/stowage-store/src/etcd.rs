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
    prefix_end, stale, Action, Change, Collection, Durability, LeaseId, Listed, Op, Precondition,
    Read, Revision, Store, StoreError, Versioned, Watcher,
};
use tokio::runtime::Runtime;

/// Keys a list asks for in its first request. A volume record is a few
/// hundred bytes, so 512 of them fit in an answer with room to spare;
/// later pages are sized from what the earlier ones weighed.
const PAGE: i64 = 512;
/// What a page of values should weigh: every page is a round trip to a
/// quorum, so small records come in few of them.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// The most keys a page of values asks for.
const MAX_PAGE: i64 = 16_384;
/// Keys alone are small: a list of revisions asks for more at once.
const KEYS_PAGE: i64 = 8192;
/// Largest answer this client accepts (etcd's largest value is 1.5 MiB,
/// so one page of the biggest records still fits).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// How long a request that etcd refused before proposing it waits before
/// it is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a read that may be stale waits for the quorum before it is
/// answered from a member's own copy: past a leader election, and past a
/// first try at a member that is down.
const STALE_AFTER: Duration = Duration::from_secs(1);

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
    /// Clients that a member without a leader still answers, from its own
    /// copy: for reads that may be stale (see [`stale`]).
    stale: Client,
    stale_kv: KvClient,
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
        let stale_options = options.clone().with_require_leader(false);
        let (client, stale) = runtime.block_on(async move {
            let stale = Client::connect(endpoints.clone(), Some(stale_options));
            let stale = tokio::time::timeout(timeout, stale)
                .await
                .map_err(silent)?
                .map_err(|e| failed(e, Request::Read))?;
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
            Ok::<_, StoreError>((client, stale))
        })?;
        Ok(EtcdStore {
            runtime: Some(runtime),
            kv: client.kv_client().max_decoding_message_size(MAX_ANSWER),
            client,
            stale_kv: stale.kv_client().max_decoding_message_size(MAX_ANSWER),
            stale,
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
        what: &'static str,
        request: Request,
        client: &C,
        f: impl Fn(C) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        C: Clone + Send + 'static,
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.run_within(what, request, client, self.timeout, f)
    }

    /// A read: linearizable, or, when the request allows reads that may
    /// be stale ([`stale::allowed`]) and the quorum has not answered
    /// within [`STALE_AFTER`], serializable, from a member's own copy.
    /// `f` builds the request, serializable when its flag says so.
    fn read_run<C, T, F>(
        &self,
        what: &'static str,
        (client, stale_client): (&C, &C),
        f: impl Fn(C, bool) -> F + Clone + Send + 'static,
    ) -> Result<T, StoreError>
    where
        C: Clone + Send + 'static,
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        if !stale::allowed() {
            let f = f.clone();
            return self.run(what, Request::Read, client, move |c| f(c, false));
        }
        let g = f.clone();
        // Once a read of this request went stale, the others do at once.
        let wait = if stale::was_served() {
            Duration::ZERO
        } else {
            STALE_AFTER
        };
        let current = self.run_within(what, Request::Read, client, wait, move |c| g(c, false));
        match current {
            Err(StoreError::Unavailable(why)) => {
                let answer = self.run(what, Request::Read, stale_client, move |c| f(c, true));
                if answer.is_ok() {
                    tracing::debug!(
                        what,
                        reason = why,
                        "answered from an etcd member's own copy"
                    );
                    stale::served();
                }
                answer
            }
            other => other,
        }
    }

    fn run_within<C, T, F>(
        &self,
        what: &'static str,
        request: Request,
        client: &C,
        timeout: Duration,
        f: impl Fn(C) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        C: Clone + Send + 'static,
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let client = client.clone();
        let started = std::time::Instant::now();
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
        let out = rx
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Backend("the etcd client stopped".into())));
        tracing::trace!(what, elapsed = ?started.elapsed(), ok = out.is_ok(), "etcd request");
        out
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

    /// The first key under `prefix` in a collection, and the first key
    /// after them.
    fn prefix_range(&self, collection: Collection, prefix: &str) -> (String, String) {
        let (start, end) = self.range(collection);
        let end = match prefix_end(prefix) {
            Some(prefix_end) => format!("{start}{prefix_end}"),
            None => end,
        };
        (format!("{start}{prefix}"), end)
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
        let (mut from, end) = self.prefix_range(collection, prefix);
        let mut revision = 0i64;
        let mut items = Vec::new();
        let (mut limit, mut weighed) = (if keys_only { KEYS_PAGE } else { PAGE }, 0usize);
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if keys_only {
                options = options.with_keys_only();
            }
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let key = from.clone();
            let clients = (&self.kv, &self.stale_kv);
            let mut page = self.read_run("range", clients, move |mut kv, stale| {
                let key = key.clone();
                let options = match stale {
                    true => options.clone().with_serializable(),
                    false => options.clone(),
                };
                async move { kv.get(key, Some(options)).await }
            })?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let kvs = page.take_kvs();
            if !keys_only && !kvs.is_empty() {
                weighed += kvs
                    .iter()
                    .map(|kv| kv.key().len() + kv.value().len())
                    .sum::<usize>();
                let per_key = weighed.div_ceil(items.len() + kvs.len()).max(1);
                limit = ((PAGE_BYTES / per_key) as i64).clamp(1, MAX_PAGE);
            }
            for kv in kvs {
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
        let clients = (&self.client, &self.stale);
        let got = self.read_run("revision", clients, move |mut c, stale| {
            let key = key.clone();
            let options = GetOptions::new().with_count_only();
            let options = if stale {
                options.with_serializable()
            } else {
                options
            };
            async move { c.get(key, Some(options)).await }
        })?;
        Ok(revision_of(got.header()))
    }

    fn get(&self, collection: Collection, key: &str) -> Result<Option<Versioned>, StoreError> {
        let full = self.key(collection, key);
        let clients = (&self.client, &self.stale);
        let mut got = self.read_run("get", clients, move |mut c, stale| {
            let full = full.clone();
            let options = stale.then(|| GetOptions::new().with_serializable());
            async move { c.get(full, options).await }
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

    /// One read-only transaction: etcd answers it at one revision. A
    /// prefix is read in one answer, without pages: for the few keys of
    /// one volume.
    fn read(&self, reads: &[Read<'_>]) -> Result<Vec<Vec<Versioned>>, StoreError> {
        let ranges: Vec<(String, GetOptions)> = (reads.iter())
            .map(|r| match *r {
                Read::Key(c, key) => (self.key(c, key), GetOptions::new()),
                Read::Prefix(c, prefix) => {
                    let (from, end) = self.prefix_range(c, prefix);
                    (from, GetOptions::new().with_range(end))
                }
            })
            .collect();
        let clients = (&self.client, &self.stale);
        let answer = self.read_run("read", clients, move |mut c, stale| {
            // etcd answers a transaction of serializable reads alone as
            // serializable.
            let ops = (ranges.iter()).map(|(key, options)| {
                let options = options.clone();
                let options = if stale {
                    options.with_serializable()
                } else {
                    options
                };
                TxnOp::get(key.clone(), Some(options))
            });
            let txn = Txn::new().and_then(ops.collect::<Vec<_>>());
            async move { c.txn(txn).await }
        })?;
        let mut out = Vec::with_capacity(reads.len());
        for (r, response) in reads.iter().zip(answer.op_responses()) {
            let (Read::Key(c, _) | Read::Prefix(c, _)) = *r;
            let etcd_client::TxnOpResponse::Get(got) = response else {
                return Err(StoreError::Backend("a read answered as a write".into()));
            };
            out.push(
                (got.kvs().iter())
                    .map(|kv| {
                        Ok(Versioned {
                            key: self.strip(c, kv.key())?,
                            revision: kv.mod_revision() as Revision,
                            value: kv.value().to_vec(),
                        })
                    })
                    .collect::<Result<_, StoreError>>()?,
            );
        }
        if out.len() != reads.len() {
            return Err(StoreError::Backend(
                "etcd answered fewer reads than asked".into(),
            ));
        }
        Ok(out)
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
        let answer = self.run("txn", Request::Write, &self.client, move |mut c| {
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
        let stream = self.run("watch", Request::Read, &self.client, move |mut c| {
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
        match self.run("compact", Request::Write, &self.client, move |mut c| {
            let options = options.clone();
            async move { c.compact(revision as i64, Some(options)).await }
        }) {
            Err(StoreError::Backend(m)) if m.contains("compacted") => Ok(()),
            other => other.map(drop),
        }
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let granted = self.run(
            "grant",
            Request::Write,
            &self.client,
            move |mut c| async move { c.lease_grant(seconds, None).await },
        )?;
        Ok(granted.id())
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let answer = self.run(
            "keep-alive",
            Request::Write,
            &self.client,
            move |mut c| async move {
                let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                answers.message().await
            },
        );
        match lease_ended(answer, lease)? {
            Some(a) if a.ttl() > 0 => Ok(Duration::from_secs(a.ttl() as u64)),
            _ => Err(StoreError::LeaseExpired(lease)),
        }
    }

    fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let revoked = self.run(
            "revoke",
            Request::Write,
            &self.client,
            move |mut c| async move { c.lease_revoke(lease).await },
        );
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
