/*
 * util.h — small helpers shared by the daemons and CLIs.
 */
#ifndef TLM_UTIL_H
#define TLM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TLM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

uint64_t tlm_now_ns(void);                        /* CLOCK_MONOTONIC */
/* This process's CPU time, user + system, µs, every thread (ended ones too): the daemons
 * report it so benchmarks can divide it by the pages moved. 0 if unknown. */
uint64_t tlm_cpu_us(void);

/* Parse "123", "4k", "256M", "1G" (binary units). 0 or -EINVAL. */
int tlm_parse_size(const char *s, uint64_t *out);
/* Parse an unsigned integer (decimal or 0x hex), whole string. 0 or -EINVAL/-ERANGE. */
int tlm_parse_u64(const char *s, uint64_t *out);

/* "host:port" or "[v6]:port" -> connected/listening TCP socket (non-blocking off).
 * Return the fd or -errno; err gets a one-line reason. */
int tlm_tcp_connect(const char *hostport, int timeout_ms, char *err, size_t errlen);
int tlm_tcp_listen(const char *hostport, char *err, size_t errlen);
int tlm_set_nonblock(int fd, int on);
/* A daemon's clean-shutdown signals: SIGTERM and SIGINT blocked and delivered on the
 * returned signalfd (flags: SFD_NONBLOCK or 0; always CLOEXEC), SIGPIPE ignored (a
 * closed peer is EPIPE). The fd, or -errno. */
int tlm_term_signalfd(int flags);
int tlm_tcp_nodelay(int fd);
/* A peer that vanishes without a FIN or RST (host down, network partition) is noticed:
 * keepalive probes after idle_s seconds of silence, then every second, and the connection
 * fails (ETIMEDOUT) once probes or sent data stay unacknowledged for timeout_s seconds. */
int tlm_tcp_keepalive(int fd, unsigned idle_s, unsigned timeout_s);

/* Unix stream/seqpacket listening socket at path: parent dir created 0700 if missing (an
 * existing one must be ours and not group/world-writable: -EPERM), socket chmod 0600, a
 * stale socket file replaced. Returns fd or -errno. */
int tlm_unix_listen(const char *path, int type, char *err, size_t errlen);
int tlm_unix_connect(const char *path, int type, char *err, size_t errlen);

/* Write a file atomically: data to "<path>.tmp.<pid>", fsync, rename, fsync dir.
 * Used for everything tlm writes that another run may read. 0 or -errno. */
int tlm_atomic_write_begin(const char *path, char *tmp, size_t tmplen);   /* returns fd */
int tlm_atomic_write_commit(int fd, const char *tmp, const char *path);    /* closes fd */
void tlm_atomic_write_abort(int fd, const char *tmp);

#endif
