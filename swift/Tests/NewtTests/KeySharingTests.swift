import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/KeySharingTest.kt. Needs `NEWT_HOMESERVER`.
///
/// Seed 004, key sharing between own devices: a new device that cannot read earlier messages
/// asks the user's other device, whose app asks the user (`Prompt.keyShareRequest`); once the
/// user verifies the new device, the key is forwarded and the new device's timeline gets the
/// message again as `TimelineUpdate.updated`, now decrypted.
final class KeySharingTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 120 // enforced when test timeouts are enabled
    }

    func testNewOwnDeviceGetsOldKeysOnceTheUserVerifiesItInThePrompt() async throws {
        let hs = try homeserverOrSkip()
        let pair = try await roomPair(self, homeserver: hs)
        let phone = pair.alice
        let text = "before the laptop"
        let eventId = try await pair.bob.client.sendText(roomId: pair.roomId, body: text)
        let approver = KeyShareApprover()
        try phone.client.setPromptHandler(handler: approver)

        // alice logs in on a laptop: bob's earlier message is undecryptable there.
        let laptop = try await login(self, homeserver: hs, user: phone.user, password: phone.password)
        try await eventually("the laptop to know the phone", timeout: 10) {
            try await laptop.client.devices(userId: phone.session.userId)
                .contains { $0.deviceId == phone.session.deviceId }
        }
        try await laptop.client.setDeviceTrust(
            userId: phone.session.userId, deviceId: phone.session.deviceId, trust: .verified)

        do {
            let updates = try laptop.client.timelineUpdates(roomId: pair.roomId)
            let seen = Recorded<TimelineUpdate>()
            let consumer = Task {
                for await update in updates { seen.append(update) }
            }
            defer { consumer.cancel() } // ends the stream and closes the subscription

            var before: TimelineItem?
            var after: TimelineItem?
            var handled = 0
            let deadline = Date().addingTimeInterval(60)
            while after == nil && Date() < deadline {
                try await phone.client.syncOnce(timeoutMs: 300)
                try await laptop.client.syncOnce(timeoutMs: 300)
                let all = seen.all
                for update in all[handled...] {
                    switch update {
                    case .initial(let items, _):
                        if let item = items.last(where: { $0.eventId == eventId }) { before = item }
                    case .appended(let item):
                        if item.eventId == eventId { before = item }
                    case .updated(let item):
                        if item.eventId == eventId { after = item }
                    default:
                        break
                    }
                }
                handled = all.count
            }
            let first = try XCTUnwrap(before, "the laptop never showed bob's message; saw \(seen.all)")
            XCTAssertFalse(first.decrypted, "the laptop could not read it at first: \(first)")
            XCTAssertTrue(first.waitingForKey, "a missing key may still arrive: \(first)")
            let healed = try XCTUnwrap(after, "no .updated item for bob's message; saw \(seen.all)")
            XCTAssertTrue(healed.decrypted, "\(healed)")
            XCTAssertEqual(healed.body, text)
        }

        let asked = approver.asked.all
        XCTAssertEqual(asked.map(\.deviceId), [laptop.session.deviceId], "asked once, about the laptop")
        let request = try XCTUnwrap(asked.count == 1 ? asked.first : nil, "not exactly one request: \(asked)")
        XCTAssertEqual(request.trust, .unset)
        let phoneSees = try await phone.client.devices(userId: phone.session.userId)
            .filter { $0.deviceId == laptop.session.deviceId }
        let stored = try XCTUnwrap(phoneSees.count == 1 ? phoneSees.first : nil,
                                   "not exactly one laptop device on the phone: \(phoneSees)")
        XCTAssertEqual(stored.trust, .verified, "the user's answer is stored")
        try phone.client.setPromptHandler(handler: nil)
    }
}

/// The user's answer to key share requests: verify the requesting device (so it gets the
/// keys); any other prompt is dismissed. Records the devices it was asked about.
private final class KeyShareApprover: PromptHandler, @unchecked Sendable {
    let asked = Recorded<DeviceInfo>()

    func onPrompt(prompt: Prompt) -> PromptAnswer {
        guard case .keyShareRequest(let device) = prompt else { return .dismissed }
        asked.append(device)
        return .deviceDecisions(decisions: [
            DeviceDecision(userId: device.userId, deviceId: device.deviceId, trust: .verified),
        ])
    }
}
