/* See fdpass.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fdpass.h"

#define FF_CMSG_SPACE CMSG_SPACE(FF_SCM_MAX_FD * sizeof(int))

/* A control buffer aligned for struct cmsghdr, as CMSG_FIRSTHDR requires. */
typedef union {
    char buf[FF_CMSG_SPACE];
    struct cmsghdr align;
} ff_cmsgbuf;

ssize_t ff_send_fds(int sock, const void *buf, size_t len,
                    const int *fds, int nfds, int flags)
{
    ff_cmsgbuf control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;

    if (nfds < 0 || nfds > FF_SCM_MAX_FD) {
        errno = EINVAL;
        return -1;
    }
    memset(&msg, 0, sizeof(msg));
    iov.iov_base = (void *)buf;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
    }
    return sendmsg(sock, &msg, flags);
}

ssize_t ff_recv_fds(int sock, void *buf, size_t len,
                    int *fds, int maxfds, int *nfds, int *msg_flags, int flags)
{
    ff_cmsgbuf control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t n;
    int count = 0;

    *nfds = 0;
    *msg_flags = 0;
    memset(&msg, 0, sizeof(msg));
    iov.iov_base = buf;
    iov.iov_len = len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    n = recvmsg(sock, &msg, flags);
    if (n < 0)
        return n;
    *msg_flags = msg.msg_flags;
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        const unsigned char *data;
        size_t i, have;
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        data = CMSG_DATA(cmsg);
        have = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < have; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (count < maxfds) {
                fds[count++] = fd;
            } else {
                /* No room: the caller never sees it, so it must not leak. */
                close(fd);
                *msg_flags |= MSG_CTRUNC;
            }
        }
    }
    *nfds = count;
    return n;
}
