//! `kiln cluster status|add|remove|transfer-leader|snapshot save`: the coordinator cluster's
//! members and their Raft progress, membership changes, and backups of the applied state.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde_json::json;

use kiln_proto::endpoints::parse_endpoint;
use kiln_proto::v1::{AddMemberRequest, ClusterStatusResponse, MemberStatus};

use crate::client::Farm;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Shows every member: role, term, commit and applied index, how far behind the leader it
    /// is and when the leader last heard from it. Every member is asked for its own view; a
    /// member that does not answer is shown unreachable. Exits non-zero when a member is
    /// unreachable or there is no leader.
    Status {
        /// Output format.
        #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Adds a member (as a learner, a voter once it has caught up) and prints the command that
    /// starts it.
    Add {
        /// The new member's node id (unused in this cluster, not 0).
        id: u64,
        /// The address the other members reach it on for Raft traffic (HOST:PORT or URL).
        #[arg(long = "peer", value_name = "URL")]
        peer_url: String,
        /// The address clients and agents reach it on (HOST:PORT or URL).
        #[arg(long = "client", value_name = "URL")]
        client_url: String,
        /// The new member's data directory, for the printed command (it must be empty).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Removes a member from the cluster (stop its process afterwards).
    Remove {
        /// The member's node id, as `kiln cluster status` shows it.
        id: u64,
    },
    /// Makes another member the leader.
    TransferLeader {
        /// The member to lead, as `kiln cluster status` shows it; 0 picks the most caught-up
        /// voter.
        id: u64,
    },
    /// Backups of the replicated state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Writes a consistent snapshot of the applied state (a kiln.state.v1.StateSnapshot) to
    /// FILE, atomically (FILE.tmp, fsync, rename).
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
    },
}

