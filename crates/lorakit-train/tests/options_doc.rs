//! docs/training-options.md lists every config key (so the documentation cannot fall behind).

#[test]
fn every_config_key_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/training-options.md")).unwrap();
    let mut missing = Vec::new();
    for (section, keys) in lorakit_train::config::known_keys() {
        let start = doc.find(&format!("## [{section}]")).unwrap_or_else(|| panic!("no [{section}] section"));
        let end = doc[start + 3..].find("\n## ").map_or(doc.len(), |i| start + 3 + i);
        for key in keys {
            if !doc[start..end].contains(&format!("| `{key}` |")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/training-options.md: {missing:?}");
}
