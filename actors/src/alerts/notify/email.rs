//! The `email` receiver: one plain-text e-mail per batch of due notifications, sent to an
//! SMTP relay (`smtp = "host:port"`, no TLS, no authentication: a local relay or
//! smarthost does the rest).
//!
//! A small SMTP client (RFC 5321: EHLO, MAIL, RCPT, DATA, QUIT) rather than the `lettre`
//! crate: lettre turns on `idna`'s default features, which changes the fingerprint of
//! `url` and rebuilds all of DataFusion (object_store depends on url) in every target
//! directory, debug and release.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dispatch::Failure;
use super::{AlertState, Notification};

/// Most notifications in one e-mail; more go in the next one.
pub const MAX_PER_MAIL: usize = 100;

/// SMTP's line limit is 998 octets; longer lines of the body are cut.
const MAX_LINE: usize = 900;

/// An address for `from`/`to`: `local@domain`, nothing that could end an SMTP command.
pub fn check_address(a: &str) -> Result<(), String> {
    let ok = match a.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && a.chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ',' | '"'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("e-mail address {a:?} must be a plain local@domain"))
    }
}

/// `smtp = "host:port"`.
pub fn check_relay(relay: &str) -> Result<(), String> {
    match relay.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("smtp {relay:?} must be host:port")),
    }
}

