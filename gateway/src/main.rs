//! The `gateway` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchyard_gateway::config::Config;
use switchyard_gateway::{demo, server};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Switchyard: a programmable edge gateway built on pingora.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    /// Run with this configuration file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Parse and fully validate the configuration, print `configuration ok` or every
    /// error, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run the embedded demo: three backends in process, the gateway on 127.0.0.1:8080,
    /// admin on 127.0.0.1:9901.
    #[arg(long)]
    demo: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Zero-downtime upgrade: take over the listening sockets of the running instance.
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = server::default_registry();
    let loaded = match (&cli.config, cli.demo) {
        (Some(_), true) => {
            eprintln!("error: pass either -c FILE or --demo, not both");
            return ExitCode::from(1);
        }
        (Some(path), false) => Config::load(path, &registry),
        (None, true) => Config::parse(demo::DEMO_NAME, demo::DEMO_TOML, &registry),
        (None, false) => {
            eprintln!("error: no configuration: pass -c FILE (or --demo for the embedded demo)");
            return ExitCode::from(1);
        }
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!(
                "error: the configuration has {} error{}",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(1);
        }
    };
    if cli.test {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&config.server.log_level);
    if cli.demo {
        eprintln!("{}", demo::banner());
    }
    let options = server::RunOptions {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
        demo: cli.demo,
    };
    // Bind failures and other start-up errors inside pingora panic; make them one line.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unexpected failure");
        let place = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: {msg}{place}");
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server::run(config, registry, options)
    })) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(_) => ExitCode::from(1),
    }
}

fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(format!(
        "{level},pingora=warn,pingora_core=warn,pingora_proxy=warn"
    ));
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}
