//! `diff` as text: the report, and the one line a reload logs.

use serde_json::Value;

use super::{Cause, Diff, DirDiff, Flip};
use crate::classify::verdict::{Action, Answer, Direction};

pub(super) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "unset".into(),
        v => v.to_string(),
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Cause::Option { option, old, new } => write!(f, "{option}: {} -> {}", show(old), show(new)),
            Cause::Catalog { catalog, selected: true } => write!(f, "catalog {catalog} selected"),
            Cause::Catalog { catalog, selected: false } => write!(f, "catalog {catalog} no longer selected"),
            Cause::Protect { role, protected: true } => write!(f, "role {role} now protected"),
            Cause::Protect { role, protected: false } => write!(f, "role {role} no longer protected"),
            Cause::Binding { role } => write!(f, "role {role} bound to other addresses"),
            Cause::Setting { setting, old, new } => write!(f, "setting {setting}: {} -> {}", show(old), show(new)),
            Cause::CatalogEdit { catalog } => write!(f, "catalog {catalog} edited"),
        }
    }
}

impl Diff {
    /// `inbound +2 -0 ~1, outbound +1 -0 ~0; turn false -> true`, or `no change ...`.
    pub fn summary(&self) -> String {
        if self.same {
            return "no change in the enforced behaviour".into();
        }
        let counts = |d: &DirDiff| format!("+{} -{} ~{}", d.added.len(), d.removed.len(), d.changed.len());
        let mut s = format!("inbound {} flows, outbound {}", counts(&self.inbound), counts(&self.outbound));
        let mut why: Vec<String> =
            self.options.iter().map(|o| format!("{} {} -> {}", o.option, show(&o.old), show(&o.new))).collect();
        why.extend(self.catalogs.added.iter().map(|c| format!("catalog {c} selected")));
        why.extend(self.catalogs.removed.iter().map(|c| format!("catalog {c} no longer selected")));
        why.extend(self.roles.iter().map(|r| format!("role {}", r.role)));
        why.extend(self.settings.iter().map(|x| format!("{} {} -> {}", x.name, show(&x.old), show(&x.new))));
        if self.order_changed {
            why.push("precedence order".into());
        }
        if !why.is_empty() {
            let more = why.len().saturating_sub(6);
            why.truncate(6);
            if more > 0 {
                why.push(format!("{more} more"));
            }
            s.push_str(&format!("; {}", why.join(", ")));
        }
        s
    }

    /// The text report; `old` describes the side compared with.
    pub fn render(&self, old: &str) -> String {
        let mut s = format!("diff: {} -> {}\n", old, self.new.site.display());
        let c = &self.catalogs;
        if !c.added.is_empty() || !c.removed.is_empty() || c.reordered {
            let mut parts: Vec<String> = c.added.iter().map(|x| format!("+{x}")).collect();
            parts.extend(c.removed.iter().map(|x| format!("-{x}")));
            if c.reordered {
                parts.push("order changed".into());
            }
            s.push_str(&format!("catalogs: {}\n", parts.join(", ")));
        }
        for o in &self.options {
            s.push_str(&format!("option {}: {} -> {} ({})\n", o.option, show(&o.old), show(&o.new), o.catalogs.join(", ")));
        }
        for r in &self.roles {
            let mut parts: Vec<String> = r.added.iter().map(|x| format!("+{x}")).collect();
            parts.extend(r.removed.iter().map(|x| format!("-{x}")));
            if r.old_protected != r.new_protected {
                parts.push(if r.new_protected { "now protected" } else { "no longer protected" }.into());
            }
            s.push_str(&format!("role {}: {}\n", r.role, parts.join(", ")));
        }
        for x in &self.settings {
            s.push_str(&format!("setting {}: {} -> {}\n", x.name, show(&x.old), show(&x.new)));
            for f in &x.flips {
                s.push_str(&format!("    {}\n", f.text()));
            }
        }
        for (dir, d) in [(Direction::In, &self.inbound), (Direction::Out, &self.outbound)] {
            s.push_str(&render_dir(dir, d));
        }
        if self.order_changed {
            s.push_str(
                "precedence: the same flows in another order (an overlapping allow flow may count what another counted)\n",
            );
        }
        match self.same {
            true => s.push_str("same enforced behaviour\n"),
            false => s.push_str(&format!(
                "behaviour differs: {}; example tuples flip {} deny -> allow, {} allow -> deny (dataplane explain agrees)\n",
                self.summary(),
                self.flips.deny_to_allow,
                self.flips.allow_to_deny
            )),
        }
        s
    }
}

fn render_dir(dir: Direction, d: &DirDiff) -> String {
    if d.is_empty() {
        return format!("{}: no flow differs\n", dir.name());
    }
    let mut s = format!("{}: {} added, {} removed, {} changed\n", dir.name(), d.added.len(), d.removed.len(), d.changed.len());
    for (mark, list) in [('+', &d.added), ('-', &d.removed), ('~', &d.changed)] {
        for f in list {
            let deny = if f.action == Action::Deny { " deny" } else { "" };
            s.push_str(&format!(
                "  {mark} {} {}{deny} {} -> {} dport {} sport {}  [{}, \"{}\"]\n",
                f.id, f.protocol, f.from, f.to, f.dport, f.sport, f.catalog, f.table
            ));
            for c in &f.changes {
                let what = match (&c.added, &c.removed) {
                    (Some(a), Some(r)) => {
                        let mut v: Vec<String> = a.iter().map(|x| format!("+{x}")).collect();
                        v.extend(r.iter().map(|x| format!("-{x}")));
                        v.join(" ")
                    }
                    _ => format!("{} -> {}", c.old, c.new),
                };
                s.push_str(&format!("      {}: {what}\n", c.field.name()));
            }
            let causes: Vec<String> = f.causes.iter().map(Cause::to_string).collect();
            s.push_str(&format!("      because {}\n", causes.join("; ")));
            for x in &f.flips {
                let (o, n) = (&x.old, &x.new);
                let side = |v: &Answer| v.flow.clone().unwrap_or_else(|| v.reason.to_string());
                s.push_str(&format!("      {}  (old: {}, new: {})\n", x.text(), side(o), side(n)));
            }
        }
    }
    s
}

impl Flip {
    /// `allow -> deny  udp 10.0.0.1:40000 -> 10.0.0.2:3478`.
    fn text(&self) -> String {
        let out = if self.packet.direction == Direction::Out { " (sent by the server)" } else { "" };
        format!("{} -> {}  {}{out}", self.old.verdict, self.new.verdict, self.probe)
    }
}
