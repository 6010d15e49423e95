//! The command line: `applianced agent | pki | config check`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::agent::{self, AgentConfig, AgentOverrides};
use crate::exit;
use crate::pki::cli::PkiCommand;

#[derive(Debug, Parser)]
#[command(
    name = "applianced",
    version,
    about = "Load-balancer appliance agent and controller"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance agent (mutual-TLS API on the management address).
    Agent(AgentArgs),
    /// Run the controller (operators' API), or administer it.
    Controller {
        /// Configuration file (TOML).
        #[arg(long, default_value = crate::config::controller::DEFAULT_PATH, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: Option<ControllerCommand>,
    },
    /// Certificate authority: init, issue, revoke, crl.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Internal: bind listening sockets and exec PROGRAM with them (socket activation).
    #[command(hide = true)]
    ExecListening {
        #[arg(long = "listen")]
        listen: Vec<SocketAddr>,
        program: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on; repeatable; replaces server.listen.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle client certificates must chain to.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// CRL file; repeatable; replaces server.crl.
    #[arg(long)]
    crl: Vec<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Join the controller at this URL (its appliance listener, https://HOST:PORT)
    /// first: make a key, send a certificate signing request with --token, wait until
    /// it is accepted, write STATE_DIR/agent.toml; then serve. Enrolled already: serve.
    #[arg(
        long,
        value_name = "URL",
        requires = "token",
        conflicts_with = "config"
    )]
    enrol: Option<String>,
    /// The one-time enrolment token an admin issued.
    #[arg(long, requires = "enrol")]
    token: Option<String>,
    /// The SHA-256 fingerprint of the controller's CA certificate (sha256:HEX).
    #[arg(long, requires = "enrol", conflicts_with = "ca")]
    ca_fingerprint: Option<String>,
    /// The controller's CA certificate (a file), instead of --ca-fingerprint.
    #[arg(long, requires = "enrol")]
    ca: Option<PathBuf>,
    /// The appliance's name (default: from its key's fingerprint).
    #[arg(long, requires = "enrol")]
    name: Option<String>,
}

impl AgentArgs {
    /// The enrolment asked for with `--enrol`, its arguments taken out.
    fn enrolment(&mut self) -> Result<Option<crate::agent::enrol::Enrolment>, String> {
        use crate::agent::enrol::{Enrolment, Trust, parse_fingerprint};
        let Some(url) = self.enrol.take() else {
            return Ok(None);
        };
        let trust = match (self.ca_fingerprint.take(), self.ca.take()) {
            (Some(fp), None) => Trust::Fingerprint(parse_fingerprint(&fp)?),
            (None, Some(file)) => Trust::CaFile(file),
            _ => {
                return Err(
                    "--enrol needs --ca-fingerprint SHA256 or --ca FILE to recognise the controller"
                        .into(),
                );
            }
        };
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(agent::DEFAULT_STATE_DIR));
        // The directory is named in the configuration written: the agent that reads it
        // later may run elsewhere.
        let state_dir = std::path::absolute(&state_dir).map_err(|e| format!("--state-dir: {e}"))?;
        self.state_dir = Some(state_dir.clone());
        Ok(Some(Enrolment {
            url,
            token: self.token.take().unwrap_or_default(),
            trust,
            listen: self.listen.clone(),
            state_dir,
            run_dir: self.run_dir.clone(),
            name: self.name.take(),
        }))
    }

    fn split(self) -> (Option<PathBuf>, AgentOverrides) {
        (
            self.config,
            AgentOverrides {
                listen: self.listen,
                cert: self.cert,
                key: self.key,
                client_ca: self.client_ca,
                crl: self.crl,
                state_dir: self.state_dir,
                run_dir: self.run_dir,
            },
        )
    }
}

