"""Socket set-up and the request/reply codec shared by the publisher and
the subscriber."""

import zmq

from ._pb import pb
from .errors import ProtocolError, error_for

VERSION = 1


def _key(k, what):
    """A CURVE key as pyzmq wants it: 40-character Z85 text or 32 raw bytes."""
    if isinstance(k, str):
        k = k.encode("ascii")
    if not isinstance(k, (bytes, bytearray)) or len(k) not in (32, 40):
        raise ValueError("%s must be a 40-character Z85 key or 32 raw bytes" % what)
    return bytes(k)


def apply_curve(sock, server_public_key=None, public_key=None, secret_key=None):
    """Makes ``sock`` a CURVE client of a server with ``server_public_key``.

    Without a client keypair an ephemeral one is made (a broker with an
    allow-list of client keys will then refuse the connection). Nothing is
    changed when ``server_public_key`` is None (NULL mechanism)."""
    if server_public_key is None:
        if public_key is not None or secret_key is not None:
            raise ValueError("a client keypair needs server_public_key too")
        return
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    if (public_key is None) != (secret_key is None):
        raise ValueError("give both public_key and secret_key, or neither")
    if public_key is None:
        public_key, secret_key = zmq.curve_keypair()
    sock.setsockopt(zmq.CURVE_SERVERKEY, _key(server_public_key, "server_public_key"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, _key(public_key, "public_key"))
    sock.setsockopt(zmq.CURVE_SECRETKEY, _key(secret_key, "secret_key"))


def make_socket(ctx, kind, endpoint, *, sndhwm=None, rcvhwm=None, linger=0, curve=None,
                rcvbuf=None):
    s = ctx.socket(kind)
    try:
        s.setsockopt(zmq.LINGER, linger)
        if sndhwm is not None:
            s.setsockopt(zmq.SNDHWM, sndhwm)
        if rcvhwm is not None:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        if rcvbuf is not None:
            s.setsockopt(zmq.RCVBUF, rcvbuf)
        apply_curve(s, **(curve or {}))
        s.connect(endpoint)
    except Exception:
        s.close(0)
        raise
    return s


def encode(request_id, **body):
    return pb.Request(version=VERSION, request_id=request_id, **body).SerializeToString()


def decode_reply(frames):
    """Parses a reply message; returns (Reply, the frames after it).

    We never send a delimiter, so a reply starts with the Reply frame; an
    empty first frame followed by more is taken as a delimiter anyway."""
    if len(frames) > 1 and frames[0] == b"":
        frames = frames[1:]
    try:
        rep = pb.Reply.FromString(frames[0])
    except Exception as e:  # google.protobuf.message.DecodeError
        raise ProtocolError("undecodable reply: %s" % e) from None
    if rep.version != VERSION:
        raise ProtocolError("reply version %d, this client speaks %d" % (rep.version, VERSION))
    return rep, frames[1:]


def reply_error(rep):
    """The exception for a refused request (Reply.error != ERR_NONE), or None."""
    if rep.error == pb.ERR_NONE:
        return None
    extra = {}
    if rep.error == pb.ERR_OUT_OF_RETENTION and rep.HasField("fetch"):
        extra = dict(retained_first_seq=rep.fetch.retained_first_seq,
                     retained_first_batch_id=rep.fetch.retained_first_batch_id)
    return error_for(rep.error, rep.detail, "request", rep.request_id, **extra)
