/*
 * tls.c — TLS 1.3 with an external PSK on the session channels (tlm_tls.h says the API).
 *
 * Why a relay thread and not SSL_read/SSL_write inside struct tlm_conn: the daemons' data
 * paths (sendmsg of iovecs, read, io_uring RECV into the conn's tail) stay exactly what
 * they are with kernel TLS, and userspace TLS needs no second copy of them: a socketpair
 * looks to them like the TCP socket did. The cost is one more copy and a thread per
 * channel, paid only where the kernel cannot encrypt.
 *
 * Authentication: the server has no certificate, so a handshake completes only with the
 * PSK (its binder and Finished are keyed from it); the client also refuses any handshake
 * that did not use it (a certificate would fail verification: there is no trust store).
 */
#include "tlm_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>

#include "tlm_proto.h"
#include "proto_int.h"
#include "tlm_io.h"

#define TLS_PSK_ID "tlm1"
#define TLS_RECORD_MAX 16384            /* TLS plaintext record limit */
/* A relay's buffer each way: 16 records per socketpair send or SSL_write, fewer wakeups. */
#define RELAY_BUF (16 * TLS_RECORD_MAX)

struct tlm_tls {
	SSL_CTX *ctx;
	SSL_SESSION *psk;
	bool server;
};

int tlm_tls_parse(const char *arg, bool *on)
{
	if (strcmp(arg, "psk") && strcmp(arg, "off"))
		return -EINVAL;
	*on = strcmp(arg, "psk") == 0;
	return 0;
}

const char *tlm_tls_kernel(void)
{
	static const char path[] = "/proc/sys/net/ipv4/tcp_available_ulp";
	char buf[256] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	if (n > 0)
		buf[n] = '\0';
	/* The module may also load on first use, so "tls" missing here is only likely. */
	return strstr(buf, "tls") ? "the kernel offers the tls ULP: kTLS" :
	       "the kernel lists no tls ULP: userspace TLS unless its module loads on use";
}

static const char *ssl_why(unsigned long code)
{
	const char *s = ERR_reason_error_string(code);

	return s ? s : "unknown OpenSSL error";
}

/* ---- context -------------------------------------------------------------------------------- */

static int psk_use(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
		   SSL_SESSION **sess)
{
	struct tlm_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

	(void)md;               /* only SHA-256 suites are enabled */
	SSL_SESSION_up_ref(t->psk);
	*sess = t->psk;
	*id = (const unsigned char *)TLS_PSK_ID;
	*idlen = strlen(TLS_PSK_ID);
	return 1;
}

static int psk_find(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
	struct tlm_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

	*sess = NULL;           /* an unknown identity: no PSK, and no certificate either */
	if (idlen == strlen(TLS_PSK_ID) && memcmp(id, TLS_PSK_ID, idlen) == 0) {
		SSL_SESSION_up_ref(t->psk);
		*sess = t->psk;
	}
	return 1;
}

/* The PSK: HMAC-SHA256(key, label), so the TLS key is never the HMAC handshake's key. */
static int psk_session(struct tlm_tls *t, const struct tlm_key *k)
{
	static const unsigned char aes128gcm[2] = { 0x13, 0x01 };
	uint8_t psk[32];
	unsigned int len = sizeof(psk);
	SSL *ssl = SSL_new(t->ctx);
	const SSL_CIPHER *c = ssl ? SSL_CIPHER_find(ssl, aes128gcm) : NULL;
	int ok;

	ok = c && HMAC(EVP_sha256(), k->b, (int)k->len, (const unsigned char *)"tlm1-tls-psk",
		       12, psk, &len) && (t->psk = SSL_SESSION_new()) &&
	     SSL_SESSION_set1_master_key(t->psk, psk, len) &&
	     SSL_SESSION_set_cipher(t->psk, c) &&
	     SSL_SESSION_set_protocol_version(t->psk, TLS1_3_VERSION);
	OPENSSL_cleanse(psk, sizeof(psk));
	SSL_free(ssl);
	return ok ? 0 : -ENOMEM;
}

