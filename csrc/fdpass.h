/* fdpass: the cmsg (SCM_RIGHTS) handling of the data channel.
 *
 * Cython's bundled posix/ has no sys/socket.h msghdr or CMSG_* macros, so the
 * two calls that need them live here, in plain C.  Both return what the
 * syscall returns (-1 with errno set on failure) and never touch the GIL.
 */
#ifndef FASTFORK_FDPASS_H
#define FASTFORK_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

/* Linux refuses more than SCM_MAX_FD descriptors in one message. */
#define FF_SCM_MAX_FD 253

/* One sendmsg: `len` bytes of `buf` plus `nfds` descriptors (0..FF_SCM_MAX_FD)
 * in one SCM_RIGHTS message.  `flags` go to sendmsg (MSG_NOSIGNAL...). */
ssize_t ff_send_fds(int sock, const void *buf, size_t len,
                    const int *fds, int nfds, int flags);

/* One recvmsg into `buf`; the descriptors that came with the message are
 * stored in `fds` (room for `maxfds`, any beyond that are closed and
 * MSG_CTRUNC is set in *msg_flags) and counted in *nfds.  *msg_flags gets
 * msghdr.msg_flags (MSG_TRUNC, MSG_CTRUNC).  `flags` go to recvmsg
 * (MSG_CMSG_CLOEXEC...).  On failure *nfds is 0. */
ssize_t ff_recv_fds(int sock, void *buf, size_t len,
                    int *fds, int maxfds, int *nfds, int *msg_flags, int flags);

#endif
