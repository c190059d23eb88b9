"""Socket set-up and the request/reply codec shared by the publisher and
the subscriber."""

import zmq

from ._pb import pb
from .errors import ProtocolError, UnauthorizedError, error_for

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


class AuthWatch:
    """Reads a CURVE socket's monitor for the broker refusing this client.

    A key on no list of the socket's role is answered with a CURVE ERROR
    (libzmq then gives up on the connection for good: the socket never
    connects again). That reaches the application only through the socket
    monitor, so without this a refused client would only see timeouts."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH

    def __init__(self, sock):
        self._sock = sock
        self._mon = sock.get_monitor_socket(self.EVENTS)
        self.is_refused = False

    def refused(self):
        """True once the broker refused this client (never waits)."""
        while self._mon is not None and not self.is_refused:
            try:
                frames = self._mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames[0]) >= 2:
                ev = int.from_bytes(frames[0][:2], "little")
                self.is_refused = ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        return self.is_refused

    def check(self, what):
        """Raises UnauthorizedError if the broker refused this client."""
        if self.refused():
            raise UnauthorizedError(
                "%s: the broker refused this client's CURVE key in the "
                "handshake (not on the allowlist of this role?); this "
                "socket will not connect again (docs/SECURITY.md)" % what)

    def close(self):
        if self._mon is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._mon.close(0)
            self._mon = None


class _NoWatch:
    is_refused = False

    def refused(self):
        return False

    def check(self, what):
        pass

    def close(self):
        pass


def auth_watch(sock, curve):
    """An AuthWatch of sock when it uses CURVE, else one that never fires."""
    if curve and curve.get("server_public_key") is not None:
        return AuthWatch(sock)
    return _NoWatch()


def make_socket(ctx, kind, endpoint, *, sndhwm=None, rcvhwm=None, linger=0, curve=None,
                rcvbuf=None, watch=None):
    """A connected socket. With ``watch`` (a list), an AuthWatch (or a
    stand-in) is appended to it, made before the connect."""
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
        if watch is not None:
            watch.append(auth_watch(s, curve))
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
