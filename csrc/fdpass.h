/* fdpass: the cmsg (SCM_RIGHTS) handling of the data channel.
 *
 * Cython's bundled posix/ has no sys/socket.h msghdr or CMSG_* macros, so the
 * calls that need them live here, in plain C.  Each returns what the
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

/* Up to `vlen` messages in one recvmmsg, each with its descriptors: message
 * i lands in `bufs + i * len` (its length in lens[i], msghdr.msg_flags in
 * mflags[i]) and its descriptors in `fds + i * FF_SCM_MAX_FD` (counted in
 * nfds[i]).  Returns how many messages were read, or -1 with errno (EAGAIN:
 * none waiting).  Fewer than `vlen` means the queue is empty now, so the
 * caller needs no second call to learn that.  vlen <= FF_BATCH_MAX_MSGS. */
#define FF_BATCH_MAX_MSGS 16
int ff_recv_fds_batch(int sock, void *bufs, size_t len, int vlen, int *lens,
                      int *mflags, int *fds, int *nfds, int flags);

/* Up to `vlen` small messages with no descriptors in one recvmmsg (the
 * primary's acks): message i in `bufs + i * len`, its length in lens[i].
 * Returns the count or -1 with errno; fewer than `vlen` means drained.
 * Descriptors sent along anyway are discarded by the kernel (MSG_CTRUNC). */
int ff_recv_many(int sock, void *bufs, size_t len, int vlen, int *lens, int flags);

#endif
