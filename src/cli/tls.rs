//! `failoverd tls init`: a cluster CA and one certificate per node.
//!
//! ```text
//! failoverd tls init --out /etc/failoverd/tls --node a=192.0.2.1:7700 --node b=192.0.2.2:7700 --node c=192.0.2.3:7700
//! ```
//! writes `ca.pem`, `ca-key.pem` and `<name>.pem`, `<name>-key.pem` per node,
//! all mode 0600. Run it again with the same `--out` and a new `--node` to issue
//! a certificate for an added node: the existing CA key is reused.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::bail;
use anyhow::Context;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;

use crate::raft::tls::SERVER_NAME;

/// Arguments of `failoverd tls`.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    action: TlsAction,
}

/// TLS actions.
#[derive(Debug, clap::Subcommand)]
enum TlsAction {
    /// Write a CA (or reuse the one in --out) and a certificate per node.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A node as NAME=HOST:PORT (its advertised address); repeat per node.
        #[arg(long = "node", value_name = "NAME=HOST:PORT", required = true)]
        nodes: Vec<String>,
        /// Years the certificates stay valid.
        #[arg(long, default_value_t = 10)]
        years: i32,
    },
}

/// Runs `failoverd tls ...`.
pub fn run(args: TlsArgs) -> anyhow::Result<()> {
    match args.action {
        TlsAction::Init { out, nodes, years } => init(&out, &nodes, years),
    }
}

fn init(out: &Path, nodes: &[String], years: i32) -> anyhow::Result<()> {
    let nodes: Vec<(String, String)> = nodes
        .iter()
        .map(|n| {
            let (name, addr) = n
                .split_once('=')
                .with_context(|| format!("--node {n:?}: expected NAME=HOST:PORT"))?;
            if name.is_empty() || name.contains('/') || name.starts_with('.') || name == "ca" {
                bail!("--node {n:?}: {name:?} cannot be used as a file name");
            }
            Ok((name.to_string(), addr.to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let this_year = 1970 + (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs() / 31_556_952) as i32;
    let validity = |params: &mut CertificateParams| {
        params.not_before = rcgen::date_time_ymd(this_year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(this_year + years, 1, 1);
    };

    let (ca_key_path, ca_path) = (out.join("ca-key.pem"), out.join("ca.pem"));
    let ca_key = if ca_key_path.exists() {
        let pem =
            std::fs::read_to_string(&ca_key_path).with_context(|| format!("reading {}", ca_key_path.display()))?;
        println!("reusing the CA key in {}", ca_key_path.display());
        KeyPair::from_pem(&pem).with_context(|| format!("{} is not a private key", ca_key_path.display()))?
    } else {
        KeyPair::generate()?
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "failoverd cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    // Re-signing the same name with the same key yields a CA that verifies the
    // same certificates, so reusing ca-key.pem keeps old nodes valid.
    let ca = ca_params.self_signed(&ca_key)?;
    if !ca_path.exists() {
        write_private(&ca_path, &ca.pem())?;
        write_private(&ca_key_path, &ca_key.serialize_pem())?;
    }

    for (name, addr) in &nodes {
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string(), name.clone()])?;
        match host.parse::<IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) if !host.is_empty() && host != name => {
                params.subject_alt_names.push(SanType::DnsName(host.try_into()?))
            }
            Err(_) => {}
        }
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write_private(&out.join(format!("{name}.pem")), &cert.pem())?;
        write_private(&out.join(format!("{name}-key.pem")), &key.serialize_pem())?;
    }

    println!(
        "wrote {} (keep ca-key.pem offline once every node has its files)",
        out.display()
    );
    for (name, _) in &nodes {
        println!("\n# on {name}: copy ca.pem, {name}.pem and {name}-key.pem, then in failoverd.toml:");
        println!("[cluster.tls]");
        println!("ca_file = \"/etc/failoverd/tls/ca.pem\"");
        println!("cert_file = \"/etc/failoverd/tls/{name}.pem\"");
        println!("key_file = \"/etc/failoverd/tls/{name}-key.pem\"");
    }
    Ok(())
}

/// Writes `text` to a new or truncated file readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only on creation: tighten an existing file too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
