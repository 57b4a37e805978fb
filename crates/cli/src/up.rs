//! `nimbus up`: a single-node nimbus (embedded cluster, service manager and HTTP
//! gateway) serving until it is interrupted.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use nimbus_core::exit_code;
use nimbus_gateway::Gateway;
use nimbus_worker::{Cluster, ClusterConfig, GlobalState, Services};

use crate::Failure;

/// Arguments of `nimbus up`.
#[derive(Args)]
pub(crate) struct UpArgs {
    /// Address of the HTTP gateway (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: String,
    /// Address of the binary data plane for invocations (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7071", value_name = "ADDR")]
    data_listen: String,
    /// Where nimbus keeps modules, deployments and swapped-out state.
    #[arg(long, env = "NIMBUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The global state tier, `redis://HOST:PORT[/DB]` (default: embedded in nimbus).
    #[arg(long, value_name = "URL")]
    state: Option<String>,
}

pub(crate) fn up(args: UpArgs) -> Result<i32, Failure> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        Failure::new(exit_code::INTERNAL, format!("{what}: {e}"))
    };
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| internal("cannot start", &e))?;
    tokio.block_on(async {
        let mut config = ClusterConfig::new(&data_dir);
        config.global_state = GlobalState(
            nimbus_state::open(args.state.as_deref())
                .await
                .map_err(|e| internal("state", &e))?,
        );
        let cluster =
            Cluster::new(&config).map_err(|e| internal("cannot start the cluster", &e))?;
        let services = Arc::new(
            Services::open(cluster.clone(), &data_dir)
                .map_err(|e| internal("cannot open the deployments", &e))?,
        );
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {}: {e}", args.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| internal("listener", &e))?;
        let data_listener = tokio::net::TcpListener::bind(&args.data_listen)
            .await
            .map_err(|e| Failure::new(2, format!("cannot listen on {}: {e}", args.data_listen)))?;
        let data_address = data_listener
            .local_addr()
            .map_err(|e| internal("listener", &e))?;
        // Tools and tests read these lines to learn the ports.
        println!("nimbus: gateway listening on http://{address}");
        println!("nimbus: data plane listening on {data_address}");
        tokio::spawn(nimbus_dataplane::serve(
            data_listener,
            nimbus_gateway::DataPlane::new(services.clone()),
            nimbus_dataplane::ServerConfig::default(),
        ));
        let gateway = Arc::new(Gateway {
            services: services.clone(),
            cluster,
        });
        nimbus_gateway::serve(listener, gateway, stop_signal())
            .await
            .map_err(|e| internal("gateway", &e))?;
        eprintln!("nimbus: stopping; swapping every instance out");
        services
            .swap_out_all()
            .await
            .map_err(|e| internal("swapping out", &e))?;
        Ok(0)
    })
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the process is still stopped by the signal.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
