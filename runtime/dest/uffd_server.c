/*
 * uffd_server.c — tlm-uffd-server, the destination daemon: owns the guests' userfaultfds
 * and resolves their faults from the local template and the source page server. This is
 * its command line; the daemon is dst_server.h.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dst_ctl.h"
#include "dst_server.h"
#include "log.h"
#include "tlm_proto.h"

struct opts {
	struct dst_server_opts d;
	int level;
};

static const char usage_text[] =
"usage: tlm-uffd-server --sock GLUESOCK --ctl CTLSOCK --key KEYFILE [--source HOST:PORT]\n"
"                       [--template PAGES]... [--outage-limit S] [--stall-timeout S]\n"
"                       [--stage-max MIB] [--net-io MODE] [--bulk-rcvbuf KIB]\n"
"                       [--fault-around PAGES] [--exit-when-done] [--log-level L] [--progress]\n"
"                       [--tls psk|off]\n"
"       tlm-uffd-server --version\n"
"\n"
"Destination daemon of tlm: receives guest RAM regions and their userfaultfds from\n"
"libtlm-glue.so over GLUESOCK and resolves the guest's page faults: template pages from the\n"
"local template (shared page-cache frames), zero pages, template references, and DATA\n"
"pages fetched from the source tlm-page-server (demand first, then the background stream).\n"
"\n"
"  --sock PATH        glue socket (SOCK_SEQPACKET, created 0600)\n"
"  --ctl PATH         control socket (tlmctl -s PATH COMMAND)\n"
"  --key FILE         pre-shared key for the source (0600, 16..64 bytes or hex)\n"
"  --source H:P       source page server, when a REGION names none\n"
"  --template PAGES   local template (index PAGES.tlmi) regions may use; repeatable\n"
"  --outage-limit S   source unreachable this long (seconds, default 60): the region\n"
"                     pauses (faults wait, phase \"paused\") until `resume ID`\n"
"  --stall-timeout S  demands unanswered and nothing received this long (default 10):\n"
"                     the source is taken as hung, its sessions are reconnected\n"
"  --stage-max MIB    memory for DATA pages the source pre-sends while its guest still\n"
"                     runs, all regions together (default 1024; 0 holds none); pages\n"
"                     that do not fit are fetched later like any missing page\n"
"  --net-io MODE      how the bulk stream is received: syscall (default: read() when\n"
"                     readable), uring (an io_uring RECV kept armed; refused at start\n"
"                     if this kernel does not allow it), auto (uring if it does, else\n"
"                     syscall); the log says which\n"
"  --bulk-rcvbuf KIB  receive buffer of a bulk socket (SO_RCVBUF, default 1024; 0: the\n"
"                     kernel's autotuning): what waits there is out of reach of a\n"
"                     fault that wants one of its pages\n"
"  --fault-around N   a fault on a template page maps the template pages around it in\n"
"                     an aligned window of N pages (a power of 2, 1..512, default 16,\n"
"                     the kernel's own window; 1: the page alone)\n"
"  --tls psk|off      TLS 1.3 on both channels, keyed from --key (default off; the\n"
"                     source must say the same): kernel TLS where it is offered\n"
"  --exit-when-done   exit once a region completed and none is active\n"
"  --log-level L      error | warn | info (default) | debug\n"
"  --progress         one progress line per second and region (default on a TTY)\n"
"\n"
"Control commands: " DST_CTL_CMDS "\n";

/* ---- options ------------------------------------------------------------------------------- */

static int opt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int opt_fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tlm-uffd-server: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see --help)\n");
	return -1;
}

static int opt_seconds(const char *name, const char *arg, uint64_t *ms)
{
	char *end;
	double v = strtod(arg, &end);

	if (end == arg || *end || !(v > 0) || v > 86400 * 365)
		return opt_fail("%s '%s': expected seconds > 0", name, arg);
	*ms = (uint64_t)(v * 1000);
	return 0;
}

/* A size given in units of 1 << shift bytes (KiB: 10, MiB: 20), 0..max units. */
static int opt_size(const char *name, const char *arg, unsigned shift, uint64_t max,
		    uint64_t *bytes)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (end == arg || *end || errno || arg[0] == '-' || v > max)
		return opt_fail("%s '%s': expected %s, 0..%llu", name, arg,
				shift == 20 ? "MiB" : "KiB", (unsigned long long)max);
	*bytes = (uint64_t)v << shift;
	return 0;
}

