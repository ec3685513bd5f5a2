import Foundation
import XCTest
import Newt

/// Mirrors the Kotlin binding tests (kotlin/). End-to-end tests need `NEWT_HOMESERVER`
/// (a homeserver with open registration, e.g. from `scripts/synapse.sh start DIR`).
final class NewtTests: XCTestCase {

    // MARK: two clients exchange encrypted messages

    func testTwoClientsExchangeEncryptedMessages() async throws {
        let hs = try homeserverOrSkip()
        let (aliceName, alicePassword) = try await registerUser(homeserver: hs, prefix: "alice")
        let (bobName, bobPassword) = try await registerUser(homeserver: hs, prefix: "bob")
        let alice = try await makeClient(self, homeserver: hs)
        let bob = try await makeClient(self, homeserver: hs)
        let aliceSession = try await alice.loginPassword(user: aliceName, password: alicePassword, deviceId: nil)
        let bobSession = try await bob.loginPassword(user: bobName, password: bobPassword, deviceId: nil)
        XCTAssertEqual(alice.session()?.userId, aliceSession.userId)
        XCTAssertFalse(try alice.ownFingerprint().isEmpty)

        let room = try await alice.createEncryptedRoom(name: "swift", invite: [bobSession.userId])
        try await bob.syncOnce(timeoutMs: 0)
        _ = try await bob.joinRoom(roomIdOrAlias: room)
        try await alice.syncOnce(timeoutMs: 0)

        // bob listens through the AsyncStream helper, with the background sync loop.
        let updates = try bob.timelineUpdates(roomId: room)
        try bob.startSync()
        let eventId = try await alice.sendText(roomId: room, body: "hello from swift")
        XCTAssertFalse(eventId.isEmpty)

        let received = try await firstAppended(in: updates, timeout: 60) { $0.eventId == eventId }
        XCTAssertEqual(received.body, "hello from swift")
        XCTAssertTrue(received.decrypted)
        XCTAssertNil(received.error)
        XCTAssertEqual(received.sender, aliceSession.userId)
        XCTAssertEqual(received.roomId, room)

        // and back
        let aliceUpdates = try alice.timelineUpdates(roomId: room)
        try alice.startSync()
        let reply = try await bob.sendText(roomId: room, body: "hi alice")
        let got = try await firstAppended(in: aliceUpdates, timeout: 60) { $0.eventId == reply }
        XCTAssertEqual(got.body, "hi alice")
        XCTAssertTrue(got.decrypted)

        try await alice.stopSync()
        try await bob.stopSync()
        try await bob.stopSync() // idempotent
    }

    // MARK: logger

    func testLoggerReceivesRecords() async throws {
        let logger = RecordingLogger()
        setLogger(logger: logger, level: .debug)
        let client = try await makeClient(self, homeserver: unreachableHomeserver)
        let password = "swift logger secret 51c9"
        do {
            _ = try await client.loginPassword(user: "nobody", password: password, deviceId: nil)
            XCTFail("login against a closed port succeeded")
        } catch NewtError.Network {
            // expected
        }
        setLogger(logger: nil, level: .error)
        try await eventually("a log record") { !logger.records.all.isEmpty }
        let all = logger.records.all
        XCTAssertTrue(all.contains { $0.target.hasPrefix("newt") }, "no newt* target: \(all.prefix(5))")
        XCTAssertFalse(all.contains { $0.level == .trace }, "TRACE records at level DEBUG")
        XCTAssertFalse(all.contains { $0.message.contains(password) }, "the password is in a log record")

        // removed: no more records
        try await Task.sleep(nanoseconds: 300_000_000)
        let before = logger.records.all.count
        _ = try? await client.loginPassword(user: "nobody", password: password, deviceId: nil)
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(logger.records.all.count, before, "records after setLogger(nil)")
    }

    // MARK: trust policy provider

