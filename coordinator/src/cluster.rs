//! How a data directory becomes (or is checked to be) a member of a cluster: `new`, `existing`,
//! `--join`, a restore from a backup, or a survivor forced into a cluster of one.
//!
//! An empty data directory never makes a cluster by itself: it needs `--initial-cluster-state
//! new` (every initial member writes the same initial state at index [`INIT_INDEX`], so that a
//! member added later is seeded by a snapshot) or `--join` with the cluster's id.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use prost::Message as _;
use raft::eraftpb::ConfState;
use sha2::{Digest as _, Sha256};

use kiln_state::pb::{Member, StateSnapshot};

use crate::store::{Identity, Store};
use crate::transport::cluster_id_text;

/// Index and term of the initial state of a new cluster. Starting above 0 means a member that
/// joins later has nothing in common with the log and must take a snapshot first (TiKV does
/// the same), since the initial membership is not in the log.
pub const INIT_INDEX: u64 = 5;
pub const INIT_TERM: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialClusterState {
    /// Start a new cluster from `--initial-member` (or this node alone) if the data directory
    /// is empty.
    New,
    /// The data directory must already belong to a cluster.
    Existing,
}

/// How this process takes its place in the cluster.
#[derive(Clone, Debug)]
pub struct Membership {
    pub node_id: u64,
    /// This member's own addresses, as others reach it.
    pub peer_url: String,
    pub client_url: String,
    pub initial_members: Vec<Member>,
    pub initial_state: InitialClusterState,
    /// Distinguishes clusters started with the same members (etcd's initial-cluster-token).
    pub cluster_token: String,
    /// Start empty and wait to be added to this cluster.
    pub join: Option<u64>,
    /// With `new`: start from this backup (`kiln cluster snapshot save`).
    pub restore: Option<PathBuf>,
    /// Disaster recovery: keep this member's applied state and make it a cluster of one.
    pub force_new_cluster: bool,
}

/// Parses one `--initial-member` value: `id=1,peer=http://10.0.0.1:7879,client=http://10.0.0.1:7878`.
pub fn parse_member(text: &str) -> Result<Member, String> {
    let mut member = Member::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' in '{text}' is not key=value"))?;
        match key {
            "id" => {
                member.id = value
                    .parse()
                    .ok()
                    .filter(|id| *id != 0)
                    .ok_or_else(|| format!("member id '{value}' is not a number above 0"))?
            }
            "peer" => member.peer_url = normalize_url(value)?,
            "client" => member.client_url = normalize_url(value)?,
            other => {
                return Err(format!(
                    "unknown key '{other}' in '{text}' (expected id=, peer=, client=)"
                ))
            }
        }
    }
    if member.id == 0 || member.peer_url.is_empty() || member.client_url.is_empty() {
        return Err(format!(
            "'{text}' needs all of id=, peer= and client=, e.g. id=1,peer=http://10.0.0.1:7879,client=http://10.0.0.1:7878"
        ));
    }
    Ok(member)
}

/// Parses `--initial-member` values, each possibly holding several members split by `;`.
pub fn parse_members(values: &[String]) -> Result<Vec<Member>, String> {
    let mut members: Vec<Member> = Vec::new();
    for value in values {
        for text in value.split(';').map(str::trim).filter(|t| !t.is_empty()) {
            let member = parse_member(text)?;
            if members.iter().any(|m| m.id == member.id) {
                return Err(format!("member id {} is given twice", member.id));
            }
            members.push(member);
        }
    }
    Ok(members)
}

/// `host:port` becomes `http://host:port`; URLs keep their scheme.
pub fn normalize_url(text: &str) -> Result<String, String> {
    let text = text.trim().trim_end_matches('/');
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("'{text}' must be host:port or an http:// or https:// URL"))?;
    if rest.is_empty() || !rest.contains(':') {
        return Err(format!("'{text}' needs a host and a port"));
    }
    Ok(url)
}

/// The id of a new cluster: derived from its token and initial members, so every initial
/// member computes the same one without talking to the others.
pub fn derive_cluster_id(token: &str, members: &[Member]) -> u64 {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    for member in sorted {
        hasher.update(format!("\n{}={}", member.id, member.peer_url).as_bytes());
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()).max(1)
}

/// A cluster id for a directory that predates cluster ids.
fn fresh_cluster_id(node_id: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    hasher.update(format!("{now}/{}/{node_id}", std::process::id()).as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()).max(1)
}

