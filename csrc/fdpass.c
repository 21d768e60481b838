/* See fdpass.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/types.h>
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

/* The descriptors of one received message into `fds` (room for `maxfds`; any
 * beyond are closed and MSG_CTRUNC set): the SCM_RIGHTS walk both receive
 * calls share. */
static int ff_take_fds(struct msghdr *msg, int *fds, int maxfds, int *msg_flags)
{
    struct cmsghdr *cmsg;
    int count = 0;
    for (cmsg = CMSG_FIRSTHDR(msg); cmsg != NULL; cmsg = CMSG_NXTHDR(msg, cmsg)) {
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
                close(fd);
                *msg_flags |= MSG_CTRUNC;
            }
        }
    }
    return count;
}

int ff_recv_fds_batch(int sock, void *bufs, size_t len, int vlen, int *lens,
                      int *mflags, int *fds, int *nfds, int flags)
{
    ff_cmsgbuf control[FF_BATCH_MAX_MSGS];
    struct iovec iov[FF_BATCH_MAX_MSGS];
    struct mmsghdr msgs[FF_BATCH_MAX_MSGS];
    int n, i;

    if (vlen < 1 || vlen > FF_BATCH_MAX_MSGS) {
        errno = EINVAL;
        return -1;
    }
    memset(msgs, 0, vlen * sizeof(struct mmsghdr));
    for (i = 0; i < vlen; i++) {
        iov[i].iov_base = (char *)bufs + i * len;
        iov[i].iov_len = len;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(control[i].buf);
    }
    n = recvmmsg(sock, msgs, vlen, flags, NULL);
    if (n < 0)
        return n;
    for (i = 0; i < n; i++) {
        lens[i] = (int)msgs[i].msg_len;
        mflags[i] = msgs[i].msg_hdr.msg_flags;
        nfds[i] = ff_take_fds(&msgs[i].msg_hdr, fds + i * FF_SCM_MAX_FD, FF_SCM_MAX_FD,
                              &mflags[i]);
    }
    return n;
}

int ff_recv_many(int sock, void *bufs, size_t len, int vlen, int *lens, int flags)
{
    struct iovec iov[FF_BATCH_MAX_MSGS];
    struct mmsghdr msgs[FF_BATCH_MAX_MSGS];
    int n, i;

    if (vlen < 1 || vlen > FF_BATCH_MAX_MSGS) {
        errno = EINVAL;
        return -1;
    }
    memset(msgs, 0, vlen * sizeof(struct mmsghdr));
    for (i = 0; i < vlen; i++) {
        iov[i].iov_base = (char *)bufs + i * len;
        iov[i].iov_len = len;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    n = recvmmsg(sock, msgs, vlen, flags, NULL);
    if (n < 0)
        return n;
    for (i = 0; i < n; i++)
        lens[i] = (int)msgs[i].msg_len;
    return n;
}
