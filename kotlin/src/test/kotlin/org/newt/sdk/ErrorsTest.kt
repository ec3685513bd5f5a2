package org.newt.sdk

import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking
import org.junit.Rule
import org.junit.Test
import org.junit.rules.Timeout
import com.sun.net.httpserver.HttpServer
import java.net.InetSocketAddress
import uniffi.newt_ffi.DeviceTrust
import uniffi.newt_ffi.NewtException

class ErrorsTest {
    @get:Rule val timeout: Timeout = Timeout.seconds(60)

    @Test
    fun `a wrong password is NewtException Server M_FORBIDDEN`() = runBlocking<Unit> {
        val user = TestUser.register("wrongpw")
        openClient(config(TestEnv.newStoreDir("wrongpw"))).use { client ->
            val e = assertFailsWith<NewtException.Server> { client.loginPassword(user.localpart, "not the password", null) }
            assertEquals("M_FORBIDDEN", e.errcode)
            assertEquals(403, e.status.toInt())
            assertTrue(e.details.isNotEmpty(), "the server's message is kept")
            assertEquals(null, client.session())
            // Then the right one works on the same client.
            assertEquals(user.userId, client.loginPassword(user.localpart, user.password, null).userId)
        }
    }

    @Test
    fun `a wrong store key is NewtException WrongStoreKey and changes nothing`() = runBlocking<Unit> {
        val user = TestUser.register("storekey")
        val dir = TestEnv.newStoreDir("storekey")
        val session = openClient(config(dir, passphrase = "the right key")).use { it.loginPassword(user.localpart, user.password, null) }

        // Opening (the constructor) refuses the key, before any other call.
        assertFailsWith<NewtException.WrongStoreKey> { openClient(config(dir, passphrase = "a wrong key")).close() }
        openClient(config(dir, passphrase = "the right key")).use { client ->
            assertEquals(session, assertNotNull(client.restoreSession(), "the session is still there"))
        }
    }

    @Test
    fun `a store holding another account is NewtException AccountMismatch naming both`() = runBlocking<Unit> {
        val alice = TestUser.register("mismatch_alice")
        val bob = TestUser.register("mismatch_bob")
        val dir = TestEnv.newStoreDir("mismatch")
        val aliceSession = openClient(config(dir)).use { it.loginPassword(alice.localpart, alice.password, null) }

        openClient(config(dir)).use { client ->
            // The server accepts bob; the store's encryption account is alice's.
            val e = assertFailsWith<NewtException.AccountMismatch> {
                client.loginPassword(bob.localpart, bob.password, "BOBDEVICE")
            }
            assertEquals(bob.userId, e.userId)
            assertEquals("BOBDEVICE", e.deviceId)
            assertEquals(aliceSession.userId, e.storedUserId)
            assertEquals(aliceSession.deviceId, e.storedDeviceId)
            assertEquals(null, client.session(), "bob is not logged in")
        }
        // Nothing was written: the store still holds alice's session.
        openClient(config(dir)).use { client ->
            assertEquals(aliceSession, client.restoreSession())
        }
    }

    @Test
    fun `invalid ids are NewtException InvalidInput and nothing is sent or queued`() = runBlocking<Unit> {
        val user = TestUser.register("badids")
        openClient(config(TestEnv.newStoreDir("badids"))).use { client ->
            val session = client.loginPassword(user.localpart, user.password, null)
            assertFailsWith<NewtException.InvalidInput> { client.sendText("not a room id", "lost?") }
            assertFailsWith<NewtException.InvalidInput> { client.createEncryptedRoom(null, listOf("bob")) }
            assertFailsWith<NewtException.InvalidInput> { client.joinRoom("room") }
            assertFailsWith<NewtException.InvalidInput> { client.inviteUser("!r:localhost", "@") }
            assertFailsWith<NewtException.InvalidInput> { client.devices("bob") }
            assertFailsWith<NewtException.InvalidInput> { client.setDeviceTrust(session.userId, "", DeviceTrust.VERIFIED) }
            assertFailsWith<NewtException.InvalidInput> { client.deleteDevice("") }
            assertFailsWith<NewtException.InvalidInput> { client.devicesWithoutOlm("#alias:localhost") }
            // Nothing was queued: the next due-work run has nothing to send.
            val report = client.runDueWork()
            assertEquals(0u, report.completed)
            assertEquals(0u, report.remaining)
        }
    }

    @Test
    fun `calls that need a session throw NotLoggedIn`() = runBlocking<Unit> {
        openClient(config(TestEnv.newStoreDir("nosession"))).use { client ->
            assertEquals(null, client.restoreSession())
            assertFailsWith<NewtException.NotLoggedIn> { client.ownFingerprint() }
            assertFailsWith<NewtException.NotLoggedIn> { client.syncOnce(0uL) }
        }
    }

    @Test
    fun `an answer the SDK cannot use is NewtException InvalidResponse`() = runBlocking<Unit> {
        // A "homeserver" that accepts a login but answers with something that is not one.
        val server = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0)
        server.createContext("/") { exchange ->
            val body = """{"user_id": "not a user id", "access_token": 5}""".toByteArray()
            exchange.responseHeaders.add("Content-Type", "application/json")
            exchange.sendResponseHeaders(200, body.size.toLong())
            exchange.responseBody.use { it.write(body) }
        }
        server.start()
        try {
            val url = "http://127.0.0.1:${server.address.port}"
            openClient(config(TestEnv.newStoreDir("badanswer"), homeserver = url)).use { client ->
                assertFailsWith<NewtException.InvalidResponse> { client.loginPassword("alice", "pw", null) }
                assertEquals(null, client.session(), "nothing was stored from it")
            }
        } finally {
            server.stop(0)
        }
    }
}
