//! "Did you mean" suggestions for unknown names, ranked by edit distance.

/// Returns the candidate closest to `name`, if one is close enough to be a likely typo.
///
/// A candidate qualifies when its Damerau-Levenshtein distance is at most a third of the
/// longer name (at least 1), or when one name is a prefix of the other, as in
/// `kernel_size` for `kernel`.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        if candidate == name {
            continue;
        }
        let distance = strsim::damerau_levenshtein(name, candidate);
        let limit = (name.len().max(candidate.len()) / 3).max(1);
        let prefix =
            name.len() >= 3 && (candidate.starts_with(name) || name.starts_with(candidate));
        if distance > limit && !prefix {
            continue;
        }
        if best.is_none_or(|(d, c)| distance < d || (distance == d && candidate < c)) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Formats a help line: "did you mean `x`?" or a list of what is valid there.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
    what: &str,
) -> String {
    match closest(name, candidates.clone()) {
        Some(c) => format!("did you mean `{c}`?"),
        None => {
            let mut all: Vec<&str> = candidates.into_iter().collect();
            all.sort_unstable();
            all.dedup();
            if all.is_empty() {
                format!("no {what} is defined here")
            } else if all.len() > 24 {
                format!("{what}s defined here include {}", quote_list(&all[..24]))
            } else {
                format!("{what}s defined here: {}", quote_list(&all))
            }
        }
    }
}

fn quote_list(items: &[&str]) -> String {
    items.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn typo_finds_nearest_op() {
        assert_eq!(closest("conv2", ["conv2d", "relu", "linear"]), Some("conv2d"));
        assert_eq!(closest("batchnorm", ["batch_norm", "concat"]), Some("batch_norm"));
    }

    #[test]
    fn prefix_counts_as_close() {
        assert_eq!(closest("kernel_size", ["kernel", "stride", "padding"]), Some("kernel"));
    }

    #[test]
    fn distant_name_has_no_suggestion() {
        assert_eq!(closest("frobnicate", ["conv2d", "relu"]), None);
    }
}
