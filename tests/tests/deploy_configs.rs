//! The example configs under `deploy/` stay valid: they parse into the binaries' config structs.

use sluice_core::config::{CoreConfig, SinkConfig};
use sluice_edge::config::EdgeConfig;

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn example_configs_parse() {
    let edge: EdgeConfig = toml::from_str(&read("edge.example.toml")).unwrap();
    assert_eq!(edge.region, "eu-central");
    assert_eq!(edge.limits.max_events, 500);
    assert_eq!(edge.replication.peers.len(), 1);
    let core: CoreConfig = toml::from_str(&read("core.example.toml")).unwrap();
    assert!(matches!(core.sink, SinkConfig::Kafka(ref k) if k.properties.contains_key("security.protocol")));
}
