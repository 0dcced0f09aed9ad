//! The tokens file (`[auth] tokens_file`): who may call a node's HTTP API. Each
//! `[[token]]` names an identity and holds the SHA-256 of its secret (never the secret);
//! each `[[client]]` names the common name of a client certificate (HTTPS with `[http.tls]
//! ca`: the handshake proved the name). Both carry the same [`Grant`]: the aggregator-set
//! domains it is for, optionally the tables it may read, and whether it may call admin
//! endpoints. The file is reloaded when it changes; a copy that fails to parse or validate
//! leaves the last good one in force.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ring::digest;
use serde::Deserialize;

use crate::config::file_stamp as stamp;
use crate::error::{ConfigError, ConfigResult};

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    #[serde(rename = "token", default)]
    pub tokens: Vec<TokenEntry>,
    #[serde(rename = "client", default)]
    pub clients: Vec<ClientEntry>,
}

/// One `[[client]]`: what a client presenting a trusted certificate with this common name
/// may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The certificate's subject common name, exactly; also the client's identity.
    pub name: String,
    pub domains: Vec<String>,
    pub tables: Option<Vec<String>>,
    #[serde(default)]
    pub admin: bool,
}

/// One `[[token]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The identity: admission fairness, quarantine and logs name the client by it.
    pub name: String,
    /// Hex of the SHA-256 of the secret.
    pub sha256: String,
    /// Aggregator-set domains the token is for (`"*"`: all).
    pub domains: Vec<String>,
    /// Tables it may read (views are followed to theirs); absent: every table.
    pub tables: Option<Vec<String>>,
    /// May call admin endpoints (`/admin/...`).
    #[serde(default)]
    pub admin: bool,
}

/// What a token or a client certificate is allowed, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The identity: admission fairness, quarantine and logs name the client by it.
    pub name: String,
    pub domains: BTreeSet<String>,
    /// Tables it may read; None: every table.
    pub tables: Option<BTreeSet<String>>,
    pub admin: bool,
}

/// A checked token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub grant: Grant,
    digest: [u8; 32],
}

/// Every token and client-certificate grant of one good copy of the file.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
    /// By certificate common name.
    clients: std::collections::BTreeMap<String, Grant>,
}

/// Longest token name: it appears in logs, the quarantine table and metrics.
const MAX_NAME: usize = 64;

impl Tokens {
    pub fn load(path: &Path) -> ConfigResult<Tokens> {
        let file: TokensFile = crate::config::read_toml(path)?;
        Tokens::from_file(file).map_err(|message| ConfigError::Invalid {
            what: format!("tokens file {}", path.display()),
            message,
        })
    }

    pub fn from_file(file: TokensFile) -> Result<Tokens, String> {
        // Token and client names share one space: they name clients in admission,
        // quarantine and logs.
        let mut names = BTreeSet::new();
        let mut digests = BTreeSet::new();
        let mut tokens = Vec::new();
        for t in file.tokens {
            let grant = check_grant("token", &mut names, t.name, t.domains, t.tables, t.admin)?;
            let digest = decode_hex32(&t.sha256).ok_or_else(|| {
                format!(
                    "token '{}': sha256 must be 64 hex digits (the SHA-256 of the secret, as `queryd token` prints it)",
                    grant.name
                )
            })?;
            if !digests.insert(digest) {
                return Err(format!(
                    "token '{}' has the same secret as another token",
                    grant.name
                ));
            }
            tokens.push(Token { grant, digest });
        }
        let mut clients = std::collections::BTreeMap::new();
        for c in file.clients {
            let grant = check_grant("client", &mut names, c.name, c.domains, c.tables, c.admin)?;
            clients.insert(grant.name.clone(), grant);
        }
        Ok(Tokens { tokens, clients })
    }

    /// What a client whose trusted certificate has this common name may do, if anything.
    pub fn client(&self, common_name: &str) -> Option<&Grant> {
        self.clients.get(common_name)
    }

    /// The token whose secret this is. Every token's digest is compared in constant time,
    /// so how long it takes says nothing about how close a guess was.
    pub fn find(&self, secret: &str) -> Option<&Token> {
        let presented = sha256(secret.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            if constant_time_eq(&t.digest, &presented) {
                found = Some(t);
            }
        }
        found
    }

