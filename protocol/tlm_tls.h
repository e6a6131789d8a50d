/*
 * tlm_tls.h — TLS 1.3 on the session channels (--tls psk), keyed from the pre-shared key.
 *
 *     struct tlm_tls *t;
 *     rc = tlm_tls_new(&t, true, &key, err, sizeof(err));       // once: server = source
 *     rc = tlm_tls_wrap(t, fd, 5000, &app_fd, mode, sizeof(mode), err, sizeof(err));
 *     ... the tlm handshake and the session use app_fd exactly as they used fd ...
 *     tlm_tls_free(t);                                          // after the last wrap
 *
 * The TLS key is an external PSK (RFC 8446 4.2.11) derived from the --key file, so TLS adds
 * no key management; the tlm HMAC handshake still runs inside TLS, byte for byte the wire
 * protocol of PROTOCOL.md. Cipher: TLS_AES_128_GCM_SHA256 (the one every kTLS offers).
 *
 * The data path after the handshake:
 *   kernel TLS both ways (SSL_OP_ENABLE_KTLS took on send and receive): app_fd == fd, a
 *     TCP socket the kernel encrypts; send/recv/sendmsg/io_uring work on it unchanged.
 *   otherwise: app_fd is one end of an AF_UNIX socketpair; a relay thread owns fd and the
 *     SSL and moves bytes between them (SSL_read/SSL_write; with kTLS send alone the
 *     kernel still encrypts what SSL_write hands it). Closing app_fd ends the relay (the
 *     TCP stream ends with a FIN, as without TLS); the peer's end, a TLS error or a TCP
 *     failure closes app_fd's peer end, so the caller sees EOF as on a plain socket.
 *     TCP options (keepalive, SO_RCVBUF, TCP_INFO, pacing) belong on fd before the wrap:
 *     app_fd is no TCP socket, and the source's pacing and SIOCOUTQ see the socketpair.
 * mode names the path, for one log line: "kTLS send+recv", "kTLS send, userspace recv"
 * (expected with OpenSSL 3.0: its kTLS for TLS 1.3 is send only), "userspace (kernel has no
 * tls ULP)" or "userspace (OpenSSL kept it)"; the last three go through the relay.
 *
 * The relay's OpenSSL writes the TCP socket with write(): callers ignore SIGPIPE (the
 * daemons do), or a peer gone at the wrong moment kills the process.
 *
 * Errors (-errno and one line in err): a peer with another key (-EACCES), a peer speaking
 * clear text (-EPROTO; a server also tells such a client so, in a clear tlm ERROR frame),
 * a timeout (-ETIMEDOUT). On failure fd is left open for the caller to close.
 */
#ifndef TLM_TLS_H
#define TLM_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tlm_key;
struct tlm_tls;

/* --tls VALUE: "psk" -> true, "off" -> false; -EINVAL otherwise. */
int tlm_tls_parse(const char *arg, bool *on);
int tlm_tls_new(struct tlm_tls **t, bool server, const struct tlm_key *k, char *err,
		size_t errlen);
void tlm_tls_free(struct tlm_tls *t);
/* What this host's kernel offers, for the start-up log line. */
const char *tlm_tls_kernel(void);
/* The handshake on connected socket fd (blocking or not), then the data path above. */
int tlm_tls_wrap(struct tlm_tls *t, int fd, int timeout_ms, int *app_fd, char *mode,
		 size_t modelen, char *err, size_t errlen);
/* A tlm peer's first bytes are a TLS ClientHello's record header (a clear server's hint).
 * Inline: auth.c asks, and tls.c calls auth.c (no cycle between the files). */
static inline bool tlm_tls_looks_like_hello(const uint8_t *b, size_t n)
{
	return n >= 2 && b[0] == 0x16 && b[1] == 0x03;      /* handshake record, TLS 1.x */
}

#endif
