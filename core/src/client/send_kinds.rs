//! What the app can queue besides plain text: notices, emotes, replies, edits, reactions
//! and redactions, as event type and content. A relation's target is an event id, or the
//! transaction id of a message still in the queue: such a message waits until its target
//! is sent, then the target's event id takes the transaction id's place
//! ([`resolve_target`]).

use ruma::OwnedEventId;
use serde_json::{Value, json};

use super::ClientError;

/// `m.room.message`.
pub(crate) const MESSAGE: &str = "m.room.message";
/// `m.reaction`.
pub(crate) const REACTION: &str = "m.reaction";
/// `m.room.redaction`: sent through the redaction endpoint, never encrypted.
pub(crate) const REDACTION: &str = "m.room.redaction";

/// Something to send to a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutgoingMessage {
    /// `m.text`.
    Text {
        /// The text.
        body: String,
    },
    /// `m.notice` (a bot's message).
    Notice {
        /// The text.
        body: String,
    },
    /// `m.emote` (`/me`).
    Emote {
        /// The text.
        body: String,
    },
    /// An `m.text` in reply to `target`.
    Reply {
        /// The event replied to (event id, or transaction id of a queued message).
        target: String,
        /// The text.
        body: String,
    },
    /// A new text for `target` (`m.replace`).
    Edit {
        /// The event edited (event id, or transaction id of a queued message).
        target: String,
        /// The new text.
        body: String,
    },
    /// An `m.reaction` (`m.annotation`) to `target`.
    Reaction {
        /// The event reacted to (event id, or transaction id of a queued message).
        target: String,
        /// The reaction, usually an emoji.
        key: String,
    },
    /// Redact `target` (never encrypted).
    Redaction {
        /// The event redacted (event id, or transaction id of a queued message).
        target: String,
        /// Why, shown to others.
        reason: Option<String>,
    },
}

impl OutgoingMessage {
    /// The event type and content to queue; an empty target or key is refused.
    pub(crate) fn into_event(self) -> Result<(&'static str, Value), ClientError> {
        let text = |msgtype: &str, body: String| json!({"msgtype": msgtype, "body": body});
        Ok(match self {
            OutgoingMessage::Text { body } => (MESSAGE, text("m.text", body)),
            OutgoingMessage::Notice { body } => (MESSAGE, text("m.notice", body)),
            OutgoingMessage::Emote { body } => (MESSAGE, text("m.emote", body)),
            OutgoingMessage::Reply { target, body } => {
                let mut content = text("m.text", body);
                content["m.relates_to"] =
                    json!({"m.in_reply_to": {"event_id": checked(target, "reply target")?}});
                (MESSAGE, content)
            }
            OutgoingMessage::Edit { target, body } => {
                let mut content = text("m.text", format!("* {body}"));
                content["m.new_content"] = text("m.text", body);
                content["m.relates_to"] =
                    json!({"rel_type": "m.replace", "event_id": checked(target, "edit target")?});
                (MESSAGE, content)
            }
            OutgoingMessage::Reaction { target, key } => {
                let relates_to = json!({
                    "rel_type": "m.annotation",
                    "event_id": checked(target, "reaction target")?,
                    "key": checked(key, "reaction key")?,
                });
                (REACTION, json!({"m.relates_to": relates_to}))
            }
            OutgoingMessage::Redaction { target, reason } => {
                let mut content = json!({"redacts": checked(target, "redaction target")?});
                if let Some(reason) = reason {
                    content["reason"] = Value::String(reason);
                }
                (REDACTION, content)
            }
        })
    }
}

fn checked(value: String, what: &str) -> Result<String, ClientError> {
    if value.is_empty() {
        return Err(ClientError::InvalidInput(format!("empty {what}")));
    }
    Ok(value)
}

/// Where a queued message names the event it relates to.
fn target_slot<'a>(event_type: &str, content: &'a mut Value) -> Option<&'a mut Value> {
    if event_type == REDACTION {
        return content.get_mut("redacts");
    }
    let relates_to = content.get_mut("m.relates_to")?;
    if relates_to.get("event_id").is_some() {
        return relates_to.get_mut("event_id");
    }
    relates_to.get_mut("m.in_reply_to")?.get_mut("event_id")
}

