//! The last line of defence: drive every output inactive when the process panics.
//!
//! The release profile has `panic = "abort"`, so `Drop` never runs on a panic and the engine's
//! exit path is skipped. Each backend registers its outputs here (a weak reference to a
//! "make safe" handle), and a panic hook, installed once, drives them all inactive before the
//! previous hook prints the message and the process aborts.
//!
//! Never blocks in the hook: locks are tried, not waited for, so a panic raised while a lock is
//! held (on this thread) cannot deadlock the hook; a poisoned lock is used anyway.

use std::sync::{Arc, Mutex, Once, OnceLock, TryLockError, Weak};

/// Something that can drive its outputs inactive from any thread, at any time.
pub trait MakeSafe: Send + Sync {
    fn make_safe(&self);
}

type Registry = Mutex<Vec<Weak<dyn MakeSafe>>>;

static REGISTRY: OnceLock<Registry> = OnceLock::new();
static HOOK: Once = Once::new();

/// Registers `outputs` to be made safe on panic, and installs the panic hook on first use.
/// The registry holds a weak reference: dropping the backend unregisters it.
pub fn register(outputs: &Arc<dyn MakeSafe>) {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            make_all_safe();
            previous(info);
        }));
    });
    let reg = REGISTRY.get_or_init(|| Mutex::new(Vec::new()));
    let mut v = reg.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(outputs));
}

/// Drives every registered output inactive. Called by the panic hook; safe to call anytime.
pub fn make_all_safe() {
    let Some(reg) = REGISTRY.get() else { return };
    let guard = match reg.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    for w in guard.iter() {
        if let Some(o) = w.upgrade() {
            o.make_safe();
        }
    }
}

/// How long [`try_lock`] waits for another thread to finish its write: one pin write takes
/// microseconds, so this only runs out when the lock holder is the panicking thread itself.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(20);

/// Locks `m` for use inside [`MakeSafe::make_safe`], waiting at most [`LOCK_PATIENCE`];
/// `None` when the holder does not let go (it is the panicking thread itself).
pub fn try_lock<T>(m: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}
