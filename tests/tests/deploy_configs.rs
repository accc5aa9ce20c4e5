//! Everything under `deploy/` stays valid and consistent with the code:
//!
//! - the example configs and the configs embedded in the Kubernetes ConfigMaps parse into the
//!   binaries' config structs;
//! - every YAML document and JSON file parses; Kubernetes objects have apiVersion/kind/name; the
//!   edge StatefulSet keeps its WAL volume, probes, drain window and anti-affinity; a
//!   PodDisruptionBudget covers the edge pods; the Kafka topics keep RF 3 / min.insync.replicas 2;
//! - every alert rule has expr, for, severity, annotations and a runbook link;
//! - every `sluice_*` metric named by an alert or the dashboard exists in the edge or core
//!   sources;
//! - the systemd units give the drain enough time and raise the file limit;
//! - the edge StatefulSet is a replicating POP: factor 2 in `require` mode, every peer named by
//!   the DNS name the headless Service gives one of its pods, on the replication port the pod
//!   and the Service expose over UDP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;
use sluice_core::config::{CoreConfig, SinkConfig};
use sluice_edge::config::{DegradedMode, EdgeConfig, PeerAddr};

/// Metrics referenced by alerts or the dashboard that are not in `edge/src` or `core/src` yet,
/// because another change is adding them. Keep this short; remove an entry once its metric lands.
/// Anchors of `deploy/RUNBOOK.md` that alerts may link to.
const RUNBOOK_ANCHORS: &[&str] =
    &["drain-for-deploy", "broker-outage", "disk-filling-up", "node-lost", "replaying-a-wal", "rotating-keys"];

/// The edge's default drain deadline (`drain_deadline_secs`); the stop timeouts must exceed it.
const DRAIN_DEADLINE_SECS: u64 = 60;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(deploy_dir()).unwrap_or(path).display().to_string()
}

