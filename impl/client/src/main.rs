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
use phoenix_client::error::usage;
use phoenix_client::{Client, ClientError};

// Requirement: CLI-HELP-1 (every argument and option has help text, defaults shown)
#[derive(Debug, Parser)]
#[command(
    name = "phoenix",
    version,
    about = "Phoenix end-to-end encrypted messaging client",
    after_help = "Times are shown as UTC dates (e.g. 2026-12-04 18:20:03 UTC); with --json \
                  they stay Unix seconds. Exit codes: 0 success, 1 error, 3 `sync` printed \
                  errors."
)]
struct Cli {
    /// The client's state directory [default: the user's data dir, e.g.
    /// ~/.local/share/phoenix].
    #[arg(long, env = "PHOENIX_HOME", global = true, value_name = "DIR")]
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
    /// (connection-package fetches and direct-queue enqueues) or all (also
    /// key-package fetches and DS operations, which links this client's FID to a
    /// pseudonymous user or to groups in the remote operator's view; see docs/identity.md).
    #[arg(
        long = "remote-sessions",
        value_name = "off|as|all",
        env = "PHOENIX_REMOTE_SESSIONS",
        global = true,
        default_value = "as"
    )]
    remote_sessions: Option<phoenix_client::client::RemoteSessions>,
    /// Trust the CA certificates in this PEM file for servers' HTTPS, besides the public
    /// web roots (a private CA, or a test certificate).
    #[arg(
        long = "ca-cert",
        value_name = "FILE",
        env = "PHOENIX_CA_CERT",
        global = true
    )]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a new user (local@domain) with this client at a homeserver.
    Register {
        /// The new user's Federation ID, e.g. alice@example.org.
        fid: String,
        /// The homeserver's base URL, e.g. https://example.org or http://127.0.0.1:8080.
        #[arg(long, value_name = "URL")]
        server: String,
    },
    /// Ask another user to connect.
    Connect {
        /// The user to ask, e.g. bob@example.org.
        fid: String,
    },
    /// Fetch and list incoming connection requests.
    Requests,
    /// Accept a connection request (fetching requests first).
    Accept {
        /// The user whose request to accept.
        fid: String,
    },
    /// List contacts, with the fingerprint code of their pinned clients.
    Contacts,
    /// List your groups with their member counts and unread counts (messages received
    /// since you last ran `phoenix history GROUP`; the mark is kept in the state
    /// directory).
    Groups,
    /// Group commands.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Send a message to a group.
    Send {
        /// The group's name.
        group: String,
        /// The message.
        text: String,
        /// Ask the recipients' servers not to announce it by push notification (they
        /// still receive it).
        #[arg(long)]
        silent: bool,
    },
    /// Fetch and process new messages, invitations, connection requests and confirmations
    /// (renews this client's certificate first when a third of its lifetime is left).
    Sync,
    /// Stay connected and print each event as it arrives (messages, joins, connection
    /// requests), from the server's live stream; reconnects with backoff when the server
    /// goes away; Ctrl-C stops (between two messages). With --json, one event per line.
    Listen,
    /// A terminal chat in one group: shows its recent messages, then each new one as it
    /// arrives (as `listen` does), and sends each line you type; Ctrl-D or Ctrl-C ends it.
    Chat {
        /// The group's name.
        group: String,
    },
    /// Renew this client's certificate (new key) and announce it in every group.
    Renew,
    /// Show a group's messages, yours included, each re-verified as of when it arrived;
    /// marks them read (see `phoenix groups`).
    History {
        /// The group's name.
        group: String,
    },
    /// Show the certificates another user's home server vouches for (verified), asked of
    /// this client's own server first, then of the user's home server.
    Certificates {
        /// The user, e.g. bob@example.org.
        fid: String,
    },
    /// Print the code to compare out of band: of a contact's pinned clients (FID), or of
    /// this client (no FID). Both sides see the same code if nobody is in between.
    Fingerprint {
        /// The contact (default: yourself).
        fid: Option<String>,
    },
    /// Push notifications: a Web Push endpoint (RFC 8030/8291/8292, which UnifiedPush
    /// distributors speak too) that your server notifies when your queue gets something
    /// and no `listen` is running. The notification carries no content.
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
    /// Mark a contact verified: CODE is what `phoenix fingerprint` shows on their device
    /// (spaces optional); a wrong code is refused.
    Verify {
        /// The contact.
        fid: String,
        /// The code their device shows.
        code: String,
    },
}

