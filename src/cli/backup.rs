//! `clerk backup` and `clerk restore`.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new folder to write the backup into.
    pub dest: PathBuf,
    /// The data folder to back up (a server may be using it).
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A folder `clerk backup` wrote.
    pub backup: PathBuf,
    /// Where to restore it: a folder that does not exist yet or is empty.
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: PathBuf,
    /// Only check the backup against its manifest; write nothing.
    #[arg(long)]
    pub verify_only: bool,
}

pub fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let m = crate::backup::backup(&a.data_dir, &a.dest)?;
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    println!(
        "backed up {} to {}: {} files, {bytes} bytes, knowledge generation {}",
        a.data_dir.display(),
        a.dest.display(),
        m.files.len(),
        m.knowledge_generation
            .map_or_else(|| "none".into(), |g| g.to_string())
    );
    if let Some(id) = &m.data_key_id {
        println!(
            "personal fields are sealed with data key {id}; the backup does not hold the key, so \
             keep it apart (the --data-key-file you serve with, or {}/data.key)",
            a.data_dir.display()
        );
    }
    Ok(())
}

pub fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    if a.verify_only {
        let m = crate::backup::verify(&a.backup)?;
        println!("{}: {} files, all match", a.backup.display(), m.files.len());
        return Ok(());
    }
    let m = crate::backup::restore(&a.backup, &a.data_dir)?;
    println!(
        "restored {} files from {} into {}",
        m.files.len(),
        a.backup.display(),
        a.data_dir.display()
    );
    Ok(())
}