int tlm_tls_new(struct tlm_tls **tp, bool server, const struct tlm_key *k, char *err,
		size_t errlen)
{
	struct tlm_tls *t = calloc(1, sizeof(*t));
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());

	if (!t || !ctx)
		goto fail;
	t->ctx = ctx;
	t->server = server;
	SSL_CTX_set_app_data(ctx, t);
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"))
		goto fail;
	/* The end of the stream is a TCP FIN, without close_notify (see relay_up): the tlm
	 * framing finds a cut frame itself. */
	SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS | SSL_OP_NO_TICKET |
			    SSL_OP_IGNORE_UNEXPECTED_EOF);
	if (server) {
		SSL_CTX_set_num_tickets(ctx, 0);          /* nothing after the handshake */
		SSL_CTX_set_psk_find_session_callback(ctx, psk_find);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
		SSL_CTX_set_psk_use_session_callback(ctx, psk_use);
	}
	if (psk_session(t, k) == 0) {
		*tp = t;
		return 0;
	}
fail:
	seterr(err, errlen, "tls: cannot set up OpenSSL: %s", ssl_why(ERR_get_error()));
	SSL_CTX_free(ctx);
	free(t);
	return -ENOMEM;
}

void tlm_tls_free(struct tlm_tls *t)
{
	if (!t)
		return;
	SSL_SESSION_free(t->psk);
	SSL_CTX_free(t->ctx);          /* live relays hold their own reference */
	free(t);
}

/* ---- handshake ------------------------------------------------------------------------------ */

/* Why the handshake failed, as one line a person can act on. */
static int hs_error(struct tlm_tls *t, SSL *ssl, int r, int io, char *err, size_t errlen)
{
	int e = SSL_get_error(ssl, r);
	unsigned long code = ERR_peek_last_error();
	int reason = ERR_GET_REASON(code);
	const char *peer = t->server ? "destination" : "source";

	if (io < 0) {
		seterr(err, errlen, "tls: handshake %s", io == -ETIMEDOUT ? "timed out" :
		       strerror(-io));
		return io;
	}
	/* A PSK binder that does not verify: OpenSSL 3.0 answers illegal_parameter. */
	if (reason == SSL_R_BINDER_DOES_NOT_VERIFY || reason == SSL_R_TLSV1_ALERT_DECRYPT_ERROR ||
	    reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER ||
	    reason == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC ||
	    reason == SSL_R_SSLV3_ALERT_BAD_RECORD_MAC) {
		seterr(err, errlen, "tls: authentication failed: the %s's pre-shared key "
		       "differs from ours", peer);
		return -EACCES;
	}
	if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
		seterr(err, errlen, "tls: the %s offered a certificate, not our pre-shared key "
		       "(not a tlm peer, or an impostor)", peer);
		return -EACCES;
	}
	if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
	    reason == SSL_R_UNKNOWN_PROTOCOL || reason == SSL_R_HTTP_REQUEST ||
	    reason == SSL_R_RECORD_LENGTH_MISMATCH) {
		seterr(err, errlen, "tls: the %s answered in clear text, not TLS (is it started "
		       "without --tls psk?)", peer);
		return -EPROTO;
	}
	if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN ||
	    reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		seterr(err, errlen, "tls: the %s closed the connection during the TLS handshake "
		       "(does it run with --tls psk and the same key?)", peer);
		return -ECONNRESET;
	}
	seterr(err, errlen, "tls: handshake with the %s failed: %s", peer, ssl_why(code));
	return -EPROTO;
}

/* A server's first look: a clear-text tlm client is told so in its own protocol. */
static int hs_peek_hello(int fd, uint64_t deadline, char *err, size_t errlen)
{
	uint8_t b;
	ssize_t n;
	int rc;

	do {
		rc = tlm_io_wait(fd, POLLIN, deadline);
		if (rc < 0) {
			seterr(err, errlen, "tls: handshake timed out");
			return rc;
		}
		n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	} while (n < 0 && (errno == EINTR || errno == EAGAIN));
	if (n <= 0) {
		seterr(err, errlen, "tls: the destination closed the connection before its "
		       "TLS handshake");
		return n == 0 ? -ECONNRESET : -errno;
	}
	if (b == 0x16)                           /* a TLS handshake record */
		return 0;
	tlm_proto_send_error(fd, TLM_ERR_PROTOCOL, "this source requires TLS: start the "
			     "destination with --tls psk");
	seterr(err, errlen, "tls: the destination speaks clear text, not TLS (is it started "
	       "without --tls psk?)");
	return -EPROTO;
}

