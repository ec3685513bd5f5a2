//! One verification, as a state machine over typed messages: request, ready, SAS start and
//! accept, key exchange, the users' comparison, MACs, done or cancel. No I/O: each step
//! returns the messages to send to the other side, and a protocol error is returned as the
//! cancel code the caller sends.

use ruma::events::key::verification::accept::{
    AcceptMethod, SasV1Content as AcceptSas, SasV1ContentInit as AcceptSasInit,
    ToDeviceKeyVerificationAcceptEventContent as AcceptContent,
};
use ruma::events::key::verification::cancel::{
    CancelCode, ToDeviceKeyVerificationCancelEventContent as CancelContent,
};
use ruma::events::key::verification::done::ToDeviceKeyVerificationDoneEventContent as DoneContent;
use ruma::events::key::verification::key::ToDeviceKeyVerificationKeyEventContent as KeyContent;
use ruma::events::key::verification::mac::ToDeviceKeyVerificationMacEventContent as MacContent;
use ruma::events::key::verification::ready::ToDeviceKeyVerificationReadyEventContent as ReadyContent;
use ruma::events::key::verification::start::{
    SasV1Content as StartSas, SasV1ContentInit as StartSasInit, StartMethod,
    ToDeviceKeyVerificationStartEventContent as StartContent,
};
use ruma::events::key::verification::{
    HashAlgorithm, KeyAgreementProtocol, MessageAuthenticationCode, ShortAuthenticationString,
    VerificationMethod,
};
use ruma::events::{AnyToDeviceEventContent, ToDeviceEventContent, ToDeviceEventType};
use ruma::serde::Base64;
use ruma::{DeviceId, OwnedDeviceId, OwnedTransactionId, OwnedUserId, UserId};
use vodozemac::Curve25519PublicKey;
use vodozemac::sas::{EstablishedSas, Sas};

use super::sas::{self, Party};
use super::{ShortAuthString, Verification, VerificationState};

/// A message for the other side: the device it goes to (`None`: every device the request
/// went to) and its content.
pub(crate) struct Out {
    pub device: OwnedDeviceId,
    pub content: AnyToDeviceEventContent,
}

impl Out {
    pub(crate) fn event_type(&self) -> ToDeviceEventType {
        self.content.event_type()
    }
}

/// The own user and device, and the keys we vouch for in our MAC.
pub(crate) struct Own<'a> {
    pub user: &'a UserId,
    pub device: &'a DeviceId,
}

/// A protocol error: cancel with this code.
pub(crate) type Step = Result<Vec<Out>, CancelCode>;

enum Stage {
    /// We asked; no device answered yet.
    Requested,
    /// They asked; our user has not accepted yet.
    Incoming,
    /// Both sides are ready; nobody started SAS yet.
    Ready,
    /// We sent `start`; waiting for `accept`.
    Started {
        sas: Sas,
        start: String,
    },
    /// Waiting for the other side's ephemeral key. `commitment` is theirs when we started.
    AwaitingKey {
        sas: Sas,
        commitment: Option<Vec<u8>>,
        start: String,
        we_started: bool,
        /// Both sides agreed on emoji (decimals are always there).
        emoji: bool,
    },
    /// The users compare the short authentication string.
    Keys(Box<Keys>),
    Done {
        identity_verified: bool,
    },
    Cancelled {
        code: CancelCode,
        reason: String,
        by_us: bool,
    },
}

struct Keys {
    sas: EstablishedSas,
    code: ShortAuthString,
    /// Our user confirmed the match (and we sent our MAC).
    confirmed: bool,
    /// The other side's MAC, kept until our user confirmed.
    their_mac: Option<MacContent>,
}

/// One verification with one device of one user.
pub(crate) struct Flow {
    pub id: OwnedTransactionId,
    pub other_user: OwnedUserId,
    /// The device we verify: known from its request, or from its `ready`.
    pub other_device: Option<OwnedDeviceId>,
    /// Devices our request went to.
    pub targets: Vec<OwnedDeviceId>,
    pub we_requested: bool,
    /// When it began (milliseconds since the epoch); it ends [`super::TIMEOUT_MS`] later.
    pub created_ms: u64,
    /// Last message sent or received (milliseconds since the epoch).
    pub touched_ms: u64,
    stage: Stage,
}

