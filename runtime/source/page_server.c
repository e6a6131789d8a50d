/*
 * tlm-page-server — the source-host daemon's main: options, then the server
 * (src_server.h) until SIGTERM/SIGINT or `shutdown`.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "src_server.h"
#include "tlm_proto.h"
#include "tlm_tls.h"
#include "util.h"

static const char usage[] =
"usage: tlm-page-server --listen HOST:PORT --key KEYFILE --ctl CTLSOCK\n"
"                       [--region SPEC]... [--log-level L] [--bulk-delay MS]\n"
"                       [--bulk-ahead SIZE] [--bulk-lowat SIZE] [--bulk-pace P]\n"
"                       [--bulk-hold] [--live-rate MiB]\n"
"                       [--policy post|hybrid|auto] [--presend-max MiB]\n"
"                       [--presend-left PAGES] [--presend-rounds N] [--tls psk|off]\n"
"       tlm-page-server --version\n"
"\n"
"Source side of a tlm post-copy migration: serves guest RAM regions to the destination's\n"
"tlm-uffd-server. Nothing of a region is sent before `freeze`; then every page is\n"
"classified (TEMPLATE / ZERO / REF / DATA), the class map and the DATA pages stream on the\n"
"bulk connection and demand requests are answered first on the urgent connection.\n"
"With `live` before the stop, a worker classifies the running guest under dirty tracking\n"
"(PAGEMAP_SCAN + userfaultfd WP_ASYNC registered by libtlm-glue.so in QEMU (TLM_TRACK=1),\n"
"else soft-dirty) and `freeze` redoes only the pages written since: the stopped guest\n"
"waits for what it wrote lately, not for its RAM size.\n"
"\n"
"options:\n"
"  --listen HOST:PORT  TCP address for destinations (port 0 picks a free port; the port\n"
"                      is then printed on stdout as \"port N\")\n"
"  --key KEYFILE       pre-shared key (16..64 bytes, raw or hex; mode 0600 or 0400)\n"
"  --ctl CTLSOCK       control socket path (created 0600 in a 0700 directory)\n"
"  --tls psk|off       TLS 1.3 on both channels, keyed from --key (default off; the\n"
"                      destination must say the same): kernel TLS where it is offered\n"
"  --region SPEC       a region to serve (repeatable, also: ctl add-region SPEC)\n"
"  --log-level L       error, warn, info (default), debug\n"
"  --bulk-delay MS     start the background DATA stream MS ms after freeze (the class\n"
"                      map goes at once): until then DATA pages move only on demand\n"
"                      (benchmarks measure demand latency without background load)\n"
"  --bulk-hold         hold the background DATA stream after freeze until the control\n"
"                      command bulk-release (tests make a fault happen while pages are\n"
"                      certainly still missing)\n"
"  --bulk-ahead SIZE   a demand for a DATA page already queued on the background stream\n"
"                      is left to that copy while at most SIZE bytes of the stream lie\n"
"                      between what the destination has handled (its CREDIT) and the\n"
"                      copy (k/M/G; default 8M, 0 = always answer on urgent): larger\n"
"                      saves duplicate pages, smaller bounds the demand's wait\n"
"  --bulk-pace P       auto (default): on a link with an RTT of 2 ms or more, measure\n"
"                      the link's rate over the stream's first 16 MiB, then pace the\n"
"                      stream at 85 % of it so demand replies do not queue behind it;\n"
"                      off; or a fixed rate (bytes/s with k/M/G, or e.g. 180mbit)\n"
"  --bulk-lowat SIZE   TCP_NOTSENT_LOWAT of bulk connections: at most SIZE bytes of the\n"
"                      stream wait unsent in the kernel (k/M/G, up to 1G; default 0 =\n"
"                      the kernel's). On loopback 256k..1M cost the stream about half\n"
"                      its rate and gained no demand latency (urgent has its own socket)\n"
"  --live-rate MiB     live phase: read at most MiB MiB/s of guest RAM (default 512,\n"
"                      0 = no limit)\n"
"  --policy P          live phase, with a bulk session open: post sends the live class\n"
"                      map only; hybrid and auto also pre-send its DATA pages in rounds\n"
"                      while the guest runs (a copy counts only if the guest does not\n"
"                      write the page again). Ready to switch (stats \"ready\"): post\n"
"                      once the live map is sent; hybrid once a round leaves at most\n"
"                      --presend-left pages to send or after --presend-rounds rounds;\n"
"                      auto (default) also as soon as the next round would leave half\n"
"                      as many or more (a write-heavy guest: the rest goes post-copy)\n"
"  --presend-max MiB   pre-send at most MiB MiB per VM, resends included (default 1024)\n"
"  --presend-left N    pages a converged round may leave (default 256)\n"
"  --presend-rounds N  rounds before hybrid and auto are ready anyway (default 8)\n"
"  --help              this text\n"
"\n"
"SPEC:\n"
"  ID,file=PATH[,offset=N][,size=N][,template=PAGES][,pid=PID,addr=0xADDR]\n"
"        RAM file mapped read-only; size defaults to the rest of the file; pid/addr:\n"
"        the process mapping the file's byte `offset` at addr, tracked in `live`\n"
"  ID,pid=PID,addr=0xADDR,size=N[,template=PAGES]\n"
"        range of a process read with process_vm_readv (root or ptrace rights)\n"
"  ID: 1..64 of [A-Za-z0-9._-], the VM id the destination opens. N takes k/M/G suffixes;\n"
"  offsets and sizes are multiples of 4096. template=PAGES: template pages file (index\n"
"  PAGES.tlmi); region page i is compared with template page offset/4096 + i (file) or i\n"
"  (pid). Without a template the digest is zero and pages are ZERO or DATA only.\n"
"  For a pid source whose range is a MAP_PRIVATE mapping of the template file, pages that\n"
"  /proc/PID/pagemap shows as untouched or still page-cache are TEMPLATE without reading.\n"
"\n"
"control commands (tlmctl -s CTLSOCK COMMAND):\n"
"  stats [ID]          JSON per region: id, state, source, pages by class, wire bytes\n"
"                      (payload = page bytes, overhead = all else), demands served, DATA\n"
"                      pages sent on bulk/urgent, elapsed ms since freeze, classify ms,\n"
"                      stream ms (freeze to the first DONE)\n"
"  live ID|all [P]     the source VM runs: classify it now under dirty tracking (one\n"
"                      line per region: \"ID live: METHOD (...), policy P\" or \"ID\n"
"                      post-copy: no dirty tracking (why)\"); P overrides --policy;\n"
"                      stats shows the progress under \"live\" (policy, premap,\n"
"                      presend, ready, ready_why, presend_bytes, fix_runs, keep_pages,\n"
"                      valid_at_freeze, invalid_at_freeze)\n"
"  freeze ID|all       the source VM is stopped: classify now (the reply comes after\n"
"                      classification: after `live`, of the pages written since their\n"
"                      read only) and start serving\n"
"  bulk-hold ID|all    as --bulk-hold, for these regions (before or after freeze)\n"
"  bulk-release ID|all the held DATA stream starts\n"
"  add-region SPEC     add a region at run time\n"
"  shutdown            exit cleanly (as on SIGTERM/SIGINT)\n"
"\n"
"Exit status: 0 after a clean shutdown, 1 on a runtime failure, 2 on bad options.\n";

/* ---- options --------------------------------------------------------------------------- */

