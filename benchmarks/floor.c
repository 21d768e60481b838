/* The C floor of fastfork's round-robin data path (issue 11).
 *
 *     gcc -O2 -o floor csrc/floor.c && ./floor PORT WORKERS [BATCH]
 *
 * The same syscalls fastfork's primary makes per connection, and nothing else:
 * a primary that binds 127.0.0.1:PORT, forks WORKERS workers, each connected
 * by an AF_UNIX SOCK_SEQPACKET socketpair, and loops
 *
 *     epoll_wait(listener)
 *     accept4(SOCK_NONBLOCK | SOCK_CLOEXEC) until EAGAIN or BATCH (default 64),
 *         dealing the connections round-robin across the workers
 *     one sendmsg(SCM_RIGHTS) per worker per batch
 *     close() of each of its copies right after that send
 *
 * (no credit window, no acknowledgements: the floor the primary can reach).
 *
 * A worker waits in epoll_wait on its channel and its connections; it
 * recvmsg()s the fds of a batch, reads each connection (at once: the request
 * has usually arrived; otherwise when epoll says it is readable) until a
 * request head ends ("\r\n\r\n"), writes the answer benchmarks/bare_app.py
 * writes, and closes the connection if the request said "Connection: close"
 * (otherwise it keeps it open for the next request, like the Python app).
 *
 * Once listening and forked, the primary prints one line to stdout:
 *     {"primary": PID, "workers": [PID, ...]}
 * SIGTERM or SIGINT: the primary kills its workers, reaps them and exits 0.
 * The workers die with the primary (PR_SET_PDEATHSIG) and exit when their
 * channel closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WORKERS 256
#define MAX_BATCH 253          /* SCM_MAX_FD: the most fds one message may carry */
#define MAX_FDS 65536
#define HEAD_MAX 4096

static const char RESPONSE_CLOSE[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
static const char RESPONSE_KEEP[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

static volatile sig_atomic_t stopping = 0;

static void on_stop(int sig) { (void)sig; stopping = 1; }

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* -- the worker ----------------------------------------------------------- */

struct conn {
    size_t len;
    char buf[HEAD_MAX];
};

static struct conn *conns[MAX_FDS];

static void drop(int ep, int fd)
{
    (void)ep;                  /* close() removes fd from the epoll set */
    free(conns[fd]);
    conns[fd] = NULL;
    close(fd);
}

/* Read what fd has; answer every complete request head in it.
 * Returns 0 while the connection stays open, -1 once it is closed. */
static int serve(int ep, int fd)
{
    struct conn *c = conns[fd];
    for (;;) {
        ssize_t n = recv(fd, c->buf + c->len, HEAD_MAX - c->len, 0);
        if (n == 0) { drop(ep, fd); return -1; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            drop(ep, fd);
            return -1;
        }
        c->len += (size_t)n;
        for (;;) {
            char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
            if (end == NULL) break;
            size_t head = (size_t)(end - c->buf) + 4;
            /* A header value "close" (wrk sends "Connection: close"). */
            int close_after = memmem(c->buf, head, "onnection: close", 16) != NULL
                              || memmem(c->buf, head, "onnection: Close", 16) != NULL;
            const char *r = close_after ? RESPONSE_CLOSE : RESPONSE_KEEP;
            size_t rlen = close_after ? sizeof RESPONSE_CLOSE - 1 : sizeof RESPONSE_KEEP - 1;
            if (send(fd, r, rlen, MSG_NOSIGNAL) != (ssize_t)rlen || close_after) {
                drop(ep, fd);      /* a short write of 60 bytes: the peer is gone */
                return -1;
            }
            memmove(c->buf, c->buf + head, c->len - head);
            c->len -= head;
        }
        if (c->len == HEAD_MAX) { drop(ep, fd); return -1; }   /* no head in 4 KiB */
    }
}

static int worker_main(int chan)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = chan};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, chan, &ev) < 0) die("epoll_ctl");
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd != chan) {
                if (conns[fd] != NULL) serve(ep, fd);
                continue;
            }
            char byte;
            union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * MAX_BATCH)];
            } control;
            struct iovec iov = {.iov_base = &byte, .iov_len = 1};
            struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                                 .msg_control = control.buf,
                                 .msg_controllen = sizeof control.buf};
            ssize_t got = recvmsg(chan, &msg, MSG_CMSG_CLOEXEC);
            if (got == 0) return 0;                 /* the primary is gone */
            if (got < 0) {
                if (errno == EINTR || errno == EAGAIN) continue;
                die("recvmsg");
            }
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
                int count = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                int *fds = (int *)CMSG_DATA(cm);
                for (int k = 0; k < count; k++) {
                    int cfd = fds[k];
                    if (cfd >= MAX_FDS) { close(cfd); continue; }
                    conns[cfd] = malloc(sizeof(struct conn));
                    if (conns[cfd] == NULL) die("malloc");
                    conns[cfd]->len = 0;
                    if (serve(ep, cfd) < 0) continue;      /* answered and closed */
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev) < 0) die("epoll_ctl");
                }
            }
        }
    }
}

