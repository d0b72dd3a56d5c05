/* LD_PRELOAD guard for the loopback NDIF stack: no socket of these processes can listen on, or
 * talk to, anything but loopback.
 *
 * Ray's gRPC servers (GCS, raylet, workers) and agents choose their own bind addresses, and some
 * of them pick the all-interfaces address (0.0.0.0 / ::) whatever --node-ip-address says. Every
 * process of the stack is started with this library preloaded, so:
 *   bind(0.0.0.0)      -> bind(127.0.0.1)            (logged)
 *   bind(::)           -> bind(::ffff:127.0.0.1), else bind(::1)   (logged)
 *   bind(other)        -> EADDRNOTAVAIL              (logged)
 *   listen() on a socket never bound (the kernel would pick 0.0.0.0) -> bound to loopback first
 *   connect()/sendto()/sendmsg() to a non-loopback address -> ENETUNREACH (logged); 0.0.0.0 is
 *   rewritten to 127.0.0.1
 * Unix sockets and everything else pass untouched. The log goes to $LOOPBACK_GUARD_LOG (if set).
 *
 * Build: cc -shared -fPIC -O2 -o loopback_guard.so loopback_guard.c -ldl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);

static void note(const char *what, const struct sockaddr *addr) {
    const char *path = getenv("LOOPBACK_GUARD_LOG");
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    int saved = errno;
    if (!path || !*path) return;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
    }
    FILE *f = fopen(path, "a");
    if (f) {
        char comm[64] = "";
        FILE *c = fopen("/proc/self/comm", "r");
        if (c) {
            if (fgets(comm, sizeof comm, c)) comm[strcspn(comm, "\n")] = 0;
            fclose(c);
        }
        fprintf(f, "pid %d (%s): %s %s port %d\n", (int)getpid(), comm, what, host, port);
        fclose(f);
    }
    errno = saved;
}

static int v4_loopback(const struct in_addr *a) { return (ntohl(a->s_addr) >> 24) == 127; }

static int v6_loopback(const struct in6_addr *a) {
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

static void v6_mapped_loopback(struct in6_addr *a) {
    memset(a, 0, sizeof *a);
    a->s6_addr[10] = 0xff;
    a->s6_addr[11] = 0xff;
    a->s6_addr[12] = 127;
    a->s6_addr[15] = 1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real;
    if (!real) real = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if (v4_loopback(&a.sin_addr)) return real(fd, addr, len);
        if (a.sin_addr.s_addr != htonl(INADDR_ANY)) {
            note("refused bind", addr);
            errno = EADDRNOTAVAIL;
            return -1;
        }
        note("bind rewritten to 127.0.0.1:", addr);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real(fd, (const struct sockaddr *)&a, sizeof a);
    }
    if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        if (v6_loopback(&a.sin6_addr)) return real(fd, addr, len);
        if (!IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) {
            note("refused bind", addr);
            errno = EADDRNOTAVAIL;
            return -1;
        }
        note("bind rewritten to ::ffff:127.0.0.1:", addr);
        v6_mapped_loopback(&a.sin6_addr);
        int rc = real(fd, (const struct sockaddr *)&a, sizeof a);
        if (rc == 0) return 0;
        a.sin6_addr = in6addr_loopback; /* an IPV6_V6ONLY socket cannot take a mapped address */
        return real(fd, (const struct sockaddr *)&a, sizeof a);
    }
    return real(fd, addr, len);
}

int listen(int fd, int backlog) {
    static listen_fn real;
    if (!real) real = (listen_fn)dlsym(RTLD_NEXT, "listen");
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET && ((struct sockaddr_in *)&ss)->sin_port == 0) {
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            bind(fd, (const struct sockaddr *)&a, sizeof a);
        } else if (ss.ss_family == AF_INET6 && ((struct sockaddr_in6 *)&ss)->sin6_port == 0) {
            struct sockaddr_in6 a = {0};
            a.sin6_family = AF_INET6;
            v6_mapped_loopback(&a.sin6_addr);
            if (bind(fd, (const struct sockaddr *)&a, sizeof a) != 0) {
                a.sin6_addr = in6addr_loopback;
                bind(fd, (const struct sockaddr *)&a, sizeof a);
            }
        }
    }
    return real(fd, backlog);
}

/* 0 = allowed as is, 1 = rewritten into *out, -1 = refused */
static int check_peer(const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out) {
    if (!addr) return 0;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        if (v4_loopback(&a->sin_addr)) return 0;
        if (a->sin_addr.s_addr == htonl(INADDR_ANY)) {
            memcpy(out, a, sizeof *a);
            ((struct sockaddr_in *)out)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return 1;
        }
        return -1;
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        if (v6_loopback(&a->sin6_addr)) return 0;
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) {
            memcpy(out, a, sizeof *a);
            ((struct sockaddr_in6 *)out)->sin6_addr = in6addr_loopback;
            return 1;
        }
        return -1;
    }
    return 0;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static connect_fn real;
    if (!real) real = (connect_fn)dlsym(RTLD_NEXT, "connect");
    struct sockaddr_storage fixed;
    int verdict = check_peer(addr, len, &fixed);
    if (verdict < 0) {
        note("refused connect to", addr);
        errno = ENETUNREACH;
        return -1;
    }
    return verdict ? real(fd, (const struct sockaddr *)&fixed, len) : real(fd, addr, len);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len) {
    static sendto_fn real;
    if (!real) real = (sendto_fn)dlsym(RTLD_NEXT, "sendto");
    struct sockaddr_storage fixed;
    int verdict = check_peer(addr, len, &fixed);
    if (verdict < 0) {
        note("refused sendto", addr);
        errno = ENETUNREACH;
        return -1;
    }
    return verdict ? real(fd, buf, n, flags, (const struct sockaddr *)&fixed, len)
                   : real(fd, buf, n, flags, addr, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static sendmsg_fn real;
    if (!real) real = (sendmsg_fn)dlsym(RTLD_NEXT, "sendmsg");
    if (msg && msg->msg_name) {
        struct sockaddr_storage fixed;
        int verdict = check_peer((const struct sockaddr *)msg->msg_name, msg->msg_namelen, &fixed);
        if (verdict < 0) {
            note("refused sendmsg", (const struct sockaddr *)msg->msg_name);
            errno = ENETUNREACH;
            return -1;
        }
        if (verdict) {
            struct msghdr copy = *msg;
            copy.msg_name = &fixed;
            return real(fd, &copy, flags);
        }
    }
    return real(fd, msg, flags);
}