struct opts {
	struct tlm_ps_config c;
	int level;
};

/* --policy, --presend-max, --presend-left, --presend-rounds. 0, or -1. */
static int parse_presend_opt(int c, const char *arg, struct opts *o)
{
	struct tlm_presend_cfg *p = &o->c.presend;
	uint64_t v = 0;
	int rc = c == 'P' ? (p->policy = tlm_policy_parse(arg)) : tlm_parse_u64(arg, &v);

	if (rc < 0 || (c == 'M' && v > (1ull << 30)) || (c == 'N' && v > 1000)) {
		fprintf(stderr, "tlm-page-server: bad --%s '%s' (%s)\n",
			c == 'P' ? "policy" : c == 'M' ? "presend-max" : c == 'E' ?
			"presend-left" : "presend-rounds", arg,
			c == 'P' ? "post, hybrid or auto" : c == 'M' ? "MiB, 0..1G" :
			c == 'E' ? "pages" : "0..1000");
		return -1;
	}
	if (c == 'M')
		p->max_bytes = v << 20;
	else if (c == 'E')
		p->left_max = v;
	else if (c == 'N')
		p->rounds_max = (unsigned)v;
	return 0;
}

/* --bulk-delay, --bulk-ahead, --bulk-lowat, --bulk-pace (the background stream's knobs),
 * --live-rate. 0, or -1. */
