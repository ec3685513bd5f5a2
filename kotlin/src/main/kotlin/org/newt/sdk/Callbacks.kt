// Lambda-friendly constructors for the callback interfaces the app implements. The
// generated interfaces are plain Kotlin interfaces (no SAM conversion), so these save an
// `object :` expression each. Newt calls them on its worker threads (never the caller's
// thread); they must return quickly and must not call back into NewtClient synchronously.
package org.newt.sdk

import uniffi.newt_ffi.BackgroundScheduler
import uniffi.newt_ffi.LogRecord
import uniffi.newt_ffi.Logger
import uniffi.newt_ffi.Prompt
import uniffi.newt_ffi.PromptAnswer
import uniffi.newt_ffi.PromptHandler
import uniffi.newt_ffi.TrustPolicy
import uniffi.newt_ffi.TrustPolicyProvider
import uniffi.newt_ffi.WakeupRequest

/** A [Logger] calling [block] for each record (e.g. forward to `android.util.Log`). */
fun Logger(block: (LogRecord) -> Unit): Logger =
    object : Logger {
        override fun log(record: LogRecord) = block(record)
    }

/**
 * A [PromptHandler] calling [block]. It runs on a blocking Newt worker and may wait for the
 * user. Answer prompt kinds you don't handle with [PromptAnswer.Dismissed].
 */
fun PromptHandler(block: (Prompt) -> PromptAnswer): PromptHandler =
    object : PromptHandler {
        override fun onPrompt(prompt: Prompt): PromptAnswer = block(prompt)
    }

/** A [TrustPolicyProvider] calling [block] with the room id. */
fun TrustPolicyProvider(block: (roomId: String) -> TrustPolicy): TrustPolicyProvider =
    object : TrustPolicyProvider {
        override fun policyForRoom(roomId: String): TrustPolicy = block(roomId)
    }

/**
 * A [BackgroundScheduler] calling [block] (e.g. enqueue a WorkManager request with
 * `setInitialDelay(request.delayMs)` and a network constraint if `request.requiresNetwork`,
 * whose worker calls `NewtClient.runDueWork()`).
 */
fun BackgroundScheduler(block: (WakeupRequest) -> Unit): BackgroundScheduler =
    object : BackgroundScheduler {
        override fun scheduleWakeup(request: WakeupRequest) = block(request)
    }
