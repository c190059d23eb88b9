"""Python client of the snapbus event-bus broker (protocol version 1).

Written from ``proto/snapbus.proto`` and ``docs/PROTOCOL.md`` alone. The
protobuf module is generated from the ``.proto`` by ``protoc`` at build
time (see ``snapbus._pb`` and ``snapbus._gen``).

    from snapbus import Publisher, Subscriber, AckLevel
"""

from ._pb import pb
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .model import Ack, AckLevel, Batch, CloseReason, Event, SubscriberState
from .publisher import Publisher, Receipt
from .shard import shard_of
from .subscriber import AsyncSubscriber, Subscriber

PROTOCOL_VERSION = 1

__all__ = ["pb", "Ack", "AckLevel", "Batch", "CloseReason", "Event", "SubscriberState",
           "Publisher", "Receipt", "Subscriber", "AsyncSubscriber", "PROTOCOL_VERSION",
           "curve_keypair", "shard_of"] + list(_errors_all)


def curve_keypair():
    """A new CURVE keypair (public, secret), Z85 text as bytes."""
    import zmq
    return zmq.curve_keypair()