/// Everything we offer and accept for `m.sas.v1`.
fn sas_methods() -> Vec<ShortAuthenticationString> {
    vec![
        ShortAuthenticationString::Decimal,
        ShortAuthenticationString::Emoji,
    ]
}

impl Flow {
    /// A request we send to `targets` of `other_user`.
    pub(crate) fn outgoing(
        id: OwnedTransactionId,
        other_user: OwnedUserId,
        targets: Vec<OwnedDeviceId>,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            other_user,
            other_device: None,
            targets,
            we_requested: true,
            created_ms: now_ms,
            touched_ms: now_ms,
            stage: Stage::Requested,
        }
    }

    /// A request `other_user`'s device sent us.
    pub(crate) fn incoming(
        id: OwnedTransactionId,
        other_user: OwnedUserId,
        device: OwnedDeviceId,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            other_user,
            other_device: Some(device.clone()),
            targets: vec![device],
            we_requested: false,
            created_ms: now_ms,
            touched_ms: now_ms,
            stage: Stage::Incoming,
        }
    }

    /// What the app sees of it.
    pub(crate) fn snapshot(&self) -> Verification {
        Verification {
            flow_id: self.id.clone(),
            other_user: self.other_user.clone(),
            other_device: self.other_device.clone(),
            we_requested: self.we_requested,
            state: self.state(),
        }
    }

    fn state(&self) -> VerificationState {
        match &self.stage {
            Stage::Requested => VerificationState::Requested,
            Stage::Incoming => VerificationState::Incoming,
            Stage::Ready | Stage::Started { .. } | Stage::AwaitingKey { .. } => {
                VerificationState::Negotiating
            }
            Stage::Keys(k) if k.confirmed => VerificationState::Confirmed,
            Stage::Keys(k) => VerificationState::CompareSas(k.code.clone()),
            Stage::Done { identity_verified } => VerificationState::Done {
                identity_verified: *identity_verified,
            },
            Stage::Cancelled {
                code,
                reason,
                by_us,
            } => VerificationState::Cancelled {
                code: code.clone(),
                reason: reason.clone(),
                by_us: *by_us,
            },
        }
    }

    /// Done or cancelled: nothing more happens.
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.stage, Stage::Done { .. } | Stage::Cancelled { .. })
    }

    /// Another user's request our user did not accept yet.
    pub(crate) fn is_unanswered(&self) -> bool {
        matches!(self.stage, Stage::Incoming)
    }

    /// Give up without telling the other side (we could not store what we would send).
    pub(crate) fn abandon(&mut self) {
        if !self.is_finished() {
            self.stage = Stage::Cancelled {
                code: CancelCode::from("org.newt.not_stored"),
                reason: "the answer could not be stored".to_owned(),
                by_us: true,
            };
        }
    }

    /// The device this flow is with; known in every stage past the request.
    fn other_device(&self) -> Result<OwnedDeviceId, CancelCode> {
        self.other_device
            .clone()
            .ok_or(CancelCode::UnexpectedMessage)
    }

    fn to_other(&self, content: AnyToDeviceEventContent) -> Result<Out, CancelCode> {
        Ok(Out {
            device: self.other_device()?,
            content,
        })
    }

    /// Our user accepts their request: `ready`.
    pub(crate) fn accept(&mut self, own: &Own<'_>) -> Step {
        if !matches!(self.stage, Stage::Incoming) {
            return Err(CancelCode::UnexpectedMessage);
        }
        self.stage = Stage::Ready;
        let ready = ReadyContent::new(
            own.device.to_owned(),
            vec![VerificationMethod::SasV1],
            self.id.clone(),
        );
        Ok(vec![self.to_other(ready.into())?])
    }

    /// Their device answered our request: we start SAS with it, and tell the other devices
    /// the request went to that it was accepted elsewhere.
    pub(crate) fn on_ready(&mut self, ready: &ReadyContent, own: &Own<'_>) -> Step {
        let from = &ready.from_device;
        if self
            .other_device
            .as_ref()
            .is_some_and(|chosen| chosen != from)
        {
            // Another of their devices accepted after the first: it is told so.
            return Ok(vec![self.accepted_elsewhere(from)]);
        }
        if !self.targets.contains(from) {
            // Not a device we asked: not an answer to this request.
            return Ok(Vec::new());
        }
        if !matches!(self.stage, Stage::Requested) {
            return Err(CancelCode::UnexpectedMessage);
        }
        if !ready.methods.contains(&VerificationMethod::SasV1) {
            return Err(CancelCode::UnknownMethod);
        }
        self.other_device = Some(from.clone());
        let mut out: Vec<Out> = self
            .targets
            .iter()
            .filter(|d| *d != from)
            .map(|d| self.accepted_elsewhere(d))
            .collect();
        out.extend(self.start(own)?);
        Ok(out)
    }

    /// `m.accepted` for a device of theirs that is not the one this flow is with.
    fn accepted_elsewhere(&self, device: &DeviceId) -> Out {
        Out {
            device: device.to_owned(),
            content: CancelContent::new(
                self.id.clone(),
                "accepted on another device".to_owned(),
                CancelCode::Accepted,
            )
            .into(),
        }
    }

    fn start(&mut self, own: &Own<'_>) -> Step {
        let method = StartMethod::SasV1(StartSas::from(StartSasInit {
            key_agreement_protocols: vec![KeyAgreementProtocol::Curve25519HkdfSha256],
            hashes: vec![HashAlgorithm::Sha256],
            message_authentication_codes: vec![MessageAuthenticationCode::HkdfHmacSha256V2],
            short_authentication_string: sas_methods(),
        }));
        let start = StartContent::new(own.device.to_owned(), self.id.clone(), method);
        let value = serde_json::to_value(&start).map_err(|_| CancelCode::InvalidMessage)?;
        let canonical = crate::crypto::signing::canonical_json(&value)
            .map_err(|_| CancelCode::InvalidMessage)?;
        self.stage = Stage::Started {
            sas: Sas::new(),
            start: canonical,
        };
        Ok(vec![self.to_other(start.into())?])
    }

    /// Their `start`; `canonical` is its content in canonical JSON, as received. We accept
    /// it if it offers what we need. If both sides started, the side with the smaller user
    /// id (then device id) wins, as the specification says.
    pub(crate) fn on_start(
        &mut self,
        start: &StartContent,
        canonical: &str,
        own: &Own<'_>,
    ) -> Step {
        if Some(&start.from_device) != self.other_device.as_ref() {
            // Not the device this flow is with (another of theirs): not ours to answer.
            return Ok(Vec::new());
        }
        match &self.stage {
            Stage::Ready => {}
            Stage::Started { .. } if !self.they_win_start_race(own) => return Ok(Vec::new()),
            Stage::Started { .. } => {}
            _ => return Err(CancelCode::UnexpectedMessage),
        }
        let StartMethod::SasV1(offer) = &start.method else {
            return Err(CancelCode::UnknownMethod);
        };
        let supported = offer
            .key_agreement_protocols
            .contains(&KeyAgreementProtocol::Curve25519HkdfSha256)
            && offer.hashes.contains(&HashAlgorithm::Sha256)
            && offer
                .message_authentication_codes
                .contains(&MessageAuthenticationCode::HkdfHmacSha256V2)
            && offer
                .short_authentication_string
                .contains(&ShortAuthenticationString::Decimal);
        if !supported {
            return Err(CancelCode::UnknownMethod);
        }
        let sas = Sas::new();
        let accept = AcceptContent::new(
            self.id.clone(),
            AcceptMethod::SasV1(AcceptSas::from(AcceptSasInit {
                key_agreement_protocol: KeyAgreementProtocol::Curve25519HkdfSha256,
                hash: HashAlgorithm::Sha256,
                message_authentication_code: MessageAuthenticationCode::HkdfHmacSha256V2,
                short_authentication_string: sas_methods()
                    .into_iter()
                    .filter(|m| offer.short_authentication_string.contains(m))
                    .collect(),
                commitment: Base64::new(sas::commitment(&sas.public_key(), canonical)),
            })),
        );
        self.stage = Stage::AwaitingKey {
            sas,
            commitment: None,
            start: canonical.to_owned(),
            we_started: false,
            emoji: offer
                .short_authentication_string
                .contains(&ShortAuthenticationString::Emoji),
        };
        Ok(vec![self.to_other(accept.into())?])
    }

    fn they_win_start_race(&self, own: &Own<'_>) -> bool {
        let theirs = (self.other_user.as_str(), self.other_device.as_deref());
        theirs < (own.user.as_str(), Some(own.device))
    }

    /// They accepted our `start`: we send our key and keep their commitment.
    pub(crate) fn on_accept(&mut self, accept: &AcceptContent) -> Step {
        let AcceptMethod::SasV1(chosen) = &accept.method else {
            return Err(CancelCode::UnknownMethod);
        };
        let fits = chosen.key_agreement_protocol == KeyAgreementProtocol::Curve25519HkdfSha256
            && chosen.hash == HashAlgorithm::Sha256
            && chosen.message_authentication_code == MessageAuthenticationCode::HkdfHmacSha256V2;
        if !fits {
            return Err(CancelCode::UnknownMethod);
        }
        let Stage::Started { sas, start } = std::mem::replace(&mut self.stage, Stage::Ready) else {
            return Err(CancelCode::UnexpectedMessage);
        };
        let key = KeyContent::new(self.id.clone(), Base64::new(sas.public_key().to_vec()));
        let commitment = chosen.commitment.as_bytes().to_vec();
        self.stage = Stage::AwaitingKey {
            sas,
            commitment: Some(commitment),
            start,
            we_started: true,
            emoji: chosen
                .short_authentication_string
                .contains(&ShortAuthenticationString::Emoji),
        };
        Ok(vec![self.to_other(key.into())?])
    }
}

