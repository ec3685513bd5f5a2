// The `Newt` module: the generated bindings (re-exported) plus a few Swift helpers.
//
// Everything uniffi generates from newt-ffi - `NewtClient`, `NewtError`, the records and
// enums, `setLogger(logger:level:)` - is available with `import Newt`.
//
// Threading. Callbacks the app implements (`TimelineListener`, `Logger`, `PromptHandler`,
// `TrustPolicyProvider`, `BackgroundScheduler`) are called on a Newt worker thread, never on
// the caller's thread and never on the main thread. Hop to the main actor yourself to touch
// UI, and never call back into `NewtClient` synchronously from a callback.
//
// Task cancellation - read this. With uniffi 0.32 the generated Swift does NOT cancel the
// Rust future when the Swift `Task` awaiting it is cancelled: its `uniffiRustCallAsync` waits
// in a plain (non-cancellable) continuation and never calls `rust_future_cancel`. So
//
//     let task = Task { try await client.syncOnce(timeoutMs: 30_000) }
//     task.cancel()   // has no effect on the Rust call: it runs to its end (up to 30 s)
//
// and the call returns its normal result or error afterwards. (Newt's Rust side would stop
// the work if the future were dropped early, and on Kotlin a cancelled coroutine does drop
// it.) To bound or stop work from Swift: use short `timeoutMs` values, `stopSync()` for the
// background loop, `cancel()` on the subscription or `shutdown()` on the client; check
// `Task.isCancelled` after an `await` if a late result must be discarded.
//
// `await shutdown()` stops everything a client runs in the background (the sync loop from
// `startSync()` and all timeline subscriptions), waits until it has ended, then releases the
// store (the same directory can be opened again); later calls throw `NewtError.Closed`.
// (Kotlin has the same names: there `close()` is taken by `AutoCloseable`; see
// bindings/uniffi.toml.)
@_exported import NewtFFIBindings