/// Makes the store a member as `membership` says, or checks that it already is; returns its
/// identity.
pub fn prepare(store: &Store, membership: &Membership) -> anyhow::Result<Identity> {
    let me = Member {
        id: membership.node_id,
        peer_url: membership.peer_url.clone(),
        client_url: membership.client_url.clone(),
    };
    if membership.force_new_cluster {
        return force_new_cluster(store, me);
    }
    if let Some(identity) = store.identity()? {
        if identity.node_id != membership.node_id {
            bail!(
                "this data directory belongs to node {} of cluster {}; it cannot start as node {} (a node id never changes; remove the member and add it under a new id with an empty directory)",
                identity.node_id,
                cluster_id_text(identity.cluster_id),
                membership.node_id
            );
        }
        if let Some(expected) = membership.join {
            if expected != identity.cluster_id {
                bail!(
                    "this data directory belongs to cluster {}, not {} given by --cluster-id",
                    cluster_id_text(identity.cluster_id),
                    cluster_id_text(expected)
                );
            }
        }
        if membership.restore.is_some() {
            bail!("--restore needs an empty data directory; this one already holds a member");
        }
        return Ok(identity);
    }
    if store.has_membership()? {
        // A single-node directory from before clusters had ids: it becomes a cluster of one
        // with a new id, and keeps everything it holds.
        let identity = Identity {
            cluster_id: fresh_cluster_id(membership.node_id),
            node_id: membership.node_id,
        };
        store.set_identity(identity)?;
        tracing::info!(
            cluster_id = %cluster_id_text(identity.cluster_id),
            "this data directory predates cluster ids; it is now a cluster of one with this id"
        );
        return Ok(identity);
    }
    if !store.is_empty()? {
        bail!("the data directory holds a Raft log but no membership; it is damaged");
    }
    if let Some(cluster_id) = membership.join {
        let identity = Identity {
            cluster_id,
            node_id: membership.node_id,
        };
        store.set_identity(identity)?;
        tracing::info!(
            cluster_id = %cluster_id_text(cluster_id),
            "empty member started with --join; waiting for the leader to add it and send a snapshot"
        );
        return Ok(identity);
    }
    if membership.initial_state != InitialClusterState::New {
        bail!(
            "the data directory is empty: start a new cluster with --initial-cluster-state new (and --initial-member for each member), or join one with --join --cluster-id ID (see `kiln cluster add`)"
        );
    }
    let members = if membership.initial_members.is_empty() {
        vec![me.clone()]
    } else {
        membership.initial_members.clone()
    };
    match members.iter().find(|m| m.id == me.id) {
        None => bail!(
            "node {} is not among the --initial-member list ({})",
            me.id,
            members
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(listed) if listed.peer_url != me.peer_url => bail!(
            "--initial-member gives node {} the peer address {}, but it advertises {} (--advertise-peer-url / --peer-listen)",
            me.id,
            listed.peer_url,
            me.peer_url
        ),
        Some(_) => {}
    }
    let mut snapshot = match &membership.restore {
        None => StateSnapshot::default(),
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the backup {}", path.display()))?;
            StateSnapshot::decode(bytes.as_slice()).with_context(|| {
                format!(
                    "{} is not a kiln state snapshot (made by `kiln cluster snapshot save`)",
                    path.display()
                )
            })?
        }
    };
    let mut meta = snapshot.meta.take().unwrap_or_default();
    meta.members = members.clone();
    snapshot.meta = Some(meta);
    let identity = Identity {
        cluster_id: derive_cluster_id(&membership.cluster_token, &members),
        node_id: me.id,
    };
    let mut conf_state = ConfState::default();
    conf_state.set_voters(members.iter().map(|m| m.id).collect());
    store.initialize(identity, &conf_state, &snapshot, INIT_INDEX, INIT_TERM)?;
    tracing::info!(
        cluster_id = %cluster_id_text(identity.cluster_id),
        members = members.len(),
        runs = snapshot.runs.len(),
        "started a new cluster"
    );
    Ok(identity)
}