    /// Tokens and client grants.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks one entry's name (unique among tokens and clients), domains and tables.
fn check_grant(
    kind: &str,
    names: &mut BTreeSet<String>,
    name: String,
    domains: Vec<String>,
    tables: Option<Vec<String>>,
    admin: bool,
) -> Result<Grant, String> {
    // A certificate's common name may hold spaces ("Alice Smith"); a token's name not.
    let extra = if kind == "client" { "._@- " } else { "._@-" };
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if !name_ok {
        return Err(format!(
            "{kind} name '{name}' must be 1 to {MAX_NAME} letters, digits or {}",
            if kind == "client" {
                ". _ @ - and inner spaces"
            } else {
                ". _ @ -"
            }
        ));
    }
    if !names.insert(name.clone()) {
        return Err(format!(
            "{kind} name '{name}' appears twice (token and client names name clients, so they are unique together)"
        ));
    }
    if domains.is_empty() || domains.iter().any(|d| d.is_empty()) {
        return Err(format!(
            "{kind} '{name}': domains must list at least one domain (\"*\": all)"
        ));
    }
    if tables
        .as_ref()
        .is_some_and(|v| v.iter().any(|x| x.is_empty()))
    {
        return Err(format!("{kind} '{name}': a table name is empty"));
    }
    Ok(Grant {
        name,
        domains: domains.into_iter().collect(),
        tables: tables.map(|v| v.into_iter().collect()),
        admin,
    })
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random secret (32 bytes from the system's CSPRNG, hex, with a prefix that makes a
/// leaked one easy to recognise) and the `[[token]]` entry holding its hash.
pub fn generate(
    name: &str,
    domains: &[String],
    tables: Option<&[String]>,
    admin: bool,
) -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let secret = format!("qt_{}", hex(&bytes));
    let list = |v: &[String]| {
        let items: Vec<String> = v
            .iter()
            .map(|s| toml::Value::String(s.clone()).to_string())
            .collect();
        format!("[{}]", items.join(", "))
    };
    let mut entry = format!(
        "[[token]]\nname = {}\nsha256 = \"{}\"\ndomains = {}\n",
        toml::Value::String(name.to_string()),
        hex(&sha256(secret.as_bytes())),
        list(domains)
    );
    if let Some(t) = tables {
        entry.push_str(&format!("tables = {}\n", list(t)));
    }
    entry.push_str(&format!("admin = {admin}\n"));
    // The entry must be one the node accepts.
    let file: TokensFile = toml::from_str(&entry).map_err(|e| e.to_string())?;
    Tokens::from_file(file)?;
    Ok((secret, entry))
}

/// The tokens in force, reloaded from their file when it changes.
pub struct TokenStore {
    path: PathBuf,
    current: ArcSwap<Tokens>,
    /// (modified, length) of the copy last read.
    stamp: std::sync::Mutex<Option<(SystemTime, u64)>>,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Loaded(usize),
    Rejected(ConfigError),
}

impl TokenStore {
    /// Reads the file; a node does not start on a file it cannot use.
    pub fn open(path: &Path) -> ConfigResult<Arc<TokenStore>> {
        let stamp = stamp(path);
        let tokens = Tokens::load(path)?;
        Ok(Arc::new(TokenStore {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(tokens),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again if its modification time or size changed; a copy that fails
    /// keeps the last good one (and is reported once per change).
    pub fn reload_if_changed(&self) -> Reload {
        let now = stamp(&self.path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if now == *last {
                return Reload::Unchanged;
            }
            *last = now;
        }
        match Tokens::load(&self.path) {
            Ok(t) => {
                let n = t.len();
                self.current.store(Arc::new(t));
                Reload::Loaded(n)
            }
            Err(e) => Reload::Rejected(e),
        }
    }
}

/// Names of the tables a token may read, for messages.
pub(crate) fn list_names(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Tokens, String> {
        let f: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Tokens::from_file(f)
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_tokens_are_found_by_their_secret_only() {
        let (secret, entry) = generate(
            "alice",
            &["noc".into()],
            Some(&["sys".to_string()][..]),
            false,
        )
        .expect("generate");
        assert!(secret.starts_with("qt_") && secret.len() == 67, "{secret}");
        assert!(!entry.contains(&secret), "the entry never holds the secret");
        let tokens = file(&entry).expect("the printed entry parses");
        let t = &tokens.find(&secret).expect("found").grant;
        assert_eq!(t.name, "alice");
        assert_eq!(t.tables, Some(["sys".to_string()].into()));
        assert!(!t.admin);
        assert!(tokens.find("qt_wrong").is_none());
        assert!(tokens.find("").is_none());
        let (other, _) = generate("bob", &["*".into()], None, true).expect("generate");
        assert_ne!(secret, other, "secrets are random");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let h = hex(&sha256(b"x"));
        let cases = [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"12\"\ndomains = [\"*\"]\n".to_string(),
                "64 hex",
            ),
            (
                format!("[[token]]\nname = \"a b\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n"),
                "letters",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\ndomains = []\n"),
                "at least one domain",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n[[token]]\nname = \"a\"\nsha256 = \"{}\"\ndomains = [\"*\"]\n",
                    hex(&sha256(b"y"))
                ),
                "twice",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n[[token]]\nname = \"b\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n"
                ),
                "same secret",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\nsecret = \"x\"\n"),
                "unknown field",
            ),
        ];
        for (text, why) in cases {
            let e = file(&text).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
        let ok = file(&format!(
            "[[token]]\nname = \"mon\"\nsha256 = \"{}\"\ndomains = [\"*\"]\ntables = []\n",
            h.to_uppercase()
        ))
        .expect("upper-case hex and an empty table list are fine");
        assert_eq!(
            ok.find("x").and_then(|t| t.grant.tables.clone()),
            Some(BTreeSet::new())
        );
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples/tokens.toml");
        let tokens = Tokens::load(&path).expect("ops/examples/tokens.toml is valid");
        assert_eq!(tokens.len(), 4, "three tokens and a client certificate");
        assert!(tokens.client("grafana.example.com").is_some());
    }

    #[test]
    fn client_certificates_are_granted_by_common_name() {
        let h = hex(&sha256(b"x"));
        let tokens = file(&format!(
            "[[token]]\nname = \"alice\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n\n\
             [[client]]\nname = \"Alice Smith\"\ndomains = [\"noc\"]\ntables = [\"sys\"]\n\n\
             [[client]]\nname = \"ops-robot\"\ndomains = [\"*\"]\nadmin = true\n"
        ))
        .expect("parses");
        let alice = tokens.client("Alice Smith").expect("granted");
        assert_eq!(alice.tables, Some(["sys".to_string()].into()));
        assert!(!alice.admin && tokens.client("ops-robot").is_some_and(|g| g.admin));
        assert!(
            tokens.client("alice").is_none(),
            "a token's name grants no certificate"
        );
        assert!(
            tokens.client("Alice smith").is_none(),
            "names match exactly"
        );
        for (text, why) in [
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n[[client]]\nname = \"a\"\ndomains = [\"*\"]\n"),
                "appears twice",
            ),
            ("[[client]]\nname = \"b\"\ndomains = []\n".to_string(), "at least one domain"),
            ("[[client]]\nname = \" b\"\ndomains = [\"*\"]\n".to_string(), "inner spaces"),
            (
                "[[client]]\nname = \"b\"\nsha256 = \"{h}\"\ndomains = [\"*\"]\n".to_string(),
                "unknown field",
            ),
        ] {
            let e = file(&text).expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_broken_reload_keeps_the_last_good_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let (secret, entry) = generate("alice", &["*".into()], None, false).expect("gen");
        std::fs::write(&path, &entry).expect("write");
        let store = TokenStore::open(&path).expect("open");
        assert!(store.tokens().find(&secret).is_some());
        assert!(matches!(store.reload_if_changed(), Reload::Unchanged));
        std::fs::write(&path, format!("{entry}\nnot toml at all [[[")).expect("write");
        assert!(matches!(store.reload_if_changed(), Reload::Rejected(_)));
        assert!(
            store.tokens().find(&secret).is_some(),
            "last good copy stays"
        );
        let (s2, e2) = generate("bob", &["*".into()], None, false).expect("gen");
        std::fs::write(&path, e2).expect("write");
        assert!(matches!(store.reload_if_changed(), Reload::Loaded(1)));
        assert!(store.tokens().find(&secret).is_none(), "alice was removed");
        assert!(store.tokens().find(&s2).is_some());
    }
}
