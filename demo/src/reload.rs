//! `SIGHUP` reloads the `--config` file: the new policy takes effect on the
//! next request, counts carry over, and a file that does not load is
//! refused (the running policy stays). Both are logged.

use tokio::signal::unix::{signal, SignalKind};
use tower_ratelimit::store::Store;
use tower_ratelimit::{Policy, ReloadHandle};

/// Loads the policy file at a path, as the server did at start.
pub(crate) type Load = fn(Option<&str>) -> Result<Policy, String>;

/// Reloads the policy file at `path` with `load` into `handle` on every
/// `SIGHUP`, until the process ends; without a file (the built-in policy),
/// a `SIGHUP` is logged and changes nothing (it does not end the process).
pub(crate) fn on_sighup<St: Store>(handle: ReloadHandle<St>, path: Option<String>, load: Load) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: no policy reloads");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(path) = &path else {
                tracing::warn!(
                    "SIGHUP: the built-in policy has no file to reload (start with --config)"
                );
                continue;
            };
            match load(Some(path))
                .and_then(|policy| handle.replace(policy).map_err(|e| e.to_string()))
            {
                Ok(changes) => tracing::info!(%path, %changes, "policy reloaded"),
                Err(error) => {
                    tracing::warn!(%path, %error, "policy reload refused; the running policy stays")
                }
            }
        }
    });
}
