//! The direct binary data plane: invoking service handlers over TCP with the least
//! overhead, beside the HTTP gateway.
//!
//! Owns: the wire format ([`protocol`]: length-prefixed request and response frames,
//! their statuses, and pure encoding and decoding), the server ([`serve`]: one task per
//! connection, requests on a connection answered in order, a bound on connections), and
//! the client ([`Client`]). A connection opens with a hello (the protocol version
//! and a token), which the server checks once, through [`Invoker::authorize`], for
//! the [`Grant`] of the whole connection: its [`Access`], until the token is revoked. An invocation is an app name, a handler name, an optional
//! session id and a request body; its answer is a response body or a [`Status`] with a
//! message.
//!
//! Must not: depend on the runtime, the worker or any other nimbus crate, or know what
//! an app is beyond its name and its handlers' names. The server hands every decoded
//! request to an [`Invoker`], the trait through which the gateway plugs in the real
//! service manager.
//!
//! Every frame is a `u32` little-endian length of what follows, then the frame; all
//! integers are little endian. `docs/dataplane.md` describes the format in full.
//!
//! ```text
//! hello:    u8 kind = 2  u16 version = 2  u16 len + token   (first frame, answered
//!           by a response with id 0: status 0 and u16 version, or a refusal and close)
//! request:  u8 kind = 1  u64 request id  u16 len + app  u16 len + handler
//!           u16 len + session (0 = none)  body (the rest of the frame)
//! response: u8 status  u64 request id (echoed)  payload (body if status 0, else message)
//! ```

pub mod client;
pub mod protocol;
pub mod server;
mod spin;

pub use client::{Client, ClientError};
pub use protocol::{FrameError, PROTOCOL_VERSION, Status};
pub use server::{Access, Failure, Grant, Invoker, Request, ServerConfig, serve};
