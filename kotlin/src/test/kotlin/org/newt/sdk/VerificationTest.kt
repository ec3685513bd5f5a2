package org.newt.sdk

import java.util.Collections
import kotlin.test.assertEquals
import kotlin.test.assertFalse
import kotlin.test.assertIs
import kotlin.test.assertNotNull
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import uniffi.newt_ffi.NewtClient
import uniffi.newt_ffi.Prompt
import uniffi.newt_ffi.PromptAnswer
import uniffi.newt_ffi.SecretText
import uniffi.newt_ffi.VerificationState

/**
 * Interactive verification (SAS) between two users from Kotlin: each app answers the
 * prompts (accept the request, compare the emoji), and learns the outcome through them.
 */
class VerificationTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(120)

    /** An app's prompt handler: answers as [compare] says and keeps every prompt. */
    private class App(val password: String, val compare: PromptAnswer) {
        val prompts: MutableList<Prompt> = Collections.synchronizedList(mutableListOf())
        val handler = PromptHandler { prompt ->
            prompts += prompt
            when (prompt) {
                is Prompt.Password -> PromptAnswer.Password(SecretText(password))
                is Prompt.VerificationRequest -> PromptAnswer.Confirmed
                is Prompt.CompareSas -> compare
                else -> PromptAnswer.Dismissed
            }
        }

        inline fun <reified T : Prompt> last(): T? = synchronized(prompts) { prompts.filterIsInstance<T>().lastOrNull() }
    }

    private suspend fun syncUntil(clients: List<NewtClient>, what: String, done: () -> Boolean) =
        eventually(timeoutMs = 60_000, what = what) {
            clients.forEach { it.syncOnce(100uL) }
            done()
        }

    @Test
    fun `two users compare emoji and verify each other's device and identity`() = runBlocking<Unit> {
        Resources().use { res ->
            val alice = res.login(TestUser.register("alice"))
            val bob = res.login(TestUser.register("bob"))
            val onAlice = App(alice.user.password, PromptAnswer.Confirmed)
            val onBob = App(bob.user.password, PromptAnswer.Confirmed)
            alice.client.setPromptHandler(onAlice.handler)
            bob.client.setPromptHandler(onBob.handler)
            alice.client.bootstrapCrossSigning()
            bob.client.bootstrapCrossSigning()

            val flow = alice.client.requestVerification(bob.user.userId, null)
            assertIs<VerificationState.Requested>(flow.state)
            syncUntil(listOf(alice.client, bob.client), "the verification to complete") {
                onAlice.last<Prompt.VerificationDone>() != null && onBob.last<Prompt.VerificationDone>() != null
            }
            val shownToAlice = assertNotNull(onAlice.last<Prompt.CompareSas>()).sas
            val shownToBob = assertNotNull(onBob.last<Prompt.CompareSas>()).sas
            assertEquals(shownToAlice, shownToBob, "both apps showed the same emoji")
            assertEquals(7, shownToAlice.emoji.size)
            assertEquals(3, shownToAlice.decimals.size)
            assertTrue(onAlice.last<Prompt.VerificationDone>()!!.identityVerified)
            assertIs<VerificationState.Done>(alice.client.verification(flow.flowId)?.state)

            val bobAtAlice = alice.client.devices(bob.user.userId).single { it.deviceId == bob.session.deviceId }
            assertTrue(bobAtAlice.verified, "bob's device is verified at alice")
            assertTrue(alice.client.identity(bob.user.userId)?.verified == true, "and his identity")
            assertTrue(bob.client.identity(alice.user.userId)?.verified == true, "and alice's at bob")
        }
    }

    @Test
    fun `a mismatch cancels the verification on both sides and verifies nothing`() = runBlocking<Unit> {
        Resources().use { res ->
            val alice = res.login(TestUser.register("alice"))
            val bob = res.login(TestUser.register("bob"))
            val onAlice = App(alice.user.password, PromptAnswer.Confirmed)
            val onBob = App(bob.user.password, PromptAnswer.Mismatch)
            alice.client.setPromptHandler(onAlice.handler)
            bob.client.setPromptHandler(onBob.handler)
            alice.client.syncOnce(0uL)
            bob.client.syncOnce(0uL)

            val flow = alice.client.requestVerification(bob.user.userId, bob.session.deviceId)
            syncUntil(listOf(alice.client, bob.client), "alice to learn of the mismatch") {
                onAlice.last<Prompt.VerificationCancelled>() != null
            }
            val cancelled = onAlice.last<Prompt.VerificationCancelled>()!!
            assertEquals("m.mismatched_sas", cancelled.code)
            assertFalse(cancelled.byUs)
            val state = alice.client.verification(flow.flowId)?.state
            assertIs<VerificationState.Cancelled>(state)
            val bobAtAlice = alice.client.devices(bob.user.userId).single { it.deviceId == bob.session.deviceId }
            assertFalse(bobAtAlice.verified, "nothing was verified")
        }
    }
}
