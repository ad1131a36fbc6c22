//! The client commands: each turns arguments into REST calls and prints
//! the answer for a person (or as JSON).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::json;
use stowage_core::{CopyProgress, Node, NodeState, Snapshot, Volume, VolumeState, VolumeSummary};

use crate::cli::{
    Cli, Command, CreateArgs, Format, ListArgs, NodeCommand, SnapshotCommand, VolumeCommand,
};
use crate::client::{encode, Client};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Serve(args) = cli.command {
        init_logging();
        crate::daemon::serve(*args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::new(&cli.host)?;
    match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Version => version(&client).await,
        Command::Volume(cmd) => volume(&client, cmd).await,
        Command::Snapshot(cmd) => snapshot(&client, cmd).await,
        Command::Node(cmd) => node(&client, cmd).await,
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOWAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log that cannot be written (its disk full) must not stop an
        // operation: reporting that failure on stderr again would panic.
        .log_internal_errors(false)
        .init();
}

async fn version(client: &Client) -> Result<ExitCode> {
    println!("Client: stowage {}", env!("CARGO_PKG_VERSION"));
    let server: serde_json::Value = client.call(Method::GET, "/v1/version", None).await?;
    println!(
        "Daemon: stowage {} (API {})",
        server["version"].as_str().unwrap_or("?"),
        server["api_version"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

async fn volume(client: &Client, cmd: VolumeCommand) -> Result<ExitCode> {
    match cmd {
        VolumeCommand::Create(args) => create(client, *args).await,
        VolumeCommand::Ls(args) => list(client, args).await,
        VolumeCommand::Inspect { names } => inspect(client, names).await,
        VolumeCommand::Mount(a) => {
            let path = format!("/v1/volumes/{}/mount", encode(&a.name));
            let answer: serde_json::Value = client
                .call(Method::POST, &path, Some(json!({ "consumer": a.consumer })))
                .await?;
            println!("{}", answer["mountpoint"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Unmount(a) => {
            let path = format!("/v1/volumes/{}/unmount", encode(&a.name));
            client
                .call::<()>(Method::POST, &path, Some(json!({ "consumer": a.consumer })))
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Resize { name, size } => {
            let path = format!("/v1/volumes/{}/resize", encode(&name));
            let v: Volume = client
                .call(Method::POST, &path, Some(json!({ "size": size })))
                .await?;
            let bytes = v.size_bytes.unwrap_or_default();
            println!("{} {}", v.name, stowage_core::options::format_size(bytes));
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { force, names } => {
            let query = if force { "?force=true" } else { "" };
            remove_each(client, "/v1/volumes", query, names).await
        }
        VolumeCommand::Prune { force } => prune(client, force).await,
    }
}

async fn create(client: &Client, args: CreateArgs) -> Result<ExitCode> {
    let mut options = unique("option", args.opts)?;
    if let Some(spec) = &args.owner_from_image {
        if options.contains_key("owner") {
            bail!("give either -o owner= or --owner-from-image, not both");
        }
        let (image, path) = crate::engine::parse_image_path(spec)?;
        let host = args
            .engine_host
            .clone()
            .unwrap_or_else(|| crate::engine::default_host(args.engine));
        let (uid, gid) = crate::engine::image_path_owner(args.engine, &host, image, path).await?;
        eprintln!("{path} in {image} belongs to {uid}:{gid}");
        options.insert("owner".to_string(), format!("{uid}:{gid}"));
    }
    let labels = unique("label", args.labels)?;
    let node_selector = unique("node selector", args.node_selector)?;
    let body = json!({
        "name": args.name,
        "driver": args.driver,
        "options": options,
        "labels": labels,
        "from_snapshot": args.from_snapshot,
        "clone_of": args.clone_of,
        "node": args.node,
        "node_selector": node_selector,
        "access": args.access,
    });
    let copying = args.from_snapshot.is_some() || args.clone_of.is_some();
    let made = format!("/v1/volumes/{}", encode(&args.name));
    let progress = || async {
        let v: Volume = client.call(Method::GET, &made, None).await.ok()?;
        v.copy
    };
    let v: Volume = with_progress(copying, "copying", progress, async {
        client.call(Method::POST, "/v1/volumes", Some(body)).await
    })
    .await?;
    println!("{}", v.name);
    Ok(ExitCode::SUCCESS)
}

/// Options that may repeat; their values are joined with commas.
const REPEATABLE: &[&str] = &["uidmap", "gidmap"];

/// Refuses a key given twice with different values rather than silently
/// keeping one, except the repeatable map options, which accumulate.
fn unique(what: &str, pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in pairs {
        match map.get_mut(&k) {
            Some(old) if REPEATABLE.contains(&k.as_str()) => {
                old.push(',');
                old.push_str(&v);
            }
            Some(old) if *old != v => bail!("{what} {k} given twice ({old:?} and {v:?})"),
            Some(_) => {}
            None => {
                map.insert(k, v);
            }
        }
    }
    Ok(map)
}

async fn list(client: &Client, args: ListArgs) -> Result<ExitCode> {
    let query: Vec<String> = args
        .filters
        .iter()
        .map(|f| format!("filter={}", encode(f)))
        .collect();
    let path = |mut query: Vec<String>, summary: bool| {
        if summary {
            query.push("view=summary".into());
        }
        match query.is_empty() {
            true => "/v1/volumes".to_string(),
            false => format!("/v1/volumes?{}", query.join("&")),
        }
    };
    if args.format == Format::Json && !args.quiet {
        let volumes: Vec<Volume> = client.call(Method::GET, &path(query, false), None).await?;
        println!("{}", serde_json::to_string_pretty(&volumes)?);
        return Ok(ExitCode::SUCCESS);
    }
    // A table or names need only the summaries, far less to send and read.
    let body = client
        .call_bytes(Method::GET, &path(query, true), None)
        .await?;
    let volumes: Vec<VolumeSummary> =
        serde_json::from_slice(&body).context("decoding the daemon's answer")?;
    let mut out = String::new();
    if args.quiet {
        for v in &volumes {
            out.push_str(&v.name);
            out.push('\n');
        }
    } else {
        out = volume_table(&volumes);
    }
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn volume_table(volumes: &[VolumeSummary]) -> String {
    let rows: Vec<[Cow<str>; 5]> = volumes
        .iter()
        .map(|v| {
            [
                Cow::Borrowed(&*v.driver),
                Cow::Borrowed(&*v.name),
                Cow::Owned(v.consumers.to_string()),
                Cow::Borrowed(status_word(v.status)),
                Cow::Borrowed(&*v.created_at),
            ]
        })
        .collect();
    table(
        &["DRIVER", "VOLUME NAME", "CONSUMERS", "STATUS", "CREATED"],
        &rows,
    )
}

fn status_word(status: VolumeState) -> &'static str {
    match status {
        VolumeState::Pending => "pending",
        VolumeState::Creating => "creating",
        VolumeState::Ready => "ready",
        VolumeState::Removing => "removing",
        VolumeState::Corrupt => "corrupt",
    }
}

/// Left-aligned columns three spaces apart, no trailing blanks. Written
/// into one buffer: a list of 100k volumes is 500k cells.
fn table<C: AsRef<str>>(header: &[&str], rows: &[impl AsRef<[C]>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            let cells = rows.iter().map(|r| r.as_ref()[i].as_ref().len());
            cells.chain([header[i].len()]).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::with_capacity((widths.iter().sum::<usize>() + 16) * (rows.len() + 1));
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("   ");
            }
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', w.saturating_sub(cell.len())));
        }
        let end = out[start..].trim_end().len() + start;
        out.truncate(end);
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.as_ref().iter().map(AsRef::as_ref));
    }
    out
}

async fn inspect(client: &Client, names: Vec<String>) -> Result<ExitCode> {
    inspect_each(client, "/v1/volumes", names).await
}

/// GETs `prefix/NAME` for each name and prints the answers as one JSON
/// array; names that fail are reported and make the exit code fail.
async fn inspect_each(client: &Client, prefix: &str, names: Vec<String>) -> Result<ExitCode> {
    let mut found = Vec::new();
    let mut failed = false;
    for name in names {
        let path = format!("{prefix}/{}", encode(&name));
        match client
            .call::<serde_json::Value>(Method::GET, &path, None)
            .await
        {
            Ok(v) => found.push(v),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    Ok(exit_code(failed))
}

/// DELETEs `prefix/NAME?query` for each name, printing those removed.
async fn remove_each(
    client: &Client,
    prefix: &str,
    query: &str,
    names: Vec<String>,
) -> Result<ExitCode> {
    let mut failed = false;
    for name in names {
        let path = format!("{prefix}/{}{query}", encode(&name));
        match client.call::<()>(Method::DELETE, &path, None).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(exit_code(failed))
}

fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn snapshot(client: &Client, cmd: SnapshotCommand) -> Result<ExitCode> {
    match cmd {
        SnapshotCommand::Create { volume, name } => {
            let body = json!({ "volume": volume, "name": name });
            // Without a name the daemon picks one: the copy under way is
            // the one of this volume that reports progress.
            let of_volume = format!("/v1/snapshots?volume={}", encode(&volume));
            let progress = || async {
                let snaps: Vec<Snapshot> = client.call(Method::GET, &of_volume, None).await.ok()?;
                snaps
                    .into_iter()
                    .filter(|s| name.as_ref().is_none_or(|n| *n == s.name))
                    .find_map(|s| s.copy)
            };
            let snap: Snapshot = with_progress(true, "snapshotting", progress, async {
                client.call(Method::POST, "/v1/snapshots", Some(body)).await
            })
            .await?;
            println!("{}", snap.name);
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Ls { volume, format } => {
            let path = match volume {
                Some(v) => format!("/v1/snapshots?volume={}", encode(&v)),
                None => "/v1/snapshots".to_string(),
            };
            let snaps: Vec<Snapshot> = client.call(Method::GET, &path, None).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = snaps
                .iter()
                .map(|s| {
                    [
                        s.name.clone(),
                        s.volume.clone(),
                        s.method.clone(),
                        s.size_bytes
                            .map(stowage_core::options::format_size)
                            .unwrap_or_default(),
                        rfc3339(s.created_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["NAME", "VOLUME", "METHOD", "SIZE", "CREATED"], &rows)
            );
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Inspect { names } => inspect_each(client, "/v1/snapshots", names).await,
        SnapshotCommand::Rm { names } => remove_each(client, "/v1/snapshots", "", names).await,
    }
}

async fn node(client: &Client, cmd: NodeCommand) -> Result<ExitCode> {
    match cmd {
        NodeCommand::Ls { format } => {
            let nodes: Vec<Node> = client.call(Method::GET, "/v1/nodes", None).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(ExitCode::SUCCESS);
            }
            let size = |b: Option<u64>| {
                b.map(stowage_core::options::format_size)
                    .unwrap_or("-".into())
            };
            let rows: Vec<[String; 8]> = nodes
                .iter()
                .map(|n| {
                    let labels: Vec<String> =
                        n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    [
                        n.id.clone(),
                        node_state_word(n.state).to_string(),
                        n.address.clone().unwrap_or_else(|| "-".into()),
                        rfc3339(n.last_heartbeat),
                        n.version.clone(),
                        format!("{}/{}", size(n.free_bytes), size(n.capacity_bytes)),
                        n.volumes.to_string(),
                        labels.join(","),
                    ]
                })
                .collect();
            let header = [
                "NODE",
                "STATE",
                "ADDRESS",
                "LAST HEARTBEAT",
                "VERSION",
                "FREE/SIZE",
                "VOLUMES",
                "LABELS",
            ];
            print!("{}", table(&header, &rows));
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Inspect { names } => inspect_each(client, "/v1/nodes", names).await,
        NodeCommand::Cordon { name } => set_cordon(client, &name, "cordon").await,
        NodeCommand::Uncordon { name } => set_cordon(client, &name, "uncordon").await,
        NodeCommand::Rm { force, name } => {
            let path = format!("/v1/nodes/{}?force={force}", encode(&name));
            let removed: serde_json::Value = client.call(Method::DELETE, &path, None).await?;
            let forgotten = removed["forgotten"].as_array().cloned().unwrap_or_default();
            for v in &forgotten {
                eprintln!(
                    "forgot volume {} (its data stays on {name}'s disk)",
                    v.as_str().unwrap_or("?")
                );
            }
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set_cordon(client: &Client, name: &str, action: &str) -> Result<ExitCode> {
    let path = format!("/v1/nodes/{}/{action}", encode(name));
    let node: Node = client.call(Method::POST, &path, None).await?;
    println!("{} {}", node.id, node_state_word(node.state));
    Ok(ExitCode::SUCCESS)
}

fn node_state_word(state: NodeState) -> &'static str {
    match state {
        NodeState::Ready => "ready",
        NodeState::Cordoned => "cordoned",
        NodeState::Down => "down",
    }
}

/// Runs a request that may take long (a full copy) with, on a terminal, a
/// progress bar fed by `progress`, which asks the daemon how far the copy
/// has come. Until the daemon reports a copy (a reflink reports none), it
/// is a spinner with the elapsed time.
async fn with_progress<T, F>(
    enabled: bool,
    what: &str,
    progress: impl Fn() -> F,
    request: impl std::future::Future<Output = Result<T>>,
) -> Result<T>
where
    F: std::future::Future<Output = Option<CopyProgress>>,
{
    if !enabled || !std::io::stderr().is_terminal() {
        return request.await;
    }
    let bar = indicatif::ProgressBar::new_spinner().with_message(what.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(250));
    tokio::pin!(request);
    let result = loop {
        tokio::select! {
            result = &mut request => break result,
            _ = poll.tick() => {
                let Some(p) = progress().await else { continue };
                if bar.length() != Some(p.total_bytes) {
                    bar.set_length(p.total_bytes);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                }
                bar.set_position(p.done_bytes);
            }
        }
    };
    bar.finish_and_clear();
    result
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn prune(client: &Client, force: bool) -> Result<ExitCode> {
    if !force {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            bail!("prune removes data: confirm on a terminal or pass --force");
        }
        eprint!("WARNING! This removes every volume that no consumer has mounted, with its data.\nAre you sure you want to continue? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Nothing removed.");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let answer: serde_json::Value = client.call(Method::POST, "/v1/volumes/prune", None).await?;
    let removed = answer["removed"].as_array().cloned().unwrap_or_default();
    if !removed.is_empty() {
        println!("Deleted Volumes:");
        for name in &removed {
            println!("{}", name.as_str().unwrap_or_default());
        }
        println!();
    }
    println!("Total: {} volume(s) removed", removed.len());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn map_options_accumulate_and_others_must_agree() {
        let m = unique(
            "option",
            pairs(&[
                ("uidmap", "0:1000:10"),
                ("uidmap", "20:2000:5"),
                ("uid", "1"),
                ("uid", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(m["uidmap"], "0:1000:10,20:2000:5");
        assert_eq!(m["uid"], "1");
        let err = unique("option", pairs(&[("uid", "1"), ("uid", "2")])).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }
}
