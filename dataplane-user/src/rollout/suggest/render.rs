//! `suggest` as text.

use super::{PortCount, Report, SourceCount, Suggestion};
use crate::classify::request::Request;

impl Report {
    pub fn render(&self, site: &str) -> String {
        let mut s = format!(
            "suggest: {} ({}, {} distinct tuples) against {site}\n",
            plural(self.events, "drop event"),
            plural(self.packets, "packet"),
            self.tuples
        );
        if self.suppressed > 0 {
            s.push_str(&format!("  {} more drops were not reported by the kernel (rate limit)\n", self.suppressed));
        }
        if self.cap_reached {
            s.push_str(&format!(
                "  the cap of {} distinct tuples was reached: {} packets of further tuples were counted, not analysed (--max-tuples)\n",
                self.max_tuples, self.not_analysed
            ));
        }
        if self.admitted.packets > 0 {
            s.push_str(&format!(
                "admitted by the site now: {} ({} distinct tuples, {})\n",
                plural(self.admitted.packets, "packet"),
                self.admitted.tuples,
                plural(self.admitted.sources as u64, "source")
            ));
        }
        render_suggestions(&mut s, "documented but switched off", &self.switched_off);
        render_suggestions(&mut s, "documented but unbound", &self.unbound);
        if !self.forbidden.is_empty() {
            s.push_str("documented as forbidden:\n");
            for f in &self.forbidden {
                s.push_str(&format!(
                    "  {} {} in {}, table \"{}\": {} from {}\n      ports {}\n      sources {}\n",
                    f.flow.id,
                    f.flow.protocol,
                    f.flow.catalog,
                    f.flow.table,
                    plural(f.packets, "packet"),
                    plural(f.sources as u64, "source"),
                    ports_text(&f.top_ports),
                    sources_text(&f.top_sources)
                ));
            }
        }
        let u = &self.undocumented;
        if u.packets > 0 {
            s.push_str(&format!(
                "documented in none of the selected catalogs: {} from {}\n",
                plural(u.packets, "packet"),
                plural(u.sources as u64, "source")
            ));
            s.push_str(&format!("  top destination ports: {}\n", ports_text(&u.top_ports)));
            s.push_str(&format!("  top sources: {}\n", sources_text(&u.top_sources)));
        }
        if !self.other.is_empty() {
            let parts: Vec<String> = self.other.iter().map(|(r, n)| format!("{r} {n}")).collect();
            s.push_str(&format!("not judged by a flow: {}\n", parts.join(", ")));
        }
        if self.switched_off.is_empty() && self.unbound.is_empty() {
            s.push_str("no change to the site would admit these drops through a documented flow\n");
        }
        s
    }
}

fn render_suggestions(s: &mut String, title: &str, v: &[Suggestion]) {
    if v.is_empty() {
        return;
    }
    s.push_str(&format!("{title}:\n"));
    for x in v {
        let mut what: Vec<String> = x.bind.iter().map(|(r, c)| format!("bind {} to role {r}", shorten(c))).collect();
        what.extend(x.set.iter().map(|(n, v)| format!("set {n}: {}", v.as_str().map_or(v.to_string(), str::to_owned))));
        let together = if x.set.len() + x.bind.len() > 1 { " (together)" } else { "" };
        s.push_str(&format!(
            "  {}{together}: {} from {}, e.g. {}\n",
            what.join(" and "),
            plural(x.packets, "packet"),
            plural(x.sources as u64, "source"),
            example_text(&x.example)
        ));
        for f in &x.flows {
            s.push_str(&format!("      admitted by {} {} in {}, table \"{}\"\n", f.id, f.protocol, f.catalog, f.table));
        }
        if x.also_adds + x.also_removes + x.also_changes > 0 {
            s.push_str(&format!(
                "      the change also adds {}, removes {} and changes {} (dataplane diff lists them)\n",
                plural(x.also_adds as u64, "other flow"),
                x.also_removes,
                x.also_changes
            ));
        }
        s.push_str("      add to the site:\n");
        for l in x.lines.lines() {
            match x.bind.values().next() {
                Some(c) if c.len() > SHOWN && l.contains(&c[SHOWN]) => s.push_str(&format!(
                    "        {}, ...] ({} new CIDRs: --json has them)\n",
                    l.split(&c[SHOWN]).next().unwrap_or(l).trim_end_matches([',', ' ']),
                    c.len()
                )),
                _ => s.push_str(&format!("        {l}\n")),
            }
        }
    }
}

/// CIDRs shown in the text form of a binding; `--json` has them all.
const SHOWN: usize = 8;

fn shorten(c: &[String]) -> String {
    match c.len() {
        n if n > SHOWN => format!("{} and {} more", c[..SHOWN].join(", "), n - SHOWN),
        _ => c.join(", "),
    }
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn example_text(r: &Request) -> String {
    r.probe().map_or_else(|e| e.to_string(), |p| p.to_string())
}

fn ports_text(v: &[PortCount]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|p| {
            let proto = p.proto;
            let mut doc = String::new();
            if !p.in_force.is_empty() {
                doc.push_str(&format!(", in force for other senders: {}", p.in_force.join(", ")));
            }
            if !p.documented_by.is_empty() {
                doc.push_str(&format!(", documented by {}", p.documented_by.join(", ")));
            }
            format!("{proto} {} ({}, {}{doc})", p.dport, plural(p.packets, "packet"), plural(p.sources as u64, "source"))
        })
        .collect();
    parts.join("; ")
}

fn sources_text(v: &[SourceCount]) -> String {
    v.iter().map(|s| format!("{} ({})", s.src, s.packets)).collect::<Vec<_>>().join(", ")
}
