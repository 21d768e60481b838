/* credit: the counters a worker and the primary share instead of ACK messages.
 *
 * One page of shared memory per worker (a memfd, mapped by both).  The worker
 * adds what it received to `taken` and, under policy least, what closed to
 * `closed`; the primary reads both when it schedules, so credit comes back
 * with no syscall on either side.  The primary needs a syscall's wake-up only
 * when it is about to sleep for want of credit: it sets `want` first, then
 * reads the counters once more; the worker, after adding, takes `want` and,
 * if it was set, sends one ACK message of count 0 over the data channel.
 * Both sides store, then load, with sequentially consistent atomics (each a
 * full barrier on x86: lock xadd, xchg), so of the two at least one sees the
 * other's store: the primary sees the credit and stays awake, or the worker
 * sees `want` and wakes it (Dekker's handshake).
 *
 * Only the worker writes `taken` and `closed` and only the primary reads them;
 * the primary checks each increase against what it sent, as it checks ACKs.
 * `want` sits on its own cache line: the counters move per connection.
 *
 * `at_limit`: 1 while the worker is at its file-descriptor limit (fds sent
 * to it would arrive cut off, their connections lost), so the primary sends
 * it nothing.  The worker stores 1 before it adds the cut-off message's
 * connections to `taken`, and the primary loads `at_limit` after `taken`, so
 * a primary that sees that credit come back also sees the flag.  When it has
 * room again the worker stores 0 and then takes `want`, as after adding.
 *
 * `tick`: the worker's event loop proves it runs.  While the loop holds
 * connections it stores CLOCK_MONOTONIC in nanoseconds here, from its data
 * reader and from a callback every few ms; when it holds none it stores 0
 * (idle: waiting for events, so anything sent wakes it at once).  A tick
 * older than the primary's stall threshold means the loop is blocked (a
 * synchronous call in an async handler): the primary sends that worker
 * nothing and takes back what it sent and the worker has not read (the
 * scheduler's rules 12 and 13).  One writer, one reader, a single aligned
 * 64-bit store: no handshake needed, a stale read only delays the verdict.
 */
#ifndef FASTFORK_CREDIT_H
#define FASTFORK_CREDIT_H

#include <stdint.h>

typedef struct {
    uint64_t taken;           /* fds the worker received, ever */
    uint64_t closed;          /* of those, connections closed (policy least) */
    uint32_t at_limit;        /* 1: the worker is at its fd limit: send it nothing */
    uint32_t _pad0;
    uint64_t tick;            /* the loop's last tick (CLOCK_MONOTONIC ns), 0: idle */
    char _line0[32];
    uint32_t want;            /* 1: the primary sleeps until a counter moves */
    char _line1[60];
} ff_credit_t;

#define FF_CREDIT_SIZE ((int)sizeof(ff_credit_t))

static inline uint64_t ff_credit_load(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static inline void ff_credit_add(uint64_t *p, uint64_t n) {
    __atomic_add_fetch(p, n, __ATOMIC_SEQ_CST);
}

static inline void ff_credit_want(uint32_t *p) {
    __atomic_store_n(p, 1, __ATOMIC_SEQ_CST);
}

static inline int ff_credit_take_want(uint32_t *p) {
    return (int)__atomic_exchange_n(p, 0, __ATOMIC_SEQ_CST);
}

static inline void ff_credit_store_flag(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

static inline uint32_t ff_credit_load_flag(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static inline void ff_credit_store_tick(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline uint64_t ff_credit_load_tick(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* The layout the comments above rely on: the counters and the flag on the
 * first cache line, `want` alone on the second. */
_Static_assert(sizeof(ff_credit_t) == 128, "ff_credit_t is two cache lines");

#endif
