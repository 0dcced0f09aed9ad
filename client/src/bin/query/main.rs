//! `query`: the command-line client.
//!
//! - `query -H NAME "SQL"` runs SQL at the SQL nodes behind NAME: every address of the name
//!   in random order, the next one on a connection error or a 5xx, partition redirects
//!   followed; prints an aligned table (or `--format json|csv|ndjson`). Without SQL it reads
//!   statements interactively (ended by `;`, with history). `-H https://NAME` with `--ca`
//!   speaks HTTPS. Exit codes: 0 ok, 1 the query was refused, 2 no node could be reached.
//! - `query publish TABLE < rows.jsonl` publishes rows from a shell script to the local
//!   edge agent.

mod render;

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use query_client::protocol::Row;
use query_client::sql::{self, Https, Lookup, SqlClient, SqlError};
use query_client::{ClientError, Publisher};

#[derive(Parser)]
#[command(
    name = "query",
    version,
    about = "Query client",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The SQL nodes: a DNS name (every address is tried), NAME:PORT, or an address;
    /// `https://` before it for HTTPS (with --ca).
    #[arg(
        short = 'H',
        long,
        default_value = "127.0.0.1:8080",
        env = "QUERY_HOST"
    )]
    host: String,
    /// Resolve names at this DNS server (IP:PORT) instead of the system's resolver.
    #[arg(long, env = "QUERY_DNS")]
    dns: Option<SocketAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// How long one node may take to answer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    timeout: Duration,
    /// HTTPS: the PEM bundle of CAs a node's certificate must be signed by (it must carry
    /// the name or address given to -H).
    #[arg(long, env = "QUERY_CA")]
    ca: Option<PathBuf>,
    /// HTTPS: present this client certificate (PEM; with --key), for nodes whose
    /// `[http.tls] ca` signed it. Tokens are read from `QUERY_TOKEN` only: a command line
    /// is visible to every user (`ps`).
    #[arg(long, env = "QUERY_CERT", requires = "key", requires = "ca")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "QUERY_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// The statement; without it, statements are read interactively (or from standard input).
    sql: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
    Ndjson,
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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Publish {
            table,
            socket,
            tcp,
            publisher,
        }) => publish(table, socket, tcp, publisher),
        None => {
            // From the environment only: a command line is visible to every user (`ps`).
            let token = std::env::var("QUERY_TOKEN").ok().filter(|t| !t.is_empty());
            let https = match &cli.ca {
                None => None,
                Some(ca) => {
                    let identity = cli.cert.as_deref().zip(cli.key.as_deref());
                    match Https::load(ca, identity) {
                        Ok(h) => Some(h),
                        Err(e) => {
                            eprintln!("query: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let client = SqlClient::new(Lookup::new(cli.dns), cli.timeout, https).with_token(token);
            match &cli.sql {
                Some(sql) => run_one(&client, &cli, sql),
                None => interactive(&client, &cli),
            }
        }
    }
}

/// Runs one statement and prints its answer; the exit code says how it went.
fn run_one(client: &SqlClient, cli: &Cli, sql: &str) -> ExitCode {
    match execute(client, cli, sql) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("query: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn execute(client: &SqlClient, cli: &Cli, sql: &str) -> Result<(), SqlError> {
    let format = match cli.format {
        Format::Table => {
            println!("{}", render::table(&client.query(&cli.host, sql)?.json));
            return Ok(());
        }
        Format::Json => sql::Format::Json,
        Format::Csv => sql::Format::Csv,
        Format::Ndjson => sql::Format::Ndjson,
    };
    print!("{}", client.run(&cli.host, sql, format)?.body);
    Ok(())
}

/// Statements ended by `;`, one at a time; with a terminal, line editing and a history file
/// (`~/.query_history`). The exit code is that of the last statement.
fn interactive(client: &SqlClient, cli: &Cli) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut pending = String::new();
    let mut take = |line: &str, code: &mut ExitCode| {
        pending.push_str(line);
        pending.push('\n');
        if line.trim_end().ends_with(';') {
            let stmt = std::mem::take(&mut pending);
            let stmt = stmt.trim().trim_end_matches(';').trim();
            if !stmt.is_empty() {
                *code = run_one(client, cli, stmt);
            }
        }
    };
    if !std::io::stdin().is_terminal() {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            take(&line, &mut code);
        }
        return code;
    }
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("query: cannot start the line editor: {e}");
            return ExitCode::from(2);
        }
    };
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".query_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!(
        "query: connected to {} (statements end with ';', Ctrl-D quits)",
        cli.host
    );
    loop {
        match editor.readline("query> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                take(&line, &mut code);
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    code
}

fn publish(table: String, socket: PathBuf, tcp: Option<String>, publisher: String) -> ExitCode {
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