/// The event (id, or transaction id of a queued message) a message relates to, if any.
pub(crate) fn target(event_type: &str, content: &Value) -> Option<String> {
    let slot = if event_type == REDACTION {
        content.get("redacts")
    } else {
        let relates_to = content.get("m.relates_to")?;
        relates_to
            .get("event_id")
            .or_else(|| relates_to.get("m.in_reply_to")?.get("event_id"))
    };
    slot?.as_str().map(str::to_owned)
}

/// The transaction id a queued message's relation names, if it names one instead of an
/// event id (its target was still queued when it was queued).
pub(crate) fn queued_target(event_type: &str, content: &Value) -> Option<String> {
    target(event_type, content).filter(|t| !t.starts_with('$'))
}

/// Put the target's event id in place of its transaction id.
pub(crate) fn resolve_target(event_type: &str, content: &mut Value, event_id: &OwnedEventId) {
    if let Some(slot) = target_slot(event_type, content) {
        *slot = Value::String(event_id.to_string());
    }
}

/// The relation an encrypted event carries in clear, as the spec asks (so that the server
/// can aggregate edits and reactions): the `m.relates_to` of the content, if any.
pub(crate) fn clear_relation(content: &Value) -> Option<Value> {
    content.get("m.relates_to").cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(m: OutgoingMessage) -> (&'static str, Value) {
        m.into_event().unwrap()
    }

    #[test]
    fn each_kind_has_the_spec_shape() {
        let (t, c) = event(OutgoingMessage::Emote {
            body: "waves".into(),
        });
        assert_eq!(
            (t, c),
            (MESSAGE, json!({"msgtype": "m.emote", "body": "waves"}))
        );
        let (t, c) = event(OutgoingMessage::Edit {
            target: "$e".into(),
            body: "new".into(),
        });
        assert_eq!(t, MESSAGE);
        assert_eq!(c["body"], "* new");
        assert_eq!(
            c["m.new_content"],
            json!({"msgtype": "m.text", "body": "new"})
        );
        assert_eq!(
            c["m.relates_to"],
            json!({"rel_type": "m.replace", "event_id": "$e"})
        );
        let (t, c) = event(OutgoingMessage::Reaction {
            target: "$e".into(),
            key: "👍".into(),
        });
        assert_eq!(t, REACTION);
        assert_eq!(c["m.relates_to"]["key"], "👍");
        let (t, c) = event(OutgoingMessage::Redaction {
            target: "$e".into(),
            reason: Some("typo".into()),
        });
        assert_eq!(
            (t, c),
            (REDACTION, json!({"redacts": "$e", "reason": "typo"}))
        );
        let empty = OutgoingMessage::Reaction {
            target: "$e".into(),
            key: String::new(),
        };
        assert!(matches!(
            empty.into_event(),
            Err(ClientError::InvalidInput(_))
        ));
    }

    #[test]
    fn a_queued_target_is_found_and_resolved_in_every_kind() {
        let event_id = OwnedEventId::try_from("$sent:x").unwrap();
        let kinds = [
            OutgoingMessage::Reply {
                target: "txn1".into(),
                body: "re".into(),
            },
            OutgoingMessage::Edit {
                target: "txn1".into(),
                body: "new".into(),
            },
            OutgoingMessage::Reaction {
                target: "txn1".into(),
                key: "x".into(),
            },
            OutgoingMessage::Redaction {
                target: "txn1".into(),
                reason: None,
            },
        ];
        for kind in kinds {
            let (t, mut c) = event(kind);
            assert_eq!(queued_target(t, &c).as_deref(), Some("txn1"), "{c}");
            resolve_target(t, &mut c, &event_id);
            assert_eq!(queued_target(t, &c), None, "{c}");
            assert!(c.to_string().contains("$sent:x"), "{c}");
        }
        let (t, c) = event(OutgoingMessage::Text {
            body: "txn1".into(),
        });
        assert_eq!(queued_target(t, &c), None);
        let (t, c) = event(OutgoingMessage::Reaction {
            target: "$e:x".into(),
            key: "x".into(),
        });
        assert_eq!(
            queued_target(t, &c),
            None,
            "an event id is not a queued target"
        );
    }
}
