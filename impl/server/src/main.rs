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
    init_tracing(settings.log_format);
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phoenix-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PHOENIX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    let store = Store::connect(&settings.database_url).await.map_err(|e| {
        format!(
            "cannot open database {}: {e}",
            redacted(&settings.database_url)
        )
    })?;
    let backend = store.backend_name();
    let server = Server::start_with(
        settings.domain.clone(),
        store,
        settings.limits.clone(),
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
    println!(
        "phoenix-server listening on http://{addr} (domain {}, {backend})",
        settings.domain
    );

    http::serve(server, listener, shutdown_signal()).await;
    tracing::info!("phoenix-server stopped");
    Ok(())
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
