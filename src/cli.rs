//! The command line: `serve`, `migrate` and `keys` (SPEC §6).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::config::{Role, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "mosend-webhooks",
    version,
    about = "Mosend outbound webhooks: fan-out, signed delivery, retries, history"
)]
pub struct Cli {
    /// A TOML file of settings (flags and environment variables win over it).
    #[arg(long, env = "MOSEND_WEBHOOKS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and the delivery worker.
    Serve {
        /// Which parts to run in this process.
        #[arg(long, value_enum, env = "MOSEND_WEBHOOKS_ROLE", default_value = "all")]
        role: Role,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Re-seal every webhook secret under a new encryption key (stop the service first).
    Reencrypt {
        /// A file holding the new key (standard base64 of 32 bytes); or set
        /// MOSEND_WEBHOOKS_NEW_ENCRYPTION_KEY. Never on the command line: it would show in `ps`.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once (the last line of output).
    Create(CreateKey),
    /// List keys (prefix, scope, name, dates; never secrets).
    List,
    /// Revoke a key by its prefix.
    Revoke {
        /// The 12-character prefix shown by `keys list`.
        prefix: String,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeyScope {
    /// An organization key for this organization.
    #[arg(long)]
    pub org: Option<Uuid>,
    /// A platform key (any organization; publishes events).
    #[arg(long)]
    pub platform: bool,
}

#[derive(Debug, Args)]
pub struct CreateKey {
    #[command(flatten)]
    pub scope: KeyScope,
    /// A label shown by `keys list`.
    #[arg(long)]
    pub name: Option<String>,
}
