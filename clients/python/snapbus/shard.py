"""Which broker owns an aggregate when aggregates are spread over several
(docs/SCALING.md). The same function as the C library's ``sb_shard_of``
and the broker's check: FNV-1a 64 of the name's UTF-8 bytes, then Lamping
and Veach's jump consistent hash."""

_MASK = 0xFFFFFFFFFFFFFFFF


def shard_of(aggregate, nshards):
    """The shard, 0..nshards-1, that owns ``aggregate`` (str or bytes)."""
    if nshards < 1:
        raise ValueError("nshards must be at least 1")
    if nshards == 1:
        return 0
    name = aggregate.encode() if isinstance(aggregate, str) else bytes(aggregate)
    key = 0xCBF29CE484222325
    for c in name:
        key = ((key ^ c) * 0x100000001B3) & _MASK
    b, j = -1, 0
    while j < nshards:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int(float(b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b
