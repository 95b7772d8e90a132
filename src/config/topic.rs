//! Topic-exchange patterns (words between dots, `*` one word, `#` zero or more) and their
//! matcher, used for bindings, routes, revocation keys and the clients' selections.
//!
//! A client's selection is matched on the consumer task once per delivery, so the matcher
//! must not let a pattern buy time there: it never backtracks, and a [`Pattern`] is read once
//! when it is given, so a pattern longer than the event type is refused without reading it.

/// Most words a key is split into on the stack; longer keys take an allocation instead.
/// The catalog's types have four words, and the array is filled for every connection with
/// a selection on every delivery, so it is kept small (256 bytes) rather than sized for
/// the longest routing key (128 words).
const STACK_WORDS: usize = 16;

/// A topic pattern read once: its text, where its words end, and what rules keys out
/// without looking at them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: Box<str>,
    /// End of each word in `text` (patterns are at most 255 bytes, so one byte each).
    ends: Box<[u8]>,
    /// Words that are not `#`: a key with fewer cannot match.
    fixed_words: usize,
    has_hash: bool,
}

impl Pattern {
    /// `text` as a pattern, `None` when it is longer than 255 bytes.
    pub fn new(text: &str) -> Option<Pattern> {
        if text.len() > u8::MAX as usize {
            return None;
        }
        let mut ends = Vec::new();
        let (mut fixed_words, mut has_hash) = (0, false);
        let mut end = 0;
        for word in text.split('.') {
            end += word.len();
            // The cast holds: `end` is at most the text's length.
            ends.push(end as u8);
            end += 1;
            if word == "#" {
                has_hash = true;
            } else {
                fixed_words += 1;
            }
        }
        Some(Pattern {
            text: text.into(),
            ends: ends.into(),
            fixed_words,
            has_hash,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `key`, split into its words, matches.
    pub fn matches_words(&self, key: &[&str]) -> bool {
        let ruled_out = if self.has_hash {
            key.len() < self.fixed_words
        } else {
            key.len() != self.fixed_words
        };
        !ruled_out && match_words(self, key, &mut 0)
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        with_words(key, |words| self.matches_words(words))
    }
}

/// Topic-exchange matching of `routing_key` against `pattern`, for patterns used once (the
/// configuration's); selections keep a [`Pattern`]. A pattern without wildcards is a plain
/// comparison.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    if !pattern.contains(['*', '#']) {
        return pattern == routing_key;
    }
    with_words(pattern, |p| {
        with_words(routing_key, |k| match_words(&p, k, &mut 0))
    })
}

/// Calls `f` with the words of `s`, split on the stack when they are few enough.
pub fn with_words<R>(s: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    let mut stack = [""; STACK_WORDS];
    let mut n = 0;
    for word in s.split('.') {
        if n == STACK_WORDS {
            return f(&s.split('.').collect::<Vec<_>>());
        }
        stack[n] = word;
        n += 1;
    }
    f(&stack[..n])
}

/// Word access for both kinds of pattern.
trait Words {
    fn count(&self) -> usize;
    fn word(&self, i: usize) -> &str;
}

impl Words for &[&str] {
    fn count(&self) -> usize {
        self.len()
    }
    fn word(&self, i: usize) -> &str {
        self[i]
    }
}

impl Words for Pattern {
    fn count(&self) -> usize {
        self.ends.len()
    }
    fn word(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1]) + 1
        };
        &self.text[start..usize::from(self.ends[i])]
    }
}

/// The matcher; `cost` counts its word comparisons.
///
/// Without backtracking: the words before the first `#` must start the key, the words after
/// the last `#` must end it, and each run of words between two `#`s is taken at its
/// leftmost place in what is left. Leftmost is always right: a later place leaves less
/// room for the rest, and the `#`s on either side take whatever lies between. Runs of `#`
/// count as one. The work is at most (words of the key) × (words of the pattern)
/// comparisons, and one pass over the key for the patterns people write (one `#` at an
/// end); a recursive matcher needed exponential time for `#.#.#…` against a long key.
fn match_words(pattern: &impl Words, key: &[&str], cost: &mut usize) -> bool {
    let (p_len, k_len) = (pattern.count(), key.len());
    let same = |p: usize, k: usize, cost: &mut usize| {
        *cost += 1;
        let word = pattern.word(p);
        word == "*" || word == key[k]
    };
    // The words before the first `#`, at the start of the key.
    let mut p = 0;
    while p < p_len && pattern.word(p) != "#" {
        if p >= k_len || !same(p, p, cost) {
            return false;
        }
        p += 1;
    }
    if p == p_len {
        return k_len == p_len;
    }
    let mut k = p;
    loop {
        while p < p_len && pattern.word(p) == "#" {
            p += 1;
        }
        // The next run of words, `pattern[p..end]`.
        let mut end = p;
        while end < p_len && pattern.word(end) != "#" {
            end += 1;
        }
        let len = end - p;
        if len == 0 {
            // The pattern ends in `#`: it takes whatever is left.
            return true;
        }
        if len > k_len - k {
            return false;
        }
        let run_at = |at: usize, cost: &mut usize| (0..len).all(|i| same(p + i, at + i, cost));
        if end == p_len {
            // The words after the last `#` end the key.
            return run_at(k_len - len, cost);
        }
        match (k..=k_len - len).find(|&at| run_at(at, cost)) {
            Some(at) => k = at + len,
            None => return false,
        }
        p = end;
    }
}

