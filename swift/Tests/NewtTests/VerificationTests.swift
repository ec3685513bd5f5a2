import Foundation
import XCTest
import Newt

/// Mirrors kotlin/src/test/kotlin/org/newt/sdk/VerificationTest.kt. Needs `NEWT_HOMESERVER`.
///
/// Interactive verification (SAS) between two users from Swift: each app answers the
/// prompts (accept the request, compare the emoji) and learns the outcome through them.
final class VerificationTests: XCTestCase {

    override func setUp() {
        super.setUp()
        executionTimeAllowance = 120 // enforced when test timeouts are enabled
    }

    /// An app's prompt handler: answers as `compare` says and keeps every prompt.
    final class App: PromptHandler, @unchecked Sendable {
        let prompts = Recorded<Prompt>()
        let password: String
        let compare: PromptAnswer
        init(password: String, compare: PromptAnswer) {
            self.password = password
            self.compare = compare
        }
        func onPrompt(prompt: Prompt) -> PromptAnswer {
            prompts.append(prompt)
            switch prompt {
            case .password: return .password(password: SecretText(text: password))
            case .verificationRequest: return .confirmed
            case .compareSas: return compare
            default: return .dismissed
            }
        }
        var sas: ShortAuthString? {
            for case .compareSas(_, _, _, let sas) in prompts.all.reversed() { return sas }
            return nil
        }
        var done: Bool? {
            for case .verificationDone(_, _, _, let identityVerified) in prompts.all.reversed() {
                return identityVerified
            }
            return nil
        }
        var cancelled: (code: String, byUs: Bool)? {
            for case .verificationCancelled(_, _, let code, _, let byUs) in prompts.all.reversed() {
                return (code, byUs)
            }
            return nil
        }
    }

    private func syncUntil(_ clients: [NewtClient], _ what: String, _ done: @escaping () -> Bool) async throws {
        try await eventually(what, timeout: 60) {
            for client in clients { try await client.syncOnce(timeoutMs: 100) }
            return done()
        }
    }

    private func twoUsers() async throws -> (LoggedIn, LoggedIn) {
        let hs = try homeserverOrSkip()
        let (aliceName, alicePassword) = try await registerUser(homeserver: hs, prefix: "alice")
        let (bobName, bobPassword) = try await registerUser(homeserver: hs, prefix: "bob")
        let alice = try await login(self, homeserver: hs, user: aliceName, password: alicePassword)
        let bob = try await login(self, homeserver: hs, user: bobName, password: bobPassword)
        return (alice, bob)
    }

    func testTwoUsersCompareEmojiAndVerifyEachOthersDeviceAndIdentity() async throws {
        let (alice, bob) = try await twoUsers()
        let onAlice = App(password: alice.password, compare: .confirmed)
        let onBob = App(password: bob.password, compare: .confirmed)
        try alice.client.setPromptHandler(handler: onAlice)
        try bob.client.setPromptHandler(handler: onBob)
        try await alice.client.bootstrapCrossSigning()
        try await bob.client.bootstrapCrossSigning()

        let flow = try await alice.client.requestVerification(userId: bob.session.userId, deviceId: nil)
        guard case .requested = flow.state else { return XCTFail("not requested: \(flow.state)") }
        try await syncUntil([alice.client, bob.client], "the verification to complete") {
            onAlice.done != nil && onBob.done != nil
        }
        let shown = try XCTUnwrap(onAlice.sas)
        XCTAssertEqual(shown, onBob.sas, "both apps showed the same emoji")
        XCTAssertEqual(shown.emoji.count, 7)
        XCTAssertEqual(shown.decimals.count, 3)
        XCTAssertEqual(onAlice.done, true)
        guard case .done? = try alice.client.verification(flowId: flow.flowId)?.state else {
            return XCTFail("not done at alice")
        }
        let devices = try await alice.client.devices(userId: bob.session.userId)
        XCTAssertTrue(devices.first { $0.deviceId == bob.session.deviceId }?.verified == true)
        let bobIdentity = try await alice.client.identity(userId: bob.session.userId)
        XCTAssertTrue(bobIdentity?.verified == true, "and his identity")
    }

    func testAMismatchCancelsTheVerificationOnBothSidesAndVerifiesNothing() async throws {
        let (alice, bob) = try await twoUsers()
        let onAlice = App(password: alice.password, compare: .confirmed)
        let onBob = App(password: bob.password, compare: .mismatch)
        try alice.client.setPromptHandler(handler: onAlice)
        try bob.client.setPromptHandler(handler: onBob)
        try await alice.client.syncOnce(timeoutMs: 0)
        try await bob.client.syncOnce(timeoutMs: 0)

        let flow = try await alice.client.requestVerification(
            userId: bob.session.userId, deviceId: bob.session.deviceId)
        try await syncUntil([alice.client, bob.client], "alice to learn of the mismatch") {
            onAlice.cancelled != nil
        }
        XCTAssertEqual(onAlice.cancelled?.code, "m.mismatched_sas")
        XCTAssertEqual(onAlice.cancelled?.byUs, false)
        guard case .cancelled? = try alice.client.verification(flowId: flow.flowId)?.state else {
            return XCTFail("not cancelled at alice")
        }
        let devices = try await alice.client.devices(userId: bob.session.userId)
        XCTAssertFalse(devices.first { $0.deviceId == bob.session.deviceId }?.verified == true)
    }
}
