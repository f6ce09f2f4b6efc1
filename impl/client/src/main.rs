//! `phoenix`: the Phoenix command-line client. See `phoenix --help` and the README's quick
//! start. Every command takes `--home DIR` (the client's state directory) and `--json`.
//! Errors are one line on stderr and a non-zero exit code (1). `sync` prints what it could
//! not process as `error` events (naming the group where known) and then exits with
//! [`EXIT_SYNC_ERRORS`] (3), so that scripts notice a loss.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use phoenix_client::client::PinStatus;
use phoenix_client::{Client, ClientError};

#[derive(Debug, Parser)]
#[command(
    name = "phoenix",
    version,
    about = "Phoenix end-to-end encrypted messaging client"
)]
struct Cli {
    /// The client's state directory (default: the user's data dir, e.g. ~/.local/share/phoenix).
    #[arg(long, env = "PHOENIX_HOME", global = true)]
    home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Reach DOMAIN's homeserver at URL instead of https://DOMAIN (repeatable, like curl's
    /// --resolve); remembered in the state directory for later commands.
    #[arg(long = "resolve", value_name = "DOMAIN=URL", global = true)]
    resolve: Vec<String>,
    /// Which operations on other homeservers carry a foreign session (a token from a key
    /// trial, so the server limits this client per session, not only per address): off, as
    /// (the default: connection-package fetches and direct-queue enqueues) or all (also
    /// key-package fetches and DS operations, which links this client's FID to a
    /// pseudonymous user or to groups in the remote operator's view; see docs/identity.md).
    #[arg(
        long = "remote-sessions",
        value_name = "off|as|all",
        env = "PHOENIX_REMOTE_SESSIONS",
        global = true
    )]
    remote_sessions: Option<phoenix_client::client::RemoteSessions>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a new user (local@domain) with this client at a homeserver.
    Register {
        fid: String,
        /// The homeserver's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        server: String,
    },
    /// Ask another user to connect.
    Connect { fid: String },
    /// Fetch and list incoming connection requests.
    Requests,
    /// Accept a connection request.
    Accept { fid: String },
    /// List contacts.
    Contacts,
    /// Group commands.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Send a message to a group.
    Send { group: String, text: String },
    /// Fetch and process new messages, invitations and connection confirmations
    /// (renews this client's certificate first when a third of its lifetime is left).
    Sync,
    /// Renew this client's certificate (new key) and announce it in every group.
    Renew,
    /// Show the messages received in a group, each re-verified as of when it arrived.
    History { group: String },
    /// Show the certificates another user's home server vouches for (verified), asked of
    /// this client's own server first, then of the user's home server.
    Certificates { fid: String },
    /// Print the code to compare out of band: of a contact's pinned clients (FID), or of
    /// this client (no FID). Both sides see the same code if nobody is in between.
    Fingerprint { fid: Option<String> },
    /// Mark a contact verified: CODE is what `phoenix fingerprint` shows on their device
    /// (spaces optional); a wrong code is refused.
    Verify { fid: String, code: String },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List your groups.
    List,
    /// Create a group.
    Create { name: String },
    /// Invite a connected contact into a group.
    Invite { name: String, fid: String },
    /// List a group's members with their verified identities.
    Members { name: String },
    /// Remove a member (all its clients) from a group.
    Remove { name: String, fid: String },
    /// Rotate your keys in a group (an MLS update).
    Update { name: String },
}