static int parse_bulk_opt(int c, const char *arg, struct opts *o)
{
	if (c == 'D' && (tlm_parse_u64(arg, &o->c.bulk_delay_ms) < 0 ||
			 o->c.bulk_delay_ms > 3600000)) {
		fprintf(stderr, "tlm-page-server: bad --bulk-delay '%s' (milliseconds, "
			"0..3600000)\n", arg);
		return -1;
	}
	if (c == 'A' && (tlm_parse_size(arg, &o->c.bulk_ahead) < 0 ||
			 o->c.bulk_ahead > (1ull << 30))) {
		fprintf(stderr, "tlm-page-server: bad --bulk-ahead '%s' (bytes, k/M/G, "
			"0..1G)\n", arg);
		return -1;
	}
	if (c == 'W' && (tlm_parse_size(arg, &o->c.bulk_lowat) < 0 ||
			 o->c.bulk_lowat > (1ull << 30))) {
		fprintf(stderr, "tlm-page-server: bad --bulk-lowat '%s' (bytes, k/M/G, "
			"0..1G)\n", arg);
		return -1;
	}
	if (c == 'R' && (tlm_parse_u64(arg, &o->c.live_rate) < 0 || o->c.live_rate > 1000000)) {
		fprintf(stderr, "tlm-page-server: bad --live-rate '%s' (MiB/s, 0..1000000)\n",
			arg);
		return -1;
	}
	if (c == 'R')
		o->c.live_rate <<= 20;
	if (c == 'p' && tlm_pace_parse(arg, &o->c.pace) < 0) {
		fprintf(stderr, "tlm-page-server: bad --bulk-pace '%s' (auto, off, bytes/s with "
			"k/M/G, or NUMBERmbit)\n", arg);
		return -1;
	}
	return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "listen", required_argument, NULL, 'l' }, { "key", required_argument, NULL, 'k' },
		{ "ctl", required_argument, NULL, 'c' }, { "region", required_argument, NULL, 'r' },
		{ "log-level", required_argument, NULL, 'L' }, { "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "bulk-delay", required_argument, NULL, 'D' },
		{ "bulk-ahead", required_argument, NULL, 'A' },
		{ "bulk-lowat", required_argument, NULL, 'W' },
		{ "bulk-hold", no_argument, NULL, 'H' },
		{ "bulk-pace", required_argument, NULL, 'p' },
		{ "live-rate", required_argument, NULL, 'R' },
		{ "policy", required_argument, NULL, 'P' },
		{ "presend-max", required_argument, NULL, 'M' },
		{ "presend-left", required_argument, NULL, 'E' },
		{ "presend-rounds", required_argument, NULL, 'N' },
		{ "tls", required_argument, NULL, 'T' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	o->level = TLM_LOG_INFO;
	o->c.bulk_ahead = 8u << 20;
	o->c.live_rate = 512ull << 20;
	o->c.presend = (struct tlm_presend_cfg){ .policy = TLM_POLICY_AUTO,
		.max_bytes = 1024ull << 20, .left_max = 256, .rounds_max = 8 };
	o->c.regions = calloc((size_t)argc, sizeof(*o->c.regions));
	if (!o->c.regions)
		return -1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":", lo, NULL)) != -1) {
		switch (c) {
		case 'l': o->c.listen = optarg; break;
		case 'k': o->c.key = optarg; break;
		case 'c': o->c.ctl = optarg; break;
		case 'r': o->c.regions[o->c.nregions++] = optarg; break;
		case 'H': o->c.bulk_hold = true; break;
		case 'T':
			if (tlm_tls_parse(optarg, &o->c.tls) < 0) {
				fprintf(stderr, "tlm-page-server: bad --tls '%s' (psk or off)\n",
					optarg);
				return -1;
			}
			break;
		case 'h': fputs(usage, stdout); exit(0);
		case 'V':
			printf("tlm-page-server %s (protocol %u)\n", TLM_VERSION, TLM_PROTO_VERSION);
			exit(0);
		case 'D': case 'A': case 'W': case 'R': case 'p':
			if (parse_bulk_opt(c, optarg, o) < 0)
				return -1;
			break;
		case 'P': case 'M': case 'E': case 'N':
			if (parse_presend_opt(c, optarg, o) < 0)
				return -1;
			break;
		case 'L':
			o->level = tlm_log_parse_level(optarg);
			if (o->level < 0) {
				fprintf(stderr, "tlm-page-server: bad --log-level '%s' (error, warn, "
					"info, debug)\n", optarg);
				return -1;
			}
			break;
		case ':':
			fprintf(stderr, "tlm-page-server: %s needs a value\n", argv[optind - 1]);
			return -1;
		default:
			fprintf(stderr, "tlm-page-server: unknown option '%s' (see --help)\n",
				argv[optind - 1]);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tlm-page-server: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (!o->c.listen || !o->c.key || !o->c.ctl) {
		fprintf(stderr, "tlm-page-server: --%s is required (see --help)\n",
			!o->c.listen ? "listen" : !o->c.key ? "key" : "ctl");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct tlm_ps ps = TLM_PS_INIT;
	struct opts o = { 0 };
	int rc;

	if (parse_opts(argc, argv, &o) < 0) {
		free(o.c.regions);
		return 2;
	}
	tlm_log_init("tlm-page-server", (enum tlm_log_level)o.level);
	rc = tlm_ps_start(&ps, &o.c);
	if (rc == 0) {
		tlm_ps_announce(&ps);
		rc = tlm_ps_run(&ps);
	}
	tlm_ps_cleanup(&ps);
	free(o.c.regions);
	if (rc == 0)
		log_info("clean exit");
	return rc == 0 ? 0 : 1;
}
