//! `hangar server`: wires the store, the image store, the runtime, the agent and the API
//! together, and serves until SIGTERM. Machines are not children of the server: stopping it
//! leaves them running, and the next start re-attaches to them.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hangar_agent::{Agent, AgentConfig};
use hangar_image::{ImageStore, StoreOptions};
use hangar_runtime::sandbox::{Sandbox, SandboxConfig};
use hangar_runtime::{Accel, Microvm, MicrovmConfig, Runtime, RuntimeKind, Runtimes};

/// Where `scripts/fetch-kernel.sh` unpacks the guest kernel by default.
const DEFAULT_KERNEL_DIR: &str = "/var/lib/hangar/kernel";
use hangar_store::Store;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where Hangar keeps its state, images and machines
    /// [default: /var/lib/hangar as root, else $XDG_DATA_HOME/hangar]
    #[arg(long, env = "HANGAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the API listens on
    #[arg(long, env = "HANGAR_LISTEN", default_value = "127.0.0.1:4280")]
    listen: SocketAddr,
    /// API token [default: $HANGAR_API_TOKEN, else generated once and kept in DATA_DIR/token]
    #[arg(long, env = "HANGAR_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The region this host serves
    #[arg(long, env = "HANGAR_REGION", default_value = "local")]
    region: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How machines run by default
    #[arg(long, env = "HANGAR_RUNTIME", value_parser = runtime_kind(), default_value = "sandbox")]
    runtime: RuntimeKind,
    /// Another runtime machines may ask for with `config.guest.runtime` (repeatable)
    #[arg(long = "extra-runtime", value_parser = runtime_kind(), value_name = "RUNTIME")]
    extra_runtimes: Vec<RuntimeKind>,
    /// The microvm runtime's accelerator: `auto` probes KVM with a boot and falls back to TCG
    #[arg(long, env = "HANGAR_ACCEL", value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// The microVM guest kernel [default: the one `scripts/fetch-kernel.sh` unpacked into
    /// DATA_DIR/kernel, else /var/lib/hangar/kernel]
    #[arg(long, env = "HANGAR_KERNEL", requires = "initrd_modules")]
    kernel: Option<PathBuf>,
    /// The modules of --kernel (its `lib/modules/VERSION` directory)
    #[arg(
        long = "initrd-modules",
        env = "HANGAR_INITRD_MODULES",
        requires = "kernel"
    )]
    initrd_modules: Option<PathBuf>,
    /// The QEMU binary
    #[arg(long, env = "HANGAR_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// The static hangar-init binary [default: hangar-init next to this executable]
    #[arg(long = "init", env = "HANGAR_INIT")]
    init: Option<PathBuf>,
    /// The runc binary
    #[arg(long, env = "HANGAR_RUNC", default_value = "runc")]
    runc: PathBuf,
    /// A registry (host[:port]) to reach over plain HTTP; loopback registries always are
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Memory the machines of this host may use together, in MB; a start beyond it fails
    /// with `insufficient_capacity` [default: the host's RAM]
    #[arg(long, env = "HANGAR_MEMORY_CAPACITY_MB")]
    memory_capacity_mb: Option<u64>,
    /// The length of an hour for `config.schedule`, in milliseconds (for tests)
    #[arg(
        long,
        env = "HANGAR_SCHEDULE_HOUR_MS",
        default_value_t = 3_600_000,
        hide = true
    )]
    schedule_hour_ms: u64,
    /// Past this size, unused images are removed, least recently used first [default: no limit]
    #[arg(long, env = "HANGAR_IMAGE_STORE_MAX_GB", value_name = "GB")]
    image_store_max_gb: Option<f64>,
    /// Seconds a freshly pulled image is kept from automatic collection before a machine uses it
    #[arg(
        long,
        env = "HANGAR_IMAGE_GC_GRACE_SECS",
        default_value_t = 300,
        hide = true
    )]
    image_gc_grace_secs: u64,
    /// Registry credentials, docker config.json style; ~/.docker/config.json is read too
    #[arg(long, env = "HANGAR_REGISTRY_AUTH_FILE", value_name = "FILE")]
    registry_auth_file: Option<PathBuf>,
    /// Registry credentials: user:password, or HOST=user:password entries
    #[arg(
        long,
        env = "HANGAR_REGISTRY_AUTH",
        hide_env_values = true,
        value_name = "AUTH"
    )]
    registry_auth: Option<String>,
    /// Give every machine a private IPv6 on its organisation's network (a bridge, a veth pair
    /// or a tap device per machine, nftables rules in Hangar's own tables, outbound NAT)
    #[arg(long, env = "HANGAR_PRIVATE_NETWORK")]
    private_network: bool,
    /// The per-host bridge of the private network
    #[arg(long, default_value = "hangar0", value_name = "NAME")]
    bridge: String,
    /// The machines' private IPv4 subnet (outbound NAT only)
    #[arg(long, default_value = "172.19.0.0/16", value_name = "CIDR")]
    machine_ipv4_subnet: ipnet::Ipv4Net,
    /// Addresses handed out as static egress IPs (IPv4 or IPv6; may repeat)
    #[arg(long = "egress-ip-pool", value_name = "CIDR")]
    egress_ip_pools: Vec<ipnet::IpNet>,
    /// A TCP port of the host that machines may reach (may repeat; nothing else is reachable)
    #[arg(long = "allow-host-port", value_name = "PORT")]
    allow_host_ports: Vec<u16>,
    /// Where the private network's DNS (fdaa::3) forwards names outside .internal
    /// (ADDR or ADDR:PORT; may repeat) [default: the host's /etc/resolv.conf]
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_dns_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// A resolver (IP or CIDR) machine configs may name in dns.nameservers besides fdaa::3
    /// (may repeat)
    #[arg(long = "allow-dns-server", value_name = "CIDR", value_parser = parse_net)]
    allow_dns_servers: Vec<ipnet::IpNet>,
}

