/*
 * tlm-fault-proxy — a seeded, reproducible TCP proxy for fault-injection tests: placed
 * between tlm-uffd-server and tlm-page-server, it relays every accepted connection to
 * --upstream and breaks some of them on purpose.
 *
 *   tlm-fault-proxy --listen HOST:PORT --upstream HOST:PORT --seed S [--faults N]
 *                   [--prob PCT] [--rate MBPS]
 *
 * Prints "port P" once listening. Each accepted connection draws a plan from the seeded
 * generator (the same seed and the same sequence of connections give the same plan):
 * with probability PCT % (default 60) and while fewer than N faults (default 3) were
 * injected, one of
 *   cut       close both sides before forwarding the read chunk that crosses byte K
 *             (K log-uniform in 16 B .. 1 MiB, direction drawn) — a link that breaks
 *   truncate  forward exactly K bytes, then close: a frame cut in its middle
 *   delay     every chunk both ways held 1..40 ms
 *   reorder   source->destination chunks held 50..400 ms on this connection only: one
 *             channel lags the other (TCP itself never reorders)
 *   drop      the connection is closed at once and new ones are refused for 0.1..1.5 s
 *             (the link is down)
 * On SIGUSR1 every open connection is cut at once (each counts as a cut) and new ones are
 * refused for 0..500 ms (drawn from the same generator): a link that breaks at a moment
 * the test chooses, e.g. during a live phase whose traffic no byte count can aim at.
 * On SIGTERM/SIGINT it prints "faults cut=A truncate=B delay=C reorder=D drop=E conns=F"
 * and exits 0. Counts are of faults that took effect (a cut whose K is never reached does
 * not count). --rate limits each direction of a connection to MBPS MB/s, so that a short
 * migration lasts long enough for faults to land in its middle. Memory is bounded: at
 * most BUF_CAP bytes are buffered per direction.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "util.h"
#include "tlm_test.h"

#define BUF_CAP   (1u << 20)
#define MAX_SEGS  256               /* delayed chunks per direction */
#define READ_MAX  (64u * 1024)

enum fp_kind { FP_NONE = 0, FP_CUT, FP_TRUNC, FP_DELAY, FP_REORDER, FP_DROP, FP_NKINDS };

static const char *const fp_names[FP_NKINDS] = {
	"none", "cut", "truncate", "delay", "reorder", "drop",
};

/* One direction of a connection: bytes read from `from`, waiting to go to `to`. */
struct fp_dir {
	int from, to;
	uint8_t *buf;
	size_t len;
	uint64_t passed;                 /* bytes read from `from` so far */
	uint64_t delay_ns;               /* hold each chunk this long */
	uint64_t cut_at;                 /* break when passed would cross it (0 = never) */
	uint64_t next_free;              /* --rate: the link is busy until then */
	bool trunc, eof;
	struct { size_t end; uint64_t at; } seg[MAX_SEGS];
	unsigned nseg;
};

struct fp_pair {
	unsigned id;
	enum fp_kind kind;
	struct fp_dir d[2];              /* [0] client->upstream, [1] upstream->client */
	bool dead;
	struct fp_pair *next;
};

struct fp {
	int epfd, lfd, sigfd, usr1fd;
	const char *upstream;
	uint64_t rng;
	unsigned prob, max_faults, nfaults, nconns, rate;
	uint64_t refuse_until;
	uint64_t count[FP_NKINDS];
	struct fp_pair *pairs;
};

static uint64_t fp_range(struct fp *f, uint64_t lo, uint64_t hi)
{
	return lo + tt_rand(&f->rng) % (hi - lo + 1);
}

static void fp_count(struct fp *f, struct fp_pair *p, enum fp_kind k, const char *what)
{
	f->count[k]++;
	fprintf(stderr, "tlm-fault-proxy: conn %u: %s%s\n", p->id, fp_names[k], what);
}

/* ---- plans ----------------------------------------------------------------------------- */

/* Destination-bound bytes are most of the traffic: 3 cuts of 4 go there (K up to 1 MiB);
 * the other way carries the handshake and DEMANDs only (K up to 4 KiB). */
static void fp_plan_cut(struct fp *f, struct fp_pair *p, bool trunc)
{
	bool to_dst = fp_range(f, 0, 3) != 0;
	struct fp_dir *d = &p->d[to_dst ? 1 : 0];
	unsigned bits = (unsigned)fp_range(f, 4, to_dst ? 19 : 11);

	d->cut_at = fp_range(f, 1ull << bits, (2ull << bits) - 1);
	d->trunc = trunc;
}

