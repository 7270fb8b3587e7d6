//! What `suggest` reads: drop events, as `dataplane events --json` prints them, counted per
//! distinct tuple up to a bound.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::IpAddr;
use std::path::Path;

use dataplane_common::Reason;
use serde_json::Value;

use crate::classify::verdict::drop_reason;
use crate::classify::{Probe, IPPROTO_TCP, IPPROTO_UDP};
use crate::rollout::RolloutError;

/// The drop events read, with a bound on the distinct tuples kept.
pub struct Drops {
    pub(super) max: usize,
    /// Packets per distinct TCP or UDP tuple.
    pub tuples: HashMap<Probe, u64>,
    /// Packets of drops no flow judges (ICMP, fragments, malformed ...), per reason.
    pub other: BTreeMap<String, u64>,
    pub events: u64,
    /// Drops the kernel's rate limit did not report.
    pub suppressed: u64,
    /// Packets of tuples past the cap, not analysed.
    pub over_cap: u64,
    pub bad: usize,
}

impl Drops {
    pub fn new(max: usize) -> Self {
        Drops { max, tuples: HashMap::new(), other: BTreeMap::new(), events: 0, suppressed: 0, over_cap: 0, bad: 0 }
    }

    /// Reads JSON lines from `file` (`-`: stdin); a bad line is reported as FILE:LINE:COLUMN and
    /// skipped.
    pub fn read_file(&mut self, file: &Path) -> Result<(), RolloutError> {
        let reader: Box<dyn BufRead> = match file.to_str() {
            Some("-") => Box::new(std::io::stdin().lock()),
            _ => Box::new(std::io::BufReader::new(
                std::fs::File::open(file).map_err(|source| RolloutError::OpenEvents { path: file.into(), source })?,
            )),
        };
        let name = if file.to_str() == Some("-") { "stdin".into() } else { file.display().to_string() };
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|source| RolloutError::ReadEvents { name: name.clone(), source })?;
            if line.trim().is_empty() {
                continue;
            }
            if let Err((col, msg)) = self.add_line(&line) {
                self.bad += 1;
                eprintln!("{name}:{}:{col}: {msg}", i + 1);
            }
        }
        Ok(())
    }

    /// One `dataplane events --json` line; on error, the column and what is wrong.
    pub fn add_line(&mut self, line: &str) -> std::result::Result<(), (usize, String)> {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            (e.column(), format!("not valid JSON: {msg}"))
        })?;
        let at = |k: &str| line.find(&format!("\"{k}\"")).map_or(1, |i| i + 1);
        let field =
            |k: &str| v.get(k).filter(|x| !x.is_null()).ok_or_else(|| (at(k).max(1), format!("field \"{k}\" is missing")));
        let ip = |k: &str| -> std::result::Result<IpAddr, (usize, String)> {
            let x = field(k)?;
            x.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| (at(k), format!("field \"{k}\": {x} is not an IP address")))
        };
        let num = |k: &str, max: u64| -> std::result::Result<u64, (usize, String)> {
            let x = field(k)?;
            x.as_u64().filter(|n| *n <= max).ok_or_else(|| (at(k), format!("field \"{k}\": {x} is not an integer 0-{max}")))
        };
        let (src, dst) = (ip("src")?, ip("dst")?);
        let proto = num("proto", 255)? as u8;
        let (sport, dport) = (num("sport", 65535)? as u16, num("dport", 65535)? as u16);
        let reason =
            field("reason")?.as_str().ok_or_else(|| (at("reason"), "field \"reason\" must be a string".to_string()))?.to_owned();
        let suppressed = v.get("suppressed").and_then(Value::as_u64).unwrap_or(0);
        self.add(Probe::ported(src, dst, proto, sport, dport), &reason, suppressed);
        Ok(())
    }

    /// A drop of `t` for `reason` (a reason's name; one of another version is counted by name).
    pub fn add(&mut self, t: Probe, reason: &str, suppressed: u64) {
        self.events += 1;
        self.suppressed += suppressed;
        let by_flow = matches!(drop_reason(reason), Some(Reason::DropNoFlow | Reason::DropDenyFlow));
        let judged = (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP) && by_flow;
        if !judged {
            *self.other.entry(reason.to_owned()).or_default() += 1;
        } else if let Some(n) = self.tuples.get_mut(&t) {
            *n += 1;
        } else if self.tuples.len() < self.max {
            self.tuples.insert(t, 1);
        } else {
            self.over_cap += 1;
        }
    }

    pub(super) fn packets(&self) -> u64 {
        self.tuples.values().sum::<u64>() + self.other.values().sum::<u64>() + self.over_cap
    }
}
