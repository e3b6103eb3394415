//! `clerk keys`: make, list and revoke the API keys a server accepts (stored hashed in
//! `DATA_DIR/keys.sqlite`; a running server sees changes at once).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::server::auth::Scope;
use crate::server::keys::KeyStore;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    /// Folder holding clerk's stored data (the keys file among it).
    #[arg(
        long,
        env = "CLERK_DATA_DIR",
        default_value = "./clerk-data",
        global = true
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it once (only its hash is kept).
    Create {
        /// Who or what the key is for ("Alex", "shop widget").
        #[arg(long)]
        name: String,
        /// `admin` (everything), `staff` (the console and the shop's records) or `widget` (the
        /// shopper's chat: the assistant and the shopper's own conversation).
        #[arg(long, value_parser = ["admin", "staff", "widget"])]
        scope: String,
        /// Requests per minute this key may make (the server's --rate-limit when unset).
        #[arg(long = "rate-limit")]
        rate_limit: Option<u32>,
    },
    /// List the keys (never their secrets), revoked ones too.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id; servers refuse it from the next request on.
    Revoke { id: String },
}

pub fn run(a: KeysArgs) -> anyhow::Result<()> {
    let store = KeyStore::open(&a.data_dir)?;
    match a.command {
        KeysCommand::Create {
            name,
            scope,
            rate_limit,
        } => {
            let scope = Scope::parse(&scope)
                .ok_or_else(|| anyhow::anyhow!("--scope must be admin, staff or widget"))?;
            let (key, secret) = store.create(&name, scope, rate_limit)?;
            eprintln!(
                "made {} ({}, {}); this is the only time the key is shown:",
                key.id,
                key.scope.as_str(),
                key.name
            );
            println!("{secret}");
        }
        KeysCommand::List { json } => {
            let keys = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            println!(
                "{:<18} {:<7} {:<22} {:<10} {:<12} name",
                "id", "scope", "starts with", "per minute", "state"
            );
            for k in keys {
                let state = match k.revoked_at {
                    Some(at) => format!("revoked {}", crate::clock::iso_date(at)),
                    None => "live".into(),
                };
                println!(
                    "{:<18} {:<7} {:<22} {:<10} {:<12} {}",
                    k.id,
                    k.scope.as_str(),
                    format!("{}…", k.prefix),
                    k.rate_per_minute
                        .map_or_else(|| "default".into(), |r| r.to_string()),
                    state,
                    k.name
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let k = store.revoke(&id)?;
            println!("revoked {} ({}, {})", k.id, k.scope.as_str(), k.name);
        }
    }
    Ok(())
}