static int handshake(struct tlm_tls *t, SSL *ssl, int fd, uint64_t deadline, char *err,
		     size_t errlen)
{
	int r, io = 0;

	if (t->server && (r = hs_peek_hello(fd, deadline, err, errlen)) < 0)
		return r;
	ERR_clear_error();
	while ((r = t->server ? SSL_accept(ssl) : SSL_connect(ssl)) != 1) {
		int e = SSL_get_error(ssl, r);

		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			return hs_error(t, ssl, r, 0, err, errlen);
		io = tlm_io_wait(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
		if (io < 0)
			return hs_error(t, ssl, r, io, err, errlen);
	}
	/* Only a PSK handshake authenticates the peer (see the top of this file). */
	if (!SSL_session_reused(ssl)) {
		seterr(err, errlen, "tls: the %s did not use the pre-shared key",
		       t->server ? "destination" : "source");
		return -EACCES;
	}
	return 0;
}

/* ---- relay (userspace TLS) ------------------------------------------------------------------ */

struct relay {
	SSL *ssl;
	int net, app;
	short net_ev, app_ev;                    /* what the last step waits for */
	bool net_eof, app_eof, app_shut, hup, dead;
	size_t n2a_off, n2a_len, a2n_len;
	uint8_t n2a[RELAY_BUF], a2n[RELAY_BUF];
};

/* An SSL call that did not complete: wait for the socket, or give up. */
static bool relay_ssl_wait(struct relay *r, int ret)
{
	int e = SSL_get_error(r->ssl, ret);

	if (e == SSL_ERROR_WANT_READ)
		r->net_ev |= POLLIN;
	else if (e == SSL_ERROR_WANT_WRITE)
		r->net_ev |= POLLOUT;
	else if (e == SSL_ERROR_ZERO_RETURN)
		r->net_eof = true;               /* the end of the stream (FIN or close_notify) */
	else
		r->dead = true;                  /* TLS or TCP failure: the caller sees EOF */
	return e == SSL_ERROR_ZERO_RETURN;
}

/* TLS records to the caller's socket. true when something moved. */
static bool relay_down(struct relay *r)
{
	bool moved = false;

	/* SSL_read returns one record at most: gather what has come, then one send. */
	r->n2a_off = r->n2a_len ? r->n2a_off : 0;
	while (!r->net_eof && !r->n2a_off && r->n2a_len + TLS_RECORD_MAX <= sizeof(r->n2a)) {
		size_t n;
		int ret = SSL_read_ex(r->ssl, r->n2a + r->n2a_len, TLS_RECORD_MAX, &n);

		if (ret != 1) {
			moved |= relay_ssl_wait(r, ret);
			break;
		}
		r->n2a_len += n;
		moved = true;
	}
	if (r->n2a_len) {
		ssize_t w = send(r->app, r->n2a + r->n2a_off, r->n2a_len,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w > 0) {
			r->n2a_off += (size_t)w;
			r->n2a_len -= (size_t)w;
			moved = true;
		} else if (w < 0 && errno == EAGAIN) {
			r->app_ev |= POLLOUT;
		} else if (w < 0 && errno != EINTR) {
			r->dead = true;          /* the caller closed its end */
		}
	}
	if (r->net_eof && !r->n2a_len && !r->app_shut) {
		shutdown(r->app, SHUT_WR);
		r->app_shut = moved = true;
	}
	return moved;
}

/* The caller's bytes to TLS records. true when something moved. */
static bool relay_up(struct relay *r)
{
	bool moved = false;

	if (!r->a2n_len && !r->app_eof) {
		ssize_t n = recv(r->app, r->a2n, sizeof(r->a2n), MSG_DONTWAIT);

		if (n > 0) {
			r->a2n_len = (size_t)n;
			moved = true;
		} else if (n == 0) {
			/* No close_notify: a kTLS peer's recv() would fail with EIO on it
			 * instead of reading the end of the stream. */
			r->app_eof = moved = true;
			shutdown(r->net, SHUT_WR);
		} else if (errno == EAGAIN) {
			r->app_ev |= POLLIN;
		} else if (errno != EINTR) {
			r->dead = true;
		}
	}
	if (r->a2n_len) {
		size_t w;
		int ret = SSL_write_ex(r->ssl, r->a2n, r->a2n_len, &w);

		if (ret == 1) {
			r->a2n_len = 0;          /* no partial writes: all of it */
			moved = true;
		} else {
			relay_ssl_wait(r, ret);
		}
	}
	return moved;
}

static bool relay_done(const struct relay *r)
{
	return r->dead || (r->app_eof && !r->a2n_len && (r->hup || r->app_shut));
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;

	while (!relay_done(r)) {
		struct pollfd p[2];

		r->net_ev = r->app_ev = 0;
		if (relay_down(r) | relay_up(r))
			continue;
		if (relay_done(r))
			break;
		/* A closed caller (POLLHUP) is always reported: watch it only when we wait
		 * for it, or poll would return at once forever. */
		p[0] = (struct pollfd){ .fd = r->net_ev ? r->net : -1, .events = r->net_ev };
		p[1] = (struct pollfd){ .fd = r->hup && !r->app_ev ? -1 : r->app,
					.events = r->app_ev };
		if (p[0].fd < 0 && p[1].fd < 0)
			break;                   /* nothing left to wait for */
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents & (POLLHUP | POLLERR))
			r->hup = true;
	}
	SSL_free(r->ssl);
	close(r->net);
	close(r->app);
	free(r);
	return NULL;
}

