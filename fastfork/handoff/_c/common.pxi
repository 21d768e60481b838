# What both C modules share (dispatcher.pyx and receiver.pyx include it): the
# C declarations they use, the wire format in C and its check against
# wire.py, errno handling and small helpers.

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (errno, EINTR, ECONNABORTED, EPROTO, EPERM, ENETDOWN,
                         ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
                         ENETUNREACH, EMFILE, ENFILE, ENOBUFS, ENOMEM, EPIPE,
                         ECONNRESET, ESHUTDOWN)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset, strerror
from posix.fcntl cimport fcntl, F_DUPFD_CLOEXEC, F_GETFL, F_SETFL, O_NONBLOCK
from posix.mman cimport mmap, munmap, MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE
from posix.stat cimport fstat, struct_stat
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.types cimport pid_t
from posix.unistd cimport close, getpid

from .includes.epoll cimport (EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLET, EPOLLIN,
                              epoll_create1, epoll_ctl, epoll_event, epoll_wait)
from .includes.system cimport (
    FASTFORK_DEBUG, FF_BATCH_MAX_MSGS, FF_SCM_MAX_FD, INT_MAX, MSG_CMSG_CLOEXEC, MSG_CTRUNC,
    MSG_DONTWAIT, MSG_NOSIGNAL, MSG_TRUNC, SO_TYPE, SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET,
    accept4, ff_recv_fds_batch, ff_recv_many, ff_send_fds,
    getsockopt, send, socklen_t, would_block, ff_credit_t, FF_CREDIT_SIZE, ff_credit_load,
    ff_credit_add, ff_credit_want, ff_credit_take_want, ff_credit_store_flag,
    ff_credit_load_flag, ff_credit_store_tick, ff_credit_load_tick, pthread_atfork)
from .includes.python cimport (PyInterpreterState_ThreadHead, PyThreadState, PyThreadState_Get,
                               PyThreadState_GetInterpreter, PyThreadState_Next)
from fastfork.handoff import wire
from fastfork.handoff.wire import ProtocolError

# This process's pid, without a getpid() system call per use: the Receiver
# and the Dispatcher check it on every call (a child of fork must not use its
# parent's), several times a connection.  Set again in every child of fork()
# (os.fork and multiprocessing call fork(); what spawns with vfork or
# posix_spawn execs at once).
cdef pid_t _process_id = getpid()

cdef void _forked_child() noexcept nogil:
    global _process_id
    _process_id = getpid()

pthread_atfork(NULL, NULL, _forked_child)

cdef enum:
    MSG_FDS = 1
    MSG_END = 2
    MSG_ACK = 3
    MSG_CLOSED = 4
    MSG_LIMIT = 5
    HEADER_SIZE = 4
    LID_SIZE = 2
    RECV_BUF = HEADER_SIZE + LID_SIZE * FF_SCM_MAX_FD
    ACK_BUF = 64          # an ACK is 4 bytes; anything longer is a protocol error

cdef enum:
    KIND_LISTENER = 0
    KIND_WORKER = 1
    KIND_WATCH = 2

cdef enum:
    NBATCH_BUCKETS = 9    # len(wire.BATCH_BUCKETS)

cdef int BATCH_BOUNDS[NBATCH_BUCKETS]
BATCH_BOUNDS[:] = [1, 2, 4, 8, 16, 32, 64, 128, FF_SCM_MAX_FD]

cdef enum:
    MAX_SPARES = 256      # spare fds kept for taking connections back (see Dispatcher)

cdef enum:
    MAX_EVENTS = 256      # more ready fds than this are reported by the next epoll_wait


ctypedef struct conn_t:
    int fd
    int lid

cdef inline void _put_header(uint8_t *buf, int kind, int count) noexcept nogil:
    cdef uint16_t c = <uint16_t>count
    buf[0] = <uint8_t>kind
    buf[1] = 0
    memcpy(buf + 2, &c, 2)


cdef inline int _get_u16(const uint8_t *buf) noexcept nogil:
    cdef uint16_t c
    memcpy(&c, buf, 2)
    return c


# The data channel's one check of a message the primary sent, in C (the
# Python build's is wire.parse_to_worker, and these codes are its errors).
cdef enum:
    TO_WORKER_FDS = 0
    TO_WORKER_END = 1
    TO_WORKER_TRUNCATED = 2
    TO_WORKER_SHORT = 3
    TO_WORKER_END_PAYLOAD = 4
    TO_WORKER_UNKNOWN = 5
    TO_WORKER_MISCOUNT = 6
    TO_WORKER_FDS_CUT = 7     # an FDS message whose fds the kernel cut off (fd limit)


cdef inline int _check_to_worker(const uint8_t *buf, ssize_t n, int mflags,
                                 int nfds) noexcept nogil:
    # MSG_CTRUNC: the receiver had no room for all the fds (its fd limit); the
    # kernel installed the first nfds and closed the rest.  Only an FDS message
    # that brought fewer than it announces can be that: TO_WORKER_FDS_CUT.
    cdef int count
    cdef bint cut = (mflags & MSG_CTRUNC) != 0
    if mflags & MSG_TRUNC:
        return TO_WORKER_TRUNCATED
    if n < HEADER_SIZE:
        return TO_WORKER_SHORT
    count = _get_u16(buf + 2)
    if buf[0] == MSG_END:
        if cut:
            return TO_WORKER_TRUNCATED
        return TO_WORKER_END_PAYLOAD if nfds or count else TO_WORKER_END
    if buf[0] != MSG_FDS:
        return TO_WORKER_UNKNOWN
    if n != HEADER_SIZE + LID_SIZE * count:
        return TO_WORKER_MISCOUNT
    if cut:
        return TO_WORKER_FDS_CUT if nfds < count else TO_WORKER_MISCOUNT
    if nfds != count:
        return TO_WORKER_MISCOUNT
    return TO_WORKER_FDS


