#include "sb_err.h"

const char *
sb_strerror(sb_err e)
{
    switch (e) {
    case SB_OK: return "ok";
    case SB_EAGAIN: return "try again";
    case SB_ENOMEM: return "out of memory";
    case SB_EINVAL: return "invalid";
    case SB_ETOOBIG: return "too large";
    case SB_EPROTO: return "protocol error";
    case SB_EDUP: return "duplicate";
    case SB_EUNAUTH: return "unauthorized";
    case SB_ESTORAGE: return "storage full";
    case SB_ECLOSED: return "shutting down";
    case SB_ESYS: return "system error";
    case SB_ENOTSUP: return "not supported";
    case SB_ENOENT: return "not found";
    case SB_ETIMEDOUT: return "timed out";
    case SB_ERESTART: return "broker restarted";
    case SB_EHORIZON: return "beyond the de-duplication horizon";
    case SB_EWRONGSHARD: return "aggregate of another shard";
    case SB_EBUSY: return "busy (out of file descriptors)";
    }
    return "unknown error";
}