/* -- the primary ------------------------------------------------------------ */

static int send_fds(int chan, const int *fds, int count)
{
    char byte = 0;
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MAX_BATCH)];
    } control;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * count)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * count);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * count);
    for (;;) {
        if (sendmsg(chan, &msg, MSG_NOSIGNAL) >= 0) return 0;
        if (errno != EINTR) return -1;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s PORT WORKERS [BATCH]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    int nworkers = atoi(argv[2]);
    int batch = argc == 4 ? atoi(argv[3]) : 64;
    if (port <= 0 || port > 65535 || nworkers < 1 || nworkers > MAX_WORKERS
        || batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "floor: PORT 1..65535, WORKERS 1..%d, BATCH 1..%d\n",
                MAX_WORKERS, MAX_BATCH);
        return 2;
    }
    /* Die with whoever started us (the benchmark). */
    prctl(PR_SET_PDEATHSIG, SIGTERM);

    int lsock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lsock < 0) die("socket");
    int one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lsock, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lsock, 2048) < 0) die("listen");

    pid_t pids[MAX_WORKERS];
    int chans[MAX_WORKERS];
    for (int w = 0; w < nworkers; w++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() == 1) _exit(1);
            close(lsock);
            close(sv[0]);
            for (int k = 0; k < w; k++) close(chans[k]);
            signal(SIGTERM, SIG_DFL);
            _exit(worker_main(sv[1]));
        }
        close(sv[1]);
        chans[w] = sv[0];
        pids[w] = pid;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;          /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    printf("{\"primary\": %d, \"workers\": [", (int)getpid());
    for (int w = 0; w < nworkers; w++) printf(w ? ", %d" : "%d", (int)pids[w]);
    printf("]}\n");
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lsock};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lsock, &ev) < 0) die("epoll_ctl");

    int pending[MAX_WORKERS][MAX_BATCH];
    int npending[MAX_WORKERS];
    int next = 0;
    int status = 0;
    while (!stopping) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        memset(npending, 0, sizeof(int) * nworkers);
        for (int taken = 0; taken < batch; taken++) {
            int fd = accept4(lsock, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR) { taken--; continue; }
                if (errno == EAGAIN || errno == ECONNABORTED) break;
                if (errno == EMFILE || errno == ENFILE) break;
                die("accept4");
            }
            pending[next][npending[next]++] = fd;
            next = next + 1 == nworkers ? 0 : next + 1;
        }
        for (int w = 0; w < nworkers; w++) {
            if (npending[w] == 0) continue;
            if (send_fds(chans[w], pending[w], npending[w]) < 0) {
                perror("sendmsg");      /* a worker died: stop the whole floor */
                stopping = 1;
                status = 1;
            }
            for (int k = 0; k < npending[w]; k++) close(pending[w][k]);
        }
    }

    for (int w = 0; w < nworkers; w++) kill(pids[w], SIGKILL);
    for (int w = 0; w < nworkers; w++) {
        while (waitpid(pids[w], NULL, 0) < 0 && errno == EINTR) {}
    }
    return status;
}
