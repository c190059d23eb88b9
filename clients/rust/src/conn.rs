//! Socket set-up shared by the publisher and the subscriber.

use crate::codec;
use crate::error::{Error, Result};
use crate::model::{BrokerInfo, CurveKeys};
use crate::pb;
use std::time::{Duration, Instant};

pub(crate) fn apply_curve(sock: &zmq::Socket, keys: &Option<CurveKeys>) -> Result<()> {
    if let Some(k) = keys {
        for (what, key) in [
            ("server public key", &k.server_public),
            ("public key", &k.public),
            ("secret key", &k.secret),
        ] {
            if key.len() != 40 {
                return Err(Error::Config(format!(
                    "CURVE {} is {} characters; a Z85 key is 40 (snapbus keygen prints them)",
                    what,
                    key.len()
                )));
            }
        }
        sock.set_curve_serverkey(k.server_public.as_bytes())?;
        sock.set_curve_publickey(k.public.as_bytes())?;
        sock.set_curve_secretkey(k.secret.as_bytes())?;
    }
    Ok(())
}

pub(crate) struct SockOpts<'a> {
    pub sndhwm: i32,
    pub rcvhwm: i32,
    pub linger_ms: i32,
    /// Kernel receive buffer, bytes (0: the system's).
    pub rcvbuf: i32,
    pub curve: &'a Option<CurveKeys>,
}

pub(crate) fn socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    endpoint: &str,
    o: &SockOpts<'_>,
) -> Result<zmq::Socket> {
    let s = ctx.socket(kind)?;
    s.set_sndhwm(o.sndhwm)?;
    s.set_rcvhwm(o.rcvhwm)?;
    s.set_linger(o.linger_ms)?;
    if o.rcvbuf > 0 {
        s.set_rcvbuf(o.rcvbuf)?;
    }
    apply_curve(&s, o.curve)?;
    s.connect(endpoint).map_err(|e| {
        Error::Config(format!(
            "cannot connect to {:?}: {} (expected tcp://host:port)",
            endpoint, e
        ))
    })?;
    Ok(s)
}

pub(crate) fn ms_until(deadline: Instant) -> i64 {
    let now = Instant::now();
    if deadline <= now {
        0
    } else {
        // +1: never poll for 0 ms when time is left (a busy loop).
        (deadline - now).as_millis().min(i64::MAX as u128) as i64 + 1
    }
}

/// Sends a hello on a DEALER and waits for its reply (other replies that
/// arrive meanwhile are passed to `other`).
pub(crate) fn hello(
    sock: &zmq::Socket,
    request_id: u64,
    client: &str,
    timeout: Duration,
    mut other: impl FnMut(Vec<Vec<u8>>),
) -> Result<BrokerInfo> {
    let deadline = Instant::now() + timeout;
    let data = codec::encode_hello(request_id, client);
    loop {
        match sock.send(&data[..], zmq::DONTWAIT) {
            Ok(()) => break,
            Err(zmq::Error::EAGAIN) if Instant::now() < deadline => {
                sock.poll(zmq::POLLOUT, ms_until(deadline).min(100))?;
            }
            Err(zmq::Error::EAGAIN) => {
                return Err(Error::Timeout(format!(
                    "hello: could not send within {:?}: is the broker running?",
                    timeout
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        let left = ms_until(deadline);
        if left == 0 || sock.poll(zmq::POLLIN, left)? == 0 {
            return Err(Error::Timeout(format!(
                "no hello reply within {:?}: is the broker running at this endpoint?",
                timeout
            )));
        }
        let frames = sock.recv_multipart(zmq::DONTWAIT)?;
        let (rep, _) = match codec::decode_reply(&frames) {
            Ok(x) => x,
            Err(_) => {
                other(frames);
                continue;
            }
        };
        if rep.request_id != request_id {
            other(frames);
            continue;
        }
        if let Some(e) = codec::reply_error(&rep) {
            return Err(e);
        }
        return match rep.body {
            Some(pb::reply::Body::Hello(h)) => Ok(h.into()),
            _ => Err(Error::Protocol("hello reply without a HelloReply".into())),
        };
    }
}