/* Draw the connection's plan; false if it is dropped at once. */
static bool fp_plan(struct fp *f, struct fp_pair *p)
{
	if (tlm_now_ns() < f->refuse_until) {
		fp_count(f, p, FP_DROP, " (link still down)");
		return false;
	}
	if (f->nfaults >= f->max_faults || fp_range(f, 0, 99) >= f->prob)
		return true;
	f->nfaults++;
	p->kind = (enum fp_kind)fp_range(f, FP_CUT, FP_DROP);
	switch (p->kind) {
	case FP_CUT:
	case FP_TRUNC:
		fp_plan_cut(f, p, p->kind == FP_TRUNC);
		break;
	case FP_DELAY:
		p->d[0].delay_ns = p->d[1].delay_ns = fp_range(f, 1, 40) * 1000000ull;
		fp_count(f, p, FP_DELAY, "");
		break;
	case FP_REORDER:
		p->d[1].delay_ns = fp_range(f, 50, 400) * 1000000ull;
		fp_count(f, p, FP_REORDER, "");
		break;
	default:
		f->refuse_until = tlm_now_ns() + fp_range(f, 100, 1500) * 1000000ull;
		fp_count(f, p, FP_DROP, "");
		return false;
	}
	return true;
}

/* ---- connections ------------------------------------------------------------------------ */

static void fp_pair_close(struct fp *f, struct fp_pair *p)
{
	if (p->dead)
		return;
	p->dead = true;
	epoll_ctl(f->epfd, EPOLL_CTL_DEL, p->d[0].from, NULL);
	epoll_ctl(f->epfd, EPOLL_CTL_DEL, p->d[1].from, NULL);
	close(p->d[0].from);
	close(p->d[1].from);
}

/* Interest of one socket: read while its direction has room, write while the other
 * direction has bytes (level-triggered; recomputed after every event). */
static void fp_rearm(struct fp *f, struct fp_pair *p)
{
	for (int i = 0; i < 2 && !p->dead; i++) {
		struct epoll_event ev = { .data.ptr = p };
		const struct fp_dir *in = &p->d[i], *out = &p->d[1 - i];

		if (!in->eof && in->len < BUF_CAP && in->nseg < MAX_SEGS)
			ev.events |= EPOLLIN;
		if (out->nseg && out->seg[0].at <= tlm_now_ns())
			ev.events |= EPOLLOUT;
		epoll_ctl(f->epfd, EPOLL_CTL_MOD, in->from, &ev);
	}
}

static int fp_pair_new(struct fp *f, int cfd)
{
	struct fp_pair *p = calloc(1, sizeof(*p));
	char err[256];
	int ufd;

	if (!p)
		return -ENOMEM;
	p->id = f->nconns++;
	ufd = fp_plan(f, p) ? tlm_tcp_connect(f->upstream, 2000, err, sizeof(err)) : -1;
	if (ufd < 0 || tlm_set_nonblock(ufd, 1) < 0 || tlm_set_nonblock(cfd, 1) < 0) {
		if (ufd >= 0)
			close(ufd);
		close(cfd);                /* upstream down (or dropped): like a reset link */
		free(p);
		return 0;
	}
	p->d[0].from = p->d[1].to = cfd;
	p->d[0].to = p->d[1].from = ufd;
	for (int i = 0; i < 2; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = p };

		p->d[i].buf = malloc(BUF_CAP);
		epoll_ctl(f->epfd, EPOLL_CTL_ADD, p->d[i].from, &ev);
	}
	p->next = f->pairs;
	f->pairs = p;
	if (!p->d[0].buf || !p->d[1].buf)
		fp_pair_close(f, p);
	return 0;
}