#[derive(Debug, Subcommand)]
enum ControllerCommand {
    /// Operators of the northbound API.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print a strong generated password (shown once, stored hashed).
    Add {
        name: String,
        /// Give the user the admin role (default: member).
        #[arg(long)]
        admin: bool,
        /// Do not give the user a personal team (by default it gets one of its name,
        /// which it owns).
        #[arg(long)]
        no_team: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse and validate a configuration, load its certificates; exit non-zero on any problem.
    Check {
        #[arg(
            long,
            conflicts_with = "controller",
            required_unless_present = "controller"
        )]
        agent: Option<PathBuf>,
        #[arg(long)]
        controller: Option<PathBuf>,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(mut args) => {
            let enrolment = match args.enrolment() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("applianced: {e}");
                    return exit::CONFIG;
                }
            };
            let (path, overrides) = args.split();
            // An enrolled agent's configuration is in its state directory.
            let enrolled = overrides
                .state_dir
                .as_ref()
                .map(|d| d.join(crate::agent::enrol::CONFIG_FILE))
                .filter(|p| p.exists() || enrolment.is_some());
            if let Some(e) = enrolment {
                let _log = crate::logging::init(None);
                if let Err(why) = enrol(&e) {
                    eprintln!("applianced: enrolment: {why}");
                    return exit::FAILURE;
                }
            }
            let path = path.or(enrolled);
            let explicit = path.is_some();
            let path = path.unwrap_or_else(|| PathBuf::from(agent::DEFAULT_PATH));
            let config = match AgentConfig::load(&path, explicit, overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("applianced: invalid configuration:\n{e}");
                    return exit::CONFIG;
                }
            };
            let _log = crate::logging::init(config.log_level.as_deref());
            crate::agent::run(config)
        }
        Command::Pki { command } => match crate::pki::cli::run(command) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("applianced pki: {e}");
                exit::FAILURE
            }
        },
        Command::Controller {
            config,
            command:
                Some(ControllerCommand::User {
                    command:
                        UserCommand::Add {
                            name,
                            admin,
                            no_team,
                        },
                }),
        } => user_add(&config, &name, admin, !no_team),
        Command::Controller {
            config,
            command: None,
        } => {
            let config = match crate::config::controller::ControllerConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("applianced: invalid configuration:\n{e}");
                    return exit::CONFIG;
                }
            };
            let _log = crate::logging::init(config.log_level.as_deref());
            crate::controller::run(config)
        }
        Command::ExecListening {
            listen,
            program,
            args,
        } => {
            let why = crate::agent::handoff::exec_listening(&listen, &program, &args);
            eprintln!("applianced exec-listening: {why}");
            exit::FAILURE
        }
        Command::Config {
            command: ConfigCommand::Check { agent, controller },
        } => match (agent, controller) {
            (Some(path), _) => check_agent(&path),
            (None, Some(path)) => check_controller(&path),
            (None, None) => exit::CONFIG,
        },
    }
}

/// Runs an enrolment to its end on a runtime of its own.
fn enrol(e: &crate::agent::enrol::Enrolment) -> Result<PathBuf, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(crate::agent::enrol::enrol(e))
}

fn user_add(config: &std::path::Path, name: &str, admin: bool, personal_team: bool) -> i32 {
    use crate::controller::{auth, store, teams};
    let config = match crate::config::controller::ControllerConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let name = match crate::controller::auth::check_user_name(name) {
        Ok(n) if !crate::controller::fleet::teams::looks_like_id(n) => n,
        Ok(n) => {
            eprintln!("applianced: user name {n:?} is shaped like an id");
            return exit::FAILURE;
        }
        Err(e) => {
            eprintln!("applianced: {e}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("applianced: {e}");
            return exit::FAILURE;
        }
    };
    let role = if admin {
        store::Role::Admin
    } else {
        store::Role::Member
    };
    let password = auth::generate_password();
    let result = runtime.block_on(async {
        let store = store::Store::open(&config.database.url, 1).await?;
        let hash = auth::hash_password(&password);
        let user = store
            .create_user(
                store::NewUserRecord {
                    name,
                    role,
                    password_hash: &hash,
                    display_name: None,
                    email: None,
                },
                personal_team.then(|| teams::Quotas::configured(&config.teams)),
                crate::certs::now_unix(),
            )
            .await;
        store.close().await;
        user
    });
    match result {
        Ok(user) => {
            println!(
                "user {} ({}) created, id {}",
                user.name,
                role.as_str(),
                user.id
            );
            if personal_team {
                println!("team {} created, owned by the user", user.name);
            }
            println!("password: {password}");
            exit::OK
        }
        Err(e) => {
            eprintln!("applianced: {e}");
            exit::FAILURE
        }
    }
}

fn check_controller(path: &std::path::Path) -> i32 {
    use crate::config::controller::ControllerConfig;
    let config = match ControllerConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    match config.check_tls() {
        Ok(()) => {
            println!(
                "{}: OK ({} listeners)",
                path.display(),
                config.listeners.len()
            );
            exit::OK
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{}: {p}", path.display());
            }
            exit::TLS_MATERIAL
        }
    }
}

fn check_agent(path: &std::path::Path) -> i32 {
    let config = match AgentConfig::load(path, true, AgentOverrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    if let Err(why) = crate::transport::descriptors::check_budget(config.limits.max_connections) {
        eprintln!("{}: limits.max_connections: {why}", path.display());
        return exit::CONFIG;
    }
    match crate::agent::load_tls(&config) {
        Ok(material) => {
            println!(
                "{}: OK (certificate {:?} valid until {})",
                path.display(),
                material.server_cert.subject_cn.as_deref().unwrap_or("-"),
                crate::certs::format_unix(material.server_cert.not_after)
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("{}: server: {e}", path.display());
            exit::TLS_MATERIAL
        }
    }
}
