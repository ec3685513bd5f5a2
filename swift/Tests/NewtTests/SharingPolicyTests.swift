import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/SharingPolicyTest.kt. Needs `NEWT_HOMESERVER`.
///
/// Who gets room keys and when they rotate, set from Swift: with verified-only sharing an
/// unverified device gets the message withheld (`m.unverified`) until it is verified; a room
/// created with its own rotation settings works, and bad settings are refused.
final class SharingPolicyTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 120 // enforced when test timeouts are enabled
    }

    func testVerifiedOnlySharingWithholdsTheKeyFromAnUnverifiedDeviceUntilItIsVerified() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let alice = pair.alice.client
        let bob = pair.bob.client
        try alice.setShareWithVerifiedOnly(on: true)

        let updates = try bob.timelineUpdates(roomId: pair.roomId)
        var iterator = updates.makeAsyncIterator()
        let initial = await iterator.next()
        guard case .initial? = initial else {
            return XCTFail("the first update is not .initial: \(String(describing: initial))")
        }
        let withheld = try await alice.sendText(roomId: pair.roomId, body: "only for verified devices")
        try bob.startSync()
        let first = try await firstAppended(in: updates, what: "the withheld message at bob") {
            $0.eventId == withheld
        }
        XCTAssertFalse(first.decrypted, "\(first)")
        XCTAssertTrue(first.error?.contains("m.unverified") == true, "the reason is given: \(first)")
        if case .withheld(let code, _)? = first.failure {
            XCTAssertEqual(code, "m.unverified")
        } else {
            XCTFail("the reason is typed: \(String(describing: first.failure))")
        }
        let withoutOlm = try alice.devicesWithoutOlm(roomId: pair.roomId)
        XCTAssertTrue(withoutOlm.isEmpty, "bob has an Olm channel, only no trust: \(withoutOlm)")

        try await alice.setDeviceTrust(
            userId: pair.bob.session.userId, deviceId: pair.bob.session.deviceId, trust: .verified)
        let text = "bob is verified now"
        let shared = try await alice.sendText(roomId: pair.roomId, body: text)
        let second = try await firstAppended(in: updates, what: "the message after verification") {
            $0.eventId == shared
        }
        XCTAssertTrue(second.decrypted, "\(second)")
        XCTAssertEqual(second.body, text)
        try await bob.stopSync()
    }

    func testRoomsCrossSignedOnlyPolicyWithholdsTheKeyUntilBobCrossSigns() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let alice = pair.alice.client
        let bob = pair.bob.client
        try alice.setRoomSharingPolicy(roomId: pair.roomId, policy: .crossSignedOnly)
        XCTAssertEqual(try alice.sharingPolicy(roomId: pair.roomId), .crossSignedOnly)

        let updates = try bob.timelineUpdates(roomId: pair.roomId)
        let withheld = try await alice.sendText(roomId: pair.roomId, body: "only for cross-signed devices")
        try bob.startSync()
        let first = try await firstAppended(in: updates, what: "the withheld message at bob") {
            $0.eventId == withheld
        }
        if case .withheld(let code, _)? = first.failure {
            XCTAssertEqual(code, "m.unverified")
        } else {
            XCTFail("withheld until cross-signed: \(String(describing: first.failure))")
        }

        try await bob.bootstrapCrossSigning()
        try await alice.syncOnce(timeoutMs: 0)
        let text = "bob is cross-signed now"
        let shared = try await alice.sendText(roomId: pair.roomId, body: text)
        let second = try await firstAppended(in: updates, what: "the message after cross-signing") {
            $0.eventId == shared
        }
        XCTAssertTrue(second.decrypted, "\(second)")
        XCTAssertEqual(second.body, text)

        try alice.setRoomSharingPolicy(roomId: pair.roomId, policy: nil)
        XCTAssertEqual(try alice.sharingPolicy(roomId: pair.roomId), .allButBlacklisted)
        try await bob.stopSync()
    }

    func testRoomWithItsOwnRotationSettingsWorksAndBadSettingsAreRefused() async throws {
        let hs = try homeserverOrSkip()
        let (aliceName, alicePassword) = try await registerUser(homeserver: hs, prefix: "alice")
        let (bobName, bobPassword) = try await registerUser(homeserver: hs, prefix: "bob")
        let alice = try await login(self, homeserver: hs, user: aliceName, password: alicePassword)
        let bob = try await login(self, homeserver: hs, user: bobName, password: bobPassword)
        try await bob.client.syncOnce(timeoutMs: 0)
        try await alice.client.syncOnce(timeoutMs: 0)
        do {
            _ = try await alice.client.createEncryptedRoomWithRotation(
                name: nil, invite: [], rotation: RoomKeyRotation(periodMs: 0, messages: 10))
            XCTFail("a room with a rotation period of 0 ms was created")
        } catch NewtError.InvalidInput {
            // expected
        }
        let room = try await alice.client.createEncryptedRoomWithRotation(
            name: "rotating", invite: [bob.session.userId],
            rotation: RoomKeyRotation(periodMs: 3_600_000, messages: 2))
        try await bob.client.syncOnce(timeoutMs: 0)
        let joined = try await bob.client.joinRoom(roomIdOrAlias: room)
        XCTAssertEqual(joined, room)
        try await bob.client.syncOnce(timeoutMs: 0)
        try await alice.client.syncOnce(timeoutMs: 0)

        let updates = try bob.client.timelineUpdates(roomId: room)
        let texts = (1...5).map { "message \($0)" }
        var ids: [String] = []
        for text in texts {
            ids.append(try await alice.client.sendText(roomId: room, body: text))
        }
        try bob.client.startSync()
        for (id, text) in zip(ids, texts) {
            let item = try await firstAppended(in: updates, what: text) { $0.eventId == id }
            XCTAssertTrue(item.decrypted, "every rotated session reaches bob: \(item)")
            XCTAssertEqual(item.body, text)
        }
        try await bob.client.stopSync()
    }
}