/// Whether some routing key matches both topic patterns (the configuration's check that
/// two routes' bindings do not overlap). Each pair of positions is worked out once, so two
/// patterns of `n` and `m` words cost at most `n × m` steps, where plain recursion on `#`
/// runs was exponential.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    // `tail[i][j]`: whether `a[i..]` and `b[j..]` overlap, filled from the ends.
    let mut tail = vec![vec![false; b.len() + 1]; a.len() + 1];
    for i in (0..=a.len()).rev() {
        for j in (0..=b.len()).rev() {
            tail[i][j] = match (a.get(i), b.get(j)) {
                (None, None) => true,
                // `#` matches nothing more, or absorbs one word the other side must match.
                (Some(&"#"), _) => tail[i + 1][j] || (j < b.len() && tail[i][j + 1]),
                (_, Some(&"#")) => tail[i][j + 1] || (i < a.len() && tail[i + 1][j]),
                (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && tail[i + 1][j + 1],
                _ => false,
            };
        }
    }
    tail[0][0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        for (p, k, want) in [
            ("identity.user.banned.v1", "identity.user.banned.v1", true),
            ("identity.user.banned.v1", "identity.user.banned.v2", false),
            ("identity.*.banned.v1", "identity.user.banned.v1", true),
            ("identity.#", "identity.user.banned.v1", true),
            ("identity.#", "identity", true),
            ("#", "a.b", true),
            ("#", "", true),
            ("render.job.#", "render.jobs.x", false),
            ("*.job.*", "render.job", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c.z.y", false),
            ("#.z", "z", true),
            ("#.z", "a.z.z", true),
            ("#.#.z", "a.b", false),
            ("#.b.#.d", "a.b.c.d", true),
            ("#.b.#.d", "a.b.c.b", false),
            ("#.b.*.#", "a.b", false),
            ("#.b.*.#", "a.b.c", true),
            ("*.#.*", "a", false),
            ("*.#.*", "a.b", true),
            ("#.a.a.b.#", "a.a.a.a.b", true),
            ("#.a.a.b", "a.a.a.b.a.a.b", true),
        ] {
            assert_eq!(topic_matches(p, k), want, "{p} vs {k}");
            assert_eq!(Pattern::new(p).unwrap().matches(k), want, "{p} vs {k}");
        }
    }

    /// The obvious recursive matcher, exponential on `#` runs but plainly right, as the
    /// reference on every small pattern and key.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| reference(rest, &k[i..])),
            Some((w, rest)) => {
                !k.is_empty() && (*w == "*" || *w == k[0]) && reference(rest, &k[1..])
            }
        }
    }

    /// Every sequence of 1 to `max` words from `alphabet`.
    fn all(alphabet: &[&'static str], max: u32) -> Vec<Vec<&'static str>> {
        let mut out = Vec::new();
        for len in 1..=max {
            for n in 0..alphabet.len().pow(len) {
                let (mut n, mut words) = (n, Vec::new());
                for _ in 0..len {
                    words.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                out.push(words);
            }
        }
        out
    }

    #[test]
    fn agrees_with_the_reference_on_every_small_pattern_and_key() {
        let (patterns, keys) = (all(&["a", "b", "*", "#"], 5), all(&["a", "b"], 6));
        for p in &patterns {
            let pattern = Pattern::new(&p.join(".")).unwrap();
            for k in &keys {
                let want = reference(p, k);
                let key = k.join(".");
                assert_eq!(
                    topic_matches(pattern.as_str(), &key),
                    want,
                    "{pattern:?} {key}"
                );
                assert_eq!(pattern.matches(&key), want, "{pattern:?} vs {key}");
            }
        }
    }

    #[test]
    fn hostile_patterns_cost_at_most_key_words_times_pattern_words() {
        let key = ["w"; 127].join(".");
        let hashes = ["#"; 100].join(".");
        for pattern in [
            format!("{hashes}.z0"),
            format!("{}.z0", ["#.w"; 60].join(".")),
            format!("#.{}.z.#", ["w"; 60].join(".")),
            format!("#.{}.#.z", ["*"; 60].join(".")),
        ] {
            let words: Vec<&str> = pattern.split('.').collect();
            let mut cost = 0;
            let matched = with_words(&key, |k| match_words(&words.as_slice(), k, &mut cost));
            assert!(!matched, "{pattern}");
            assert!(
                cost <= 127 * words.len(),
                "{cost} comparisons for {pattern}"
            );
        }
        // The common shapes take one pass; a pattern longer than the key, none.
        let key = ["render", "job", "progress", "v1"];
        for (pattern, want) in [("render.job.#", 2), ("#.v1", 1), ("a.b.c.d.e.#", 0)] {
            let p = Pattern::new(pattern).unwrap();
            let mut cost = 0;
            if p.matches_words(&key) || p.fixed_words <= key.len() {
                match_words(&p, &key, &mut cost);
            }
            assert_eq!(cost, want, "{pattern}");
        }
    }

    #[test]
    fn overlap_of_long_hash_runs_is_worked_out_once() {
        // Exponential for plain recursion: every `#` of one side against every word of
        // the other.
        let a = format!("{}.a", ["#"; 100].join("."));
        let b = format!("{}.b", ["#"; 100].join("."));
        assert!(!patterns_overlap(&a, &b));
        assert!(patterns_overlap(&a, &format!("{}.a", ["*"; 100].join("."))));
    }

    #[test]
    fn long_keys_and_patterns() {
        let long = ["w"; 300].join(".");
        assert!(topic_matches("#.w", &long));
        assert!(!topic_matches("#.z", &long));
        assert!(Pattern::new(&"a".repeat(256)).is_none());
        assert!(
            Pattern::new(&["w"; 128].join("."))
                .unwrap()
                .matches(&["w"; 128].join("."))
        );
    }
}
