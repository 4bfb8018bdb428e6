//! The `mosend-webhooks` binary: parse the command line, start logging, call the library,
//! and turn errors into a message and a non-zero exit code.

use anyhow::{bail, Context};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use mosend_webhooks::cli::{Cli, Command, KeysCommand};
use mosend_webhooks::config::Config;
use mosend_webhooks::domain::{api_key, api_key::Scope, time::Timestamp};
use mosend_webhooks::store::{Cipher, EncryptionKey};
use mosend_webhooks::{keys, store, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::resolve(cli.settings, cli.config).context("invalid configuration")?;
    telemetry::init_logging(config.log_format);
    match cli.command {
        Command::Serve { role } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            mosend_webhooks::run(config, role, None, shutdown).await.context("the service stopped with an error")?;
        }
        Command::Migrate => {
            store::open(&config.database_url, config.encryption_key.as_ref())
                .await
                .context("migrating the database")?;
            println!("migrations applied to {}", mosend_webhooks::redact_url(&config.database_url));
        }
        Command::Reencrypt { new_key_file } => reencrypt(&config, new_key_file).await?,
        Command::Keys(command) => {
            let store = store::open(&config.database_url, config.encryption_key.as_ref())
                .await
                .context("opening the database")?;
            match command {
                KeysCommand::Create(create) => {
                    let scope = match (create.scope.org, create.scope.platform) {
                        (Some(org), false) => Scope::Organization(org),
                        (None, true) => Scope::Platform,
                        _ => bail!("give exactly one of --org <uuid> or --platform"),
                    };
                    let key = keys::create(store.as_ref(), scope, create.name).await.context("creating the key")?;
                    match scope {
                        Scope::Platform => println!("platform key created; it is shown once:"),
                        Scope::Organization(org) => println!("organization key for {org} created; it is shown once:"),
                    }
                    println!("{key}");
                }
                KeysCommand::List => {
                    println!("prefix\tscope\tname\tcreated\tstate");
                    for k in store.list_api_keys().await.context("listing keys")? {
                        println!("{}", keys::describe(&k));
                    }
                }
                KeysCommand::Revoke { prefix } => {
                    if !api_key::is_prefix(&prefix) {
                        bail!("`{prefix}` is not a key prefix (12 lowercase letters and digits, as `keys list` shows)");
                    }
                    if !store.revoke_api_key(&prefix, Timestamp::now()).await.context("revoking the key")? {
                        bail!("no active key has the prefix `{prefix}`");
                    }
                    println!("key {prefix} revoked");
                }
            }
        }
    }
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Re-seals every secret under a new key; where the old key came from the key file beside a
/// SQLite database, the file is replaced (atomically, after the database commit).
async fn reencrypt(config: &Config, new_key_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let text = match new_key_file {
        Some(path) => std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        None => std::env::var("MOSEND_WEBHOOKS_NEW_ENCRYPTION_KEY")
            .context("give --new-key-file or set MOSEND_WEBHOOKS_NEW_ENCRYPTION_KEY")?,
    };
    let new_key = EncryptionKey::parse(&text).map_err(anyhow::Error::msg).context("the new encryption key")?;
    let store =
        store::open(&config.database_url, config.encryption_key.as_ref()).await.context("opening the database")?;
    let count = store.reencrypt(&Cipher::new(&new_key)).await.context("re-sealing the secrets")?;
    if config.encryption_key.is_none() {
        if let Some(path) = store::key_file(&config.database_url)? {
            let tmp = path.with_extension("key.new");
            let _ = std::fs::remove_file(&tmp);
            EncryptionKey::load_or_create_with(&tmp, &new_key).context("writing the new key file")?;
            std::fs::rename(&tmp, &path).context("replacing the key file")?;
            println!("the key file {} now holds the new key", path.display());
        }
    } else {
        println!("set MOSEND_WEBHOOKS_ENCRYPTION_KEY to the new key on every instance before starting them");
    }
    println!("re-sealed the secrets of {count} webhooks under the new key");
    Ok(())
}