/// All documents of a (possibly multi-document) YAML text; empty documents are skipped.
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        // `Value::deserialize(doc)` needs the serde trait, which this crate does not depend on;
        // `singleton_map::deserialize` is a plain function that forwards to the same impl.
        .map(|(i, doc)| {
            serde_yaml::with::singleton_map::deserialize::<Value, _>(doc)
                .unwrap_or_else(|e| panic!("{what}: YAML document {i}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every YAML document under `deploy/`, with the file it came from.
fn all_yaml() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for path in files_under(&deploy_dir()) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "yaml" || ext == "yml" {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = rel(&path);
            let parsed = yaml_documents(&text, &name);
            assert!(!parsed.is_empty(), "{name}: no YAML document");
            docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
        }
    }
    docs
}

fn all_json() -> Vec<(String, serde_json::Value)> {
    files_under(&deploy_dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", rel(&p)));
            (rel(&p), v)
        })
        .collect()
}

fn is_k8s(file: &str, doc: &Value) -> bool {
    file.starts_with("k8s/") || file.starts_with("kafka/") || doc.get("apiVersion").is_some()
}

fn k8s_objects() -> Vec<(String, Value)> {
    all_yaml().into_iter().filter(|(f, d)| is_k8s(f, d)).collect()
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// `selector` (matchLabels) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let wanted = str_map(&selector["matchLabels"]);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Service's (plain map) selector selects pods labelled `labels`.
fn service_selects(service: &Value, labels: &BTreeMap<String, String>) -> bool {
    let wanted = str_map(&service["spec"]["selector"]);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Port number of the container port named `name`, or the number itself.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let name = port.as_str()?;
    seq(&container["ports"]).iter().find(|p| p["name"].as_str() == Some(name))?["containerPort"].as_u64()
}

fn port_of(addr: &std::net::SocketAddr) -> u64 {
    u64::from(addr.port())
}

#[test]
fn example_configs_parse() {
    let edge: EdgeConfig = toml::from_str(&read("edge.example.toml")).unwrap();
    assert_eq!(edge.region, "eu-central");
    assert_eq!(edge.limits.max_events, 500);
    assert_eq!(edge.replication.peers.len(), 2);
    let core: CoreConfig = toml::from_str(&read("core.example.toml")).unwrap();
    assert!(matches!(core.sink, SinkConfig::Kafka(ref k) if k.properties.contains_key("security.protocol")));
}

#[test]
fn every_yaml_and_json_file_parses_and_k8s_objects_are_named() {
    let yaml = all_yaml();
    assert!(yaml.len() >= 10, "expected the k8s, kafka and prometheus files, found {} documents", yaml.len());
    let mut seen = BTreeSet::new();
    for (file, doc) in &yaml {
        if !is_k8s(file, doc) {
            continue;
        }
        let api = doc["apiVersion"].as_str().unwrap_or("");
        let kind = doc["kind"].as_str().unwrap_or("");
        let name = doc["metadata"]["name"].as_str().unwrap_or("");
        assert!(
            !api.is_empty() && !kind.is_empty() && !name.is_empty(),
            "{file}: apiVersion/kind/metadata.name: {doc:?}"
        );
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("");
        assert!(seen.insert((kind.to_string(), ns.to_string(), name.to_string())), "{file}: duplicate {kind} {name}");
    }
    let json = all_json();
    assert!(!json.is_empty(), "no JSON file under deploy/");
}

#[test]
fn edge_statefulset_keeps_its_wal_and_drains() {
    let objects = k8s_objects();
    let sts = find(&objects, "StatefulSet", "sluice-edge");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let labels = str_map(&spec["template"]["metadata"]["labels"]);
    assert!(selects(&spec["selector"], &labels), "StatefulSet selector must match its pod labels");

    // A PersistentVolumeClaim per pod, mounted where the WAL lives.
    let claims = seq(&spec["volumeClaimTemplates"]);
    assert!(!claims.is_empty(), "edge StatefulSet needs volumeClaimTemplates for the WAL");
    let claim_names: BTreeSet<&str> = claims.iter().filter_map(|c| c["metadata"]["name"].as_str()).collect();
    let edge =
        seq(&pod["containers"]).iter().find(|c| c["name"].as_str() == Some("edge")).expect("a container named edge");
    let wal_dir = "/var/lib/sluice/wal";
    let wal_mounted = seq(&edge["volumeMounts"]).iter().any(|m| {
        let path = m["mountPath"].as_str().unwrap_or("-");
        claim_names.contains(m["name"].as_str().unwrap_or(""))
            && (wal_dir == path || wal_dir.starts_with(&format!("{}/", path.trim_end_matches('/'))))
    });
    assert!(wal_mounted, "the WAL dir {wal_dir} must be on a volumeClaimTemplate volume");

    // Probes: readiness on /ready (fails while draining), liveness on /health, on the API port.
    let ready = &edge["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"].as_str(), Some("/ready"));
    assert_eq!(resolve_port(edge, &ready["port"]), Some(8080));
    assert_eq!(edge["livenessProbe"]["httpGet"]["path"].as_str(), Some("/health"));

    // Drain: the grace period covers the preStop sleep plus the drain deadline.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    let pre_stop = &edge["lifecycle"]["preStop"];
    assert!(!pre_stop.is_null(), "edge needs a preStop hook so the load balancer notices readiness failing");
    let pre_stop_secs = pre_stop["sleep"]["seconds"].as_u64().unwrap_or(0);
    assert!(
        grace >= DRAIN_DEADLINE_SECS + pre_stop_secs,
        "terminationGracePeriodSeconds {grace} < drain deadline {DRAIN_DEADLINE_SECS} + preStop {pre_stop_secs}"
    );

    // Replicas (and so a WAL and its replica) never share a node.
    let anti = &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert!(
        seq(anti)
            .iter()
            .any(|t| t["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                && selects(&t["labelSelector"], &labels)),
        "edge pods need required pod anti-affinity on kubernetes.io/hostname"
    );

    // Prometheus scrapes the admin port.
    let ann = str_map(&spec["template"]["metadata"]["annotations"]);
    assert_eq!(ann.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(ann.get("prometheus.io/port").map(String::as_str), Some("9080"));
    assert!(seq(&edge["ports"]).iter().any(|p| p["containerPort"].as_u64() == Some(9080)));

    // The StatefulSet's governing Service is headless and selects the edge pods.
    let peers_name = spec["serviceName"].as_str().expect("serviceName");
    let peers = find(&objects, "Service", peers_name);
    assert_eq!(peers["spec"]["clusterIP"].as_str(), Some("None"), "{peers_name} must be headless");
    assert!(service_selects(peers, &labels), "{peers_name} must select the edge pods");

    // A public Service reaches the API port.
    let public = objects.iter().map(|(_, d)| d).any(|d| {
        d["kind"].as_str() == Some("Service")
            && d["spec"]["clusterIP"].as_str() != Some("None")
            && service_selects(d, &labels)
            && seq(&d["spec"]["ports"]).iter().any(|p| resolve_port(edge, &p["targetPort"]) == Some(8080))
    });
    assert!(public, "a non-headless Service must expose the edge API port");

    // Voluntary disruptions take one edge at a time.
    let pdb = objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some("PodDisruptionBudget") && selects(&d["spec"]["selector"], &labels))
        .expect("a PodDisruptionBudget selecting the edge pods");
    assert!(
        pdb["spec"]["maxUnavailable"].as_u64() == Some(1) || pdb["spec"]["minAvailable"].as_u64().is_some(),
        "edge PDB must bound unavailability: {pdb:?}"
    );
}

/// The TOML in the ConfigMaps parses into the binaries' config structs and agrees with the pod specs.
#[test]
fn configmap_configs_parse_and_match_the_pods() {
    let objects = k8s_objects();
    let edge_cm = find(&objects, "ConfigMap", "sluice-edge-config");
    let edge: EdgeConfig = toml::from_str(edge_cm["data"]["edge.toml"].as_str().expect("edge.toml")).unwrap();
    assert_eq!(edge.wal.dir, Path::new("/var/lib/sluice/wal"));
    assert_eq!(port_of(&edge.listen), 8080);
    assert_eq!(edge.admin.listen.as_ref().map(port_of), Some(9080));
    assert!(edge.idempotency.path.starts_with("/var/lib/sluice"), "the idempotency store must be on the volume");
    assert!(edge.forwarder.enabled);

    // The alert on the WAL budget uses the configured budget.
    let alerts = read("prometheus/alerts.yaml");
    assert!(
        alerts.contains(&edge.wal.budget_bytes.to_string()),
        "deploy/prometheus/alerts.yaml must use wal.budget_bytes = {}",
        edge.wal.budget_bytes
    );

    let core_cm = find(&objects, "ConfigMap", "sluice-core-config");
    let core: CoreConfig = toml::from_str(core_cm["data"]["core.toml"].as_str().expect("core.toml")).unwrap();
    assert_eq!(port_of(&core.listen), 7000);
    assert_eq!(core.admin_listen.as_ref().map(port_of), Some(9090));
    let SinkConfig::Kafka(kafka) = &core.sink else { panic!("core ConfigMap must use the Kafka sink") };

    // Core: Deployment with QUIC over UDP 7000 and metrics on 9090; a UDP Service.
    let deploy = find(&objects, "Deployment", "sluice-core");
    let labels = str_map(&deploy["spec"]["template"]["metadata"]["labels"]);
    let container = &seq(&deploy["spec"]["template"]["spec"]["containers"])[0];
    let ports = seq(&container["ports"]);
    assert!(ports.iter().any(|p| p["containerPort"].as_u64() == Some(7000) && p["protocol"].as_str() == Some("UDP")));
    assert!(ports.iter().any(|p| p["containerPort"].as_u64() == Some(9090)));
    let ann = str_map(&deploy["spec"]["template"]["metadata"]["annotations"]);
    assert_eq!(ann.get("prometheus.io/port").map(String::as_str), Some("9090"));
    let svc = find(&objects, "Service", "sluice-core");
    assert!(service_selects(svc, &labels), "Service sluice-core must select the core pods");
    assert!(
        seq(&svc["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_u64() == Some(7000) && p["protocol"].as_str() == Some("UDP"))
    );

    // The topics core produces to are defined with the durability settings.
    let topics: BTreeSet<&str> = objects
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some("KafkaTopic"))
        .filter_map(|(_, d)| d["spec"]["topicName"].as_str().or(d["metadata"]["name"].as_str()))
        .collect();
    assert!(topics.contains(kafka.dlq_topic.as_str()), "topic {} missing from deploy/kafka", kafka.dlq_topic);
    let region_topic = format!("{}{}", kafka.topic_prefix, edge.region);
    assert!(topics.contains(region_topic.as_str()), "topic {region_topic} missing from deploy/kafka");
    let overflow_topic = format!("{region_topic}.overflow");
    assert!(topics.contains(overflow_topic.as_str()), "topic {overflow_topic} missing from deploy/kafka");

    // Environment variables the manifests set for the binaries exist in their command lines.
    let sources = metric_sources();
    for (file, doc) in &objects {
        let pod = &doc["spec"]["template"]["spec"];
        for c in seq(&pod["containers"]) {
            for env in seq(&c["env"]) {
                let name = env["name"].as_str().unwrap_or("");
                if name.starts_with("SLUICE_") {
                    assert!(sources.contains(&format!("\"{name}\"")), "{file}: env {name} is read by no binary");
                }
                if name == "SLUICE_LOG_JSON" {
                    assert!(env["value"].as_str().is_some_and(boolish), "{file}: SLUICE_LOG_JSON");
                }
            }
        }
    }
}

/// What the binaries' `SLUICE_LOG_JSON` accepts (clap's `BoolishValueParser`).
fn boolish(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "false" | "1" | "0" | "yes" | "no" | "on" | "off" | "y" | "n")
}

fn config_value<'a>(config: &'a Value, key: &str) -> &'a Value {
    config.get(key).unwrap_or_else(|| panic!("topic config {key} missing"))
}

fn as_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

#[test]
fn kafka_topics_are_durable() {
    let objects = k8s_objects();
    let topics: Vec<&Value> =
        objects.iter().map(|(_, d)| d).filter(|d| d["kind"].as_str() == Some("KafkaTopic")).collect();
    assert!(topics.len() >= 2, "expected events.<region> and events.dlq");
    for (file, d) in &objects {
        if file.starts_with("kafka/") {
            let kind = d["kind"].as_str();
            assert!(matches!(kind, Some("KafkaTopic" | "KafkaMirrorMaker2")), "{file}: unexpected kind {kind:?}");
        }
    }
    for t in topics {
        let name = t["metadata"]["name"].as_str().unwrap();
        let spec = &t["spec"];
        assert_eq!(as_number(&spec["replicas"]), Some(3), "{name}: replication factor");
        assert!(as_number(&spec["partitions"]).is_some_and(|p| p > 0), "{name}: partitions");
        let config = &spec["config"];
        assert_eq!(as_number(config_value(config, "min.insync.replicas")), Some(2), "{name}: min.insync.replicas");
        let unclean = config_value(config, "unclean.leader.election.enable");
        assert!(unclean.as_bool() == Some(false) || unclean.as_str() == Some("false"), "{name}: unclean election on");
        assert!(as_number(config_value(config, "retention.ms")).is_some(), "{name}: retention.ms");
    }
}

/// A MirrorMaker 2 topic pattern as Kafka applies it: the whole topic name must match.
fn full_match(pattern: &str) -> regex::Regex {
    regex::Regex::new(&format!("^(?:{pattern})$")).unwrap_or_else(|e| panic!("topicsPattern {pattern:?}: {e}"))
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true) || v.as_str() == Some("true")
}