/// `ADDR` (port 53) or `ADDR:PORT`, IPv6 in brackets with a port.
fn parse_dns_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{s:?} is not an address (ADDR or ADDR:PORT)"))
}

/// A CIDR, or a single address as its /32 or /128.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `sandbox` or `microvm`, listed in the help.
fn runtime_kind() -> impl clap::builder::TypedValueParser<Value = RuntimeKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(RuntimeKind::ALL.map(RuntimeKind::as_str))
        .try_map(|name| name.parse::<RuntimeKind>())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    validate_region(&args.region)?;
    // Machines start under the keeper, which reaps them and outlives us. Should the keeper
    // die, its orphans come to us rather than to a host init that may never reap them.
    hangar_runtime::become_subreaper()?;

    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(hangar_cli::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", data_dir.display()))?;
    let token = match args.token.clone().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => load_or_create_token(&data_dir.join("token"))?,
    };

    let store = Arc::new(
        Store::open(&data_dir.join("state.db")).context("cannot open the state database")?,
    );
    let images = ImageStore::open(data_dir.join("images"), image_options(&args, &store)?)
        .context("cannot open the image store")?;
    let init_path = match args.init {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot locate the hangar executable")?
            .with_file_name("hangar-init"),
    };
    let exe = std::env::current_exe().context("cannot locate the hangar executable")?;
    let keeper = vec![exe.into_os_string(), "keeper".into()];
    let mut kinds = vec![args.runtime];
    kinds.extend(args.extra_runtimes.iter().filter(|k| **k != args.runtime));
    let mut runtimes: Vec<Arc<dyn Runtime>> = Vec::new();
    for kind in kinds {
        let runtime: Arc<dyn Runtime> = match kind {
            RuntimeKind::Sandbox => Arc::new(Sandbox::new(SandboxConfig {
                state_dir: data_dir.join("sandbox"),
                init_path: init_path.clone(),
                runc: args.runc.clone(),
                keeper: Some(keeper.clone()),
            })?),
            RuntimeKind::Microvm => {
                let kernel_dir = [data_dir.join("kernel"), PathBuf::from(DEFAULT_KERNEL_DIR)]
                    .into_iter()
                    .find(|d| d.join("boot").is_dir())
                    .unwrap_or_else(|| data_dir.join("kernel"));
                let mut config = MicrovmConfig::new(
                    data_dir.join("vm"),
                    data_dir.join("vm-cache"),
                    init_path.clone(),
                    kernel_dir,
                );
                config.qemu = args.qemu.clone();
                config.kernel = args.kernel.clone().zip(args.initrd_modules.clone());
                config.accel = match args.accel {
                    AccelArg::Auto => Accel::Auto,
                    AccelArg::Kvm => Accel::Kvm,
                    AccelArg::Tcg => Accel::Tcg,
                };
                config.keeper = Some(keeper.clone());
                let vm = Microvm::new(config).await?;
                info!(
                    accel = vm.accel().accel.as_str(),
                    reason = %vm.accel().reason,
                    "microvm runtime: {} ({})",
                    vm.accel().accel.as_str(),
                    vm.accel().reason
                );
                Arc::new(vm)
            }
        };
        runtimes.push(runtime);
    }
    let network = if args.private_network {
        let net = hangar_net::Network::open(
            hangar_net::NetConfig {
                data_dir: data_dir.clone(),
                bridge: args.bridge.clone(),
                ipv4_subnet: args.machine_ipv4_subnet,
                egress_pools: args.egress_ip_pools.clone(),
                allow_host_ports: args.allow_host_ports.clone(),
                region: args.region.clone(),
                dns_upstreams: if args.dns_upstreams.is_empty() {
                    hangar_net::host_resolvers()
                } else {
                    args.dns_upstreams.clone()
                },
                allow_dns_servers: args.allow_dns_servers.clone(),
            },
            store.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot set up the private network: {e}"))?;
        let net = Arc::new(net);
        net.serve_dns()
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the private network's DNS: {e}"))?;
        for runtime in &mut runtimes {
            *runtime = Arc::new(hangar_net::Networked::new(runtime.clone(), net.clone()));
        }
        Some(net as Arc<dyn hangar_agent::PrivateNetwork>)
    } else {
        if !args.egress_ip_pools.is_empty() {
            bail!("--egress-ip-pool needs --private-network");
        }
        None
    };
    let default = runtimes.remove(0);
    let runtime = Arc::new(Runtimes::new(default, runtimes));
    let agent = Agent::open(AgentConfig {
        data_dir: data_dir.clone(),
        region: args.region.clone(),
        store,
        images,
        runtime,
        network,
        memory_capacity_mb: args.memory_capacity_mb,
        schedule_hour: std::time::Duration::from_millis(args.schedule_hour_ms.max(100)),
    })
    .await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(
        listen = %args.listen,
        region = %args.region,
        data_dir = %data_dir.display(),
        "Hangar API listening on http://{}",
        args.listen
    );
    axum::serve(listener, hangar_api::router(agent, token))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the API server failed")?;
    info!("shut down; machines keep running");
    Ok(())
}