cdef int _raise_to_worker(int code, const uint8_t *buf, ssize_t n, int nfds) except -1:
    # The same words as wire.parse_to_worker.
    if code == TO_WORKER_TRUNCATED:
        raise ProtocolError("truncated message on the data channel")
    if code == TO_WORKER_SHORT:
        raise ProtocolError(f"short message ({n} bytes) on the data channel")
    if code == TO_WORKER_END_PAYLOAD:
        raise ProtocolError("END message with a payload")
    if code == TO_WORKER_UNKNOWN:
        raise ProtocolError(f"unknown message type {buf[0]} on the data channel")
    raise ProtocolError(f"FDS message announces {_get_u16(buf + 2)} fds, carries {nfds} "
                        f"in {n} bytes")


cdef int _check_wire(module) except -1:
    # Both modules check, when they load, that what was compiled in is what
    # wire.py says.
    wire.check_build(module, {
        "MSG_FDS": MSG_FDS, "MSG_END": MSG_END, "MSG_ACK": MSG_ACK, "MSG_CLOSED": MSG_CLOSED,
        "MSG_LIMIT": MSG_LIMIT,
        "HEADER_SIZE": HEADER_SIZE, "LID_SIZE": LID_SIZE, "SCM_MAX_FD": FF_SCM_MAX_FD,
        "RECV_BUF": RECV_BUF, "MAX_COUNT": 0xFFFF,
        "BATCH_BUCKETS": tuple([BATCH_BOUNDS[i] for i in range(NBATCH_BUCKETS)])})
    return 0


# -- helpers -------------------------------------------------------------------------

cdef int _raise_errno(int err) except -1:
    """The one place that maps an errno to OSError (and its subclasses)."""
    raise OSError(err, strerror(err).decode("utf-8", "replace"))



cdef int _interrupted(int err) except -1:
    """The one EINTR rule: 1 if ``err`` is EINTR, after Python's signal handlers
    have run (an exception one raises propagates); the caller then retries."""
    if err != EINTR:
        return 0
    PyErr_CheckSignals()
    return 1

cdef inline bint _sole_thread() noexcept:
    # True when this thread is the interpreter's only one: no other thread could
    # take the GIL while we wait, so releasing and retaking it around the wait
    # would be pure cost (a mutex and a condition variable each way, per
    # epoll_wait).  Every Python thread has its state in the list from before
    # it starts; a C thread that creates its state while we read the list waits
    # for the GIL until epoll_wait returns (the arbiter polls for at most a second).
    cdef PyThreadState *me = PyThreadState_Get()
    cdef PyThreadState *head = PyInterpreterState_ThreadHead(PyThreadState_GetInterpreter(me))
    return head == me and PyThreadState_Next(head) == NULL


cdef inline double _monotonic() noexcept nogil:
    # Same clock as time.monotonic(), which the twin uses.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint64_t _monotonic_ns() noexcept nogil:
    # The clock of the credit page's tick, in both processes (time.monotonic_ns()).
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef int _check_socket(int fd) except -1:
    # Same check as socket.socket(fileno=fd) in the twin: EBADF, ENOTSOCK.
    cdef int stype = 0
    cdef socklen_t size = sizeof(stype)
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &stype, &size) < 0:
        _raise_errno(errno)
    return 0


cdef int _set_nonblocking(int fd) except -1:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0:
        _raise_errno(errno)
    if not flags & O_NONBLOCK and fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        _raise_errno(errno)
    return 0


cdef inline bint _accept_skip(int err) noexcept nogil:
    # accept4() errors that concern one connection only: skip it and go on.
    return (err == ECONNABORTED or err == EPROTO or err == EPERM or err == ENETDOWN
            or err == ENOPROTOOPT or err == EHOSTDOWN or err == ENONET
            or err == EHOSTUNREACH or err == EOPNOTSUPP or err == ENETUNREACH)


cdef inline bint _accept_pause(int err) noexcept nogil:
    # accept4() errors that mean "out of a resource": stop accepting for a while.
    return err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM


cdef inline uint64_t _tag(int kind, int ident) noexcept nogil:
    return ((<uint64_t>kind) << 32) | <uint32_t>ident


cdef ff_credit_t *_map_credit(int fd) except NULL:
    # The shared page (credit.h), mapped here rather than by Python's mmap,
    # which would keep a dup of the fd open for as long as the mapping lives.
    cdef struct_stat st
    cdef void *p
    if fstat(fd, &st) < 0:
        _raise_errno(errno)
    if st.st_size < FF_CREDIT_SIZE:
        raise ValueError(f"fd {fd} is not a credit page: {st.st_size} bytes, "
                         f"{FF_CREDIT_SIZE} needed")
    p = mmap(NULL, FF_CREDIT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        _raise_errno(errno)
    return <ff_credit_t *>p


cdef inline void _unmap_credit(ff_credit_t *page) noexcept nogil:
    if page != NULL:
        munmap(page, FF_CREDIT_SIZE)
