//! `coordinator certs init`: a small CA and the certificates a cluster
//! needs: the coordinator's server certificate and one client certificate
//! per agent (for `tls.require_agent_cert`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::DataDir {
        path: path.to_path_buf(),
        source: e,
    }
}

fn tls(e: rcgen::Error) -> Error {
    Error::Internal(format!("certificate generation: {e}"))
}

/// Writes `name` into `dir`, private keys readable by their owner only.
fn write(dir: &Path, name: &str, contents: &str, private: bool) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::InvalidArgument(format!(
                "{} exists; certs init never overwrites (use an empty directory)",
                path.display()
            )),
            _ => io(&path, e),
        })?;
    f.write_all(contents.as_bytes()).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Creates `ca.pem` / `ca.key`, `coordinator.pem` / `coordinator.key`
/// (valid for `hosts`, localhost and 127.0.0.1) and `agent-NAME.pem` /
/// `agent-NAME.key` for each agent. Returns the files written.
pub fn init(dir: &Path, hosts: &[String], agents: &[String]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sweepfold cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls)?).map_err(tls)?;
    written.push(write(dir, "ca.pem", &ca.pem(), false)?);
    written.push(write(dir, "ca.key", &ca.key().serialize_pem(), true)?);

    let mut names: Vec<String> = hosts.to_vec();
    for local in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|h| h == local) {
            names.push(local.to_string());
        }
    }
    let mut server = CertificateParams::new(names).map_err(tls)?;
    server.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map_or("localhost", String::as_str),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(tls)?;
    let cert = server.signed_by(&key, &ca).map_err(tls)?;
    written.push(write(dir, "coordinator.pem", &cert.pem(), false)?);
    written.push(write(dir, "coordinator.key", &key.serialize_pem(), true)?);

    for agent in agents {
        let valid = !agent.is_empty()
            && agent
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "agent name `{agent}` is not valid"
            )));
        }
        let mut client = CertificateParams::new(vec![agent.clone()]).map_err(tls)?;
        client
            .distinguished_name
            .push(DnType::CommonName, agent.as_str());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(tls)?;
        let cert = client.signed_by(&key, &ca).map_err(tls)?;
        written.push(write(
            dir,
            &format!("agent-{agent}.pem"),
            &cert.pem(),
            false,
        )?);
        written.push(write(
            dir,
            &format!("agent-{agent}.key"),
            &key.serialize_pem(),
            true,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_signed_certificates_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), &["gpu1".into()], &["gpu2".into()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "coordinator.pem",
                "coordinator.key",
                "agent-gpu2.pem",
                "agent-gpu2.key"
            ]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(dir.path().join("coordinator.pem"))
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let again = init(dir.path(), &[], &[]).unwrap_err().to_string();
        assert!(again.contains("never overwrites"), "{again}");
    }
}
