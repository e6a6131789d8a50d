/*
 * test_tls.c — the TLS layer (tlm_tls.h) over real loopback TCP, server in a second
 * thread: a stream each way with half-closes carried through (whatever data path this
 * kernel gives: kTLS or the relay), another key refused on both sides, TLS against a
 * clear-text tlm peer either way round (both sides say why), silent peers timing out, and
 * a TLS server that does not know the PSK but offers a certificate refused by the client.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tlm_io.h"
#include "tlm_proto.h"
#include "tlm_tls.h"

#define STREAM (4u << 20)
#define TIMEOUT_MS 5000

enum role { R_TLS_ECHO, R_TLS_ONLY, R_CLEAR_HS, R_SILENT, R_CERT };

struct server {
	int lfd, rc;
	enum role role;
	uint8_t key_fill;
	char err[256], mode[96];
	pthread_t th;
};

static void fill_key(struct tlm_key *k, uint8_t fill)
{
	k->len = 32;
	memset(k->b, fill, k->len);
}

static void pattern(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 131 + seed + (i >> 12));
}

/* Read until EOF: exactly `want` bytes of the pattern, or -1. */
static int drain_check(int fd, size_t want, uint8_t seed)
{
	uint8_t *got = malloc(want + 1), *exp = malloc(want);
	size_t n = 0;
	int ok;

	pattern(exp, want, seed);
	for (;;) {
		ssize_t r = read(fd, got + n, want + 1 - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
		if (n > want)
			break;
	}
	ok = n == want && memcmp(got, exp, want) == 0;
	free(got);
	free(exp);
	return ok ? 0 : -1;
}

static int send_pattern(int fd, size_t n, uint8_t seed)
{
	uint8_t *p = malloc(n);
	int rc;

	pattern(p, n, seed);
	rc = tlm_write_full(fd, p, n);
	free(p);
	return rc;
}

/* A TLS 1.3 server with a fresh self-signed certificate and no PSK: what an on-path
 * attacker without the key can offer. 0 if its handshake completed. */
static int cert_server(int fd)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	SSL *ssl;
	int rc;

	assert_non_null(ctx);
	assert_non_null(pk);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, pk);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"tlm-source", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
	assert_int_equal(SSL_CTX_use_certificate(ctx, x), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(ctx, pk), 1);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	rc = SSL_accept(ssl) == 1 ? 0 : -EPROTO;
	SSL_free(ssl);
	X509_free(x);
	EVP_PKEY_free(pk);
	SSL_CTX_free(ctx);
	return rc;
}

static void *server_main(void *arg)
{
	struct server *s = arg;
	struct tlm_tls *t = NULL;
	struct tlm_key k;
	struct tlm_msg open;
	uint8_t chan;
	int fd = accept(s->lfd, NULL, NULL), app = -1;

	fill_key(&k, s->key_fill);
	if (s->role == R_SILENT) {          /* accept, say nothing, wait for the peer's close */
		char b;

		while (fd >= 0 && read(fd, &b, 1) > 0)
			;
	} else if (s->role == R_CERT) {
		s->rc = cert_server(fd);
	} else if (s->role == R_CLEAR_HS) {
		s->rc = tlm_proto_server_handshake(fd, &k, &chan, &open, TIMEOUT_MS, s->err,
						   sizeof(s->err));
	} else if ((s->rc = tlm_tls_new(&t, true, &k, s->err, sizeof(s->err))) == 0 &&
		   (s->rc = tlm_tls_wrap(t, fd, TIMEOUT_MS, &app, s->mode, sizeof(s->mode),
					 s->err, sizeof(s->err))) == 0) {
		fd = -1;                    /* app owns it now (or is it) */
		if (s->role == R_TLS_ECHO &&
		    (drain_check(app, STREAM, 1) < 0 || send_pattern(app, STREAM, 2) < 0))
			s->rc = -EIO;
		close(app);
	}
	tlm_tls_free(t);
	if (fd >= 0)
		close(fd);
	return NULL;
}

static int connect_to(struct server *s)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &len), 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, len), 0);
	return fd;
}

static void server_start(struct server *s, enum role role, uint8_t key_fill)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	memset(s, 0, sizeof(*s));
	s->role = role;
	s->key_fill = key_fill;
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s->lfd >= 0);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->lfd, 1), 0);
	assert_int_equal(pthread_create(&s->th, NULL, server_main, s), 0);
}

static void server_join(struct server *s)
{
	pthread_join(s->th, NULL);
	close(s->lfd);
	print_message("server: rc %d \"%s\"\n", s->rc, s->err);
}

/* A client wrap against s with key_fill: its rc, err and the fd to use. */
static int client_wrap(struct server *s, uint8_t key_fill, int timeout_ms, int *app,
		       char *err, size_t errlen, char *mode, size_t modelen)
{
	struct tlm_tls *t;
	struct tlm_key k;
	int fd = connect_to(s), rc;

	fill_key(&k, key_fill);
	assert_int_equal(tlm_tls_new(&t, false, &k, err, errlen), 0);
	rc = tlm_tls_wrap(t, fd, timeout_ms, app, mode, modelen, err, errlen);
	tlm_tls_free(t);
	if (rc)
		close(fd);
	print_message("client: rc %d \"%s\"%s%s\n", rc, rc ? err : "", rc ? "" : " mode ",
		      rc ? "" : mode);
	return rc;
}