/// Keeps the applied state of this member and makes it the only voter, at a term above any it
/// has seen, so that it can lead alone. The other members must be wiped and added again.
fn force_new_cluster(store: &Store, me: Member) -> anyhow::Result<Identity> {
    let Some(identity) = store.identity()? else {
        bail!("--force-new-cluster needs a data directory that belongs to a cluster");
    };
    if identity.node_id != me.id {
        bail!(
            "this data directory belongs to node {}, not {}",
            identity.node_id,
            me.id
        );
    }
    let state = store.load_state()?;
    let mut snapshot = state.snapshot();
    let mut meta = snapshot.meta.take().unwrap_or_default();
    meta.members = vec![me.clone()];
    snapshot.meta = Some(meta);
    let applied = store.applied_index()?.max(INIT_INDEX);
    let term = store.hard_state()?.get_term() + 1;
    let mut conf_state = ConfState::default();
    conf_state.set_voters(vec![me.id]);
    store.initialize(identity, &conf_state, &snapshot, applied, term)?;
    tracing::warn!(
        cluster_id = %cluster_id_text(identity.cluster_id),
        applied,
        runs = snapshot.runs.len(),
        "forced a new cluster of one from this member's applied state; add the others back with `kiln cluster add` and empty data directories"
    );
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_syntax_and_its_errors() {
        let member =
            parse_member("id=2,peer=127.0.0.2:7879,client=https://10.0.0.2:7878/").unwrap();
        assert_eq!(member.id, 2);
        assert_eq!(member.peer_url, "http://127.0.0.2:7879");
        assert_eq!(member.client_url, "https://10.0.0.2:7878");
        assert!(parse_member("id=0,peer=a:1,client=b:2")
            .unwrap_err()
            .contains("above 0"));
        assert!(parse_member("id=1,peer=a:1")
            .unwrap_err()
            .contains("client="));
        assert!(parse_member("id=1,peer=ftp://a:1,client=b:2")
            .unwrap_err()
            .contains("http"));
        let members =
            parse_members(&["id=1,peer=a:1,client=a:2; id=2,peer=b:1,client=b:2".to_string()])
                .unwrap();
        assert_eq!(members.len(), 2);
        assert!(parse_members(&[
            "id=1,peer=a:1,client=a:2".to_string(),
            "id=1,peer=b:1,client=b:2".to_string()
        ])
        .unwrap_err()
        .contains("twice"));
    }

    #[test]
    fn every_initial_member_derives_the_same_cluster_id_and_tokens_tell_clusters_apart() {
        let a =
            parse_members(&["id=1,peer=a:1,client=a:2;id=2,peer=b:1,client=b:2".into()]).unwrap();
        let mut b = a.clone();
        b.reverse();
        assert_eq!(derive_cluster_id("kiln", &a), derive_cluster_id("kiln", &b));
        assert_ne!(
            derive_cluster_id("kiln", &a),
            derive_cluster_id("other", &a)
        );
    }

    fn membership(node_id: u64) -> Membership {
        Membership {
            node_id,
            peer_url: format!("http://127.0.0.{node_id}:7879"),
            client_url: format!("http://127.0.0.{node_id}:7878"),
            initial_members: Vec::new(),
            initial_state: InitialClusterState::Existing,
            cluster_token: "kiln".into(),
            join: None,
            restore: None,
            force_new_cluster: false,
        }
    }

    #[test]
    fn an_empty_directory_never_starts_a_cluster_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let error = prepare(&store, &membership(1)).unwrap_err().to_string();
        assert!(error.contains("--initial-cluster-state new"), "{error}");
        assert!(store.is_empty().unwrap());
    }

    #[test]
    fn a_directory_is_tied_to_its_node_id_and_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut new = membership(1);
        new.initial_state = InitialClusterState::New;
        let identity = prepare(&store, &new).unwrap();
        // Again with `new`: the existing data wins, nothing is reset.
        assert_eq!(prepare(&store, &new).unwrap(), identity);
        let error = prepare(&store, &membership(2)).unwrap_err().to_string();
        assert!(error.contains("belongs to node 1"), "{error}");
        let mut join = membership(1);
        join.join = Some(identity.cluster_id ^ 1);
        let error = prepare(&store, &join).unwrap_err().to_string();
        assert!(error.contains("belongs to cluster"), "{error}");
    }

    #[test]
    fn a_member_missing_from_the_initial_list_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut new = membership(3);
        new.initial_state = InitialClusterState::New;
        new.initial_members =
            parse_members(&["id=1,peer=a:1,client=a:2;id=2,peer=b:1,client=b:2".into()]).unwrap();
        let error = prepare(&store, &new).unwrap_err().to_string();
        assert!(error.contains("not among"), "{error}");
    }
}