    /// Mirrors MessagingTest: the policy object hides an unverified sender until bob
    /// verifies her identity.
    func testTrustPolicyHidesAnUnverifiedSenderUntilVerified() async throws {
        let hs = try homeserverOrSkip()
        let (aliceName, alicePassword) = try await registerUser(homeserver: hs, prefix: "alice")
        let (bobName, bobPassword) = try await registerUser(homeserver: hs, prefix: "bob")
        let alice = try await makeClient(self, homeserver: hs)
        let bob = try await makeClient(self, homeserver: hs)
        _ = try await alice.loginPassword(user: aliceName, password: alicePassword, deviceId: nil)
        let bobSession = try await bob.loginPassword(user: bobName, password: bobPassword, deviceId: nil)
        let provider = FixedTrustPolicy(.verifiedOnly)
        try bob.setTrustPolicyProvider(provider: provider)

        let room = try await alice.createEncryptedRoom(name: nil, invite: [bobSession.userId])
        try await bob.syncOnce(timeoutMs: 0)
        _ = try await bob.joinRoom(roomIdOrAlias: room)
        try await alice.syncOnce(timeoutMs: 0)
        let updates = try bob.timelineUpdates(roomId: room)
        let eventId = try await alice.sendText(roomId: room, body: "policy?")
        try bob.startSync()

        let item = try await firstAppended(in: updates, timeout: 60) { $0.eventId == eventId }
        XCTAssertTrue(provider.asked.all.contains(room), "provider not asked for \(room)")
        XCTAssertEqual(item.trustPolicy, .verifiedOnly)
        XCTAssertTrue(item.decrypted && item.hiddenByPolicy)
        XCTAssertNil(item.body)
        XCTAssertEqual(item.senderTrust, .deviceOnly)

        try await alice.bootstrapCrossSigning()
        let aliceId = try XCTUnwrap(alice.session()).userId
        let identity = try await bob.identity(userId: aliceId)
        XCTAssertEqual(identity?.verified, false)
        let verified = try await bob.verifyIdentity(userId: aliceId)
        XCTAssertTrue(verified)
        let shown = try await firstUpdated(in: updates, timeout: 60) {
            $0.eventId == eventId && !$0.hiddenByPolicy
        }
        XCTAssertEqual(shown.body, "policy?")
        XCTAssertEqual(shown.senderTrust, .verified)
        try await bob.stopSync()
    }

    // MARK: background scheduler and runDueWork

    func testSchedulerGetsWakeupAndRunDueWorkReports() async throws {
        let hs = try homeserverOrSkip()
        let (name, password) = try await registerUser(homeserver: hs, prefix: "carol")
        let dir = try temporaryStoreDir(self)
        let online = try await makeClient(self, homeserver: hs, storeDir: dir)
        _ = try await online.loginPassword(user: name, password: password, deviceId: nil)
        let room = try await online.createEncryptedRoom(name: nil, invite: [])
        try await online.syncOnce(timeoutMs: 0)
        await online.shutdown()

        // Same store, but the server is now unreachable: the send fails transiently, is kept
        // for later, and the app is asked for a wake-up.
        let offline = try await makeClient(self, homeserver: unreachableHomeserver, storeDir: dir)
        let restored = try await offline.restoreSession()
        XCTAssertNotNil(restored)
        let scheduler = RecordingScheduler()
        try offline.setBackgroundScheduler(scheduler: scheduler)
        do {
            _ = try await offline.sendText(roomId: room, body: "later")
            XCTFail("send to an unreachable server succeeded")
        } catch NewtError.Network {
            // expected
        }
        try await eventually("a wakeup request") { !scheduler.requests.all.isEmpty }
        let request = try XCTUnwrap(scheduler.requests.all.first)
        XCTAssertTrue(request.requiresNetwork)
        XCTAssertGreaterThan(request.delayMs, 0)
        XCTAssertFalse(request.reason.isEmpty)

        let report = try await offline.runDueWork()
        XCTAssertEqual(report.completed, 0)
        XCTAssertGreaterThanOrEqual(report.remaining, 1)
    }

    // MARK: prompts

