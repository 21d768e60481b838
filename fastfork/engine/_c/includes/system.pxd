# POSIX and Linux declarations the HTTP engine uses, in one place (as
# fastfork/handoff/_c/includes/system.pxd for the hand-off).  Every block is
# nogil: none of these touch Python.  read/close/writev come from Cython's
# bundled posix/ .pxd files; epoll is the hand-off's (includes/epoll.pxd there).

from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    int getsockname(int fd, sockaddr *addr, socklen_t *addrlen)
    int getpeername(int fd, sockaddr *addr, socklen_t *addrlen)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
    int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        AF_INET
        AF_INET6
        AF_UNIX
        SHUT_WR
        MSG_NOSIGNAL
        MSG_PEEK
        MSG_DONTWAIT

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr
    uint16_t ntohs(uint16_t)

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        IPPROTO_TCP
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    enum:
        INET6_ADDRSTRLEN

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    enum:
        CLOCK_MONOTONIC

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK

cdef extern from "<sys/resource.h>" nogil:
    # RUSAGE_THREAD is Linux's (_GNU_SOURCE, which Python.h defines).
    struct rusage:
        long ru_nvcsw             # voluntary context switches: the thread slept
        long ru_nivcsw            # involuntary ones: it was preempted
    int getrusage(int who, rusage *usage)
    enum:
        RUSAGE_THREAD

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM

cdef extern from *:
    """
    #include <errno.h>
    /* EAGAIN and EWOULDBLOCK are one value on Linux, two elsewhere. */
    static inline int ffe_would_block(int err) {
        return err == EAGAIN || err == EWOULDBLOCK;
    }
    """
    bint would_block "ffe_would_block"(int err) noexcept nogil