impl Flow {
    /// Their ephemeral key. When we started, it must match the commitment they sent; when
    /// they started, we answer with ours. Both sides can then show the string.
    pub(crate) fn on_key(&mut self, key: &KeyContent, own: &Own<'_>) -> Step {
        let Stage::AwaitingKey {
            sas,
            commitment,
            start,
            we_started,
            emoji,
        } = std::mem::replace(&mut self.stage, Stage::Ready)
        else {
            return Err(CancelCode::UnexpectedMessage);
        };
        let their_key = Curve25519PublicKey::from_slice(key.key.as_bytes())
            .map_err(|_| CancelCode::InvalidMessage)?;
        if let Some(expected) = commitment
            && sas::commitment(&their_key, &start) != expected
        {
            return Err(CancelCode::MismatchedCommitment);
        }
        let our_key = sas.public_key();
        let established = sas
            .diffie_hellman(their_key)
            .map_err(|_| CancelCode::InvalidMessage)?;
        let other_device = self.other_device()?;
        let me = Party {
            user: own.user,
            device: own.device,
            key: our_key.to_base64(),
        };
        let them = Party {
            user: &self.other_user,
            device: &other_device,
            key: their_key.to_base64(),
        };
        let (starter, accepter) = if we_started {
            (&me, &them)
        } else {
            (&them, &me)
        };
        let mut code = sas::short_auth_string(&established, starter, accepter, self.id.as_str());
        if !emoji {
            code.emoji.clear();
        }
        let mut out = Vec::new();
        if !we_started {
            let ours = KeyContent::new(self.id.clone(), Base64::new(our_key.to_vec()));
            out.push(self.to_other(ours.into())?);
        }
        self.stage = Stage::Keys(Box::new(Keys {
            sas: established,
            code,
            confirmed: false,
            their_mac: None,
        }));
        Ok(out)
    }