    func testDeleteDeviceAsksForPassword() async throws {
        let hs = try homeserverOrSkip()
        let (name, password) = try await registerUser(homeserver: hs, prefix: "dave")
        let first = try await makeClient(self, homeserver: hs)
        let second = try await makeClient(self, homeserver: hs)
        let session = try await first.loginPassword(user: name, password: password, deviceId: nil)
        let other = try await second.loginPassword(user: name, password: password, deviceId: nil)
        XCTAssertNotEqual(session.deviceId, other.deviceId)

        let prompter = PasswordPrompter(password: password)
        try first.setPromptHandler(handler: prompter)
        try await first.deleteDevice(deviceId: other.deviceId)

        guard case let .password(userId, reason)? = prompter.prompts.all.first else {
            return XCTFail("no password prompt: \(prompter.prompts.all)")
        }
        XCTAssertEqual(userId, session.userId)
        XCTAssertTrue(reason.contains(other.deviceId))
        let devices = try await first.devices(userId: session.userId)
        XCTAssertFalse(devices.contains { $0.deviceId == other.deviceId && !$0.deleted })
    }

    // MARK: typed errors

    func testWrongPasswordIsForbidden() async throws {
        let hs = try homeserverOrSkip()
        let (name, _) = try await registerUser(homeserver: hs, prefix: "erin")
        let client = try await makeClient(self, homeserver: hs)
        do {
            _ = try await client.loginPassword(user: name, password: "wrong", deviceId: nil)
            XCTFail("login with a wrong password succeeded")
        } catch let NewtError.Server(status, errcode, _) {
            XCTAssertEqual(errcode, "M_FORBIDDEN")
            XCTAssertEqual(status, 403)
        }
    }

    func testWrongStoreKeyIsRefused() async throws {
        let dir = try temporaryStoreDir(self)
        let key = Data(repeating: 7, count: 32)
        func openStore(_ key: Data) async throws -> NewtClient {
            try await NewtClient.create(config: ClientConfig(
                homeserver: unreachableHomeserver, storeDir: dir, storeKey: .bytes(key: key)))
        }
        try await openStore(key).shutdown()
        do {
            _ = try await openStore(Data(repeating: 8, count: 32))
            XCTFail("a wrong store key opened the store")
        } catch NewtError.WrongStoreKey {
            // expected
        }
        // the right key still opens it
        try await openStore(key).shutdown()
    }

    func testAStoreHoldingAnotherAccountIsAccountMismatchNamingBoth() async throws {
        // Mirrors the Kotlin ErrorsTest: the server accepts bob; the store's encryption
        // account is alice's.
        let hs = try homeserverOrSkip()
        let (aliceName, alicePassword) = try await registerUser(homeserver: hs, prefix: "mismatch_alice")
        let (bobName, bobPassword) = try await registerUser(homeserver: hs, prefix: "mismatch_bob")
        let dir = try temporaryStoreDir(self)
        let first = try await makeClient(self, homeserver: hs, storeDir: dir)
        let aliceSession = try await first.loginPassword(user: aliceName, password: alicePassword, deviceId: nil)
        await first.shutdown()

        let client = try await makeClient(self, homeserver: hs, storeDir: dir)
        do {
            _ = try await client.loginPassword(user: bobName, password: bobPassword, deviceId: "BOBDEVICE")
            XCTFail("bob logged in on a store holding alice's account")
        } catch let NewtError.AccountMismatch(userId, deviceId, storedUserId, storedDeviceId) {
            XCTAssertTrue(userId.hasPrefix("@\(bobName):"), userId)
            XCTAssertEqual(deviceId, "BOBDEVICE")
            XCTAssertEqual(storedUserId, aliceSession.userId)
            XCTAssertEqual(storedDeviceId, aliceSession.deviceId)
        }
        XCTAssertNil(client.session(), "bob is not logged in")
        await client.shutdown()

        // Nothing was written: the store still holds alice's session.
        let reopened = try await makeClient(self, homeserver: hs, storeDir: dir)
        let restored = try await reopened.restoreSession()
        XCTAssertEqual(restored, aliceSession)
    }

