//! Expected Autobahn results: loading, comparing, blessing, and the docs summary.

use std::{
    cmp::Ordering,
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{CaseResult, EXCLUDED};

/// The behaviors that count as passing; everything else fails a run.
const PASSING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

/// Behaviors in the order counts are printed.
const ORDER: [&str; 5] = [
    "OK",
    "NON-STRICT",
    "INFORMATIONAL",
    "FAILED",
    "UNIMPLEMENTED",
];

const SUMMARY_BEGIN: &str = "<!-- autobahn-summary:begin -->";
const SUMMARY_END: &str = "<!-- autobahn-summary:end -->";

/// Whether `behavior` is a passing one.
pub(crate) fn passes(behavior: &str) -> bool {
    PASSING.contains(&behavior)
}

/// Lower is better. NON-STRICT and INFORMATIONAL rank alike: wstest gives INFORMATIONAL to
/// cases that have no right answer, not to better or worse implementations.
fn rank(behavior: &str) -> u8 {
    match behavior {
        "OK" => 0,
        "NON-STRICT" | "INFORMATIONAL" => 1,
        _ => 2,
    }
}

/// A case id such as `9.1.10`, ordered number by number (`9.1.2` < `9.1.10`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaseId(String);

impl CaseId {
    pub(crate) fn new(id: &str) -> Self {
        Self(id.to_owned())
    }

    fn parts(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.0
            .split('.')
            .map(|part| (part.parse().unwrap_or(u64::MAX), part))
    }

    /// Whether the case is selected by a wstest pattern. wstest turns a pattern with `*` into
    /// a regex matched at the start of the id only; a pattern without `*` names one case.
    pub(crate) fn matches(&self, pattern: &str) -> bool {
        if pattern.contains('*') {
            glob_prefix(pattern.as_bytes(), self.0.as_bytes())
        } else {
            pattern == self.0
        }
    }
}

impl Ord for CaseId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(other.parts())
    }
}

impl PartialOrd for CaseId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `pattern` (with `*` for any run of characters) matches a prefix of `text`.
fn glob_prefix(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => true,
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_prefix(rest, &text[skip..])),
        Some((c, rest)) => text.first() == Some(c) && glob_prefix(rest, &text[1..]),
    }
}

/// Whether a case is part of a run with these patterns (empty = all) and the exclusions.
fn selected(id: &CaseId, patterns: &[String]) -> bool {
    let wanted = patterns.is_empty() || patterns.iter().any(|p| id.matches(p));
    wanted && !EXCLUDED.iter().any(|p| id.matches(p))
}

/// How many cases had each behavior, in a fixed order.
#[derive(Debug, Default)]
pub(crate) struct Counts(BTreeMap<String, usize>);

impl Counts {
    pub(crate) fn of<'a>(behaviors: impl Iterator<Item = &'a str>) -> Self {
        let mut counts = BTreeMap::new();
        for behavior in behaviors {
            *counts.entry(behavior.to_owned()).or_insert(0) += 1;
        }
        Self(counts)
    }

    fn get(&self, behavior: &str) -> usize {
        self.0.get(behavior).copied().unwrap_or(0)
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let others = self.0.keys().filter(|k| !ORDER.contains(&k.as_str()));
        let mut first = true;
        for behavior in ORDER.iter().copied().chain(others.map(String::as_str)) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{behavior} {}", self.get(behavior))?;
        }
        Ok(())
    }
}

/// The committed expectation of one role: case id -> behavior.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    cases: BTreeMap<CaseId, String>,
    /// Where it was loaded from, if the file exists.
    source: Option<PathBuf>,
}