/// Exit code of a `sync` that printed events reporting errors.
const EXIT_SYNC_ERRORS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_out = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phoenix: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok((value, text)) => {
            if json_out {
                println!("{value}");
            } else if !text.is_empty() {
                println!("{text}");
            }
            // Requirement: CL-LOSS-1
            let reported_errors = value
                .get("events")
                .and_then(Value::as_array)
                .is_some_and(|events| events.iter().any(|e| e["kind"] == "error"));
            if reported_errors {
                ExitCode::from(EXIT_SYNC_ERRORS)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            if json_out {
                let code = e.code();
                eprintln!("{}", json!({"error": e.to_string(), "code": code}));
            } else {
                eprintln!("phoenix: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn default_home() -> Result<PathBuf, ClientError> {
    dirs::data_dir().map(|d| d.join("phoenix")).ok_or_else(|| {
        ClientError::Usage("cannot determine a data directory: pass --home DIR".into())
    })
}

async fn run(cli: Cli) -> Result<(Value, String), ClientError> {
    let home = match cli.home {
        Some(h) => h,
        None => default_home()?,
    };
    let mut client = Client::open(&home).await?;
    client.add_resolve(&cli.resolve).await?;
    if let Some(setting) = cli.remote_sessions {
        client.set_remote_sessions(setting);
    }
    Ok(match cli.command {
        Command::Register { fid, server } => {
            let r = client.register(&fid, &server).await?;
            let text = format!(
                "registered {} (client {}) at {}\nserver CA fingerprint: {}",
                r.fid, r.client_id, r.server, r.ca_fingerprint
            );
            (serde_json::to_value(&r).unwrap_or(Value::Null), text)
        }
        Command::Connect { fid } => {
            client.connect(&fid).await?;
            (
                json!({"contact": fid.to_ascii_lowercase(), "status": "requested"}),
                format!(
                    "connection request sent to {fid}; it completes when they accept and you sync"
                ),
            )
        }
        Command::Requests => {
            let requests = client.requests().await?;
            let mut list: Vec<Value> = Vec::new();
            let mut warnings = Vec::new();
            for r in &requests {
                let warning = client.request_warning(r).await?;
                if let Some(w) = &warning {
                    warnings.push(format!("WARNING: {w}"));
                }
                list.push(json!({"fid": r.fid, "client_id": r.client_id, "received_at": r.received_at,
                    "fingerprint": hex::encode(phoenix_types::crypto::sha256(&r.certificate)), "warning": warning}));
            }
            let text = if requests.is_empty() {
                "no connection requests".to_owned()
            } else {
                requests
                    .iter()
                    .map(|r| {
                        format!(
                            "{} wants to connect (accept with: phoenix accept {})",
                            r.fid, r.fid
                        )
                    })
                    .chain(warnings)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            (json!({"requests": list}), text)
        }
        Command::Accept { fid } => {
            client.accept(&fid).await?;
            (
                json!({"contact": fid.to_ascii_lowercase(), "status": "connected"}),
                format!("connected with {fid}"),
            )
        }
        Command::Contacts => {
            let contacts = client.contacts().await?;
            let text = if contacts.is_empty() {
                "no contacts".to_owned()
            } else {
                contacts
                    .iter()
                    .map(|c| {
                        let verification = match c.verification {
                            "changed" => {
                                " [VERIFIED, BUT THEIR CLIENTS CHANGED SINCE: compare fingerprints again]"
                            }
                            "verified" => " [verified]",
                            _ => "",
                        };
                        format!(
                            "{} ({}){verification} clients: {}",
                            c.fid,
                            c.status,
                            c.clients.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            (json!({"contacts": contacts}), text)
        }
        Command::Group { command } => match command {
            GroupCommand::Create { name } => {
                let group_id = client.create_group(&name).await?;
                (
                    json!({"group": name, "group_id": hex::encode(&group_id)}),
                    format!("created group {name}"),
                )
            }
            GroupCommand::Invite { name, fid } => {
                client.invite(&name, &fid).await?;
                (
                    json!({"group": name, "invited": fid.to_ascii_lowercase()}),
                    format!("invited {fid} to {name}"),
                )
            }
            GroupCommand::Remove { name, fid } => {
                client.remove(&name, &fid).await?;
                (
                    json!({"group": name, "removed": fid.to_ascii_lowercase()}),
                    format!("removed {fid} from {name}"),
                )
            }
            GroupCommand::Update { name } => {
                client.update(&name).await?;
                (
                    json!({"group": name, "updated": true}),
                    format!("rotated your keys in {name}"),
                )
            }
            GroupCommand::List => {
                let groups = client.group_list().await?;
                let text = if groups.is_empty() {
                    "no groups (create one with `phoenix group create NAME`)".to_owned()
                } else {
                    groups
                        .iter()
                        .map(|(name, members, active)| {
                            if *active {
                                format!("{name} ({members} members)")
                            } else {
                                format!("{name} (you were removed)")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let list: Vec<Value> = groups
                    .iter()
                    .map(|(name, members, active)| {
                        json!({"name": name, "members": members, "active": active})
                    })
                    .collect();
                (json!({"groups": list}), text)
            }
            GroupCommand::Members { name } => {
                let members = client.members(&name).await?;
                let text = members
                    .iter()
                    .map(|m| match (&m.fid, m.verified, m.pin) {
                        (Some(fid), true, Some(pin)) => {
                            let pin = match pin {
                                PinStatus::Own => "you",
                                PinStatus::Pinned => "pinned",
                                PinStatus::Unknown => "unknown: not a contact",
                                PinStatus::Changed => "CHANGED",
                                PinStatus::Unpinned => "UNPINNED",
                            };
                            match &m.problem {
                                Some(problem) => {
                                    format!("{fid} (verified, {pin}) WARNING: {problem}")
                                }
                                None => format!("{fid} (verified, {pin})"),
                            }
                        }
                        (Some(fid), false, Some(PinStatus::Unpinned)) => format!(
                            "{fid} UNPINNED, NOT VERIFIED: {}",
                            m.problem.clone().unwrap_or_default()
                        ),
                        _ => format!(
                            "leaf {} UNVERIFIED: {}",
                            m.leaf_index,
                            m.problem.clone().unwrap_or_default()
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                (json!({"group": name, "members": members}), text)
            }
        },
        Command::Send { group, text } => {
            client.send(&group, &text).await?;
            (
                json!({"group": group, "sent": true}),
                format!("sent to {group}"),
            )
        }
        Command::Renew => {
            let r = client.renew().await?;
            let text = format!(
                "renewed the certificate ({}), valid until {} (unix time); announced in {} groups",
                r.fingerprint, r.not_after, r.groups_updated
            );
            (serde_json::to_value(&r).unwrap_or(Value::Null), text)
        }
        Command::History { group } => {
            let messages = client.history(&group).await?;
            let text = messages
                .iter()
                .map(|m| {
                    let field =
                        |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                    if m.get("gap") == Some(&Value::Bool(true)) {
                        format!("--- GAP: {} ---", field("problem"))
                    } else if m.get("verified") == Some(&Value::Bool(true)) {
                        format!("{}: {}", field("sender"), field("text"))
                    } else {
                        format!("UNVERIFIED ({}): {}", field("problem"), field("text"))
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            (json!({"group": group, "messages": messages}), text)
        }
        Command::Certificates { fid } => {
            let answer = client.actor_certificates(&fid).await?;
            let text = answer
                .certificates
                .iter()
                .map(|c| {
                    format!(
                        "{} {} (client {}, valid {}..{}){}",
                        answer.fid,
                        c.fingerprint,
                        c.client_id,
                        c.not_before,
                        c.not_after,
                        c.invalidated_at
                            .map(|at| format!(", INVALIDATED at {at}"))
                            .unwrap_or_default()
                    )
                })
                .chain(std::iter::once(format!("(from the {})", answer.source)))
                .collect::<Vec<_>>()
                .join("\n");
            (serde_json::to_value(&answer).unwrap_or(Value::Null), text)
        }
        Command::Fingerprint { fid } => {
            let view = client.fingerprint(fid.as_deref()).await?;
            let text = format!(
                "{} ({}): {}\nclients: {}",
                view.fid,
                view.verification,
                view.code,
                view.clients.join(", ")
            );
            (serde_json::to_value(&view).unwrap_or(Value::Null), text)
        }
        Command::Verify { fid, code } => {
            let view = client.verify_contact(&fid, &code).await?;
            let text = format!("{} verified: the code matches ({})", view.fid, view.code);
            (serde_json::to_value(&view).unwrap_or(Value::Null), text)
        }
        Command::Sync => {
            let events = client.sync().await?;
            let text = if events.is_empty() {
                "nothing new".to_owned()
            } else {
                events.iter().map(describe).collect::<Vec<_>>().join("\n")
            };
            (json!({"events": events}), text)
        }
    })
}

/// The human lines for an event's `warnings` (members not pinned, or changed).
fn warnings(event: &Value) -> String {
    event
        .get("warnings")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|w| {
                    format!(
                        "\nWARNING: {}",
                        w.get("problem").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn describe(event: &Value) -> String {
    let field = |k: &str| event.get(k).cloned().unwrap_or(Value::Null);
    let s = |k: &str| field(k).as_str().unwrap_or("?").to_owned();
    match field("kind").as_str().unwrap_or("") {
        "message" if field("verified") == Value::Bool(true) => match field("warning").as_str() {
            Some(warning) => format!(
                "[{}] {} (WARNING: {warning}): {}",
                s("group"),
                s("sender"),
                s("text")
            ),
            None => format!("[{}] {}: {}", s("group"), s("sender"), s("text")),
        },
        "message" => format!(
            "[{}] UNVERIFIED SENDER ({}): {}",
            s("group"),
            s("problem"),
            s("text")
        ),
        "connected" => format!("connected with {}", s("contact")),
        "connection_request" if field("warning").is_string() => {
            format!("{} wants to connect. WARNING: {}", s("fid"), s("warning"))
        }
        "connection_request" => format!(
            "{} wants to connect: `phoenix accept {}` to accept",
            s("fid"),
            s("fid")
        ),
        "joined" => format!(
            "joined group {} (invited by {}){}",
            s("group"),
            s("invited_by"),
            warnings(event)
        ),
        "members_added" => format!(
            "[{}] new members: {}{}",
            s("group"),
            field("members"),
            warnings(event)
        ),
        "member_warning" => format!("[{}] a member changed:{}", s("group"), warnings(event)),
        "removed" => format!("you were removed from {}", s("group")),
        "certificate_renewed" => format!("renewed your certificate ({})", s("fingerprint")),
        "contact_certificate_renewed" if field("verified_contact_changed") == Value::Bool(true) => {
            format!(
                "WARNING: {} renewed their certificate ({}): you had verified them, and their \
                 fingerprint code changed; compare `phoenix fingerprint {}` with them again",
                s("contact"),
                s("fingerprint"),
                s("contact")
            )
        }
        "contact_certificate_renewed" => format!(
            "{} renewed their certificate ({})",
            s("contact"),
            s("fingerprint")
        ),
        "invitation_refused" => format!(
            "refused an invitation to {} from {}: {}",
            s("group"),
            s("invited_by"),
            s("reason")
        ),
        "error" if event.get("group").is_some() => {
            format!("[{}] error: {}", s("group"), s("detail"))
        }
        "error" => format!("error: {}", s("detail")),
        "sent" => format!("[{}] sent (confirmed late): {}", s("group"), s("text")),
        "commit_confirmed" => format!("[{}] your {} was confirmed", s("group"), s("operation")),
        other => format!("{other}: {event}"),
    }
}
