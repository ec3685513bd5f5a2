//! Newt clients for the end-to-end tests: open, log in, wait for messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use newt_core::client::{Client, ClientConfig, SendState, SendUpdate, TimelineEvent};
use newt_core::ruma::{OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId, RoomId};
use newt_core::store::StoreKey;

use serde_json::json;
use tokio::sync::broadcast;

use crate::Synapse;
use crate::attacker::Attacker;
use crate::proxy::FaultProxy;

/// Passphrase of every test store.
pub const STORE_PASSPHRASE: &str = "e2e store passphrase";

/// A client on the store in `dir` (no network).
pub fn open(homeserver: &str, dir: &Path) -> Arc<Client> {
    Arc::new(
        Client::new(ClientConfig {
            homeserver: homeserver.to_owned(),
            store_dir: dir.to_owned(),
            store_key: StoreKey::from_passphrase(STORE_PASSPHRASE),
        })
        .expect("open client"),
    )
}

/// Log `user` (password `USER-pw`) in with the store in `dir`, then sync once.
pub async fn login(homeserver: &str, dir: &Path, user: &str) -> Arc<Client> {
    let client = open(homeserver, dir);
    client
        .login_password(user, &format!("{user}-pw"), None)
        .await
        .expect("login");
    client.sync_once(Duration::ZERO).await.expect("first sync");
    client
}

/// Sync until `n` new messages from other users arrived in `room` (re-deliveries of earlier
/// events are skipped); panics after 60 s.
pub async fn receive(client: &Client, room: &RoomId, n: usize) -> Vec<TimelineEvent> {
    let own = client.session().expect("logged in").user_id;
    let mut rx = client.subscribe_timeline();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "received {} of {n} messages: {got:?}",
            got.len()
        );
        client
            .sync_once(Duration::from_secs(1))
            .await
            .expect("sync");
        while let Ok(event) = rx.try_recv() {
            // New messages only: a re-delivery of an earlier event (`is_update`) is not one.
            if event.room_id == room && event.sender != own && !event.is_update {
                got.push(event);
            }
        }
    }
    got
}

/// alice creates an encrypted room inviting the others; they join.
pub async fn room_with(alice: &Client, others: &[&Client]) -> OwnedRoomId {
    let invites: Vec<OwnedUserId> = others
        .iter()
        .map(|c| c.session().expect("logged in").user_id)
        .collect();
    let room = alice
        .create_encrypted_room(Some("test"), &invites)
        .await
        .expect("create room");
    for other in others {
        other.sync_once(Duration::ZERO).await.expect("sync");
        other
            .join(&OwnedRoomOrAliasId::from(room.clone()))
            .await
            .expect("join");
        other.sync_once(Duration::ZERO).await.expect("sync");
    }
    alice.sync_once(Duration::ZERO).await.expect("sync");
    room
}

/// A homeserver with registered users and a folder for their stores.
pub struct World {
    /// The server.
    pub hs: Synapse,
    /// Stores live below this.
    pub dirs: tempfile::TempDir,
}

impl World {
    /// Start a server and register `users` (password `USER-pw`).
    pub fn new(users: &[&str]) -> Self {
        let hs = Synapse::start();
        for user in users {
            hs.register(user, &format!("{user}-pw"));
        }
        Self {
            hs,
            dirs: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The store folder called `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.dirs.path().join(name)
    }

    /// Log `user` in with the store `store`.
    pub async fn login(&self, user: &str, store: &str) -> Arc<Client> {
        login(&self.hs.base_url, &self.dir(store), user).await
    }

    /// A public room without encryption that `creator` made and `member` joined (and synced).
    pub async fn public_room(&self, creator: &Attacker, member: &Client) -> OwnedRoomId {
        let user = member.session().expect("logged in").user_id;
        let created = json!({"preset": "public_chat", "invite": [user]});
        let answer = creator.api("POST", "/createRoom", Some(&created));
        let room = OwnedRoomId::try_from(answer["room_id"].as_str().expect("a room id"))
            .expect("a valid room id");
        member
            .join(&OwnedRoomOrAliasId::from(room.clone()))
            .await
            .expect("join");
        member.sync_once(Duration::ZERO).await.expect("sync");
        room
    }

    /// alice (talking through a fault proxy) and bob in an encrypted room alice created:
    /// `(proxy, alice, bob, room id)`.
    pub async fn alice_behind_a_proxy(
        &self,
    ) -> (FaultProxy, Arc<Client>, Arc<Client>, OwnedRoomId) {
        let proxy = FaultProxy::start(&self.hs.base_url);
        let alice = login(&proxy.base_url, &self.dir("alice"), "alice").await;
        let bob = self.login("bob", "bob").await;
        let room = room_with(&alice, &[&bob]).await;
        (proxy, alice, bob, room)
    }

    /// alice and bob logged in (stores `alice` and `bob`), in an encrypted room alice
    /// created: `(alice, bob, room id)`.
    pub async fn alice_and_bob(&self) -> (Arc<Client>, Arc<Client>, OwnedRoomId) {
        let alice = self.login("alice", "alice").await;
        let bob = self.login("bob", "bob").await;
        let room = room_with(&alice, &[&bob]).await;
        (alice, bob, room)
    }
}

/// The state changes of a client's queued messages, as they are published.
pub struct SendLog {
    rx: broadcast::Receiver<SendUpdate>,
    /// Every update seen so far, oldest first.
    pub seen: Vec<SendUpdate>,
    /// When each was received (Unix ms).
    pub received_ms: Vec<u64>,
}

fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("clock after 1970").as_millis() as u64
}

impl SendLog {
    /// Start recording `client`'s updates.
    pub fn new(client: &Client) -> Self {
        Self {
            rx: client.subscribe_sends(),
            seen: Vec::new(),
            received_ms: Vec::new(),
        }
    }

    /// Wait until `txn_id` reaches a state `pred` accepts; returns it. Panics after 60 s.
    pub async fn until(&mut self, txn_id: &str, pred: impl Fn(&SendState) -> bool) -> SendState {
        self.until_nth(txn_id, 1, pred).await
    }

    /// Wait until `txn_id` reached states `pred` accepts `n` times; returns the `n`th.
    pub async fn until_nth(
        &mut self,
        txn_id: &str,
        n: usize,
        pred: impl Fn(&SendState) -> bool,
    ) -> SendState {
        let found = |seen: &[SendUpdate]| {
            let ours = seen.iter().filter(|u| u.txn_id == txn_id);
            ours.map(|u| u.state.clone()).filter(|s| pred(s)).nth(n - 1)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(state) = found(&self.seen) {
                return state;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Ok(update)) => {
                    self.seen.push(update);
                    self.received_ms.push(now_ms());
                }
                Ok(Err(e)) => panic!("send updates: {e}"),
                Err(_) => panic!("{txn_id} did not reach the state; seen {:?}", self.seen),
            }
        }
    }

    /// The states `txn_id` went through so far.
    pub fn states(&self, txn_id: &str) -> Vec<SendState> {
        let ours = self.seen.iter().filter(|u| u.txn_id == txn_id);
        ours.map(|u| u.state.clone()).collect()
    }
}

/// The lines `child` prints, as they come.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    rx
}