impl Expected {
    /// Loads `path`; a missing file is an empty expectation (every case then fails with
    /// "no expectation" until it is blessed).
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let object = value
            .as_object()
            .with_context(|| format!("{} is not a JSON object", path.display()))?;
        let mut cases = BTreeMap::new();
        for (id, behavior) in object {
            let behavior = behavior
                .as_str()
                .with_context(|| format!("{}: case {id} is not a string", path.display()))?;
            cases.insert(CaseId::new(id), behavior.to_owned());
        }
        Ok(Self {
            cases,
            source: Some(path.to_owned()),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.cases.len()
    }

    pub(crate) fn insert(&mut self, id: CaseId, behavior: String) {
        self.cases.insert(id, behavior);
    }

    /// Writes one case per line, in case order, so diffs of blessed files read well.
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let mut text = String::from("{\n");
        for (i, (id, behavior)) in self.cases.iter().enumerate() {
            let comma = if i + 1 < self.cases.len() { "," } else { "" };
            text.push_str(&format!(
                "  {}: {}{comma}\n",
                Value::from(id.0.as_str()),
                Value::from(behavior.as_str())
            ));
        }
        text.push_str("}\n");
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Compares a run (of the cases `patterns` selects) with this expectation.
    pub(crate) fn compare(
        &self,
        results: &BTreeMap<CaseId, CaseResult>,
        patterns: &[String],
    ) -> Verdict {
        let mut verdict = Verdict {
            file: self.source.clone(),
            ..Verdict::default()
        };
        for (id, expected) in self.cases.iter().filter(|(id, _)| selected(id, patterns)) {
            let Some(got) = results.get(id) else {
                verdict.failures.push(format!(
                    "{id}: expected {expected}, missing from the report"
                ));
                continue;
            };
            let got = &got.behavior;
            if !passes(got) || rank(got) > rank(expected) {
                verdict
                    .failures
                    .push(format!("{id}: expected {expected}, got {got}"));
            } else if got != expected {
                verdict.changes.push(format!("{id}: {expected} -> {got}"));
            }
        }
        for (id, result) in results
            .iter()
            .filter(|(id, _)| !self.cases.contains_key(id))
        {
            verdict.failures.push(format!(
                "{id}: no expectation recorded, got {}",
                result.behavior
            ));
        }
        verdict
    }
}

/// The outcome of a comparison.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    file: Option<PathBuf>,
    /// Cases that fail: worse than expected, missing, or not a passing behavior.
    failures: Vec<String>,
    /// Cases that pass but differ from the expectation (better, or another passing kind).
    changes: Vec<String>,
}

impl Verdict {
    pub(crate) fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub(crate) fn print(&self) {
        let file = self
            .file
            .as_ref()
            .map_or("(no expected file yet)".into(), |f| f.display().to_string());
        if !self.changes.is_empty() {
            println!(
                "{} cases pass but differ from {file} (`cargo xtask autobahn --bless` records them):",
                self.changes.len()
            );
            for change in &self.changes {
                println!("  {change}");
            }
        }
        if self.file.is_none() {
            println!(
                "no expectations recorded yet: once every case passes, \
                 `cargo xtask autobahn --bless` writes them"
            );
        }
        if self.failures.is_empty() {
            println!("every case is as expected in {file}");
        } else {
            println!("{} cases fail against {file}:", self.failures.len());
            for failure in &self.failures {
                println!("  {failure}");
            }
        }
    }

    /// One line for the summary table.
    pub(crate) fn headline(&self) -> String {
        let shown: Vec<&str> = self.failures.iter().take(3).map(String::as_str).collect();
        let more = self.failures.len().saturating_sub(shown.len());
        let mut line = format!("{} cases fail: {}", self.failures.len(), shown.join("; "));
        if more > 0 {
            line.push_str(&format!("; and {more} more"));
        }
        line
    }
}

