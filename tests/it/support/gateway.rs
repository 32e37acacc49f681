//! A gateway running in the test process, on ephemeral loopback ports, with its
//! configuration in a temporary tree.

use std::net::SocketAddr;
use std::path::PathBuf;

use minigateway::Gateway;
use tempfile::TempDir;

pub struct TestGateway {
    pub gateway: Gateway,
    /// The configuration tree: `configs/`, `cert/`, `logs/`.
    pub dir: TempDir,
    pub http: SocketAddr,
    /// The first HTTPS listener, when the configuration has one.
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Creates a temporary configuration tree: `configs/`, `cert/`, `logs/`.
pub fn tree() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["configs", "cert", "logs"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
    }
    dir
}

/// Builds a configuration with ephemeral listeners; `core` is added to `[core]`.
pub fn config(core: &str, rest: &str) -> String {
    format!("[core]\nhttpListen = [\"127.0.0.1:0\"]\n{core}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{rest}\n")
}

impl TestGateway {
    /// Starts a gateway with the full configuration `text`.
    pub async fn start(text: &str) -> TestGateway {
        TestGateway::start_in(tree(), text).await
    }

    /// Starts a gateway with the configuration `text` in a tree made by [`tree`], whose
    /// `cert/` folder may already hold certificate files.
    pub async fn start_in(dir: TempDir, text: &str) -> TestGateway {
        let file = dir.path().join("configs").join("gateway.toml");
        std::fs::write(&file, text).unwrap();

        let gateway = Gateway::start(&file)
            .await
            .unwrap_or_else(|error| panic!("gateway failed to start: {error}"));
        let http = gateway.http_addrs()[0];
        let https = gateway.https_addrs().first().copied();
        let admin = gateway.admin_addr();
        TestGateway {
            gateway,
            dir,
            http,
            https,
            admin,
        }
    }

    /// Starts a gateway with one route `host` over `targets`.
    pub async fn single_route(core: &str, host: &str, targets: &[String], extra: &str) -> TestGateway {
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = config(
            core,
            &format!("[proxyInfo.app]\nhost = \"{host}\"\ntarget = [{list}]\n{extra}\n"),
        );
        TestGateway::start(&text).await
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("configs").join("gateway.toml")
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("cert")
    }
}
