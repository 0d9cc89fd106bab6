//! A line diff of two JSON documents, for the run page's payload diff: what the ledger
//! sent Sage on one attempt against the attempt before (did the fixed setting change
//! the ledger account, the tax rate, the amounts?). The common head and tail are set
//! aside first (two attempts differ in a few lines); the rest is an exact longest-common-
//! subsequence table when it fits in [`MAX_CELLS`], else shown as removed then added —
//! still a true diff, only not the shortest, and never lines × lines of memory for two
//! 1,000-line invoices.

use serde_json::Value;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `same`, `added` or `removed` (a CSS class as well).
    pub kind: &'static str,
    pub text: String,
}

impl Line {
    /// The diff's margin mark.
    pub fn sign(&self) -> &'static str {
        match self.kind {
            "added" => "+",
            "removed" => "-",
            _ => " ",
        }
    }
}

fn lines(v: &Value) -> Vec<String> {
    serde_json::to_string_pretty(v)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The most table cells (4 bytes each) one diff may use: 1 MiB.
pub const MAX_CELLS: usize = 256 * 1024;

/// The lines of `new`, with those of `old` that are gone, in reading order.
pub fn json_lines(old: &Value, new: &Value) -> Vec<Line> {
    let (a, b) = (lines(old), lines(new));
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let same = |text: &String| Line {
        kind: "same",
        text: text.clone(),
    };
    let mut out: Vec<Line> = Vec::with_capacity(a.len().max(b.len()));
    out.extend(b[..head].iter().map(same));
    if (mid_a.len() + 1).saturating_mul(mid_b.len() + 1) <= MAX_CELLS {
        lcs_diff(mid_a, mid_b, &mut out);
    } else {
        out.extend(mid_a.iter().map(|text| Line {
            kind: "removed",
            text: text.clone(),
        }));
        out.extend(mid_b.iter().map(|text| Line {
            kind: "added",
            text: text.clone(),
        }));
    }
    out.extend(b[b.len() - tail..].iter().map(same));
    out
}

/// The exact diff of `a` and `b` by their longest common subsequence.
fn lcs_diff(a: &[String], b: &[String], out: &mut Vec<Line>) {
    // lcs[i][j]: common lines of a[i..] and b[j..], in one flat table.
    let width = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * width + j] = if a[i] == b[j] {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(Line {
                kind: "same",
                text: b[j].clone(),
            });
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
            // Removals before additions, as diffs are read.
            out.push(Line {
                kind: "removed",
                text: a[i].clone(),
            });
            i += 1;
        } else {
            out.push(Line {
                kind: "added",
                text: b[j].clone(),
            });
            j += 1;
        }
    }
}

/// Every line of `v` as unchanged (a first attempt: nothing to compare with).
pub fn plain(v: &Value) -> Vec<Line> {
    lines(v).into_iter().map(|text| Line { kind: "same", text }).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_changed_field_is_one_removal_and_one_addition() {
        let old = json!({"lines": [{"ledger_account_id": "4000", "net": "10.00"}], "reference": "INV-1"});
        let new = json!({"lines": [{"ledger_account_id": "4010", "net": "10.00"}], "reference": "INV-1"});
        let diff = json_lines(&old, &new);
        let changed: Vec<_> = diff.iter().filter(|l| l.kind != "same").collect();
        assert_eq!(changed.len(), 2, "{diff:?}");
        assert_eq!(changed[0].kind, "removed");
        assert!(changed[0].text.contains("\"4000\""));
        assert_eq!(changed[1].kind, "added");
        assert!(changed[1].text.contains("\"4010\""));
        // Reading order is kept: the new document's lines, in order.
        let new_text: Vec<_> = diff
            .iter()
            .filter(|l| l.kind != "removed")
            .map(|l| l.text.clone())
            .collect();
        assert_eq!(new_text, lines(&new));
    }

    #[test]
    fn identical_documents_have_no_change_and_added_keys_show() {
        let v = json!({"a": 1, "b": [1, 2]});
        assert!(json_lines(&v, &v).iter().all(|l| l.kind == "same"));
        let more = json!({"a": 1, "b": [1, 2], "c": true});
        let diff = json_lines(&v, &more);
        assert!(diff.iter().any(|l| l.kind == "added" && l.text.contains("\"c\": true")));
        assert_eq!(plain(&v).len(), lines(&v).len());
    }

    /// Two 1,000-line invoices that differ everywhere would need a table of a million
    /// cells and more per extra line; the diff stays bounded and still reads both.
    #[test]
    fn two_large_documents_that_differ_throughout_stay_bounded_and_complete() {
        let lines_of = |prefix: &str| -> Vec<Value> {
            (0..1_500)
                .map(|i| json!({ "description": format!("{prefix} {i}") }))
                .collect()
        };
        let (old, new) = (json!({ "lines": lines_of("old") }), json!({ "lines": lines_of("new") }));
        let (a, b) = (lines(&old), lines(&new));
        assert!(a.len() * b.len() > 4 * MAX_CELLS, "large enough to matter");
        let diff = json_lines(&old, &new);
        let kept: Vec<_> = diff
            .iter()
            .filter(|l| l.kind != "removed")
            .map(|l| l.text.clone())
            .collect();
        let gone: Vec<_> = diff
            .iter()
            .filter(|l| l.kind != "added")
            .map(|l| l.text.clone())
            .collect();
        assert_eq!(kept, b, "every new line, in order");
        assert_eq!(gone, a, "every old line, in order");
        // A single changed line among thousands is still found exactly.
        let mut edited = new.clone();
        edited["lines"][700]["description"] = json!("changed");
        let diff = json_lines(&new, &edited);
        assert_eq!(diff.iter().filter(|l| l.kind != "same").count(), 2);
    }
}
