//! `query`: the command-line client. `query publish TABLE < rows.jsonl` publishes rows from
//! a shell script to the local edge agent.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use query_client::protocol::Row;
use query_client::{ClientError, Publisher};

#[derive(Parser)]
#[command(name = "query", version, about = "Query client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish rows of TABLE, one JSON object per line on standard input, as a full copy.
    Publish {
        table: String,
        /// The agent's publish socket.
        #[arg(long, default_value = "/run/query/publish.sock", env = "QUERY_SOCKET")]
        socket: PathBuf,
        /// Use the agent's TCP listener (e.g. 127.0.0.1:7301) instead of the socket.
        #[arg(long)]
        tcp: Option<String>,
        /// Publisher name the agent records.
        #[arg(long, default_value = "query-cli")]
        publisher: String,
    },
}

fn main() -> ExitCode {
    let Command::Publish {
        table,
        socket,
        tcp,
        publisher,
    } = Cli::parse().command;
    let mut rows = Vec::new();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("query: reading standard input: {e}");
                return ExitCode::from(1);
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Row>(&line) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("query: line {}: not a JSON object: {e}", i + 1);
                return ExitCode::from(1);
            }
        }
    }
    let connected = match &tcp {
        Some(addr) => Publisher::connect_tcp(addr, &publisher, &[&table]),
        None => Publisher::connect_unix(&socket, &publisher, &[&table]),
    };
    let mut p = match connected {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "query: cannot reach the agent at {}: {e}",
                tcp.unwrap_or_else(|| socket.display().to_string())
            );
            return ExitCode::from(2);
        }
    };
    if !p.is_wanted(&table) {
        eprintln!("query: note: table '{table}' is not requested upstream now; the agent keeps it only once requested");
    }
    match p.publish(&table, rows) {
        Ok(n) => {
            println!("published {n} rows of {table}");
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused(e)) => {
            eprintln!("query: refused: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("query: {e}");
            ExitCode::from(2)
        }
    }
}