/// `deploy/kafka/mirrormaker2.yaml`: every region's events reach every other region exactly once
/// (one mirror per ordered pair, running at the target), only the source's own topics are copied,
/// and a copy can never be copied again (prefixed names, patterns that do not match them).
#[test]
fn cross_region_mirrors_cover_every_pair_once_and_cannot_loop() {
    let objects = k8s_objects();
    let mirrors: Vec<&Value> =
        objects.iter().map(|(_, d)| d).filter(|d| d["kind"].as_str() == Some("KafkaMirrorMaker2")).collect();
    assert!(mirrors.len() >= 2, "expected a KafkaMirrorMaker2 per region");
    let regions: BTreeSet<String> = mirrors
        .iter()
        .flat_map(|m| seq(&m["spec"]["clusters"]).iter().filter_map(|c| c["alias"].as_str().map(str::to_string)))
        .collect();
    let mut pairs = BTreeSet::new();
    for m in &mirrors {
        let name = m["metadata"]["name"].as_str().unwrap_or("?");
        let spec = &m["spec"];
        let target = spec["connectCluster"].as_str().unwrap_or_else(|| panic!("{name}: connectCluster"));
        let clusters = seq(&spec["clusters"]);
        let aliases: BTreeSet<String> =
            clusters.iter().filter_map(|c| c["alias"].as_str().map(str::to_string)).collect();
        assert_eq!(aliases, regions, "{name}: every resource knows every region");
        for c in clusters {
            assert!(c["bootstrapServers"].as_str().is_some_and(|b| !b.is_empty()), "{name}: bootstrapServers");
            assert!(!c["tls"].is_null(), "{name}: {:?} without TLS", c["alias"]);
        }
        let local = clusters.iter().find(|c| c["alias"].as_str() == Some(target)).expect("target cluster");
        let config = &local["config"];
        assert_eq!(config["producer.acks"].as_str(), Some("all"), "{name}: copies need acks=all");
        assert!(is_true(&config["producer.enable.idempotence"]), "{name}: idempotent producer");
        for key in [
            "config.storage.replication.factor",
            "offset.storage.replication.factor",
            "status.storage.replication.factor",
        ] {
            assert_eq!(as_number(&config[key]), Some(3), "{name}: {key}");
        }
        for mirror in seq(&spec["mirrors"]) {
            let source = mirror["sourceCluster"].as_str().expect("sourceCluster");
            assert_eq!(mirror["targetCluster"].as_str(), Some(target), "{name}: runs at its target (produces locally)");
            assert_ne!(source, target, "{name}: a region mirrored onto itself");
            assert!(regions.contains(source), "{name}: unknown source {source}");
            assert!(pairs.insert((source.to_string(), target.to_string())), "{name}: {source} -> {target} twice");
            for connector in ["sourceConnector", "checkpointConnector"] {
                assert_eq!(
                    mirror[connector]["config"]["replication.policy.class"].as_str(),
                    Some("org.apache.kafka.connect.mirror.DefaultReplicationPolicy"),
                    "{name}: {connector}: only the prefixing policy rules out loops"
                );
            }
            let source_config = &mirror["sourceConnector"]["config"];
            assert_eq!(source_config["replication.policy.separator"].as_str(), Some("."), "{name}: separator");
            assert_eq!(as_number(&source_config["replication.factor"]), Some(3), "{name}: replication.factor");
            assert!(
                is_true(&mirror["checkpointConnector"]["config"]["sync.group.offsets.enabled"]),
                "{name}: consumer offsets follow a failover"
            );
            let pattern = full_match(mirror["topicsPattern"].as_str().expect("topicsPattern"));
            for own in [format!("events.{source}"), format!("events.{source}.overflow")] {
                assert!(pattern.is_match(&own), "{name}: {own} not mirrored");
            }
            let mut never = vec!["events.dlq".to_string()];
            for r in &regions {
                if r != source {
                    never.extend([format!("events.{r}"), format!("events.{r}.overflow")]);
                }
                for x in &regions {
                    never.extend([format!("{r}.events.{x}"), format!("{r}.events.{x}.overflow")]);
                }
            }
            for topic in never {
                assert!(!pattern.is_match(&topic), "{name}: {source} -> {target} would copy {topic}");
            }
        }
    }
    for s in &regions {
        for t in regions.iter().filter(|t| *t != s) {
            assert!(pairs.contains(&(s.clone(), t.clone())), "{s}'s events never reach {t}");
        }
    }
}