static int opt_one(struct opts *opts, int c, const char *arg)
{
	struct dst_server_opts *o = &opts->d;

	switch (c) {
	case 's': o->sock = arg; return 0;
	case 'c': o->ctl = arg; return 0;
	case 'k': o->key = arg; return 0;
	case 'S':
		if (!strrchr(arg, ':') || strrchr(arg, ':') == arg || !strrchr(arg, ':')[1])
			return opt_fail("--source '%s': expected HOST:PORT", arg);
		o->source = arg;
		return 0;
	case 't': {
		const char **t = realloc(o->tmpl, (o->ntmpl + 1) * sizeof(*t));

		if (!t)
			return opt_fail("%s", "out of memory");
		o->tmpl = t;
		o->tmpl[o->ntmpl++] = arg;
		return 0;
	}
	case 'o':
		return opt_seconds("--outage-limit", arg, &o->outage_limit_ms);
	case 'T':
		return opt_seconds("--stall-timeout", arg, &o->stall_ms);
	case 'm':
		return opt_size("--stage-max", arg, 20, 1ull << 24, &o->stage_max);
	case 'r':
		return opt_size("--bulk-rcvbuf", arg, 10, 1ull << 20, &o->bulk_rcvbuf);
	case 'n':
		if (dst_net_io_parse(arg, &o->net_io) < 0)
			return opt_fail("--net-io '%s': expected uring, syscall or auto", arg);
		return 0;
	case 'a': {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(arg, &end, 10);
		if (end == arg || *end || errno || arg[0] == '-' || !v ||
		    v > DST_FAULT_AROUND_MAX || (v & (v - 1)))
			return opt_fail("--fault-around '%s': expected a power of 2, 1..%u", arg,
					DST_FAULT_AROUND_MAX);
		o->fault_around = v;
		return 0;
	}
	case 'x': o->exit_when_done = true; return 0;
	case 'L':
		if (tlm_tls_parse(arg, &o->tls) < 0)
			return opt_fail("--tls '%s': expected psk or off", arg);
		return 0;
	case 'p': o->progress = true; return 0;
	case 'l':
		opts->level = tlm_log_parse_level(arg);
		if (opts->level < 0)
			return opt_fail("--log-level '%s': expected error, warn, info or debug", arg);
		return 0;
	}
	return -1;
}

/* 0 = run, 1 = --help printed, -1 = bad options (message printed). */
static int parse_opts(int argc, char **argv, struct opts *opts)
{
	struct dst_server_opts *o = &opts->d;
	static const struct option lo[] = {
		{ "sock", required_argument, NULL, 's' },
		{ "ctl", required_argument, NULL, 'c' },
		{ "key", required_argument, NULL, 'k' },
		{ "source", required_argument, NULL, 'S' },
		{ "template", required_argument, NULL, 't' },
		{ "outage-limit", required_argument, NULL, 'o' },
		{ "stall-timeout", required_argument, NULL, 'T' },
		{ "stage-max", required_argument, NULL, 'm' },
		{ "net-io", required_argument, NULL, 'n' },
		{ "bulk-rcvbuf", required_argument, NULL, 'r' },
		{ "fault-around", required_argument, NULL, 'a' },
		{ "tls", required_argument, NULL, 'L' },
		{ "exit-when-done", no_argument, NULL, 'x' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	opts->level = TLM_LOG_INFO;
	o->outage_limit_ms = 60000;
	o->stall_ms = 10000;
	o->stage_max = DST_STAGE_MAX_DEFAULT;
	o->net_io = DST_NET_IO_SYSCALL;          /* io_uring measured no faster (dst_rx.h) */
	o->bulk_rcvbuf = DST_PEER_RCVBUF_DEFAULT;
	o->fault_around = DST_FAULT_AROUND_DEFAULT;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		if (c == 'h' || c == 'V') {
			if (c == 'h')
				fputs(usage_text, stdout);
			else
				printf("tlm-uffd-server %s (protocol %u)\n", TLM_VERSION,
				       TLM_PROTO_VERSION);
			return 1;
		}
		if (c == '?' || c == ':')
			return opt_fail("bad option or missing argument: '%s'", argv[optind - 1]);
		if (opt_one(opts, c, optarg) < 0)
			return -1;
	}
	if (optind < argc)
		return opt_fail("unexpected argument '%s'", argv[optind]);
	if (!o->sock)
		return opt_fail("%s is required", "--sock");
	if (!o->ctl)
		return opt_fail("%s is required", "--ctl");
	if (!o->key)
		return opt_fail("%s is required", "--key");
	return 0;
}

int main(int argc, char **argv)
{
	struct dst_server s;
	struct opts o = { 0 };
	int rc;

	tlm_log_init(argv[0], TLM_LOG_INFO);
	rc = parse_opts(argc, argv, &o);
	if (rc)
		return rc > 0 ? 0 : 2;
	tlm_log_set_level((enum tlm_log_level)o.level);
	o.d.progress = o.d.progress || isatty(STDERR_FILENO);
	rc = dst_server_open(&s, &o.d) < 0 || dst_server_run(&s);
	dst_server_close(&s);
	free(o.d.tmpl);
	return rc ? 1 : 0;
}