static void test_stream_both_ways(void **state)
{
	struct server s;
	char err[256], mode[96];
	int app;

	server_start(&s, R_TLS_ECHO, 7);
	assert_int_equal(client_wrap(&s, 7, TIMEOUT_MS, &app, err, sizeof(err), mode,
				     sizeof(mode)), 0);
	assert_true(strstr(mode, "kTLS") || strstr(mode, "userspace"));
	assert_int_equal(send_pattern(app, STREAM, 1), 0);
	assert_int_equal(shutdown(app, SHUT_WR), 0);     /* the server reads EOF after it */
	assert_int_equal(drain_check(app, STREAM, 2), 0); /* ... and its whole answer */
	close(app);
	server_join(&s);
	assert_int_equal(s.rc, 0);
	assert_string_equal(s.mode, mode);
}

static void test_wrong_key(void **state)
{
	struct server s;
	char err[256], mode[96];
	int app;

	server_start(&s, R_TLS_ONLY, 7);
	assert_int_equal(client_wrap(&s, 8, TIMEOUT_MS, &app, err, sizeof(err), mode,
				     sizeof(mode)), -EACCES);
	assert_non_null(strstr(err, "authentication failed"));
	server_join(&s);
	assert_int_equal(s.rc, -EACCES);
	assert_non_null(strstr(s.err, "pre-shared key differs"));
}

/* A clear-text tlm client at a TLS server: refused in its own protocol, with the reason. */
static void test_clear_client(void **state)
{
	struct tlm_msg open = { .type = TLM_MSG_VM_OPEN }, acc;
	struct server s;
	struct tlm_key k;
	char err[256] = "";
	int fd, rc;

	open.u.vm_open.ram_size = 1 << 20;
	open.u.vm_open.page_size = TLM_PROTO_PAGE_SIZE;
	snprintf(open.u.vm_open.vm_id, sizeof(open.u.vm_open.vm_id), "vm1");
	fill_key(&k, 7);
	server_start(&s, R_TLS_ONLY, 7);
	fd = connect_to(&s);
	rc = tlm_proto_client_handshake(fd, &k, TLM_CHAN_URGENT, &open, &acc, TIMEOUT_MS, err,
					sizeof(err));
	print_message("client: rc %d \"%s\"\n", rc, err);
	close(fd);
	server_join(&s);
	assert_int_equal(rc, -EPROTO);
	assert_non_null(strstr(err, "requires TLS"));
	assert_int_equal(s.rc, -EPROTO);
	assert_non_null(strstr(s.err, "speaks clear text"));
}

/* A TLS client at a clear-text tlm server: both say the other speaks something else. */
static void test_clear_server(void **state)
{
	struct server s;
	char err[256], mode[96];
	int app;

	server_start(&s, R_CLEAR_HS, 7);
	assert_int_equal(client_wrap(&s, 7, TIMEOUT_MS, &app, err, sizeof(err), mode,
				     sizeof(mode)), -EPROTO);
	assert_non_null(strstr(err, "answered in clear text"));
	server_join(&s);
	assert_int_equal(s.rc, -EPROTO);
	assert_non_null(strstr(s.err, "peer speaks TLS"));
}

/* Silent peers: each side gives up at its deadline, with a reason. */
static void test_silent_peers(void **state)
{
	struct server s;
	char err[256], mode[96];
	uint64_t t0;
	int app, fd;

	server_start(&s, R_SILENT, 7);
	t0 = tlm_io_deadline(1);
	assert_int_equal(client_wrap(&s, 7, 300, &app, err, sizeof(err), mode, sizeof(mode)),
			 -ETIMEDOUT);
	assert_true(tlm_io_deadline(1) - t0 < (uint64_t)TIMEOUT_MS * 1000000ull);
	assert_non_null(strstr(err, "timed out"));
	server_join(&s);

	server_start(&s, R_TLS_ONLY, 7);
	fd = connect_to(&s);                /* says nothing until the server gives up */
	server_join(&s);
	close(fd);
	/* TIMEOUT_MS in the server: it returned, so it did not hang */
	assert_int_equal(s.rc, -ETIMEDOUT);
	assert_non_null(strstr(s.err, "timed out"));
}

/* A server without the PSK cannot make the client settle for a certificate. */
static void test_certificate_refused(void **state)
{
	struct server s;
	char err[256], mode[96];
	int app;

	server_start(&s, R_CERT, 7);
	assert_int_equal(client_wrap(&s, 7, TIMEOUT_MS, &app, err, sizeof(err), mode,
				     sizeof(mode)), -EACCES);
	assert_non_null(strstr(err, "offered a certificate"));
	server_join(&s);
	assert_int_not_equal(s.rc, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream_both_ways),
		cmocka_unit_test(test_wrong_key),
		cmocka_unit_test(test_clear_client),
		cmocka_unit_test(test_clear_server),
		cmocka_unit_test(test_silent_peers),
		cmocka_unit_test(test_certificate_refused),
	};

	signal(SIGPIPE, SIG_IGN);           /* as the daemons: OpenSSL writes with write() */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