    /// Our user saw the same string on both devices: we send the MACs of `own_keys` (key
    /// id, public key). If their MAC came already it is checked now (`known` gives the keys
    /// we hold for them, see [`Self::on_mac`]).
    pub(crate) fn confirm(
        &mut self,
        own: &Own<'_>,
        own_keys: &[(String, String)],
        known: impl Fn(&str) -> Option<String>,
    ) -> Step {
        let other_device = self.other_device()?;
        let Stage::Keys(keys) = &mut self.stage else {
            return Err(CancelCode::UnexpectedMessage);
        };
        if keys.confirmed {
            return Ok(Vec::new());
        }
        keys.confirmed = true;
        let info = sas::mac_info_base(
            (own.user, own.device),
            (&self.other_user, &other_device),
            self.id.as_str(),
        );
        let (macs, keys_mac) = sas::macs_of(&keys.sas, &info, own_keys);
        let mut out = vec![self.to_other(MacContent::new(self.id.clone(), macs, keys_mac).into())?];
        if let Stage::Keys(keys) = &mut self.stage
            && let Some(theirs) = keys.their_mac.take()
        {
            out.extend(self.check_their_mac(&theirs, own, known)?);
        }
        Ok(out)
    }

    /// Their MAC. Checked at once if our user already confirmed, else kept until then.
    /// `known` gives the public key we hold for a key id of theirs: their device's Ed25519
    /// key, and their master key if it is the identity we know.
    pub(crate) fn on_mac(
        &mut self,
        mac: MacContent,
        own: &Own<'_>,
        known: impl Fn(&str) -> Option<String>,
    ) -> Step {
        let Stage::Keys(keys) = &mut self.stage else {
            return Err(CancelCode::UnexpectedMessage);
        };
        if !keys.confirmed {
            keys.their_mac = Some(mac);
            return Ok(Vec::new());
        }
        self.check_their_mac(&mac, own, known)
    }

