//! The one glob the approved list needs: `*` for any run of characters within one
//! path segment, `**` for any run of characters across segments. Nothing else is
//! special, so a literal name matches only itself.

/// Whether `text` matches `pattern` as a whole.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Byte(u8),
        /// `*`: anything but `/`.
        Star,
        /// `**`: anything.
        Stars,
    }
    let bytes = pattern.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'*' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'*').count();
            tokens.push(if run >= 2 { Token::Stars } else { Token::Star });
            i += run;
        } else {
            tokens.push(Token::Byte(bytes[i]));
            i += 1;
        }
    }
    let text = text.as_bytes();
    // matches[j]: tokens[t..] match text[j..], computed for t from the end down.
    let mut matches = vec![false; text.len() + 1];
    matches[text.len()] = true;
    for token in tokens.iter().rev() {
        let mut next = vec![false; text.len() + 1];
        for j in (0..=text.len()).rev() {
            next[j] = match token {
                Token::Byte(b) => j < text.len() && text[j] == *b && matches[j + 1],
                // Either the star matches nothing here, or it takes one more byte.
                Token::Star => matches[j] || (j < text.len() && text[j] != b'/' && next[j + 1]),
                Token::Stars => matches[j] || (j < text.len() && next[j + 1]),
            };
        }
        matches = next;
    }
    matches[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_match_only_themselves() {
        assert!(glob_match("ghcr.io/lab/x", "ghcr.io/lab/x"));
        assert!(!glob_match("ghcr.io/lab/x", "ghcr.io/lab/xy"));
        assert!(!glob_match("ghcr.io/lab/x", "ghcr.io/lab/"));
        assert!(!glob_match("ghcr.io/lab/x", "xghcr.io/lab/x"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn a_star_stays_within_one_segment() {
        assert!(glob_match("ghcr.io/lab/*", "ghcr.io/lab/cuda-sample"));
        assert!(!glob_match("ghcr.io/lab/*", "ghcr.io/lab/sub/cuda"));
        assert!(!glob_match("ghcr.io/lab/*", "ghcr.io/laboratory/x"));
        assert!(glob_match("ghcr.io/*/cuda-*", "ghcr.io/lab/cuda-sample"));
        assert!(!glob_match("ghcr.io/*/cuda-*", "ghcr.io/lab/tool"));
        assert!(glob_match("ghcr.io/lab/*x*", "ghcr.io/lab/x"));
        assert!(glob_match("nbody-*", "nbody-cuda11.7.1"));
        assert!(!glob_match("*", "a/b"));
    }

    #[test]
    fn double_stars_cross_segments() {
        assert!(glob_match("ghcr.io/lab/**", "ghcr.io/lab/sub/cuda"));
        assert!(glob_match("ghcr.io/lab/**", "ghcr.io/lab/cuda"));
        assert!(!glob_match("ghcr.io/lab/**", "ghcr.io/labx/cuda"));
        assert!(glob_match("**/cuda", "ghcr.io/lab/cuda"));
    }

    #[test]
    fn many_stars_stay_fast() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert!(!glob_match(pattern, &"a".repeat(200)));
    }
}
