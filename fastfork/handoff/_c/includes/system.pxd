# POSIX and Linux declarations used by the hot path, in one place (as uvloop's
# includes/system.pxd).  Only the struct fields fastfork reads are declared;
# every block is nogil: none of these touch Python.  The SCM_RIGHTS (cmsg)
# handling lives in csrc/fdpass.c, because Cython's bundled posix/ has no
# msghdr or CMSG_* macros.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    ssize_t send(int fd, const void *buf, size_t len, int flags)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_TYPE
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_TRUNC
        MSG_CTRUNC
        MSG_CMSG_CLOEXEC

cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "<limits.h>" nogil:
    enum:
        INT_MAX

cdef extern from *:
    """
    #include <errno.h>
    /* EAGAIN and EWOULDBLOCK are one value on Linux, two elsewhere. */
    static inline int ff_would_block(int err) {
        return err == EAGAIN || err == EWOULDBLOCK;
    }
    #ifndef FASTFORK_DEBUG
    #define FASTFORK_DEBUG 0
    #endif
    """
    bint would_block "ff_would_block"(int err) noexcept nogil
    # 1 in the debug build (FASTFORK_DEBUG=1 pip install -e .): counters checked.
    int FASTFORK_DEBUG

cdef extern from "fdpass.h" nogil:
    enum:
        FF_SCM_MAX_FD
    ssize_t ff_send_fds(int sock, const void *buf, size_t len,
                        const int *fds, int nfds, int flags)
    enum:
        FF_BATCH_MAX_MSGS
    int ff_recv_fds_batch(int sock, void *bufs, size_t len, int vlen, int *lens,
                          int *mflags, int *fds, int *nfds, int flags)
    int ff_recv_many(int sock, void *bufs, size_t len, int vlen, int *lens, int flags)

cdef extern from "credit.h" nogil:
    ctypedef struct ff_credit_t:
        uint64_t taken
        uint64_t closed
        uint32_t at_limit
        uint64_t tick
        uint32_t want
    enum:
        FF_CREDIT_SIZE
    uint64_t ff_credit_load(const uint64_t *p) noexcept
    void ff_credit_add(uint64_t *p, uint64_t n) noexcept
    void ff_credit_want(uint32_t *p) noexcept
    int ff_credit_take_want(uint32_t *p) noexcept
    void ff_credit_store_flag(uint32_t *p, uint32_t v) noexcept
    uint32_t ff_credit_load_flag(const uint32_t *p) noexcept
    void ff_credit_store_tick(uint64_t *p, uint64_t v) noexcept
    uint64_t ff_credit_load_tick(const uint64_t *p) noexcept
