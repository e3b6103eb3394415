//! `clerk data-key new FILE` and `clerk data-key rotate`: the key that seals the shop's personal
//! fields at rest (shop/crypto.rs).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::shop::crypto::{write_key_file, Sealer};
use crate::shop::sqlite::SqliteStore;

#[derive(Debug, Subcommand)]
pub enum DataKeyCommand {
    /// Write a new random data key to FILE (readable by its owner only; never overwrites).
    New { file: PathBuf },
    /// Re-seal every personal field under a new key, in one transaction, then scrub the old
    /// ciphertexts from the file. Stop the server first, and restart it with the new key.
    Rotate(RotateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The new key's file (make it with `clerk data-key new FILE`).
    #[arg(long)]
    pub new_key_file: PathBuf,
    /// Folder holding clerk's stored data.
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: PathBuf,
    /// The current key.
    #[command(flatten)]
    pub data_key: super::DataKeyArgs,
}

pub fn run(c: DataKeyCommand) -> anyhow::Result<()> {
    match c {
        DataKeyCommand::New { file } => {
            let text = Sealer::generate();
            write_key_file(&file, &text)?;
            let key = Sealer::from_text(&text, "new key")?;
            println!("wrote data key {} to {}", key.id(), file.display());
        }
        DataKeyCommand::Rotate(a) => {
            let new = Sealer::from_file(&a.new_key_file)?;
            let new_id = new.id().to_string();
            let store = SqliteStore::open(&a.data_dir, &a.data_key.source())?;
            let old_id = store.key_id().to_string();
            if old_id == new_id {
                anyhow::bail!("the new key is the key in use ({old_id}); make another");
            }
            let rows = store.rotate(new)?;
            println!(
                "re-sealed {rows} rows: data key {old_id} -> {new_id}; start clerk with \
                 --data-key-file {}",
                a.new_key_file.display()
            );
            if a.data_key.data_key_file.is_none() && std::env::var_os("CLERK_DATA_KEY").is_none() {
                println!(
                    "the old automatic key {} no longer opens this shop (backups taken before \
                     the rotation still need it)",
                    a.data_dir
                        .join(crate::shop::crypto::AUTO_KEY_FILE)
                        .display()
                );
            }
        }
    }
    Ok(())
}
