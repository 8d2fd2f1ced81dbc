//! Identifiers in Fly's formats: 14 hex characters for machines, ULIDs for versions and events.

use rand::Rng;

/// A new machine id: 14 lowercase hex characters, as Fly's look.
pub fn new_machine_id() -> String {
    let n: u64 = rand::rng().random::<u64>() & 0x00ff_ffff_ffff_ffff;
    format!("{n:014x}")
}

/// A new machine version (`instance_id`): a 26-character ULID.
pub fn new_instance_id() -> String {
    ulid::Ulid::new().to_string()
}

/// A new event id (ULID: sorts by creation time).
pub fn new_event_id() -> String {
    ulid::Ulid::new().to_string()
}

/// App names follow Fly's rules: lowercase letters, digits and dashes, starting with a letter,
/// at most 63 characters (they become DNS labels).
pub fn valid_app_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || name.len() > 63 {
        return Err(format!("app name {name:?} must be 1 to 63 characters long"));
    }
    if !ok_chars {
        return Err(format!(
            "app name {name:?} may contain only lowercase letters, digits and dashes"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) || name.ends_with('-') {
        return Err(format!(
            "app name {name:?} must start with a letter and not end with a dash"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fly_shapes() {
        let id = new_machine_id();
        assert_eq!(id.len(), 14);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(new_instance_id().len(), 26);
    }

    #[test]
    fn app_names() {
        assert!(valid_app_name("my-app-1").is_ok());
        for bad in [
            "",
            "My App",
            "my app",
            "1app",
            "app-",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(valid_app_name(bad).is_err(), "{bad:?}");
        }
    }
}
