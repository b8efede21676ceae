//! Panics caught at a library boundary: what they said, and catching them without printing.
//!
//! Runtimes and decoders can panic on hostile input (tract's asserts on a mutated graph, the
//! `openvino` crate when a library lacks a symbol, a dependency's decoder on damaged data). Each
//! such panic is caught and becomes an error that names the input; the default panic hook would
//! print it to stderr first, a message and backtrace before the real error. [`catch_quietly`]
//! keeps those caught panics silent, on the calling thread only, and leaves every other panic to
//! whatever hook the process (or the host program) has.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

/// What a caught panic said.
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

thread_local! {
    /// Inside [`catch_quietly`] on this thread: its panics are caught and reported, not printed.
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// Install, once, a hook that stays silent for panics inside [`catch_quietly`] and hands every
/// other panic to the hook that was there before.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

/// Run `f`; a panic inside it becomes `Err(its message)` and is not printed.
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    QUIET.with(|q| q.set(q.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.map_err(|payload| message(&*payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_their_messages() {
        assert_eq!(catch_quietly(|| 3), Ok(3));
        assert_eq!(catch_quietly(|| -> u8 { panic!("boom {}", 7) }), Err("boom 7".into()));
        assert_eq!(catch_quietly(|| -> u8 { std::panic::panic_any(5u8) }), Err("unknown panic".into()));
        // Nested and sequential uses keep the flag balanced.
        assert_eq!(catch_quietly(|| catch_quietly(|| -> u8 { panic!("inner") })), Ok(Err("inner".into())));
        assert_eq!(QUIET.with(Cell::get), 0);
    }
}
