/* tlmctl — send one command to a tlm daemon's control socket and print the reply. */
#include "ctl.h"
#include "json.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: tlmctl -s CTLSOCK [-t TIMEOUT_MS] COMMAND [ARGS...]\n"
		"Send COMMAND to a tlm daemon's control socket and print its reply.\n\n"
		"Commands (see each daemon's --help):\n"
		"  stats [VMID]        per-region statistics as JSON\n"
		"  freeze VMID|all     tlm-page-server: the source VM is stopped, start serving\n"
		"  add-region SPEC     tlm-page-server: serve another region\n"
		"  arm VMID            tlm-uffd-server: register the VM's RAM and start faulting\n"
		"  resume VMID [H:P]   tlm-uffd-server: a region paused by --outage-limit connects\n"
		"                      again (optionally to another source page server)\n"
		"  shutdown            clean daemon exit\n\n"
		"Exit status: 0 on success, 1 if the daemon replied \"error: ...\", 2 on usage or\n"
		"connection errors.\n");
}

int main(int argc, char **argv)
{
	const char *sock = getenv("TLM_CTL");
	struct tlm_sbuf cmd, reply;
	int c, rc, timeout = 10000;

	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	while ((c = getopt_long(argc, argv, "+s:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 's': sock = optarg; break;
		case 't': timeout = atoi(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!sock || optind >= argc || timeout <= 0) {
		fprintf(stderr, "tlmctl: %s\n", !sock ? "no control socket (-s CTLSOCK or TLM_CTL)"
			: optind >= argc ? "no command given (try --help)" : "bad --timeout");
		return 2;
	}
	tlm_sbuf_init(&cmd);
	for (int i = optind; i < argc; i++)
		tlm_sbuf_printf(&cmd, "%s%s", i > optind ? " " : "", argv[i]);
	tlm_sbuf_init(&reply);
	rc = tlm_ctl_request(sock, cmd.p, &reply, timeout);
	if (rc < 0) {
		fprintf(stderr, "tlmctl: %s: %s\n", sock, strerror(-rc));
		rc = 2;
	} else {
		fputs(reply.p ? reply.p : "", stdout);
		rc = reply.p && strncmp(reply.p, "error:", 6) == 0 ? 1 : 0;
	}
	tlm_sbuf_fini(&cmd);
	tlm_sbuf_fini(&reply);
	return rc;
}