/// Rewrites the table between the summary markers of `doc` from the expectations.
pub(crate) fn write_summary(
    doc: &Path,
    server: &Expected,
    server_h2: &Expected,
    client: &Expected,
) -> Result<()> {
    let text = fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (Some(begin), Some(end)) = (text.find(SUMMARY_BEGIN), text.find(SUMMARY_END)) else {
        bail!(
            "{} lacks the lines {SUMMARY_BEGIN} and {SUMMARY_END}",
            doc.display()
        );
    };
    let excluded: Vec<String> = EXCLUDED.iter().map(|p| format!("`{p}`")).collect();
    let excluded = if excluded.is_empty() {
        "none".to_owned()
    } else {
        excluded.join(", ")
    };
    let mut table = format!(
        "{SUMMARY_BEGIN}\n| role | cases | {} | excluded |\n|---|---:|{}---|\n",
        ORDER.join(" | "),
        "---:|".repeat(ORDER.len())
    );
    for (role, expected) in [
        ("server (`duplex echo`)", server),
        ("server over HTTP/2 (`duplex echo --http2`)", server_h2),
        ("client (`duplex autobahn-client`)", client),
    ] {
        let counts = Counts::of(expected.cases.values().map(String::as_str));
        let cells: Vec<String> = ORDER.iter().map(|b| counts.get(b).to_string()).collect();
        table.push_str(&format!(
            "| {role} | {} | {} | {excluded} |\n",
            expected.len(),
            cells.join(" | ")
        ));
    }
    let updated = format!("{}{table}{}", &text[..begin], &text[end..]);
    fs::write(doc, updated).with_context(|| format!("writing {}", doc.display()))?;
    println!("updated the summary table in {}", doc.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(pairs: &[(&str, &str)]) -> BTreeMap<CaseId, CaseResult> {
        pairs
            .iter()
            .map(|(id, behavior)| {
                let result = CaseResult {
                    behavior: (*behavior).into(),
                    close: "OK".into(),
                };
                (CaseId::new(id), result)
            })
            .collect()
    }

    fn expected(pairs: &[(&str, &str)]) -> Expected {
        let mut expected = Expected::default();
        for (id, behavior) in pairs {
            expected.insert(CaseId::new(id), (*behavior).into());
        }
        expected
    }

    #[test]
    fn case_ids_sort_by_number() {
        let mut ids: Vec<CaseId> = ["9.1.10", "10.1.1", "9.1.2", "1.1.1"]
            .map(CaseId::new)
            .into();
        ids.sort();
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(ids, ["1.1.1", "9.1.2", "9.1.10", "10.1.1"]);
    }

    #[test]
    fn patterns_follow_wstest() {
        let id = CaseId::new("12.1.3");
        assert!(id.matches("12.*"));
        assert!(id.matches("*"));
        assert!(!id.matches("1.*"));
        assert!(!CaseId::new("10.1.1").matches("1.*"));
        assert!(id.matches("12.1.3"));
        assert!(!id.matches("12.1"));
        assert_eq!(
            selected(&id, &[]),
            !super::super::EXCLUDED.iter().any(|p| id.matches(p))
        );
        assert!(selected(&CaseId::new("9.1.1"), &["9.*".into()]));
        assert!(!selected(&CaseId::new("1.1.1"), &["9.*".into()]));
    }

    #[test]
    fn worse_missing_and_unknown_cases_fail() {
        let expected = expected(&[
            ("1.1.1", "OK"),
            ("1.1.2", "OK"),
            ("6.4.3", "NON-STRICT"),
            ("7.1.6", "INFORMATIONAL"),
        ]);
        let run = results(&[
            ("1.1.1", "FAILED"),
            ("6.4.3", "OK"),
            ("7.1.6", "INFORMATIONAL"),
            ("2.1", "OK"),
        ]);
        let verdict = expected.compare(&run, &[]);
        assert_eq!(
            verdict.failures,
            [
                "1.1.1: expected OK, got FAILED",
                "1.1.2: expected OK, missing from the report",
                "2.1: no expectation recorded, got OK",
            ]
        );
        assert_eq!(verdict.changes, ["6.4.3: NON-STRICT -> OK"]);
        assert!(!verdict.passed());
    }

    #[test]
    fn a_failure_fails_even_when_it_was_expected() {
        let expected = expected(&[("1.1.1", "FAILED"), ("2.1", "UNIMPLEMENTED")]);
        let run = results(&[("1.1.1", "FAILED"), ("2.1", "UNIMPLEMENTED")]);
        assert_eq!(expected.compare(&run, &[]).failures.len(), 2);
    }

    #[test]
    fn ok_to_non_strict_is_a_regression() {
        let expected = expected(&[("6.4.3", "OK")]);
        let verdict = expected.compare(&results(&[("6.4.3", "NON-STRICT")]), &[]);
        assert_eq!(verdict.failures, ["6.4.3: expected OK, got NON-STRICT"]);
    }

    #[test]
    fn a_partial_run_checks_only_its_cases() {
        let expected = expected(&[("1.1.1", "OK"), ("9.1.1", "OK")]);
        let verdict = expected.compare(&results(&[("9.1.1", "OK")]), &["9.*".into()]);
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn counts_print_in_fixed_order() {
        let counts = Counts::of(["OK", "FAILED", "OK", "WEIRD"].into_iter());
        assert_eq!(
            counts.to_string(),
            "OK 2, NON-STRICT 0, INFORMATIONAL 0, FAILED 1, UNIMPLEMENTED 0, WEIRD 1"
        );
    }
}