    fn check_their_mac(
        &mut self,
        mac: &MacContent,
        own: &Own<'_>,
        known: impl Fn(&str) -> Option<String>,
    ) -> Step {
        let other_device = self.other_device()?;
        let Stage::Keys(keys) = &self.stage else {
            return Err(CancelCode::UnexpectedMessage);
        };
        let info = sas::mac_info_base(
            (&self.other_user, &other_device),
            (own.user, own.device),
            self.id.as_str(),
        );
        let verified = sas::check_macs(&keys.sas, &info, &mac.mac, &mac.keys, &known)?;
        let device_key_id = format!("ed25519:{other_device}");
        if !verified.contains(&device_key_id) {
            return Err(CancelCode::KeyMismatch);
        }
        let identity_verified = verified.len() > 1;
        self.stage = Stage::Done { identity_verified };
        Ok(vec![
            self.to_other(DoneContent::new(self.id.clone()).into())?,
        ])
    }

    /// Their `done`: nothing to do (we finish when their MAC verifies). One that comes
    /// before it (messages may overtake each other) is not an error.
    pub(crate) fn on_done(&mut self) -> Step {
        match self.stage {
            Stage::Done { .. } | Stage::Keys(_) => Ok(Vec::new()),
            _ => Err(CancelCode::UnexpectedMessage),
        }
    }

    /// They cancelled. If no device of theirs had accepted our request yet, the others it
    /// went to are told (`m.user`) so they stop asking their user.
    pub(crate) fn on_cancel(&mut self, cancel: &CancelContent) -> Vec<Out> {
        if self.is_finished() {
            return Vec::new();
        }
        let others: Vec<Out> = if self.other_device.is_none() {
            let reason = "the request was declined on another device";
            self.targets
                .iter()
                .map(|device| Out {
                    device: device.clone(),
                    content: CancelContent::new(
                        self.id.clone(),
                        reason.to_owned(),
                        CancelCode::User,
                    )
                    .into(),
                })
                .collect()
        } else {
            Vec::new()
        };
        self.stage = Stage::Cancelled {
            code: cancel.code.clone(),
            reason: cancel.reason.chars().take(200).collect(),
            by_us: false,
        };
        others
    }

    /// Our user saw different strings: only while there is a string to compare.
    pub(crate) fn mismatch(&self) -> Step {
        match self.stage {
            Stage::Keys(_) => Err(CancelCode::MismatchedSas),
            _ => Err(CancelCode::UnexpectedMessage),
        }
    }

    /// We cancel (our user, or a protocol error): the message to send, if anyone is
    /// waiting for one. A finished flow stays as it is.
    pub(crate) fn cancel(&mut self, code: CancelCode, reason: &str) -> Vec<Out> {
        if self.is_finished() {
            return Vec::new();
        }
        self.stage = Stage::Cancelled {
            code: code.clone(),
            reason: reason.to_owned(),
            by_us: true,
        };
        let devices = match &self.other_device {
            Some(d) => vec![d.clone()],
            None => self.targets.clone(),
        };
        devices
            .into_iter()
            .map(|device| Out {
                device,
                content: CancelContent::new(self.id.clone(), reason.to_owned(), code.clone())
                    .into(),
            })
            .collect()
    }
}

