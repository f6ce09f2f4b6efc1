//! `phoenix-server`: run the homeserver. See `phoenix-server --help` and docs/operations.md.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use phoenix_server::config::{Args, Command, LogFormat, Settings, redacted};
use phoenix_server::http;
use phoenix_server::server::Server;
use phoenix_server::store::Store;

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::resolve(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("phoenix-server: {e}");
            return ExitCode::from(2);
        }
    };
    if settings.command == Command::CheckConfig {
        // Requirement: OPS-CONFIG-1
        let argv: Vec<String> = std::env::args().collect();
        let env = |name: &str| std::env::var(name).ok();
        return match phoenix_server::config::explain(&argv, &env, &settings) {
            Ok(lines) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for (key, value, source) in lines {
                    let _ = writeln!(out, "{key} = {value}  ({})", source.as_str());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("phoenix-server: {e}");
                ExitCode::from(2)
            }
        };
    }
    // Admin commands print their own one-line errors; only warnings are logged.
    let quiet = matches!(settings.command, Command::Admin(_));
    init_tracing(settings.log_format, quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("phoenix-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Admin(admin) = &settings.command {
        return match runtime.block_on(run_admin(&settings, admin)) {
            Ok(text) => {
                if !text.is_empty() {
                    println!("{text}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("phoenix-server admin: {}", e.message);
                ExitCode::from(e.code)
            }
        };
    }
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phoenix-server: {e}");
            ExitCode::FAILURE
        }
    }
}

// Requirement: OPS-ADMIN-1
async fn run_admin(
    settings: &Settings,
    admin: &phoenix_server::admin::AdminArgs,
) -> Result<String, phoenix_server::admin::AdminError> {
    phoenix_server::files::prepare_sqlite(&settings.database_url)
        .map_err(|message| phoenix_server::admin::AdminError { code: 1, message })?;
    let store = Store::connect(&settings.database_url).await.map_err(|e| {
        phoenix_server::admin::AdminError {
            code: 1,
            message: format!(
                "cannot open database {}: {}",
                redacted(&settings.database_url),
                phoenix_server::store::admin::describe(&e)
            ),
        }
    })?;
    let kek = || load_key_encryption_key(settings);
    phoenix_server::admin::run(&store, admin, phoenix_server::server::now(), &kek).await
}

fn init_tracing(format: LogFormat, quiet: bool) {
    use std::io::IsTerminal;
    let default = if quiet { "warn,sqlx=error" } else { "info" };
    let filter = EnvFilter::try_from_env("PHOENIX_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Requirement: OPS-LOG-1 (colour only on a terminal)
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    if settings.uses_data_dir() {
        // Requirement: OPS-FILES-1
        phoenix_server::files::create_private_dir(&settings.data_dir)?;
    }
    phoenix_server::files::prepare_sqlite(&settings.database_url)?;
    let mut limits = settings.limits.clone();
    limits.key_encryption = load_key_encryption_key(&settings)?;
    // Requirement: OPS-TLS-1 (files checked before anything else starts)
    let tls = match &settings.tls {
        Some(files) => Some(phoenix_server::tls::Tls::load(files.clone())?),
        None => None,
    };
    // Requirement: OPS-LOG-3
    let store = Store::connect(&settings.database_url).await.map_err(|e| {
        format!(
            "cannot open database {}: {}",
            redacted(&settings.database_url),
            phoenix_server::store::admin::describe(&e)
        )
    })?;
    let backend = store.backend_name();
    let server = Server::start_with(
        settings.domain.clone(),
        store,
        limits,
        settings.federation.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    if settings.command == Command::RotateCaKey {
        let old = hex::encode(server.ca().certificate.fingerprint());
        let ca = server.rotate_ca().await.map_err(|e| e.to_string())?;
        println!(
            "rotated the CA of {}: new certificate {} (previous {old}); earlier certificates stay valid until they expire",
            settings.domain,
            hex::encode(ca.certificate.fingerprint())
        );
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        domain = %settings.domain,
        %addr,
        database = %redacted(&settings.database_url),
        backend,
        ca_fingerprint = %hex::encode(server.ca().certificate.fingerprint()),
        "phoenix-server started"
    );
    // One line on stdout for scripts and tests that start the server on port 0.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "phoenix-server listening on {scheme}://{addr} (domain {}, {backend})",
        settings.domain
    );
    let reloader = tls.clone().map(|tls| tokio::spawn(reload_on_sighup(tls)));
    http::serve_tls(server, listener, tls, shutdown_signal()).await;
    if let Some(task) = reloader {
        task.abort();
    }
    tracing::info!("phoenix-server stopped");
    Ok(())
}

// Requirement: OPS-KEK-1
/// The key-encryption key from the environment, the configured file, or the data
/// directory's (created on first start).
fn load_key_encryption_key(
    settings: &Settings,
) -> Result<phoenix_server::keys_at_rest::KeyEncryptionKey, String> {
    use phoenix_server::keys_at_rest::KeySource;
    if let KeySource::DataDir(_) = settings.key_source {
        phoenix_server::files::create_private_dir(&settings.data_dir)?;
    }
    let env = |name: &str| std::env::var(name).ok();
    settings.key_source.load(&env).map_err(|e| {
        format!(
            "key-encryption key ({}): {e}",
            settings.key_source.describe()
        )
    })
}

// Requirement: OPS-TLS-2
/// Reload the TLS certificate and key on every SIGHUP (after a renewal); a failed reload
/// keeps the ones in use and says why.
async fn reload_on_sighup(tls: std::sync::Arc<phoenix_server::tls::Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate is not reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.files().cert.display(),
                    "reloaded the TLS certificate and key"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; the certificate in use stays")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
