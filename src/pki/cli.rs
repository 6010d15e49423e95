//! `applianced pki`: init a CA, issue server and client certificates, revoke, make CRLs.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use time::OffsetDateTime;

use super::{
    Ca, DEFAULT_CA_DAYS, DEFAULT_CRL_DAYS, DEFAULT_LEAF_DAYS, IssueRequest, KeyType, PkiError,
};
use crate::fsutil::write_atomic;

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA: DIR/ca.crt, DIR/ca.key (0600) and DIR/index.json.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "applianced CA")]
        cn: String,
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
        #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
        key_type: KeyType,
    },
    /// Issue a certificate: PREFIX.crt (leaf then CA) and PREFIX.key (0600).
    Issue(IssueArgs),
    /// Mark a certificate issued by this CA as revoked (then run `pki crl`).
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
    },
    /// Write a CRL of every revoked certificate.
    Crl {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
        days: u32,
    },
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    cn: String,
    /// Usable by a TLS server (extended key usage serverAuth).
    #[arg(long)]
    server: bool,
    /// Usable by a TLS client (extended key usage clientAuth).
    #[arg(long)]
    client: bool,
    /// A DNS name or IP address; repeatable. A server certificate without any gets its CN.
    #[arg(long = "san")]
    sans: Vec<String>,
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: u32,
    /// Start of validity (RFC 3339), for staging; default: now.
    #[arg(long, value_parser = parse_time)]
    not_before: Option<OffsetDateTime>,
    /// End of validity (RFC 3339); default: not-before + days.
    #[arg(long, value_parser = parse_time)]
    not_after: Option<OffsetDateTime>,
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    key_type: KeyType,
    #[arg(long)]
    out: PathBuf,
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

pub fn run(cmd: PkiCommand) -> Result<(), PkiError> {
    match cmd {
        PkiCommand::Init {
            dir,
            cn,
            days,
            key_type,
        } => {
            let ca = Ca::init(&dir, &cn, days, key_type)?;
            println!(
                "CA {:?} created in {} (valid until {})",
                cn,
                dir.display(),
                crate::certs::format_unix(ca.info().not_after)
            );
        }
        PkiCommand::Issue(a) => {
            let ca = Ca::load(&a.dir)?;
            let issued = ca.issue(&IssueRequest {
                cn: a.cn.clone(),
                server: a.server,
                client: a.client,
                sans: a.sans,
                days: a.days,
                not_before: a.not_before,
                not_after: a.not_after,
                key_type: a.key_type,
            })?;
            let (crt, key) = issued.write(&a.out)?;
            println!(
                "issued {:?} serial {} -> {} {}",
                a.cn,
                issued.serial,
                crt.display(),
                key.display()
            );
        }
        PkiCommand::Revoke { dir, cert } => {
            let ca = Ca::load(&dir)?;
            let bundle = crate::certs::read_pem_file(&cert).map_err(PkiError::Invalid)?;
            let leaf = bundle
                .certs
                .first()
                .ok_or_else(|| PkiError::Invalid(format!("{}: no certificate", cert.display())))?;
            let entry = ca.revoke(leaf)?;
            println!("revoked {:?} serial {}", entry.cn, entry.serial);
        }
        PkiCommand::Crl { dir, out, days } => {
            let ca = Ca::load(&dir)?;
            let pem = ca.crl_pem(days)?;
            write_atomic(&out, pem.as_bytes(), 0o644).map_err(|e| PkiError::Io(out.clone(), e))?;
            println!("CRL written to {}", out.display());
        }
    }
    Ok(())
}
