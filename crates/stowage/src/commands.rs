//! The client commands: each turns arguments into REST calls and prints
//! the answer for a person (or as JSON).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Result};
use hyper::Method;
use serde_json::json;
use stowage_core::Volume;

use crate::cli::{Cli, Command, CreateArgs, Format, ListArgs, VolumeCommand};
use crate::client::{encode, Client};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Serve(args) = cli.command {
        init_logging();
        crate::daemon::serve(args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::new(&cli.host)?;
    match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Version => version(&client).await,
        Command::Volume(cmd) => volume(&client, cmd).await,
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOWAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
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
        VolumeCommand::Create(args) => create(client, args).await,
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
        VolumeCommand::Rm { force, names } => remove(client, force, names).await,
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
    let body = json!({
        "name": args.name,
        "driver": args.driver,
        "options": options,
        "labels": labels,
    });
    let v: Volume = client.call(Method::POST, "/v1/volumes", Some(body)).await?;
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
    let path = if query.is_empty() {
        "/v1/volumes".to_string()
    } else {
        format!("/v1/volumes?{}", query.join("&"))
    };
    let volumes: Vec<Volume> = client.call(Method::GET, &path, None).await?;
    if args.quiet {
        for v in &volumes {
            println!("{}", v.name);
        }
    } else if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&volumes)?);
    } else {
        print!("{}", table(&volumes));
    }
    Ok(ExitCode::SUCCESS)
}

fn table(volumes: &[Volume]) -> String {
    let mut rows = vec![[
        "DRIVER".to_string(),
        "VOLUME NAME".to_string(),
        "CONSUMERS".to_string(),
        "CREATED".to_string(),
    ]];
    for v in volumes {
        rows.push([
            v.driver.clone(),
            v.name.clone(),
            v.consumers.len().to_string(),
            v.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line = format!(
            "{:w0$}   {:w1$}   {:w2$}   {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn inspect(client: &Client, names: Vec<String>) -> Result<ExitCode> {
    let mut found = Vec::new();
    let mut failed = false;
    for name in names {
        let path = format!("/v1/volumes/{}", encode(&name));
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
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn remove(client: &Client, force: bool, names: Vec<String>) -> Result<ExitCode> {
    let mut failed = false;
    for name in names {
        let path = format!(
            "/v1/volumes/{}{}",
            encode(&name),
            if force { "?force=true" } else { "" }
        );
        match client.call::<()>(Method::DELETE, &path, None).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