/// The image store's options: limits, credentials, and which images machines use (every
/// machine not destroyed, stopped ones included, keeps its image).
fn image_options(args: &ServerArgs, store: &Arc<Store>) -> anyhow::Result<StoreOptions> {
    let max_bytes = match args.image_store_max_gb {
        None => None,
        Some(gb) if gb.is_finite() && gb > 0.0 => Some((gb * 1e9) as u64),
        Some(gb) => bail!("--image-store-max-gb {gb} must be a positive number"),
    };
    let files = args
        .registry_auth_file
        .iter()
        .cloned()
        .chain(hangar_image::docker_config_path())
        .collect();
    let store = Arc::clone(store);
    Ok(StoreOptions {
        insecure_registries: args.insecure_registries.clone(),
        credentials: hangar_image::CredentialSources {
            env_value: args.registry_auth.clone(),
            files,
        },
        max_bytes,
        gc_grace: Some(std::time::Duration::from_secs(args.image_gc_grace_secs)),
        in_use: Some(hangar_image::InUse::new(move || {
            store
                .live_machines()
                .map(|ms| ms.into_iter().map(|m| m.image_ref.digest).collect())
                .map_err(|e| e.to_string())
        })),
        ..StoreOptions::default()
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANGAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn validate_region(region: &str) -> anyhow::Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("--region {region:?} must be lowercase letters, digits and dashes (e.g. \"local\", \"ams\")");
    }
    Ok(())
}

/// The token in `path`, or a new random one written there readable by the owner only.
fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    info!(path = %path.display(), "generated an API token");
    Ok(token)
}

async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