/* fd's data to a thread; *app_fd is the caller's end of the socketpair. */
static int relay_start(SSL *ssl, int fd, int *app_fd)
{
	struct relay *r = calloc(1, sizeof(*r));
	pthread_attr_t attr;
	pthread_t th;
	int sp[2], rc;

	if (!r)
		return -ENOMEM;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		free(r);
		return -errno;
	}
	*r = (struct relay){ .ssl = ssl, .net = fd, .app = sp[1] };
	SSL_set_read_ahead(ssl, 1);      /* whole socket reads, not 5-byte headers: the kernel
	                                  * has already declined the receive side */
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&th, &attr, relay_main, r);
	pthread_attr_destroy(&attr);
	if (rc) {
		close(sp[0]);
		close(sp[1]);
		free(r);
		return -rc;
	}
	*app_fd = sp[0];
	return 0;
}

/* ---- wrap ----------------------------------------------------------------------------------- */

static void mode_name(bool ktx, bool krx, char *mode, size_t modelen)
{
	const char *why = strstr(tlm_tls_kernel(), "offers") ?
			  "OpenSSL kept it" : "kernel has no tls ULP";

	if (ktx && krx)
		snprintf(mode, modelen, "kTLS send+recv");
	else if (ktx)
		snprintf(mode, modelen, "kTLS send, userspace recv");
	else
		snprintf(mode, modelen, "userspace (%s)", why);
}

int tlm_tls_wrap(struct tlm_tls *t, int fd, int timeout_ms, int *app_fd, char *mode,
		 size_t modelen, char *err, size_t errlen)
{
	int flags = fcntl(fd, F_GETFL), rc;
	SSL *ssl = SSL_new(t->ctx);
	bool ktx, krx;

	if (!ssl || flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ||
	    !SSL_set_fd(ssl, fd)) {
		seterr(err, errlen, "tls: cannot start a session: %s", ssl ? strerror(errno) :
		       "out of memory");
		SSL_free(ssl);
		return -ENOMEM;
	}
	rc = handshake(t, ssl, fd, tlm_io_deadline(timeout_ms), err, errlen);
	ktx = rc == 0 && BIO_get_ktls_send(SSL_get_wbio(ssl));
	krx = rc == 0 && BIO_get_ktls_recv(SSL_get_rbio(ssl));
	if (rc == 0 && ktx && krx) {
		*app_fd = fd;                    /* the kernel does it all: no SSL any more */
		SSL_free(ssl);
	} else if (rc == 0 && (rc = relay_start(ssl, fd, app_fd)) < 0) {
		seterr(err, errlen, "tls: cannot start the relay thread: %s", strerror(-rc));
	}
	if (rc < 0)
		SSL_free(ssl);
	fcntl(*(rc == 0 ? app_fd : &fd), F_SETFL, flags);   /* the caller's blocking mode */
	if (rc == 0)
		mode_name(ktx, krx, mode, modelen);
	return rc;
}