static void fp_accept(struct fp *f)
{
	int cfd;

	while ((cfd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
		fp_pair_new(f, cfd);
}

/* Bytes of a read chunk to keep before a cut; returns false when the link breaks now. */
static bool fp_apply_cut(struct fp *f, struct fp_pair *p, struct fp_dir *d, ssize_t *n)
{
	if (!d->cut_at || d->passed + (uint64_t)*n < d->cut_at)
		return true;
	fp_count(f, p, d->trunc ? FP_TRUNC : FP_CUT, d == &p->d[0] ? " (to the source)" :
		 " (to the destination)");
	*n = d->trunc ? (ssize_t)(d->cut_at - d->passed) : 0;
	d->cut_at = 0;
	return false;
}

/* When a chunk of n bytes read now may go: after the delay and, with --rate, once the
 * chunks before it have had their time on the link. */
static uint64_t fp_release(const struct fp *f, struct fp_dir *d, size_t n)
{
	uint64_t at = tlm_now_ns() + d->delay_ns;

	if (!f->rate)
		return at;
	if (at < d->next_free)
		at = d->next_free;
	d->next_free = at + (uint64_t)n * 1000 / f->rate;
	return at;
}

/* Read what fits; a cut forwards what it keeps synchronously, then closes both sides. */
static void fp_read(struct fp *f, struct fp_pair *p, struct fp_dir *d)
{
	size_t room = BUF_CAP - d->len;
	ssize_t n = read(d->from, d->buf + d->len, room < READ_MAX ? room : READ_MAX);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		d->eof = true;             /* forward what is buffered, then close */
		return;
	}
	if (!fp_apply_cut(f, p, d, &n)) {
		/* best effort, never blocking: the other side may not be reading */
		if (write(d->to, d->buf, d->len + (size_t)n) < 0)
			d->len = 0;
		fp_pair_close(f, p);
		return;
	}
	d->passed += (uint64_t)n;
	d->len += (size_t)n;
	d->seg[d->nseg].end = d->len;
	d->seg[d->nseg++].at = fp_release(f, d, (size_t)n);
}

/* Write the released chunks of d. */
static void fp_write(struct fp *f, struct fp_pair *p, struct fp_dir *d)
{
	uint64_t now = tlm_now_ns();
	unsigned k = 0;
	size_t ready;
	ssize_t n;

	while (k < d->nseg && d->seg[k].at <= now)
		k++;
	if (!k)
		return;
	ready = d->seg[k - 1].end;
	n = write(d->to, d->buf, ready);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			fp_pair_close(f, p);
		return;
	}
	memmove(d->buf, d->buf + n, d->len - (size_t)n);
	d->len -= (size_t)n;
	for (k = 0; k < d->nseg && d->seg[k].end <= (size_t)n; k++)
		;
	memmove(d->seg, d->seg + k, (d->nseg - k) * sizeof(d->seg[0]));
	d->nseg -= k;
	for (unsigned i = 0; i < d->nseg; i++)
		d->seg[i].end -= (size_t)n;
}

/* Released bytes out both ways; a side that ended closes the pair once drained. */
static void fp_flush(struct fp *f, struct fp_pair *p)
{
	for (int i = 0; i < 2 && !p->dead; i++) {
		fp_write(f, p, &p->d[i]);
		if (!p->dead && p->d[i].eof && !p->d[i].len)
			fp_pair_close(f, p);
	}
}

static void fp_event(struct fp *f, struct fp_pair *p, uint32_t events)
{
	for (int i = 0; i < 2 && !p->dead; i++)
		if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			fp_read(f, p, &p->d[i]);
	fp_flush(f, p);
}