    func testAnUnusableAnswerIsInvalidResponse() async throws {
        // Mirrors the Kotlin ErrorsTest: a server whose login answer is not one.
        let server = try OneAnswerServer(body: #"{"user_id": "not a user id", "access_token": 5}"#)
        defer { server.stop() }
        let client = try await makeClient(self, homeserver: server.url)
        do {
            _ = try await client.loginPassword(user: "alice", password: "pw", deviceId: nil)
            XCTFail("an unusable answer was taken")
        } catch NewtError.InvalidResponse {
            XCTAssertNil(client.session())
        }
    }

    func testNotLoggedIn() async throws {
        let client = try await makeClient(self, homeserver: unreachableHomeserver)
        XCTAssertNil(client.session())
        XCTAssertThrowsError(try client.ownFingerprint()) { error in
            guard case NewtError.NotLoggedIn = error else {
                return XCTFail("expected NotLoggedIn, got \(error)")
            }
        }
    }

    func testInvalidIdsAreInvalidInputAndNothingIsQueued() async throws {
        let hs = try homeserverOrSkip()
        let (name, password) = try await registerUser(homeserver: hs, prefix: "badids")
        let client = try await makeClient(self, homeserver: hs)
        let session = try await client.loginPassword(user: name, password: password, deviceId: nil)
        func expectInvalidInput(_ what: String, _ call: () async throws -> Void) async {
            do {
                try await call()
                XCTFail("\(what): an invalid id was accepted")
            } catch NewtError.InvalidInput {
            } catch {
                XCTFail("\(what): expected InvalidInput, got \(error)")
            }
        }
        await expectInvalidInput("sendText") { _ = try await client.sendText(roomId: "not a room id", body: "lost?") }
        await expectInvalidInput("createEncryptedRoom") { _ = try await client.createEncryptedRoom(name: nil, invite: ["bob"]) }
        await expectInvalidInput("joinRoom") { _ = try await client.joinRoom(roomIdOrAlias: "room") }
        await expectInvalidInput("inviteUser") { try await client.inviteUser(roomId: "!r:localhost", userId: "@") }
        await expectInvalidInput("devices") { _ = try await client.devices(userId: "bob") }
        await expectInvalidInput("setDeviceTrust") {
            try await client.setDeviceTrust(userId: session.userId, deviceId: "", trust: .verified)
        }
        await expectInvalidInput("deleteDevice") { try await client.deleteDevice(deviceId: "") }
        await expectInvalidInput("devicesWithoutOlm") { _ = try client.devicesWithoutOlm(roomId: "#alias:localhost") }
        let report = try await client.runDueWork()
        XCTAssertEqual(report.completed, 0)
        XCTAssertEqual(report.remaining, 0)
    }

    func testPromptDismissedIsTyped() async throws {
        let hs = try homeserverOrSkip()
        let (name, password) = try await registerUser(homeserver: hs, prefix: "frank")
        let first = try await makeClient(self, homeserver: hs)
        let second = try await makeClient(self, homeserver: hs)
        _ = try await first.loginPassword(user: name, password: password, deviceId: nil)
        let other = try await second.loginPassword(user: name, password: password, deviceId: nil)
        // no prompt handler: the password prompt is dismissed
        do {
            try await first.deleteDevice(deviceId: other.deviceId)
            XCTFail("deleteDevice without a password succeeded")
        } catch NewtError.PromptDismissed {
            // expected
        }
    }

    // MARK: shutdown

    func testShutdownIsIdempotentAndLaterCallsThrowClosed() async throws {
        let client = try await makeClient(self, homeserver: unreachableHomeserver)
        let subscription = try client.subscribeTimeline(roomId: "!nowhere:localhost", listener: NoopListener())
        subscription.cancel()
        subscription.cancel()
        await client.shutdown()
        await client.shutdown()
        func expectClosed(_ what: String, _ call: () async throws -> Void) async {
            do {
                try await call()
                XCTFail("\(what) after shutdown succeeded")
            } catch NewtError.Closed {
                // expected
            } catch {
                XCTFail("\(what) after shutdown: expected Closed, got \(error)")
            }
        }
        await expectClosed("restoreSession") { _ = try await client.restoreSession() }
        await expectClosed("syncOnce") { try await client.syncOnce(timeoutMs: 0) }
        await expectClosed("sendText") { _ = try await client.sendText(roomId: "!room:localhost", body: "x") }
        await expectClosed("ownFingerprint") { _ = try client.ownFingerprint() }
        await expectClosed("startSync") { try client.startSync() }
        await expectClosed("subscribeTimeline") { _ = try client.timelineUpdates(roomId: "!room:localhost") }
    }

    func testShutdownWaitsForTheSyncLoopAndReleasesTheStoreForANewClient() async throws {
        // Mirrors the Kotlin LifecycleTest.
        let hs = try homeserverOrSkip()
        let (name, password) = try await registerUser(homeserver: hs, prefix: "reopen")
        let dir = try temporaryStoreDir(self)
        let client = try await makeClient(self, homeserver: hs, storeDir: dir)
        let session = try await client.loginPassword(user: name, password: password, deviceId: nil)
        let fingerprint = try client.ownFingerprint()
        try client.startSync()
        try await client.syncOnce(timeoutMs: 0)
        // Returns once the loop has ended and the store is released.
        await client.shutdown()
        do {
            try await client.syncOnce(timeoutMs: 0)
            XCTFail("syncOnce after shutdown succeeded")
        } catch NewtError.Closed {
            // expected
        }
        await client.shutdown() // idempotent

        // The same store, opened again in this process: same device, same keys.
        let again = try await makeClient(self, homeserver: hs, storeDir: dir)
        let restored = try await again.restoreSession()
        XCTAssertEqual(restored, session)
        XCTAssertEqual(try again.ownFingerprint(), fingerprint)
        try await again.syncOnce(timeoutMs: 0)
        await again.shutdown()
    }

    // MARK: the AsyncStream helper

    func testTimelineStreamStartsWithInitialAndFinishesWhenClientShutsDown() async throws {
        let client = try await makeClient(self, homeserver: unreachableHomeserver)
        let updates = try client.timelineUpdates(roomId: "!nowhere:localhost")
        let consumer = Task { () -> (seen: [TimelineUpdate], finished: Bool) in
            var seen: [TimelineUpdate] = []
            for await update in updates { seen.append(update) }
            return (seen, !Task.isCancelled) // the loop also ends when the task is cancelled
        }
        try await Task.sleep(nanoseconds: 500_000_000)
        await client.shutdown()
        let watchdog = Task {
            try await Task.sleep(nanoseconds: 10_000_000_000)
            consumer.cancel() // a stream that never finishes would hang the test
        }
        let (seen, finished) = await consumer.value
        watchdog.cancel()
        XCTAssertTrue(finished, "the stream did not finish within 10 s of shutdown()")
        guard case .initial(let items, _)? = seen.first else {
            return XCTFail("first update is not .initial: \(seen)")
        }
        XCTAssertTrue(items.isEmpty)
    }

    // MARK: cancellation (uniffi 0.32: a cancelled Task does not cancel the Rust call)

    func testTaskCancellationDoesNotCancelTheRustCall() async throws {
        let hs = try homeserverOrSkip()
        let (name, password) = try await registerUser(homeserver: hs, prefix: "grace")
        let client = try await makeClient(self, homeserver: hs)
        _ = try await client.loginPassword(user: name, password: password, deviceId: nil)
        try await client.syncOnce(timeoutMs: 0) // now there is a sync token: the next sync long-polls
        let started = Date()
        let call = Task { try await client.syncOnce(timeoutMs: 3_000) }
        try await Task.sleep(nanoseconds: 200_000_000)
        call.cancel()
        _ = await call.result
        let elapsed = Date().timeIntervalSince(started)
        // If this fails because the call returned early, uniffi now propagates cancellation:
        // update the note in Sources/Newt/Newt.swift and swift/README.md.
        XCTAssertGreaterThan(elapsed, 2.0, "the long poll ended early: cancellation now reaches Rust?")
        try await client.syncOnce(timeoutMs: 0) // still usable
    }

    func testVersion() {
        XCTAssertFalse(newtVersion().isEmpty)
    }
}