/// A container port's protocol (Kubernetes defaults to TCP).
fn protocol(port: &Value) -> &str {
    port["protocol"].as_str().unwrap_or("TCP")
}

#[test]
fn edge_pop_replicates_to_its_pods_by_name() {
    let objects = k8s_objects();
    let sts = find(&objects, "StatefulSet", "sluice-edge");
    let sts_name = sts["metadata"]["name"].as_str().unwrap();
    let namespace = sts["metadata"]["namespace"].as_str().expect("StatefulSet namespace");
    let pods = sts["spec"]["replicas"].as_u64().expect("StatefulSet replicas");
    let pod = &sts["spec"]["template"]["spec"];
    let labels = str_map(&sts["spec"]["template"]["metadata"]["labels"]);
    let edge =
        seq(&pod["containers"]).iter().find(|c| c["name"].as_str() == Some("edge")).expect("a container named edge");

    // edge_id is the pod name, which is what the peer list's ids must be.
    let edge_id =
        seq(&edge["env"]).iter().find(|e| e["name"].as_str() == Some("SLUICE_EDGE_ID")).expect("SLUICE_EDGE_ID");
    assert_eq!(edge_id["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("metadata.name"));

    let cm = find(&objects, "ConfigMap", "sluice-edge-config");
    let config: EdgeConfig = toml::from_str(cm["data"]["edge.toml"].as_str().expect("edge.toml")).unwrap();
    let r = &config.replication;
    assert_eq!((r.factor, r.mode), (2, DegradedMode::Require), "the POP runs R=2 in require mode");
    assert_eq!(r.server_name, None, "each peer must be verified against its own name");
    let listen = r.listen.expect("replication.listen: the pods must serve their peers' copies");
    assert!(listen.ip().is_unspecified(), "replication.listen {listen} must accept the peers' connections");
    let repl_port = u64::from(listen.port());

    // The pod and the headless Service carry the replication port over UDP (QUIC).
    let container_port = seq(&edge["ports"])
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(repl_port))
        .unwrap_or_else(|| panic!("the edge container does not expose the replication port {repl_port}"));
    assert_eq!(protocol(container_port), "UDP", "replication is QUIC: UDP");
    let service_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let service = find(&objects, "Service", service_name);
    assert_eq!(service["metadata"]["namespace"].as_str(), Some(namespace));
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"), "{service_name} must be headless");
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "peers must find each other before they are ready"
    );
    assert!(service_selects(service, &labels), "{service_name} must select the edge pods");
    assert!(
        seq(&service["spec"]["ports"]).iter().any(|p| p["port"].as_u64() == Some(repl_port)
            && protocol(p) == "UDP"
            && resolve_port(edge, &p["targetPort"]) == Some(repl_port)),
        "{service_name} must expose UDP {repl_port} onto the pods' replication port"
    );

    // Every pod of the StatefulSet is a peer, named <pod>.<headless service>.<namespace>.svc, the
    // DNS name Kubernetes gives that pod; nothing else is.
    let want: BTreeSet<(String, String, u16)> = (0..pods)
        .map(|i| {
            let id = format!("{sts_name}-{i}");
            let host = format!("{id}.{service_name}.{namespace}.svc");
            (id, host, listen.port())
        })
        .collect();
    let got: BTreeSet<(String, String, u16)> = r
        .peers
        .iter()
        .map(|p| match &p.addr {
            PeerAddr::Name { host, port } => (p.id.clone(), host.clone(), *port),
            PeerAddr::Ip(ip) => panic!("peer {} is an IP ({ip}); pod IPs change when a pod moves", p.id),
        })
        .collect();
    assert_eq!(got, want, "replication.peers must name exactly the StatefulSet's pods");
    for (id, _, _) in &want {
        let peers = r.peers_of(id);
        assert_eq!(peers.len() as u64, pods - 1, "{id} replicates to every other pod");
        assert!(peers.len() + 1 >= r.factor, "{id}: factor {} needs {} peers", r.factor, r.factor - 1);
    }

    // The certificates the pods present to each other must carry the names they are reached by.
    let san = format!("*.{service_name}.{namespace}.svc");
    for doc in ["k8s/edge.yaml", "README.md"] {
        assert!(read(doc).contains(&san), "deploy/{doc} must say the edge certificate needs the SAN {san}");
    }

    // The volume holds the pod's WAL and the copies of every other pod's WAL, each up to the budget.
    let claim = &seq(&sts["spec"]["volumeClaimTemplates"])[0];
    let size = claim["spec"]["resources"]["requests"]["storage"].as_str().expect("storage request");
    let gib: u64 = size.strip_suffix("Gi").and_then(|n| n.parse().ok()).expect("storage in Gi");
    let needed = pods * config.wal.budget_bytes;
    assert!(gib << 30 > needed, "volume {size} cannot hold {pods} WALs of {} bytes", config.wal.budget_bytes);
}