/* SIGUSR1: the link breaks now; new connections are refused for a moment. */
static void fp_cut_all(struct fp *f)
{
	struct signalfd_siginfo si;

	while (read(f->usr1fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		;
	for (struct fp_pair *p = f->pairs; p; p = p->next) {
		if (p->dead)
			continue;
		fp_count(f, p, FP_CUT, " (SIGUSR1: every connection)");
		fp_pair_close(f, p);
	}
	f->refuse_until = tlm_now_ns() + fp_range(f, 0, 500) * 1000000ull;
}

/* ---- main -------------------------------------------------------------------------------- */

/* Writes due, closed pairs freed; returns the epoll timeout until the next release. */
static int fp_sweep(struct fp *f)
{
	uint64_t now = tlm_now_ns(), next = UINT64_MAX;

	for (struct fp_pair **pp = &f->pairs; *pp;) {
		struct fp_pair *p = *pp;

		for (int i = 0; i < 2 && !p->dead; i++) {
			if (p->d[i].nseg && p->d[i].seg[0].at > now && p->d[i].seg[0].at < next)
				next = p->d[i].seg[0].at;
		}
		fp_rearm(f, p);
		if (p->dead) {
			*pp = p->next;
			free(p->d[0].buf);
			free(p->d[1].buf);
			free(p);
		} else {
			pp = &p->next;
		}
	}
	return next == UINT64_MAX ? -1 : (int)((next - now) / 1000000ull) + 1;
}

static int fp_loop(struct fp *f)
{
	struct epoll_event ev[64];
	int timeout = -1;

	for (;;) {
		int n = epoll_wait(f->epfd, ev, 64, timeout);

		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			if (ev[i].data.ptr == &f->sigfd)
				return 0;
			if (ev[i].data.ptr == &f->usr1fd) {
				fp_cut_all(f);
				continue;
			}
			if (ev[i].data.ptr == &f->lfd)
				fp_accept(f);
			else if (!((struct fp_pair *)ev[i].data.ptr)->dead)
				fp_event(f, ev[i].data.ptr, ev[i].events);
		}
		for (struct fp_pair *p = f->pairs; p; p = p->next)
			fp_flush(f, p);
		timeout = fp_sweep(f);
	}
}

static int fp_usage(FILE *out, int rc)
{
	fprintf(out, "usage: tlm-fault-proxy --listen HOST:PORT --upstream HOST:PORT --seed S "
		"[--faults N] [--prob PCT] [--rate MBPS]\n");
	return rc;
}

static int fp_opts(struct fp *f, int argc, char **argv, const char **listen)
{
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "upstream", required_argument, NULL, 'u' },
		{ "seed", required_argument, NULL, 's' },
		{ "faults", required_argument, NULL, 'f' },
		{ "prob", required_argument, NULL, 'p' },
		{ "rate", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	f->prob = 60;
	f->max_faults = 3;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'l': *listen = optarg; break;
		case 'u': f->upstream = optarg; break;
		case 's': f->rng = strtoull(optarg, NULL, 0); break;
		case 'f': f->max_faults = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'p': f->prob = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'r': f->rate = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'h': return fp_usage(stdout, 1);
		default: return fp_usage(stderr, -1);
		}
	}
	if (!*listen || !f->upstream || f->prob > 100) {
		fprintf(stderr, "tlm-fault-proxy: --listen and --upstream are required, "
			"--prob is 0..100\n");
		return fp_usage(stderr, -1);
	}
	return 0;
}

static int fp_setup(struct fp *f, const char *listen)
{
	struct epoll_event el = { .events = EPOLLIN, .data.ptr = &f->lfd };
	struct epoll_event es = { .events = EPOLLIN, .data.ptr = &f->sigfd };
	struct epoll_event eu = { .events = EPOLLIN, .data.ptr = &f->usr1fd };
	struct sockaddr_storage sa;
	sigset_t usr1;
	socklen_t slen = sizeof(sa);
	char err[256];

	f->sigfd = tlm_term_signalfd(0);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	f->usr1fd = sigprocmask(SIG_BLOCK, &usr1, NULL) < 0 ? -1 :
		    signalfd(-1, &usr1, SFD_NONBLOCK | SFD_CLOEXEC);
	f->epfd = epoll_create1(EPOLL_CLOEXEC);
	f->lfd = tlm_tcp_listen(listen, err, sizeof(err));
	if (f->lfd < 0 || f->sigfd < 0 || f->usr1fd < 0 || f->epfd < 0 ||
	    getsockname(f->lfd, (struct sockaddr *)&sa, &slen) < 0) {
		fprintf(stderr, "tlm-fault-proxy: %s\n", f->lfd < 0 ? err : strerror(errno));
		return -1;
	}
	tlm_set_nonblock(f->lfd, 1);
	epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->lfd, &el);
	epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->sigfd, &es);
	epoll_ctl(f->epfd, EPOLL_CTL_ADD, f->usr1fd, &eu);
	printf("port %u\n", ntohs(((struct sockaddr_in *)&sa)->sin_port));
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	struct fp f = { .epfd = -1, .lfd = -1, .sigfd = -1, .usr1fd = -1 };
	const char *listen = NULL;
	int rc = fp_opts(&f, argc, argv, &listen);

	if (rc)
		return rc > 0 ? 0 : 2;
	if (fp_setup(&f, listen) < 0)
		return 1;
	rc = fp_loop(&f);
	while (f.pairs) {
		struct fp_pair *p = f.pairs;

		f.pairs = p->next;
		fp_pair_close(&f, p);
		free(p->d[0].buf);
		free(p->d[1].buf);
		free(p);
	}
	printf("faults cut=%llu truncate=%llu delay=%llu reorder=%llu drop=%llu conns=%u\n",
	       (unsigned long long)f.count[FP_CUT], (unsigned long long)f.count[FP_TRUNC],
	       (unsigned long long)f.count[FP_DELAY], (unsigned long long)f.count[FP_REORDER],
	       (unsigned long long)f.count[FP_DROP], f.nconns);
	return rc < 0 ? 1 : 0;
}
