//! Timer helpers shared by the stages' `select!` loops.
//!
//! Owns: waiting on an optional deadline. Never does: read the wall clock or decide a deadline.

use tokio::time::Instant;

/// Sleeps until `t`; with no deadline, returns at once. Meant for a `select!` branch guarded by
/// `if t.is_some()`, so a missing deadline never fires the branch.
pub async fn sleep_until_opt(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await
    }
}