/// Names that start with `sluice_` in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sluice_") {
        let boundary = rest[..i].chars().next_back().is_none_or(|c| !is_name(c));
        let tail = &rest[i..];
        let len = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if boundary {
            out.insert(tail[..len].to_string());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// The text of every Rust source file of the edge and core crates.
fn metric_sources() -> String {
    let mut text = String::new();
    for dir in ["edge/src", "core/src"] {
        for path in files_under(&repo().join(dir)) {
            if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
                text.push('\n');
            }
        }
    }
    text
}

fn check_metrics_exist(what: &str, names: &BTreeSet<String>, sources: &str) {
    assert!(!names.is_empty(), "{what}: no sluice_ metric found");
    for name in names {
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        let known = [name.as_str(), base].iter().any(|n| sources.contains(&format!("\"{n}\"")));
        assert!(known, "{what}: metric {name} is defined nowhere in edge/src or core/src");
    }
}

/// GitHub-style anchor of a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn alert_rules_are_complete_and_name_real_metrics() {
    let docs = yaml_documents(&read("prometheus/alerts.yaml"), "prometheus/alerts.yaml");
    assert_eq!(docs.len(), 1);
    // A plain rules file, or a PrometheusRule whose spec holds the groups.
    let groups = if docs[0]["kind"].as_str() == Some("PrometheusRule") {
        &docs[0]["spec"]["groups"]
    } else {
        &docs[0]["groups"]
    };
    let runbook = std::fs::read_to_string(deploy_dir().join("RUNBOOK.md")).ok();
    let sources = metric_sources();
    let mut names = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for group in seq(groups) {
        assert!(group["name"].as_str().is_some(), "every group needs a name");
        let rules = seq(&group["rules"]);
        assert!(!rules.is_empty(), "group {:?} has no rules", group["name"]);
        for rule in rules {
            let Some(alert) = rule["alert"].as_str() else { continue };
            assert!(alerts.insert(alert.to_string()), "duplicate alert {alert}");
            let expr = rule["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{alert}: expr");
            let balanced = expr.matches('(').count() == expr.matches(')').count()
                && expr.matches('{').count() == expr.matches('}').count()
                && expr.matches('[').count() == expr.matches(']').count();
            assert!(balanced, "{alert}: unbalanced brackets in {expr}");
            let for_ = rule["for"].as_str().unwrap_or("");
            assert!(
                !for_.is_empty() && for_.trim_end_matches(['s', 'm', 'h']).parse::<u64>().is_ok(),
                "{alert}: for must be a duration like 5m, got {:?}",
                rule["for"]
            );
            let severity = rule["labels"]["severity"].as_str().unwrap_or("");
            assert!(["critical", "warning", "info"].contains(&severity), "{alert}: labels.severity {severity:?}");
            for key in ["summary", "description", "runbook_url"] {
                assert!(rule["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{alert}: annotations.{key}");
            }
            let url = rule["annotations"]["runbook_url"].as_str().unwrap();
            let anchor = url.rsplit_once("RUNBOOK.md#").map(|(_, a)| a).unwrap_or("");
            assert!(RUNBOOK_ANCHORS.contains(&anchor), "{alert}: runbook_url {url} is not a known RUNBOOK.md anchor");
            if let Some(runbook) = &runbook {
                let headed = runbook
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix('#'))
                    .any(|h| slug(h.trim_start_matches('#')) == anchor);
                let explicit =
                    runbook.contains(&format!("id=\"{anchor}\"")) || runbook.contains(&format!("{{#{anchor}}}"));
                assert!(headed || explicit, "{alert}: deploy/RUNBOOK.md has no section #{anchor}");
            }
            names.extend(metric_names(expr));
        }
    }
    assert!(alerts.len() >= 10, "expected the full alert set, found {}", alerts.len());
    check_metrics_exist("alerts", &names, &sources);
}

