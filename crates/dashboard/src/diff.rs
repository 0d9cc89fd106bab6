//! A line diff of two JSON documents, for the run page's payload diff: what the ledger
//! sent Sage on one attempt against the attempt before (did the fixed setting change
//! the ledger account, the tax rate, the amounts?). Bodies are a few hundred lines at
//! most, so the plain longest-common-subsequence table is fast enough and exact.

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

/// The lines of `new`, with those of `old` that are gone, in reading order.
pub fn json_lines(old: &Value, new: &Value) -> Vec<Line> {
    let (a, b) = (lines(old), lines(new));
    // lcs[i][j]: common lines of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(a.len().max(b.len())));
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(Line {
                kind: "same",
                text: b[j].clone(),
            });
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
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
    out
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
}
