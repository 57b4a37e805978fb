//! The typed layer for service handlers.
//!
//! A nimbus service handler is an exported function with no parameters: the request
//! body is its stdin, its stdout is the response, a non-zero return value is an
//! error. [`handle`] does that plumbing around a typed function:
//!
//! ```ignore
//! #[unsafe(no_mangle)]
//! pub extern "C" fn greet() -> i32 {
//!     nimbus_sdk::service::handle(|name: String| Ok::<_, String>(format!("hello, {name}")))
//! }
//! ```

use std::fmt::Display;
use std::io::{Read, Write};

/// Status returned when the request body cannot be read or decoded.
pub const BAD_REQUEST: i32 = 1;
/// Status returned when the handler fails.
pub const HANDLER_FAILED: i32 = 2;

/// A request body a handler can take.
pub trait FromBody: Sized {
    /// Decodes the body, or says why it cannot.
    fn from_body(body: Vec<u8>) -> Result<Self, String>;
}

/// A response a handler can give.
pub trait IntoBody {
    /// Encodes the response.
    fn into_body(self) -> Vec<u8>;
}

impl FromBody for Vec<u8> {
    fn from_body(body: Vec<u8>) -> Result<Self, String> {
        Ok(body)
    }
}

impl FromBody for String {
    fn from_body(body: Vec<u8>) -> Result<Self, String> {
        String::from_utf8(body).map_err(|_| "the request body is not UTF-8".to_owned())
    }
}

impl FromBody for () {
    fn from_body(_: Vec<u8>) -> Result<Self, String> {
        Ok(())
    }
}

macro_rules! number_bodies {
    ($($t:ty),*) => {$(
        impl FromBody for $t {
            fn from_body(body: Vec<u8>) -> Result<Self, String> {
                let text = String::from_body(body)?;
                text.trim()
                    .parse()
                    .map_err(|_| format!("not a number: {:?}", text.trim()))
            }
        }

        impl IntoBody for $t {
            fn into_body(self) -> Vec<u8> {
                format!("{self}\n").into_bytes()
            }
        }
    )*};
}

number_bodies!(i32, i64, u32, u64, f64);

impl IntoBody for Vec<u8> {
    fn into_body(self) -> Vec<u8> {
        self
    }
}

impl IntoBody for String {
    fn into_body(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl IntoBody for &str {
    fn into_body(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl IntoBody for () {
    fn into_body(self) -> Vec<u8> {
        Vec::new()
    }
}

/// Runs `handler` on the request body and writes its response; returns the status
/// the exported handler should return: 0, [`BAD_REQUEST`] (the error goes to
/// stderr), or [`HANDLER_FAILED`] (likewise).
pub fn handle<B, R, E>(handler: impl FnOnce(B) -> Result<R, E>) -> i32
where
    B: FromBody,
    R: IntoBody,
    E: Display,
{
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("reading the request: {e}");
        return BAD_REQUEST;
    }
    run(body, handler, &mut std::io::stdout())
}

fn run<B, R, E>(body: Vec<u8>, handler: impl FnOnce(B) -> Result<R, E>, out: &mut impl Write) -> i32
where
    B: FromBody,
    R: IntoBody,
    E: Display,
{
    let request = match B::from_body(body) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("bad request: {e}");
            return BAD_REQUEST;
        }
    };
    match handler(request) {
        Ok(response) => match out
            .write_all(&response.into_body())
            .and_then(|()| out.flush())
        {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("writing the response: {e}");
                HANDLER_FAILED
            }
        },
        Err(e) => {
            eprintln!("{e}");
            HANDLER_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<B: FromBody, R: IntoBody>(
        body: &[u8],
        f: impl FnOnce(B) -> Result<R, String>,
    ) -> (i32, Vec<u8>) {
        let mut out = Vec::new();
        let status = run(body.to_vec(), f, &mut out);
        (status, out)
    }

    #[test]
    fn typed_requests_and_responses() {
        assert_eq!(
            call(b" 41\n", |n: i64| Ok::<_, String>(n + 1)),
            (0, b"42\n".to_vec())
        );
        assert_eq!(
            call(b"ada", |s: String| Ok::<_, String>(format!("hi {s}"))),
            (0, b"hi ada".to_vec())
        );
        assert_eq!(
            call(b"raw", |b: Vec<u8>| Ok::<_, String>(b)),
            (0, b"raw".to_vec())
        );
        assert_eq!(call(b"", |(): ()| Ok::<_, String>(())), (0, vec![]));
    }

    #[test]
    fn bad_requests_and_failures_have_their_statuses() {
        assert_eq!(call(b"x", |n: u32| Ok::<_, String>(n)).0, BAD_REQUEST);
        assert_eq!(call(b"\xff", |s: String| Ok::<_, String>(s)).0, BAD_REQUEST);
        let (status, out) = call(b"1", |_: u32| Err::<u32, _>("no".to_owned()));
        assert_eq!((status, out), (HANDLER_FAILED, vec![]));
    }
}