#[test]
fn dashboard_panels_query_real_metrics() {
    let dash: serde_json::Value = serde_json::from_str(&read("grafana/sluice.json")).unwrap();
    assert!(dash["title"].as_str().is_some() && dash["uid"].as_str().is_some(), "dashboard title and uid");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id {}", p["id"]);
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "panel {}: gridPos.{k}", p["title"]);
        }
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {}: targets", p["title"]));
        assert!(!targets.is_empty(), "panel {}: no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {}: expr", p["title"]));
            names.extend(metric_names(expr));
            queries += 1;
        }
    }
    assert!(queries >= 12, "expected the full panel set, found {queries} queries");
    check_metrics_exist("dashboard", &names, &metric_sources());
}

/// `Key=value` lines of a systemd unit (the last one wins, like systemd for single-valued keys).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string()).or_default().push(v.trim().to_string());
        }
    }
    out
}

#[test]
fn systemd_units_drain_and_are_hardened() {
    let sources = metric_sources();
    for unit in ["sluice-edge.service", "sluice-core.service"] {
        let s = unit_settings(&read(&format!("systemd/{unit}")));
        let last = |k: &str| s.get(k).and_then(|v| v.last()).map(String::as_str).unwrap_or("");
        let stop = last("TimeoutStopSec").trim_end_matches('s').parse::<u64>().unwrap_or(0);
        assert!(stop >= DRAIN_DEADLINE_SECS, "{unit}: TimeoutStopSec {stop} < drain deadline {DRAIN_DEADLINE_SECS}");
        let nofile = last("LimitNOFILE").parse::<u64>().unwrap_or(0);
        assert!(nofile >= 65_536, "{unit}: LimitNOFILE {nofile}");
        assert_eq!(last("KillSignal"), "SIGTERM", "{unit}");
        assert_eq!(last("NoNewPrivileges"), "yes", "{unit}");
        assert_eq!(last("ProtectSystem"), "strict", "{unit}");
        assert!(last("ReadWritePaths").starts_with("/var/lib/sluice"), "{unit}: ReadWritePaths");
        assert!(last("ExecStart").contains("--config"), "{unit}: ExecStart");
        assert!(!last("User").is_empty() && last("User") != "root", "{unit}: runs as a dedicated user");
        for env in s.get("Environment").into_iter().flatten() {
            let (name, value) = env.split_once('=').unwrap_or((env, ""));
            if name.starts_with("SLUICE_") {
                assert!(sources.contains(&format!("\"{name}\"")), "{unit}: {name} is read by no binary");
            }
            if name == "SLUICE_LOG_JSON" {
                assert!(boolish(value), "{unit}: SLUICE_LOG_JSON must be a boolean");
            }
        }
    }
    let edge = unit_settings(&read("systemd/sluice-edge.service"));
    assert!(edge.contains_key("EnvironmentFile"), "the admin token comes from an environment file");
}

#[test]
fn metric_name_scanner() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(sluice_edge_enqueue_latency_seconds_bucket[5m]))) / x_sluice_no"#,
    );
    assert_eq!(names, BTreeSet::from(["sluice_edge_enqueue_latency_seconds_bucket".to_string()]));
    assert_eq!(slug(" Drain for deploy"), "drain-for-deploy");
    assert_eq!(slug(" Replaying a WAL"), "replaying-a-wal");
}
