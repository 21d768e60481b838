# The wire format in C (fastfork/channels/wire.py says it in Python), errno
# handling and small helpers; included by _cdispatch.pyx.

cdef enum:
    MSG_FDS = 1
    MSG_END = 2
    MSG_ACK = 3
    MSG_CLOSED = 4
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
