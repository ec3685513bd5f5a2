import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/DeviceDiscoveryTest.kt. Needs `NEWT_HOMESERVER`.
final class DeviceDiscoveryTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 120 // enforced when test timeouts are enabled
    }

    func testNewDeviceOfTrackedUserGetsNextRoomKeyWithoutAppAction() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let alice = pair.alice.client
        _ = try await alice.sendText(roomId: pair.roomId, body: "before the new device")
        // bob logs in on a second device; alice already tracks bob.
        let phone = try await login(self, homeserver: hs, user: pair.bob.user, password: pair.bob.password)
        XCTAssertNotEqual(pair.bob.session.deviceId, phone.session.deviceId)
        try await phone.client.syncOnce(timeoutMs: 0)

        let updates = try phone.client.timelineUpdates(roomId: pair.roomId)
        try await alice.syncOnce(timeoutMs: 0) // device_lists.changed names bob
        let text = "after the new device"
        _ = try await alice.sendText(roomId: pair.roomId, body: text)
        try phone.client.startSync()
        let item = try await firstAppended(in: updates, what: "alice's message on bob's new device") {
            $0.body == text
        }
        XCTAssertTrue(item.decrypted, "\(item)")
        try await phone.client.stopSync()
    }
}