/// Sends one e-mail listing `items` from `from` to every `to`, through `relay`; the whole
/// conversation is bounded by `timeout`.
pub fn deliver(
    relay: &str,
    from: &str,
    to: &[String],
    timeout: Duration,
    items: &[Notification],
    now: SystemTime,
) -> Result<(), Failure> {
    let message = message(from, to, items, now);
    let mut smtp = Smtp::connect(relay, timeout)?;
    smtp.expect(&[220], "greeting")?;
    smtp.command("EHLO localhost", &[250], "EHLO")?;
    smtp.command(&format!("MAIL FROM:<{from}>"), &[250], "MAIL FROM")?;
    for rcpt in to {
        smtp.command(&format!("RCPT TO:<{rcpt}>"), &[250, 251], "RCPT TO")?;
    }
    smtp.command("DATA", &[354], "DATA")?;
    let mut data = String::with_capacity(message.len() + 16);
    for line in message.lines() {
        // Dot-stuffing: a line starting with '.' gets another one.
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    smtp.send(&data)?;
    smtp.expect(&[250], "end of DATA")?;
    // The message is accepted; a failing QUIT changes nothing.
    let _ = smtp.command("QUIT", &[221], "QUIT");
    Ok(())
}

/// The subject: the alerts, states and priorities of the batch.
pub fn subject(items: &[Notification]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for n in items {
        let p = format!(
            "{} {} ({})",
            n.alert,
            n.state.as_str().to_uppercase(),
            n.priority
        );
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    let mut s = match items {
        [n] if !n.key_text.is_empty() => format!("[Query] {}: {}", parts.join(", "), n.key_text),
        [_] => format!("[Query] {}", parts.join(", ")),
        _ => format!(
            "[Query] {} notifications: {}",
            items.len(),
            parts.join(", ")
        ),
    };
    // Headers stay ASCII and on one line (no RFC 2047 encoding needed).
    s = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    cut(&mut s, 200);
    s
}

/// The plain-text body: one block per notification, in order.
pub fn body(items: &[Notification]) -> String {
    let mut out = format!(
        "{} alert notification{} from Query.\n",
        items.len(),
        if items.len() == 1 { "" } else { "s" }
    );
    for n in items {
        out.push('\n');
        out.push_str(&format!(
            "[{}] {}  {}\n",
            n.state.as_str().to_uppercase(),
            n.alert,
            n.key_text
        ));
        out.push_str(&format!("  priority: {}  owner: {}\n", n.priority, n.owner));
        match (n.state, &n.ended) {
            (AlertState::Resolved, Some(ended)) => {
                out.push_str(&format!("  since: {}  resolved: {ended}\n", n.since))
            }
            _ => out.push_str(&format!("  since: {}\n", n.since)),
        }
        out.push_str(&format!(
            "  generation: {} at {}\n",
            n.generation, n.generation_time
        ));
        let mut line = |label: &str, text: &str| {
            if !text.is_empty() {
                out.push_str(&format!("  {label}{text}\n"));
            }
        };
        line("", &n.description);
        line("runbook: ", &n.runbook);
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        line("values: ", &pairs(&n.values));
        line("labels: ", &pairs(&n.labels));
        line("error: ", n.error.as_deref().unwrap_or(""));
        line("dedup key: ", &n.dedup_key);
    }
    out.lines()
        .map(|l| {
            let mut l = l.replace('\r', " ");
            cut(&mut l, MAX_LINE);
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole message (headers and body), lines ending in `\n`.
fn message(from: &str, to: &[String], items: &[Notification], now: SystemTime) -> String {
    let id: String = items
        .first()
        .map(|n| n.dedup_key.as_str())
        .unwrap_or("empty")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let body = body(items);
    let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
    format!(
        "From: {from}\nTo: {}\nSubject: {}\nDate: {}\nMessage-ID: <{id}.{}@query.alerts>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: {encoding}\n\n{body}\n",
        to.join(", "),
        subject(items),
        rfc2822(now),
        items.len(),
    )
}

/// `Sat, 28 Nov 2026 15:40:00 +0000`.
fn rfc2822(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let iso = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-28T15:40:00Z
    let day = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][((secs / 86_400) % 7) as usize];
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| {
            [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ]
            .get(m.wrapping_sub(1))
            .copied()
        })
        .unwrap_or("Jan");
    format!(
        "{day}, {} {month} {} {} +0000",
        iso.get(8..10).unwrap_or("01"),
        iso.get(0..4).unwrap_or("1970"),
        iso.get(11..19).unwrap_or("00:00:00")
    )
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("...");
    }
}

/// One SMTP conversation with a deadline.
struct Smtp {
    reader: BufReader<TcpStream>,
    deadline: Instant,
}

impl Smtp {
    fn connect(relay: &str, timeout: Duration) -> Result<Smtp, Failure> {
        let deadline = Instant::now() + timeout;
        let addr = relay
            .to_socket_addrs()
            .map_err(|e| Failure::Retry(format!("smtp {relay}: {e}")))?
            .next()
            .ok_or_else(|| Failure::Retry(format!("smtp {relay}: no address")))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Failure::Retry(format!("smtp {relay}: {e}")))?;
        Ok(Smtp {
            reader: BufReader::new(stream),
            deadline,
        })
    }

    fn remaining(&self) -> Result<Duration, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(Failure::Retry("smtp: timed out".into()))
        } else {
            Ok(left)
        }
    }

    fn send(&mut self, text: &str) -> Result<(), Failure> {
        let left = self.remaining()?;
        let stream = self.reader.get_mut();
        stream
            .set_write_timeout(Some(left))
            .and_then(|()| stream.write_all(text.as_bytes()))
            .and_then(|()| stream.flush())
            .map_err(|e| Failure::Retry(format!("smtp write: {e}")))
    }

    fn command(&mut self, line: &str, ok: &[u16], what: &str) -> Result<(), Failure> {
        self.send(&format!("{line}\r\n"))?;
        self.expect(ok, what)
    }

    /// Reads one reply (all its lines); a 5xx is a refusal, anything else unexpected a
    /// reason to retry.
    fn expect(&mut self, ok: &[u16], what: &str) -> Result<(), Failure> {
        let mut text = String::new();
        loop {
            let left = self.remaining()?;
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| Failure::Retry(format!("smtp: {e}")))?;
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| Failure::Retry(format!("smtp read after {what}: {e}")))?;
            if n == 0 {
                return Err(Failure::Retry(format!("smtp closed after {what}")));
            }
            if text.len() < 300 {
                text.push_str(line.trim_end());
                text.push(' ');
            }
            // "250-..." continues, "250 ..." ends the reply.
            if line.as_bytes().get(3) != Some(&b'-') {
                let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                if ok.contains(&code) {
                    return Ok(());
                }
                let why = format!("smtp {what}: {}", text.trim_end());
                return Err(if (500..600).contains(&code) && what != "greeting" {
                    Failure::Refused(why)
                } else {
                    Failure::Retry(why)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::notify::tests::sample;

    #[test]
    fn subject_and_body_list_the_instances() {
        let one = [sample("k1")];
        assert_eq!(
            subject(&one),
            "[Query] disk_full FIRING (page): machine_ip=10.0.0.1 mountp=/var"
        );
        let mut resolved = sample("k2");
        resolved.state = AlertState::Resolved;
        resolved.ended = Some("2026-11-28T11:00:00Z".into());
        let two = [sample("k1"), resolved];
        assert_eq!(
            subject(&two),
            "[Query] 2 notifications: disk_full FIRING (page), disk_full RESOLVED (page)"
        );
        let b = body(&two);
        assert!(b.starts_with("2 alert notifications from Query."), "{b}");
        assert!(
            b.contains("[FIRING] disk_full  machine_ip=10.0.0.1 mountp=/var"),
            "{b}"
        );
        assert!(b.contains("resolved: 2026-11-28T11:00:00Z"), "{b}");
        assert!(b.contains("runbook: https://runbooks.invalid/disk"), "{b}");
        assert!(b.contains("values: free_pct=2.5"), "{b}");
        assert!(b.contains("dedup key: k2"), "{b}");
    }

    #[test]
    fn headers_stay_safe() {
        let mut n = sample("k1");
        n.alert = "disk\r\nBcc: x@y é".into();
        let s = subject(&[n]);
        assert!(
            !s.contains('\r') && !s.contains('\n') && s.is_ascii(),
            "{s}"
        );
        let t = humantime::parse_rfc3339("2026-11-28T15:40:00Z").expect("time");
        assert_eq!(rfc2822(t), "Sat, 28 Nov 2026 15:40:00 +0000");
        assert!(check_address("ops@example.org").is_ok());
        assert!(check_address("ops>@x").is_err());
        assert!(check_address("ops").is_err());
        assert!(check_relay("127.0.0.1:25").is_ok());
        assert!(check_relay("[::1]:25").is_ok());
        assert!(check_relay("relay").is_err());
    }
}
