//! Local provider: power the machine off (QEMU workers, whose overlay the host discards).
//! Also DigitalOcean's last resort.

use super::{Destroyer, Guard, Outcome};
use futures::future::BoxFuture;

pub struct Local {
    /// argv, no shell (`["systemctl", "poweroff"]`).
    pub command: Vec<String>,
}

impl Local {
    /// Run the power-off command; `Ok(description)` when it exited 0.
    pub async fn power_off(&self) -> Result<String, String> {
        let Some((prog, args)) = self.command.split_first() else {
            return Err("destroy.poweroff_command is empty".into());
        };
        let out = tokio::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run {prog}: {e}"))?;
        if out.status.success() {
            Ok(format!("ran {:?}", self.command))
        } else {
            Err(format!(
                "{:?} failed ({}): {}",
                self.command,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Destroyer for Local {
    fn provider(&self) -> &'static str {
        "local"
    }
    fn destroy<'a>(&'a self, guard: &'a dyn Guard, reason: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if let Err(b) = guard.check() {
                return Outcome::Blocked(b);
            }
            tracing::warn!("powering off ({reason})");
            match self.power_off().await {
                Ok(d) => Outcome::Destroyed(d),
                Err(e) => Outcome::Failed(e),
            }
        })
    }
}
