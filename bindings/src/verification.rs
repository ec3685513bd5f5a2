//! Interactive verification (SAS) for Kotlin and Swift: `NewtClient`'s calls, the types
//! they return, and the conversion of the verification prompts.

use newt_core::crypto as core;
use newt_core::ruma::OwnedTransactionId;

use crate::client::{NewtClient, run};
use crate::error::NewtError;
use crate::ids;

/// One emoji of the short authentication string.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct SasEmoji {
    /// The emoji.
    pub symbol: String,
    /// Its English name from the specification (translate it if you like).
    pub description: String,
}

/// What the users compare: seven emoji, or three numbers.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct ShortAuthString {
    /// Seven emoji.
    pub emoji: Vec<SasEmoji>,
    /// Three numbers between 1000 and 9191.
    pub decimals: Vec<u16>,
}

impl From<core::ShortAuthString> for ShortAuthString {
    fn from(s: core::ShortAuthString) -> Self {
        Self {
            emoji: s
                .emoji
                .into_iter()
                .map(|e| SasEmoji {
                    symbol: e.symbol,
                    description: e.description,
                })
                .collect(),
            decimals: s.decimals.to_vec(),
        }
    }
}

/// Where a verification stands.
#[derive(uniffi::Enum, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerificationState {
    /// We asked; waiting for the other device.
    Requested,
    /// The other device asked; waiting for our user.
    Incoming,
    /// Both accepted; the devices agree on keys.
    Negotiating,
    /// Compare this string with the other device.
    CompareSas {
        /// What to show.
        sas: ShortAuthString,
    },
    /// Our user confirmed; waiting for the other side.
    Confirmed,
    /// Verified: the device, and the user's identity if `identity_verified`.
    Done {
        /// The user's cross-signing identity was verified too.
        identity_verified: bool,
    },
    /// Cancelled, by this device (`by_us`) or the other.
    Cancelled {
        /// `m.user`, `m.mismatched_sas`, `m.key_mismatch`, `m.timeout`, ...
        code: String,
        /// The reason given.
        reason: String,
        /// This device cancelled.
        by_us: bool,
    },
}

impl From<core::VerificationState> for VerificationState {
    fn from(s: core::VerificationState) -> Self {
        match s {
            core::VerificationState::Requested => Self::Requested,
            core::VerificationState::Incoming => Self::Incoming,
            core::VerificationState::CompareSas(sas) => Self::CompareSas { sas: sas.into() },
            core::VerificationState::Confirmed => Self::Confirmed,
            core::VerificationState::Done { identity_verified } => Self::Done { identity_verified },
            core::VerificationState::Cancelled {
                code,
                reason,
                by_us,
            } => Self::Cancelled {
                code: code.to_string(),
                reason,
                by_us,
            },
            _ => Self::Negotiating,
        }
    }
}

/// One verification.
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct VerificationInfo {
    /// Its id, for the other calls.
    pub flow_id: String,
    /// The user being verified (the own user for another of our devices).
    pub other_user: String,
    /// The device being verified, once known.
    pub other_device: Option<String>,
    /// We sent the request.
    pub we_requested: bool,
    /// Where it stands.
    pub state: VerificationState,
}

impl From<core::Verification> for VerificationInfo {
    fn from(v: core::Verification) -> Self {
        Self {
            flow_id: v.flow_id.to_string(),
            other_user: v.other_user.to_string(),
            other_device: v.other_device.map(|d| d.to_string()),
            we_requested: v.we_requested,
            state: v.state.into(),
        }
    }
}

fn flow_id(id: &str) -> Result<OwnedTransactionId, NewtError> {
    if id.is_empty() || id.len() > 255 {
        return Err(NewtError::InvalidInput {
            message: "invalid verification id".to_owned(),
        });
    }
    Ok(OwnedTransactionId::from(id))
}

#[uniffi::export]
impl NewtClient {
    /// Ask `user_id` to verify with this device: `device_id`, or all their devices (for
    /// the own user: all our other devices). The rest goes through the `PromptHandler`:
    /// `CompareSas` here once the other side accepted, then `VerificationDone` or
    /// `VerificationCancelled`.
    pub async fn request_verification(
        &self,
        user_id: String,
        device_id: Option<String>,
    ) -> Result<VerificationInfo, NewtError> {
        let client = self.client()?;
        let user_id = ids::user_id(&user_id)?;
        let device_id = device_id.as_deref().map(ids::device_id).transpose()?;
        run(async move {
            let flow = client
                .request_verification(&user_id, device_id.as_deref())
                .await?;
            Ok(flow.into())
        })
        .await
    }

    /// Accept another device's request (what answering `VerificationRequest` with
    /// `Confirmed` does).
    pub async fn accept_verification(
        &self,
        flow_id: String,
    ) -> Result<VerificationInfo, NewtError> {
        let client = self.client()?;
        let id = self::flow_id(&flow_id)?;
        run(async move { Ok(client.accept_verification(&id).await?.into()) }).await
    }

    /// The emoji match (what answering `CompareSas` with `Confirmed` does).
    pub async fn confirm_verification(
        &self,
        flow_id: String,
    ) -> Result<VerificationInfo, NewtError> {
        let client = self.client()?;
        let id = self::flow_id(&flow_id)?;
        run(async move { Ok(client.confirm_verification(&id).await?.into()) }).await
    }

    /// The emoji differ (what answering `CompareSas` with `Mismatch` does).
    pub async fn sas_mismatch(&self, flow_id: String) -> Result<VerificationInfo, NewtError> {
        let client = self.client()?;
        let id = self::flow_id(&flow_id)?;
        run(async move { Ok(client.sas_mismatch(&id).await?.into()) }).await
    }

    /// Decline or stop a verification.
    pub async fn cancel_verification(
        &self,
        flow_id: String,
    ) -> Result<VerificationInfo, NewtError> {
        let client = self.client()?;
        let id = self::flow_id(&flow_id)?;
        run(async move { Ok(client.cancel_verification(&id).await?.into()) }).await
    }

    /// One verification of this session; `null` if unknown.
    pub fn verification(&self, flow_id: String) -> Result<Option<VerificationInfo>, NewtError> {
        let id = self::flow_id(&flow_id)?;
        Ok(self.client()?.verification(&id)?.map(Into::into))
    }

    /// The verifications of this session, finished ones included.
    pub fn verifications(&self) -> Result<Vec<VerificationInfo>, NewtError> {
        Ok(self
            .client()?
            .verifications()?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}
