//! Channel names, namespaces and permission patterns.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelNameError {
    /// Empty name.
    #[error("channel name is empty")]
    Empty,
    /// Longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// A byte outside the allowed set.
    #[error(
        "channel name contains {0:?}; allowed are ASCII letters, digits and _ - . : @ / = + # ,"
    )]
    BadChar(char),
    /// Starts or ends with `:`.
    #[error("channel name must not start or end with ':'")]
    BadColon,
}

/// Checks a channel name against the rules of `docs/protocol.md` and returns its namespace
/// (the part before the first `:`, or `""`).
///
/// ```
/// use duplex_hub::channel::validate;
/// assert_eq!(validate("ticker:prices"), Ok("ticker"));
/// assert_eq!(validate("lobby"), Ok(""));
/// assert!(validate("no spaces").is_err());
/// ```
pub fn validate(name: &str) -> Result<&str, ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::TooLong);
    }
    if let Some(c) = name.chars().find(|c| !is_channel_char(*c)) {
        return Err(ChannelNameError::BadChar(c));
    }
    if name.starts_with(':') || name.ends_with(':') {
        return Err(ChannelNameError::BadColon);
    }
    Ok(namespace_of(name))
}

/// The namespace of an already valid channel name.
pub fn namespace_of(name: &str) -> &str {
    name.split_once(':').map_or("", |(ns, _)| ns)
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '-' | '.' | ':' | '@' | '/' | '=' | '+' | '#' | ',')
}

/// Whether `user` may use `channel` in a namespace with `personal = true`: a name with a `#`
/// belongs to the users listed after its last `#`, separated by commas (`user:#42` to user
/// 42, `dm:#42,43` to users 42 and 43); a name without `#` is not personal. Anonymous
/// connections own no personal channel.
///
/// ```
/// use duplex_hub::channel::personal_allows;
/// assert!(personal_allows("dm:#42,43", Some("43")));
/// assert!(!personal_allows("dm:#42,43", Some("4")));
/// assert!(!personal_allows("user:#42", None));
/// assert!(personal_allows("lobby", None));
/// ```
pub fn personal_allows(channel: &str, user: Option<&str>) -> bool {
    match channel.rsplit_once('#') {
        None => true,
        Some((_, users)) => user.is_some_and(|u| {
            users
                .split(',')
                .any(|listed| !listed.is_empty() && listed == u)
        }),
    }
}

/// Whether `channel` matches one of `patterns`: an exact name, a prefix ending in `*`, or `*`.
///
/// ```
/// use duplex_hub::channel::matches_any;
/// let p = vec!["lobby".to_string(), "chat:*".to_string()];
/// assert!(matches_any(&p, "chat:rust"));
/// assert!(!matches_any(&p, "lobby2"));
/// ```
pub fn matches_any(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => p == channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert_eq!(validate(""), Err(ChannelNameError::Empty));
        assert_eq!(validate(&"a".repeat(256)), Err(ChannelNameError::TooLong));
        assert!(validate(&"a".repeat(255)).is_ok());
        assert_eq!(validate("a b"), Err(ChannelNameError::BadChar(' ')));
        assert_eq!(validate("é"), Err(ChannelNameError::BadChar('é')));
        assert_eq!(validate(":a"), Err(ChannelNameError::BadColon));
        assert_eq!(validate("a:"), Err(ChannelNameError::BadColon));
        assert_eq!(validate("a:b:c"), Ok("a"));
        assert_eq!(validate("user@x/y=z+1.2_-"), Ok(""));
        assert_eq!(validate("dm:#42,43"), Ok("dm"));
    }

    #[test]
    fn personal_channels_name_their_users_after_the_last_hash() {
        assert!(personal_allows("user:#42", Some("42")));
        assert!(!personal_allows("user:#42", Some("420")));
        assert!(!personal_allows("user:#42", Some("")));
        assert!(personal_allows("a#b:#c", Some("c")));
        assert!(!personal_allows("a#b:#c", Some("b")));
        assert!(
            !personal_allows("user:#", Some("")),
            "an empty list names nobody"
        );
        assert!(!personal_allows("dm:#1,,2", Some("")));
    }

    #[test]
    fn patterns() {
        let star = vec!["*".to_string()];
        assert!(matches_any(&star, "anything:at-all"));
        assert!(!matches_any(&[], "lobby"));
        let exact = vec!["a".to_string()];
        assert!(matches_any(&exact, "a"));
        assert!(!matches_any(&exact, "ab"));
    }
}