/// The human-readable reason sent with our cancel codes.
pub(crate) fn reason_of(code: &CancelCode) -> &'static str {
    match code {
        CancelCode::User => "the user cancelled",
        CancelCode::Timeout => "the verification timed out",
        CancelCode::UnknownMethod => "no common verification method",
        CancelCode::UnexpectedMessage => "unexpected message",
        CancelCode::KeyMismatch => "a key did not match",
        CancelCode::MismatchedCommitment => "the key did not match the commitment",
        CancelCode::MismatchedSas => "the short authentication strings did not match",
        CancelCode::InvalidMessage => "invalid message",
        _ => "cancelled",
    }
}

/// The own keys we vouch for: our device key, and our master key when we trust it.
pub(crate) fn own_keys(
    device: &DeviceId,
    ed25519: String,
    master: Option<String>,
) -> Vec<(String, String)> {
    let mut keys = vec![(format!("ed25519:{device}"), ed25519)];
    if let Some(master) = master {
        keys.push((format!("ed25519:{master}"), master));
    }
    keys
}

/// Look-up of the keys we hold for the other side: `device` with `ed25519`, and `master`.
pub(crate) fn their_keys(
    device: Option<&DeviceId>,
    ed25519: Option<String>,
    master: Option<String>,
) -> impl Fn(&str) -> Option<String> + use<> {
    let device_key_id = device.map(|d| format!("ed25519:{d}"));
    move |key_id: &str| {
        if device_key_id.as_deref() == Some(key_id) {
            return ed25519.clone();
        }
        let m = master.as_ref()?;
        (key_id.strip_prefix("ed25519:") == Some(m.as_str())).then(|| m.clone())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};

    use super::*;

    fn content_of(out: &[Out]) -> &AnyToDeviceEventContent {
        &out.last().expect("a message").content
    }

    fn canonical(start: &StartContent) -> String {
        let value = serde_json::to_value(start).unwrap();
        crate::crypto::signing::canonical_json(&value).unwrap()
    }

    #[test]
    fn when_both_sides_start_the_smaller_user_id_wins_and_both_show_the_same_string() {
        let alice = Own {
            user: user_id!("@alice:x"),
            device: device_id!("A"),
        };
        let bob = Own {
            user: user_id!("@bob:x"),
            device: device_id!("B"),
        };
        let id = OwnedTransactionId::from("t");
        let mut at_alice = Flow::outgoing(id.clone(), bob.user.to_owned(), vec!["B".into()], 0);
        let mut at_bob = Flow::outgoing(id.clone(), alice.user.to_owned(), vec!["A".into()], 0);
        let ready_from = |device: &str| {
            ReadyContent::new(device.into(), vec![VerificationMethod::SasV1], id.clone())
        };
        let alice_start = at_alice.on_ready(&ready_from("B"), &alice).unwrap();
        let bob_start = at_bob.on_ready(&ready_from("A"), &bob).unwrap();
        let start_of = |out: &[Out]| match content_of(out) {
            AnyToDeviceEventContent::KeyVerificationStart(c) => c.clone(),
            other => panic!("not a start: {other:?}"),
        };
        let (alice_start, bob_start) = (start_of(&alice_start), start_of(&bob_start));
        // alice's user id is smaller: she ignores bob's start, bob accepts hers.
        let ignored = at_alice.on_start(&bob_start, &canonical(&bob_start), &alice);
        assert!(ignored.unwrap().is_empty());
        let accept = at_bob
            .on_start(&alice_start, &canonical(&alice_start), &bob)
            .unwrap();
        let AnyToDeviceEventContent::KeyVerificationAccept(accept) = content_of(&accept) else {
            panic!("bob did not accept");
        };
        let alice_key = at_alice.on_accept(accept).unwrap();
        let AnyToDeviceEventContent::KeyVerificationKey(alice_key) = content_of(&alice_key) else {
            panic!("alice sent no key");
        };
        let bob_key = at_bob.on_key(alice_key, &bob).unwrap();
        let AnyToDeviceEventContent::KeyVerificationKey(bob_key) = content_of(&bob_key) else {
            panic!("bob sent no key");
        };
        assert!(at_alice.on_key(bob_key, &alice).unwrap().is_empty());
        let (a, b) = (at_alice.snapshot().state, at_bob.snapshot().state);
        assert!(matches!(a, VerificationState::CompareSas(_)), "{a:?}");
        assert_eq!(a, b);
    }
}