#[derive(Debug, Subcommand)]
enum PushCommand {
    /// Register URL as this client's push endpoint. Without --p256dh/--auth, the
    /// subscription's keys are generated here (printed, to give the push service's
    /// receiving side; `phoenix push decrypt` opens notifications with them).
    Set {
        /// The push endpoint (https://...), from the push service or distributor.
        url: String,
        /// The subscription's public key, base64url (a browser PushSubscription's p256dh),
        /// when another program holds its private key. Needs --auth.
        #[arg(long, requires = "auth")]
        p256dh: Option<String>,
        /// The subscription's auth secret, base64url (16 bytes). Needs --p256dh.
        #[arg(long, requires = "p256dh")]
        auth: Option<String>,
    },
    /// Remove the push endpoint: no more notifications.
    Clear,
    /// Show the push endpoint and its keys.
    Show,
    /// Decrypt a notification body the push service delivered (a file, or - for stdin),
    /// with the key `push set` generated; prints what it says (nothing, for Phoenix).
    Decrypt {
        /// The body, as delivered (binary, aes128gcm).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List your groups (as `phoenix groups`).
    List,
    /// Create a group.
    Create {
        /// The group's name (yours only: members learn it from the invitation).
        name: String,
    },
    /// Invite a connected contact into a group.
    Invite {
        /// The group's name.
        name: String,
        /// The contact to invite.
        fid: String,
    },
    /// List a group's members with their verified identities.
    Members {
        /// The group's name.
        name: String,
    },
    /// Remove a member (all its clients) from a group.
    Remove {
        /// The group's name.
        name: String,
        /// The member to remove.
        fid: String,
    },
    /// Rotate your keys in a group (an MLS update).
    Update {
        /// The group's name.
        name: String,
    },
    /// Rejoin a group by external commit, keeping your history (`sync` does this by
    /// itself when a group fell behind).
    Resync {
        /// The group's name.
        name: String,
    },
}

impl Command {
    // Requirement: CLI-ERR-1
    /// The operation the user asked for, as errors name it.
    fn operation(&self) -> String {
        match self {
            Command::Register { fid, .. } => format!("register {fid}"),
            Command::Connect { fid } => format!("connect to {fid}"),
            Command::Requests => "fetch connection requests".to_owned(),
            Command::Accept { fid } => format!("accept {fid}'s connection request"),
            Command::Contacts => "list contacts".to_owned(),
            Command::Groups
            | Command::Group {
                command: GroupCommand::List,
            } => "list groups".to_owned(),
            Command::Group { command } => match command {
                GroupCommand::List => "list groups".to_owned(),
                GroupCommand::Create { name } => format!("create group {name}"),
                GroupCommand::Invite { name, fid } => format!("invite {fid} to {name}"),
                GroupCommand::Members { name } => format!("list the members of {name}"),
                GroupCommand::Remove { name, fid } => format!("remove {fid} from {name}"),
                GroupCommand::Update { name } => format!("rotate your keys in {name}"),
                GroupCommand::Resync { name } => format!("resync {name}"),
            },
            Command::Send { group, .. } => format!("send to {group}"),
            Command::Sync => "sync".to_owned(),
            Command::Listen => "listen".to_owned(),
            Command::Chat { group } => format!("chat in {group}"),
            Command::Renew => "renew the certificate".to_owned(),
            Command::History { group } => format!("show the history of {group}"),
            Command::Certificates { fid } => format!("look up {fid}'s certificates"),
            Command::Fingerprint { fid: Some(fid) } => format!("show {fid}'s fingerprint"),
            Command::Fingerprint { fid: None } => "show your fingerprint".to_owned(),
            Command::Verify { fid, .. } => format!("verify {fid}"),
            Command::Push { command } => match command {
                PushCommand::Set { .. } => "set the push endpoint".to_owned(),
                PushCommand::Clear => "clear the push endpoint".to_owned(),
                PushCommand::Show => "show the push endpoint".to_owned(),
                PushCommand::Decrypt { .. } => "decrypt a push notification".to_owned(),
            },
        }
    }
}

/// Exit code of a `sync` that printed events reporting errors.
const EXIT_SYNC_ERRORS: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_out = cli.json;
    let operation = cli.command.operation();
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
            // Requirement: CLI-ERR-1 (the operation the user asked for, then the cause)
            if json_out {
                let code = e.code();
                eprintln!(
                    "{}",
                    json!({"error": e.to_string(), "code": code, "operation": operation})
                );
            } else {
                eprintln!("phoenix: could not {operation}: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Messages of the group shown when `chat` starts.
const CHAT_RECENT: usize = 20;

/// `listen` (and `chat`, with the lines to send): stream until Ctrl-C (or the end of the
/// lines), printing each event; reconnect with backoff when the server goes away.
async fn listen(
    client: &mut Client,
    json_out: bool,
    mut chat: Option<(&str, &mut tokio::sync::mpsc::Receiver<String>)>,
) -> Result<(), ClientError> {
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
        // Keep the sender alive: a dropped one would read as a stop.
        std::future::pending::<()>().await;
    });
    let group = chat.as_ref().map(|(g, _)| (*g).to_owned());
    let mut print = move |events: Vec<Value>| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for event in &events {
            let line = if json_out {
                event.to_string()
            } else if event["kind"] == "sent" {
                format!(
                    "[{}] you: {}",
                    event["group"].as_str().unwrap_or("?"),
                    event["text"].as_str().unwrap_or("")
                )
            } else if group.is_some() && event["kind"] == "listening" {
                format!(
                    "chatting in {} (Ctrl-D or Ctrl-C to leave)",
                    group.as_deref().unwrap_or("?")
                )
            } else {
                describe(event)
            };
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    };
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        let session = client
            .listen_and_send(
                &mut print,
                &mut stop,
                chat.as_mut().map(|(g, l)| (*g, &mut **l)),
            )
            .await;
        match session {
            Ok(phoenix_client::client::ListenEnd::Stopped) => return Ok(()),
            Ok(phoenix_client::client::ListenEnd::Closed) => {
                eprintln!("phoenix: the server closed the stream; reconnecting");
                backoff = std::time::Duration::from_secs(1);
            }
            Err(e @ (ClientError::Transport(_) | ClientError::NotSent(_))) => {
                eprintln!(
                    "phoenix: listen: {e}; trying again in {} s",
                    backoff.as_secs()
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}

fn default_home() -> Result<PathBuf, ClientError> {
    dirs::data_dir().map(|d| d.join("phoenix")).ok_or_else(|| {
        ClientError::Usage("cannot determine a data directory: pass --home DIR".into())
    })
}

async fn run(cli: Cli) -> Result<(Value, String), ClientError> {
    if let Some(path) = &cli.ca_cert {
        phoenix_client::api::trust_extra_roots(path)?;
    }
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
                    "received_at_rfc3339": rfc3339(r.received_at),
                    "fingerprint": hex::encode(phoenix_types::crypto::sha256(&r.certificate)), "warning": warning}));
            }
            let text = if requests.is_empty() {
                "no connection requests".to_owned()
            } else {
                requests
                    .iter()
                    .map(|r| {
                        format!(
                            "{} wants to connect (since {}; accept with: phoenix accept {})",
                            r.fid,
                            utc_date(r.received_at),
                            r.fid
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
                        // Requirement: CLI-FMT-1 (the code `phoenix fingerprint` prints)
                        match &c.code {
                            Some(code) => format!(
                                "{} ({}){verification}\n  fingerprint: {code}",
                                c.fid, c.status
                            ),
                            None => format!(
                                "{} ({}){verification}\n  fingerprint: none yet (no client pinned)",
                                c.fid, c.status
                            ),
                        }
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
            GroupCommand::Resync { name } => {
                let event = client.resync(&name).await?;
                let text = describe(&event);
                (event, text)
            }
            GroupCommand::Update { name } => {
                client.update(&name).await?;
                (
                    json!({"group": name, "updated": true}),
                    format!("rotated your keys in {name}"),
                )
            }
            GroupCommand::List => groups(&client).await?,
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
        Command::Groups => groups(&client).await?,
        Command::Send {
            group,
            text,
            silent,
        } => {
            let notification = if silent {
                phoenix_client::client::Notification::Suppress
            } else {
                phoenix_client::client::Notification::Send
            };
            client.send_with(&group, &text, notification).await?;
            (
                json!({"group": group, "sent": true}),
                format!("sent to {group}"),
            )
        }
        Command::Push { command } => match command {
            PushCommand::Set { url, p256dh, auth } => {
                let keys = p256dh.as_deref().zip(auth.as_deref());
                let status = client.set_push(&url, keys).await?;
                let mut text = format!("push endpoint set: {}", status.url);
                if status.decrypts_here {
                    text.push_str(&format!(
                        "\nits keys (give them to the receiving side; `phoenix push decrypt` opens notifications here):\n  p256dh {}\n  auth   {}",
                        status.p256dh, status.auth
                    ));
                }
                (serde_json::to_value(&status).unwrap_or(Value::Null), text)
            }
            PushCommand::Clear => {
                client.clear_push().await?;
                (json!({"cleared": true}), "push endpoint cleared".to_owned())
            }
            PushCommand::Show => match client.push_status().await? {
                Some(status) => {
                    let text = format!(
                        "push endpoint: {}\n  p256dh {}\n  auth   {}\n  {}",
                        status.url,
                        status.p256dh,
                        status.auth,
                        if status.decrypts_here {
                            "notifications decrypt here (phoenix push decrypt)"
                        } else {
                            "the private key is held elsewhere"
                        }
                    );
                    (serde_json::to_value(&status).unwrap_or(Value::Null), text)
                }
                None => (Value::Null, "no push endpoint set".to_owned()),
            },
            PushCommand::Decrypt { file } => {
                let body = if file.as_os_str() == "-" {
                    let mut body = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut body)
                        .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
                    body
                } else {
                    std::fs::read(&file)
                        .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?
                };
                let plain = client.decrypt_push(&body).await?;
                let text = if plain.is_empty() {
                    "a notification with no content: your queue has something (run phoenix sync)"
                        .to_owned()
                } else {
                    format!("a notification saying: {}", String::from_utf8_lossy(&plain))
                };
                (
                    json!({"content": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &plain)}),
                    text,
                )
            }
        },
        Command::Renew => {
            let r = client.renew().await?;
            let text = format!(
                "renewed the certificate ({}), valid until {}; announced in {} groups",
                r.fingerprint,
                utc_date(r.not_after),
                r.groups_updated
            );
            (serde_json::to_value(&r).unwrap_or(Value::Null), text)
        }
        Command::History { group } => {
            let mut messages = client.history(&group).await?;
            // Requirement: CLI-FMT-2
            for m in &mut messages {
                if let Some(at) = m.get("received_at").and_then(Value::as_u64) {
                    m["received_at_rfc3339"] = Value::String(rfc3339(at));
                }
            }
            let text = if messages.is_empty() {
                format!("no messages in {group} yet")
            } else {
                messages
                    .iter()
                    .map(history_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            // Requirement: CLI-GROUPS-1 (what the user has now seen is no longer unread)
            client.mark_read(&group).await?;
            (json!({"group": group, "messages": messages}), text)
        }
        Command::Certificates { fid } => {
            let answer = client.actor_certificates(&fid).await?;
            let text = answer
                .certificates
                .iter()
                .map(|c| {
                    format!(
                        "{} {} (client {}, valid {} to {}){}",
                        answer.fid,
                        c.fingerprint,
                        c.client_id,
                        utc_date(c.not_before),
                        utc_date(c.not_after),
                        c.invalidated_at
                            .map(|at| format!(", INVALIDATED at {}", utc_date(at)))
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
        // Requirement: CLI-LISTEN-1
        Command::Listen => {
            listen(&mut client, cli.json, None).await?;
            (json!({"kind": "stopped"}), String::new())
        }
        // Requirement: CLI-CHAT-1
        Command::Chat { group } => {
            // The group must exist; its recent messages first.
            let recent = client.history(&group).await?;
            let start = recent.len().saturating_sub(CHAT_RECENT);
            for m in recent.get(start..).unwrap_or_default() {
                let sender = if m["own"] == true {
                    "you".to_owned()
                } else {
                    m["sender"].as_str().unwrap_or("?").to_owned()
                };
                println!("[{group}] {sender}: {}", m["text"].as_str().unwrap_or(""));
            }
            // Lines typed, read on a thread of their own (stdin blocks).
            let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                    if !line.trim().is_empty() && tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            });
            listen(&mut client, cli.json, Some((&group, &mut lines))).await?;
            (json!({"kind": "stopped"}), String::new())
        }
        Command::Sync => {
            // Requirement: CLI-SYNC-1 (text only: the JSON stays `{"events": []}`)
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

// Requirement: CLI-GROUPS-1
/// `phoenix groups` (and `phoenix group list`): names, member counts, unread counts.
async fn groups(client: &Client) -> Result<(Value, String), ClientError> {
    let groups = client.groups_overview().await?;
    let text = if groups.is_empty() {
        "no groups (create one with `phoenix group create NAME`)".to_owned()
    } else {
        groups
            .iter()
            .map(|g| {
                let unread = match g.unread {
                    0 => "no unread messages".to_owned(),
                    1 => "1 unread message".to_owned(),
                    n => format!("{n} unread messages"),
                };
                if g.active {
                    format!("{} ({} members, {unread})", g.name, g.members)
                } else {
                    format!("{} (you were removed, {unread})", g.name)
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok((json!({ "groups": groups }), text))
}

/// One line of `phoenix history`: date, sender (marked when it is you), text.
fn history_line(m: &Value) -> String {
    let field = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let when = m
        .get("received_at")
        .and_then(Value::as_u64)
        .map(utc_date)
        .unwrap_or_else(|| "?".to_owned());
    if m.get("gap") == Some(&Value::Bool(true)) {
        format!("{when} --- GAP: {} ---", field("problem"))
    } else if m.get("verified") == Some(&Value::Bool(true)) {
        // Requirement: CLI-HIST-1
        let you = if m.get("own") == Some(&Value::Bool(true)) {
            " (you)"
        } else {
            ""
        };
        format!("{when} {}{you}: {}", field("sender"), field("text"))
    } else {
        format!(
            "{when} UNVERIFIED ({}): {}",
            field("problem"),
            field("text")
        )
    }
}

// Requirement: CLI-FMT-2
/// Unix seconds as a UTC date, `2026-12-04 18:20:03 UTC`.
fn utc_date(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date} {time} UTC")
}

/// Unix seconds as RFC 3339, `2026-12-04T18:20:03Z` (the `*_rfc3339` JSON fields).
fn rfc3339(secs: u64) -> String {
    let (date, time) = civil(secs);
    format!("{date}T{time}Z")
}

/// The proleptic Gregorian date and the time of day of Unix seconds (H. Hinnant's
/// days-from-civil inverse).
fn civil(secs: u64) -> (String, String) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
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
        "listening" => format!("listening at {} (Ctrl-C to stop)", s("server")),
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
        // Requirement: CL-RESYNC-1
        "resynced" => format!(
            "[{}] resynced: this client had fallen behind (epoch {}) and rejoined at epoch {}; \
             messages in between were missed",
            s("group"),
            field("from_epoch"),
            field("to_epoch")
        ),
        "member_resynced" => format!("[{}] {} resynced (rejoined)", s("group"), s("member")),
        // Requirement: CL-KP-1
        "key_packages_published" => s("detail"),
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

#[cfg(test)]
mod tests {
    use super::{rfc3339, utc_date};

    // Requirement: CLI-FMT-2
    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_796_408_944), "2026-12-04 18:29:04 UTC");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
