//! Assembles the pingora server from a configuration: one proxy service per listener, the
//! admin service, the demo backends, and the signal handling (graceful shutdown, reload).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use switchyard_plugin::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::Admin;
use crate::config::Config;
use crate::downstream::{ClientLimits, Frontend};
use crate::proxy::Gateway;
use crate::state::{compile, Shared};

/// How the process was asked to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// `-d`: run in the background.
    pub daemon: bool,
    /// `-u`: take over the listening sockets of a running instance.
    pub upgrade: bool,
    /// `--demo`: also start the demo backends.
    pub demo: bool,
}

/// The registry with every compiled-in algorithm.
pub fn default_registry() -> Registry {
    let mut registry = Registry::new();
    switchyard_balancers::register_all(&mut registry);
    // An outside plugin crate joins with one call (see plugins/examples/canary).
    switchyard_example_canary::register(&mut registry);
    registry
}

/// Run the gateway until it is told to stop. Returns the process exit code.
pub fn run(config: Config, registry: Registry, options: RunOptions) -> i32 {
    let server_section = config.server.clone();
    let admin_section = config.admin.clone();
    let listeners = config.listeners.clone();
    let shared = match Shared::new(config, registry) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Some(g) = shared.runtime.load().gslb.as_deref() {
        // An upgrade shares the DNS address with the old process until it exits.
        shared
            .live
            .gslb
            .reuse_port
            .store(options.upgrade, Ordering::Relaxed);
        if let Err(e) = shared.live.gslb.prepare(g.addr) {
            eprintln!("error: {e}");
            return 1;
        }
    }

    let mut conf = ServerConf {
        threads: server_section.threads,
        // The gateway ends the process itself once requests have drained (see `Signals`);
        // pingora's own wait is only a backstop.
        grace_period_seconds: Some(server_section.grace_period.get().as_secs() + 5),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: server_section.upstream_keepalive_pool_size,
        daemon: options.daemon,
        pid_file: server_section.pid_file.clone(),
        upgrade_sock: server_section.upgrade_sock.clone(),
        error_log: server_section.error_log.clone(),
        ..ServerConf::default()
    };
    conf.version = 1;
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let limits = ClientLimits {
        max_header_bytes: server_section.max_header_bytes,
        header_timeout: server_section.client_header_timeout.get(),
        idle_timeout: server_section.client_idle_timeout.get(),
    };
    for (index, listener) in listeners.iter().enumerate() {
        let gateway = Gateway::new(shared.clone(), index, listener.tls.is_some());
        let proxy = pingora_proxy::http_proxy(&server.configuration, gateway);
        let frontend = Frontend::new(
            proxy,
            limits,
            shared
                .metrics
                .downstream_connections(listener.name.get_ref()),
            shared.metrics.clone(),
        );
        let mut service = Service::new(format!("listener {}", listener.name.get_ref()), frontend);
        let mut endpoint = ListenerConfig::tcp(listener.addr.get_ref().to_string()).l4_buffer(
            L4BufferSettings::new(
                server_section.client_read_buffer,
                server_section.client_write_buffer,
            ),
        );
        if listener.tls.is_some() {
            match crate::tls::listener_tls_settings(listener) {
                Ok(settings) => endpoint = endpoint.tls(settings),
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            }
        }
        service.add_listener(endpoint);
        server.add_service(service);
    }

    let admin = HttpServer::new_app(Admin::new(shared.clone(), admin_section.token.clone()));
    let mut admin_service = Service::new("admin".to_owned(), admin);
    admin_service.add_tcp(&admin_section.addr.to_string());
    admin_service.threads = Some(1);
    server.add_service(admin_service);
    server.add_service(crate::health::HealthService::service(shared.clone()));
    server.add_service(crate::resource::ResourceService::service(shared.clone()));
    // L4 streams: their sockets are bound now, so that an address in use fails the start.
    match crate::stream::StreamService::bind(shared.clone()) {
        Ok(streams) => {
            server.add_service(streams.into_service(server_section.threads));
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    }
    server.add_service(crate::gslb::server::GslbService::service(
        shared.clone(),
        server_section.threads,
    ));

    if options.demo {
        for service in crate::demo::backend_services() {
            server.add_service(service);
        }
    }

    let phases = server.watch_execution_phase();
    let signals = Signals {
        shared: shared.clone(),
        grace: server_section.grace_period.get(),
        phases: std::sync::Mutex::new(Some(phases)),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    0
}

/// Re-read the configuration file and swap it in; on any error keep the running one.
/// Returns a one-line summary, or the errors one a line.
pub fn reload(shared: &Shared) -> Result<String, String> {
    let current = shared.runtime.load_full();
    let path = current.config.path.clone();
    if path.contains("(embedded)") {
        return Err("the embedded demo configuration cannot be reloaded".to_owned());
    }
    let result = reload_inner(shared, &current, &path);
    shared.metrics.config_reload(result.is_ok());
    if let Err(e) = &result {
        log::error!("reload failed, keeping the running configuration:\n{e}");
    }
    result
}

fn reload_inner(
    shared: &Shared,
    current: &crate::state::Runtime,
    path: &str,
) -> Result<String, String> {
    let config =
        Config::load(std::path::Path::new(path), &shared.registry).map_err(|e| e.to_string())?;
    crate::stream::check_new_addresses(&current.config, &config)?;
    let mut notes = Vec::new();
    let old: Vec<_> = current
        .config
        .listeners
        .iter()
        .map(|l| (l.name.get_ref().clone(), *l.addr.get_ref()))
        .collect();
    let new: Vec<_> = config
        .listeners
        .iter()
        .map(|l| (l.name.get_ref().clone(), *l.addr.get_ref()))
        .collect();
    if old != new {
        notes.push("listener changes are not applied in place: restart with -u (zero-downtime upgrade) to apply them");
    }
    if config.admin.addr != current.config.admin.addr {
        notes.push("admin address changes need a restart");
    }
    if let Some(g) = &config.gslb {
        // Bind a new responder address before the swap: a bind failure fails the reload.
        if shared.live.gslb.prepare(*g.addr.get_ref())? {
            notes.push("gslb.addr changed: the responder moved to the new address");
        }
    }
    let runtime = compile(config, &shared.registry, &shared.live)?;
    let refreshed = crate::tls::reload_certificates(&runtime.config)?;
    if refreshed > 0 {
        log::info!("reload: certificates of {refreshed} TLS listener(s) re-read");
    }
    if old != new {
        // Routes must keep referring to the listeners that actually run.
        log::warn!("reload: {}", notes[0]);
    }
    let summary = format!(
        "configuration reloaded: {} routes, {} upstreams{}{}",
        runtime.routes.routes().len(),
        runtime.upstreams.len(),
        if notes.is_empty() { "" } else { "; " },
        notes.join("; ")
    );
    shared.runtime.store(Arc::new(runtime));
    log::info!("{summary}");
    Ok(summary)
}

/// Signal handling: SIGHUP reloads; SIGTERM/SIGQUIT shut down gracefully (SIGQUIT first
/// hands the listening sockets to a new instance started with `-u`); SIGINT stops at once.
struct Signals {
    shared: Arc<Shared>,
    grace: Duration,
    phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

impl Signals {
    /// After the listeners stop, wait for in-flight requests (at most the grace period
    /// from the signal) and end the process.
    fn exit_when_drained(&self, signalled: Instant) {
        let shared = self.shared.clone();
        let grace = self.grace;
        let phases = self.phases.lock().ok().and_then(|mut p| p.take());
        std::thread::spawn(move || {
            if let Some(mut phases) = phases {
                // Wait until pingora has stopped the listeners (at once for SIGTERM; after
                // the socket hand-over for SIGQUIT), but no longer than the grace period.
                let deadline = signalled + grace;
                while Instant::now() < deadline {
                    match phases.try_recv() {
                        Ok(ExecutionPhase::ShutdownGracePeriod)
                        | Ok(ExecutionPhase::ShutdownStarted) => break,
                        Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                            continue
                        }
                        Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(tokio::sync::broadcast::error::TryRecvError::Closed) => break,
                    }
                }
            }
            let deadline = signalled + grace;
            while Instant::now() < deadline && shared.in_flight.load(Ordering::Relaxed) > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            let left = shared.in_flight.load(Ordering::Relaxed);
            if left > 0 {
                log::warn!("grace period over with {left} requests in flight; exiting");
            } else {
                log::info!("all requests finished; exiting");
            }
            // Let the access log writer flush its last lines.
            std::thread::sleep(Duration::from_millis(50));
            std::process::exit(0);
        });
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            log::error!("cannot install signal handlers");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let shared = self.shared.clone();
                    match tokio::task::spawn_blocking(move || reload(&shared)).await {
                        Ok(Ok(summary)) => log::info!("SIGHUP: {summary}"),
                        Ok(Err(errors)) => log::error!("SIGHUP: reload failed, keeping the running configuration:\n{errors}"),
                        Err(e) => log::error!("SIGHUP: reload failed: {e}"),
                    }
                }
                _ = term.recv() => {
                    log::info!("SIGTERM: graceful shutdown (grace period {:?})", self.grace);
                    self.shared.ready.store(false, Ordering::Relaxed);
                    self.exit_when_drained(Instant::now());
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    log::info!("SIGQUIT: handing listening sockets over, then graceful shutdown");
                    self.shared.ready.store(false, Ordering::Relaxed);
                    self.exit_when_drained(Instant::now());
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => {
                    log::info!("SIGINT: stopping now");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
    }
}
