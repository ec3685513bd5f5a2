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
// Task cancellation. Every `async` method of `NewtClient` is a Rust future driven by uniffi.
// When the Swift `Task` awaiting it is cancelled, uniffi's cancellation handler calls the
// future's cancel function: Rust stops polling and drops the future at its next `.await`
// (for example an HTTP request in flight is abandoned), and the Swift call returns with an
// error instead of a result. Work that already reached the server (a sent message, a
// deleted device) is not undone. Long calls such as `syncOnce(timeoutMs:)` are therefore
// safe to run in a `Task` you cancel when a view or the app goes away:
//
//     let task = Task { try await client.syncOnce(timeoutMs: 30_000) }
//     ...
//     task.cancel()   // the Rust future is cancelled; `try await task.value` throws
//
// `close()` is the way to stop everything a client runs in the background (the sync loop
// from `startSync()` and all timeline subscriptions); later calls throw `NewtError.Closed`.
@_exported import NewtFFIBindings