pub async fn run(coordinator: &str, command: ClusterCommand) -> anyhow::Result<ExitCode> {
    let farm = Farm::connect(coordinator).await?;
    match command {
        ClusterCommand::Status { output } => status(&farm, output == "json").await,
        ClusterCommand::Add {
            id,
            peer_url,
            client_url,
            data_dir,
        } => add(&farm, id, &peer_url, &client_url, data_dir.as_deref()).await,
        ClusterCommand::Remove { id } => {
            if id == 0 {
                bail!(
                    "give the node id of the member to remove, as `kiln cluster status` shows it"
                );
            }
            farm.remove_member(id).await?;
            println!(
                "Removed member {id} from the cluster; stop its kiln-coordinator process now."
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::TransferLeader { id } => {
            let leader = farm.transfer_leader(id).await?;
            println!("Node {leader} is the leader.");
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Snapshot(SnapshotCommand::Save { file }) => save(&farm, &file).await,
    }
}

/// One member as `kiln cluster status` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: u64,
    peer_url: String,
    client_url: String,
    /// Its own view; `None` when it did not answer (or belongs to another cluster).
    own: Option<Own>,
    /// The leader's view of it (`None` for the leader itself, or with no leader answering).
    behind: Option<u64>,
    last_contact_ms: Option<u64>,
    matched: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Own {
    role: String,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    last_index: u64,
    leader_id: u64,
}

/// Merges the members' own answers with the leader's view of them. `answers` holds each
/// member's answer to its own status, in the order of `members`.
fn merge(
    cluster_id: &str,
    members: &[MemberStatus],
    answers: Vec<Result<ClusterStatusResponse, String>>,
) -> Vec<Row> {
    let leader_view: Option<&ClusterStatusResponse> = answers
        .iter()
        .filter_map(|answer| answer.as_ref().ok())
        .filter(|answer| answer.role == "leader" && answer.cluster_id == cluster_id)
        .max_by_key(|answer| answer.term);
    let mut rows = Vec::with_capacity(members.len());
    for (member, answer) in members.iter().zip(answers.iter()) {
        let (own, error) = match answer {
            Ok(answer) if !cluster_id.is_empty() && answer.cluster_id != cluster_id => (
                None,
                Some(format!(
                    "belongs to cluster {}, not {cluster_id}",
                    answer.cluster_id
                )),
            ),
            Ok(answer) if answer.node_id != member.id && answer.node_id != 0 => (
                None,
                Some(format!(
                    "{} answers as node {}",
                    member.client_url, answer.node_id
                )),
            ),
            Ok(answer) => (
                Some(Own {
                    role: answer.role.clone(),
                    term: answer.term,
                    commit_index: answer.commit_index,
                    applied_index: answer.applied_index,
                    last_index: answer.last_index,
                    leader_id: answer.leader_id,
                }),
                None,
            ),
            Err(error) => (None, Some(error.clone())),
        };
        let progress = leader_view
            .filter(|leader| leader.node_id != member.id)
            .and_then(|leader| leader.members.iter().find(|m| m.id == member.id));
        rows.push(Row {
            id: member.id,
            peer_url: member.peer_url.clone(),
            client_url: member.client_url.clone(),
            own,
            behind: progress.map(|p| p.behind),
            last_contact_ms: progress.map(|p| p.last_contact_ms),
            matched: progress.map(|p| p.matched),
            error,
        });
    }
    rows.sort_by_key(|row| row.id);
    rows
}

async fn status(farm: &Farm, as_json: bool) -> anyhow::Result<ExitCode> {
    let first = farm.cluster_status().await?;
    let cluster_id = if first.cluster_id.is_empty() {
        farm.info.cluster_id.clone()
    } else {
        first.cluster_id.clone()
    };
    // The member list: the leader's when the first answer came from it, else that member's
    // address book (ids and addresses only).
    let members = first.members.clone();
    if members.is_empty() {
        bail!(
            "the coordinator at {} lists no cluster members: is it a cluster member started with --node-id?",
            farm.endpoints().preferred()
        );
    }
    let asks = members.iter().map(|member| async move {
        match parse_endpoint(&member.client_url) {
            Ok(url) => farm.member_status(&url).await,
            Err(_) if member.client_url.is_empty() => Err("no client URL known".to_string()),
            Err(error) => Err(error.to_string()),
        }
    });
    // Concurrently; each is bounded by the member-status timeout.
    let answers = futures::future::join_all(asks).await;
    let rows = merge(&cluster_id, &members, answers);
    let leader = rows
        .iter()
        .find(|row| row.own.as_ref().is_some_and(|own| own.role == "leader"))
        .map(|row| row.id);
    let healthy = leader.is_some() && rows.iter().all(|row| row.own.is_some());
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&cluster_id, leader, &rows))?
        );
    } else {
        print!("{}", to_table(&cluster_id, leader, &rows));
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn to_table(cluster_id: &str, leader: Option<u64>, rows: &[Row]) -> String {
    let mut out = format!(
        "Cluster: {}  Leader: {}\n",
        if cluster_id.is_empty() {
            "-"
        } else {
            cluster_id
        },
        leader.map_or_else(|| "none".to_string(), |id| id.to_string())
    );
    let mut table = vec![[
        "ID".to_string(),
        "ROLE".to_string(),
        "TERM".to_string(),
        "COMMIT".to_string(),
        "APPLIED".to_string(),
        "BEHIND".to_string(),
        "LAST CONTACT".to_string(),
        "CLIENT URL".to_string(),
        "PEER URL".to_string(),
        "NOTE".to_string(),
    ]];
    for row in rows {
        let own = row.own.as_ref();
        table.push([
            row.id.to_string(),
            own.map_or_else(|| "unreachable".to_string(), |own| own.role.clone()),
            dash(own.map(|own| own.term)),
            dash(own.map(|own| own.commit_index)),
            dash(own.map(|own| own.applied_index)),
            dash(row.behind),
            row.last_contact_ms.map_or_else(
                || "-".to_string(),
                |ms| format!("{:.1}s ago", ms as f64 / 1000.0),
            ),
            row.client_url.clone(),
            row.peer_url.clone(),
            row.error.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&output::table(&table));
    out
}

fn to_json(cluster_id: &str, leader: Option<u64>, rows: &[Row]) -> serde_json::Value {
    let members: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let own = row.own.as_ref();
            json!({
                "id": row.id,
                "peer_url": row.peer_url,
                "client_url": row.client_url,
                "reachable": own.is_some(),
                "error": row.error,
                "role": own.map(|own| own.role.clone()),
                "term": own.map(|own| own.term),
                "commit_index": own.map(|own| own.commit_index),
                "applied_index": own.map(|own| own.applied_index),
                "last_index": own.map(|own| own.last_index),
                "leader_id": own.map(|own| own.leader_id),
                "matched": row.matched,
                "behind": row.behind,
                "last_contact_ms": row.last_contact_ms,
            })
        })
        .collect();
    json!({
        "cluster_id": cluster_id,
        "leader_id": leader,
        "members": members,
    })
}

async fn add(
    farm: &Farm,
    id: u64,
    peer_url: &str,
    client_url: &str,
    data_dir: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    if id == 0 {
        bail!("a member's node id is a number from 1, unused in this cluster");
    }
    let peer_url = parse_endpoint(peer_url).map_err(|error| anyhow::anyhow!("--peer: {error}"))?;
    let client_url =
        parse_endpoint(client_url).map_err(|error| anyhow::anyhow!("--client: {error}"))?;
    let cluster_id = farm
        .add_member(AddMemberRequest {
            id,
            peer_url: peer_url.clone(),
            client_url: client_url.clone(),
        })
        .await?;
    let data_dir =
        data_dir.map_or_else(|| "EMPTY_DIR".to_string(), |dir| dir.display().to_string());
    println!(
        "Added member {id} to cluster {cluster_id} as a learner; it becomes a voter once it has caught up."
    );
    println!(
        "Start it with{}:",
        if data_dir == "EMPTY_DIR" {
            " (EMPTY_DIR: a new, empty directory)"
        } else {
            ""
        }
    );
    println!(
        "  {}",
        start_command(
            id,
            &client_url,
            &peer_url,
            &cluster_id,
            &farm.info.registry,
            &data_dir
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// The command line that starts a new member.
fn start_command(
    id: u64,
    client_url: &str,
    peer_url: &str,
    cluster_id: &str,
    registry: &str,
    data_dir: &str,
) -> String {
    let mut command = format!(
        "kiln-coordinator --node-id {id} --listen {} --peer-listen {} --join --cluster-id {cluster_id} --data-dir {data_dir}",
        authority(client_url),
        authority(peer_url)
    );
    if !registry.is_empty() {
        command.push_str(&format!(" --registry {registry}"));
    }
    command
}

async fn save(farm: &Farm, file: &Path) -> anyhow::Result<ExitCode> {
    let Some(name) = file.file_name() else {
        bail!("'{}' is not a file name", file.display());
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = file.with_file_name(tmp_name);
    let mut stream = farm.save_snapshot().await?;
    let written = write_snapshot(&mut stream, &tmp).await;
    let (index, term, size) = match written {
        Ok(written) => written,
        Err(error) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(error);
        }
    };
    std::fs::rename(&tmp, file)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()))?;
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    println!(
        "Saved the state at index {index} (term {term}), {size} bytes, to {}",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes every piece to `tmp` and syncs it; returns the snapshot's index, term and size.
async fn write_snapshot(
    stream: &mut crate::client::SnapshotStream,
    tmp: &Path,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut out =
        std::fs::File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut at: Option<(u64, u64)> = None;
    let mut size = 0u64;
    while let Some(piece) = stream.next().await? {
        match at {
            None => at = Some((piece.index, piece.term)),
            Some((index, _)) if index != piece.index => bail!(
                "the snapshot stream mixed two snapshots (index {index} and {}); try again",
                piece.index
            ),
            Some(_) => {}
        }
        out.write_all(&piece.data)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        size += piece.data.len() as u64;
    }
    let Some((index, term)) = at else {
        bail!("the coordinator sent an empty snapshot; try again");
    };
    out.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    Ok((index, term, size))
}

/// `host:port` of a normalised `http(s)://host:port` URL.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> MemberStatus {
        MemberStatus {
            id,
            peer_url: format!("http://127.0.0.1:{}", 7900 + id),
            client_url: format!("http://127.0.0.1:{}", 7800 + id),
            ..MemberStatus::default()
        }
    }

    fn own(id: u64, role: &str, cluster: &str) -> ClusterStatusResponse {
        ClusterStatusResponse {
            cluster_id: cluster.into(),
            node_id: id,
            leader_id: 1,
            role: role.into(),
            term: 3,
            commit_index: 40,
            applied_index: 39,
            last_index: 41,
            ..ClusterStatusResponse::default()
        }
    }

    #[test]
    fn status_merges_every_members_view_with_the_leaders() {
        let members = vec![member(2), member(1), member(3), member(4)];
        let mut leader = own(1, "leader", "c1");
        leader.members = vec![
            MemberStatus {
                matched: 41,
                behind: 0,
                last_contact_ms: 120,
                ..member(2)
            },
            MemberStatus {
                matched: 10,
                behind: 30,
                last_contact_ms: 9000,
                ..member(3)
            },
        ];
        let answers = vec![
            Ok(own(2, "follower", "c1")),
            Ok(leader),
            Err("connection refused".to_string()),
            Ok(own(4, "follower", "c2")),
        ];
        let rows = merge("c1", &members, answers);
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(rows[0].own.as_ref().unwrap().role, "leader");
        assert_eq!((rows[0].behind, rows[0].last_contact_ms), (None, None));
        assert_eq!(
            (rows[1].behind, rows[1].last_contact_ms),
            (Some(0), Some(120))
        );
        assert!(rows[2].own.is_none());
        assert_eq!(
            rows[2].behind,
            Some(30),
            "the leader's view of an unreachable member"
        );
        assert_eq!(rows[2].error.as_deref(), Some("connection refused"));
        assert!(rows[3].own.is_none());
        assert!(rows[3]
            .error
            .as_ref()
            .unwrap()
            .contains("belongs to cluster c2"));
        let table = to_table("c1", Some(1), &rows);
        assert!(
            table.starts_with("Cluster: c1  Leader: 1\nID  ROLE"),
            "{table}"
        );
        assert!(table.contains("unreachable"), "{table}");
        let json = to_json("c1", Some(1), &rows);
        assert_eq!(json["members"][1]["behind"], 0);
        assert_eq!(json["members"][2]["reachable"], false);
    }

    #[test]
    fn the_start_command_names_the_new_member_and_its_cluster() {
        assert_eq!(
            start_command(
                4,
                "http://10.0.0.4:7878",
                "http://10.0.0.4:7879",
                "00000000000000aa",
                "127.0.0.1:5000",
                "/var/lib/kiln-4"
            ),
            "kiln-coordinator --node-id 4 --listen 10.0.0.4:7878 --peer-listen 10.0.0.4:7879 --join --cluster-id 00000000000000aa --data-dir /var/lib/kiln-4 --registry 127.0.0.1:5000"
        );
    }
}
