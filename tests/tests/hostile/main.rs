//! Hostile input (issue 8), end to end against a real Synapse: after each hostile input the
//! victim's sync still advances, a message still goes both ways (decrypted), and nothing the
//! victim had stored is lost ([`support::assert_still_works`]). One module per kind of
//! input: `rooms`, `devices`, `keys` (room keys and notices from others), `server` (a
//! homeserver in the way).
//!
//! Where Synapse lets the input through, an attacker sends it through Synapse
//! ([`newt_e2e_tests::attacker`]); where it does not (a homeserver lying in its answers), the
//! victim, bob, talks to the server through a proxy that rewrites what it answers.

mod devices;
mod keys;
mod rooms;
mod server;
mod support;
