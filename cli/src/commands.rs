//! The account and room commands: `login`, `whoami`, `create-room`, `join`, `send`,
//! `devices`.

use std::time::Duration;

use newt_core::client::ClientError;
use newt_core::ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};
use serde_json::json;

use crate::Ctx;

/// A sync that returns at once: what the server has now.
const QUICK: Duration = Duration::ZERO;

fn err(e: ClientError) -> String {
    e.to_string()
}

pub(crate) async fn login(
    ctx: &Ctx,
    user: &str,
    password: &str,
    device_id: Option<&str>,
) -> Result<(), String> {
    let session = ctx
        .client
        .login_password(user, password, device_id)
        .await
        .map_err(err)?;
    ctx.client.sync_once(QUICK).await.map_err(err)?;
    println!(
        "{}",
        json!({"user_id": session.user_id, "device_id": session.device_id, "fingerprint": ctx.client.fingerprint().map_err(err)?})
    );
    Ok(())
}

pub(crate) fn whoami(ctx: &Ctx) -> Result<(), String> {
    ctx.restored()?;
    let session = ctx.client.session().ok_or("not logged in")?;
    println!(
        "{}",
        json!({"user_id": session.user_id, "device_id": session.device_id, "fingerprint": ctx.client.fingerprint().map_err(err)?})
    );
    Ok(())
}

pub(crate) async fn create_room(
    ctx: &Ctx,
    name: Option<&str>,
    invites: &[OwnedUserId],
) -> Result<(), String> {
    ctx.restored()?;
    ctx.client.sync_once(QUICK).await.map_err(err)?;
    let room = ctx
        .client
        .create_encrypted_room(name, invites)
        .await
        .map_err(err)?;
    println!("{room}");
    Ok(())
}

pub(crate) async fn join(ctx: &Ctx, room: &OwnedRoomOrAliasId) -> Result<(), String> {
    ctx.restored()?;
    let room_id = ctx.client.join(room).await.map_err(err)?;
    ctx.client.sync_once(QUICK).await.map_err(err)?;
    println!("{room_id}");
    Ok(())
}

pub(crate) async fn send(ctx: &Ctx, room: &OwnedRoomId, texts: &[String]) -> Result<(), String> {
    ctx.restored()?;
    ctx.client.sync_once(QUICK).await.map_err(err)?;
    for text in texts {
        println!("{}", ctx.client.send_text(room, text).await.map_err(err)?);
    }
    Ok(())
}

pub(crate) async fn devices(ctx: &Ctx, user: &OwnedUserId) -> Result<(), String> {
    ctx.restored()?;
    for device in ctx.client.devices(user).await.map_err(err)? {
        println!(
            "{}",
            json!({
                "user_id": device.user_id, "device_id": device.device_id,
                "display_name": device.display_name, "ed25519": device.ed25519,
                "curve25519": device.curve25519, "trust": device.local_trust.as_str(),
                "deleted": device.deleted,
            })
        );
    }
    Ok(())
}
