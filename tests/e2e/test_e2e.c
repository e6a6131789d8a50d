/*
 * test_e2e.c — end-to-end migration of synthetic guests (label e2e).
 *
 * Real processes, real TCP on loopback, no mocks:
 *   source host: tlm-synth-guest source (glue: private template mapping, no daemon)
 *                + tlm-page-server (reads the frozen guest with process_vm_readv)
 *   destination: tlm-synth-guest dest (glue: TLM_ARM=map, uffd handed to the daemon)
 *                + tlm-uffd-server
 * Checks, in order (the tests share one world and run as a sequence):
 *   1. vm1 migrates; every page equals the manifest; a raw TCP client sending a malformed
 *      frame to the page-server meanwhile is dropped and vm1 still completes; classes found
 *      by the page-server equal the manifest's; bytes on the wire (both daemons' counts)
 *      <= 1.02 x DATA pages x 4 KiB + class-map size.
 *   2. vm2 (same template, other seed, TLM_ARM=deferred armed with `arm vm2`) migrates to
 *      the same destination; with both guests holding, their template pages sit on the same
 *      physical frames (pagemap PFNs) and each guest's Pss is below
 *      (non-template pages + template pages / 2) x 4 KiB.
 *   3. a destination daemon with the wrong key: vm3's region fails with an auth error; its
 *      guest stays paused on its faults (never reads wrong memory).
 *   4. a destination template with another digest: vm4 refused with a digest mismatch.
 *   5. a destination daemon whose --tls differs from the source's: vm5 refused, both
 *      daemons saying why (TLS on one side only); its guest stays paused.
 *   6. vm1/vm2 untouched by 3 to 5; both daemons shut down cleanly.
 * TLM_TEST_TLS=psk runs it all with both daemons on --tls psk (ctest runs each): every
 * migrated page is then checked after crossing TLS, and 3 is TLS's own key check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tlm_proto.h"
#include "tlm_test.h"
#include "tlm_io.h"
#include "ctl.h"
#include "json.h"
#include "util.h"
#include "e2e_manifest.h"
#include "e2e_proc.h"
#include "e2e_tmpl.h"
#include "tlm_uffd.h"

#define W_SIZE (64ull << 20)
#define W_PAGES (W_SIZE / E2E_PAGE)
#define W_MIX "template=70,zero=10,ref=5,data=15,dirty=2"
#define W_NVM 5

struct w_vm {
	char id[8];
	uint64_t seed;
	char ram_src[300], ram_dst[300], manifest[300], log_src[300], log_dst[300];
	struct e2e_proc src, dst;
	uint64_t src_addr, dst_addr;
	struct e2e_manifest m;
	/* results */
	bool holding;
	long long mismatches, shared, pss_kb;
	double read_ms, migrate_ms;
	uint64_t wire_src, wire_dst, bound;
	uint64_t dst_elapsed_ms, faults, p50_us, p99_us, max_us, dropped, urgent_pages;
};

struct world {
	char *dir;
	char tmpl[300], tmpl2[300], key[300], key2[300];
	char ps_ctl[300], us_ctl[300], us_sock[300], us2_ctl[300], us2_sock[300];
	char ps_log[300], us_log[300], us2_log[300], us3_log[300];
	char bin_ps[400], bin_us[400], bin_tt[400], guest[400], glue[400];
	char source[64];
	struct e2e_proc ps, us, us2;
	struct w_vm vm[W_NVM];
	bool malformed_dropped;
};

static struct world *W;

/* ---- small helpers ---------------------------------------------------------------------- */

static void w_path(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", W->dir, name);
}

static char *w_ctl(const char *ctl, const char *cmd)
{
	return e2e_ctl(ctl, cmd);
}

/* Poll `stats ID` until key has one of the wanted values (or timeout); the last JSON is
 * returned (caller frees). */
static char *w_wait_state(const char *ctl, const char *id, const char *key, const char *want1,
			  const char *want2, int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;
	char cmd[64], val[64], *js = NULL;

	snprintf(cmd, sizeof(cmd), "stats %s", id);
	do {
		free(js);
		js = w_ctl(ctl, cmd);
		if (js && tt_json_str(js, NULL, key, val, sizeof(val)) == 0 &&
		    (strcmp(val, want1) == 0 || (want2 && strcmp(val, want2) == 0)))
			return js;
		usleep(50000);
	} while (tt_now_ms() < end);
	return js;
}

static void w_make_key(const char *path, uint8_t fill)
{
	assert_int_equal(e2e_make_key(path, fill), 0);
}

static void w_make_template(const char *path, uint64_t seed)
{
	char log[300];
	char *argv[] = { W->bin_tt, "build", "--from", (char *)path, NULL };

	w_path(log, sizeof(log), "tlm-template.log");
	assert_int_equal(e2e_make_pages(path, W_PAGES, seed), 0);
	if (e2e_run(argv, log, 60000) != 0)
		fail_msg("tlm-template build --from %s failed (see %s)", path, log);
}

/* ---- processes -------------------------------------------------------------------------- */

static void w_start_source(struct w_vm *v)
{
	char e_pre[500], e_ram[400], e_tmpl[400], seed[32], line[256];
	char *env[] = { e_pre, e_ram, e_tmpl, "TLM_SOCK", NULL };
	char *argv[] = { W->guest, "source", "--ram", v->ram_src, "--size", "64M", "--template",
			 W->tmpl, "--seed", seed, "--mix", W_MIX, "--manifest", v->manifest, NULL };
	char err[256];

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", W->glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", v->ram_src);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", W->tmpl);
	snprintf(seed, sizeof(seed), "%llu", (unsigned long long)v->seed);
	assert_int_equal(e2e_spawn(&v->src, v->id, argv, env, v->log_src), 0);
	if (e2e_expect(&v->src, "ready addr=", line, sizeof(line), 60000) != 1)
		fail_msg("%s: source guest not ready (see %s)", v->id, v->log_src);
	assert_int_equal(sscanf(line, "ready addr=%" SCNx64, &v->src_addr), 1);
	assert_int_equal(e2e_manifest_read(v->manifest, &v->m, err, sizeof(err)), 0);
}

static void w_region_spec(const struct w_vm *v, char *out, size_t len)
{
	snprintf(out, len, "%s,pid=%d,addr=0x%" PRIx64 ",size=%llu,template=%s", v->id,
		 (int)v->src.pid, v->src_addr, W_SIZE, W->tmpl);
}

/* --tls of the daemons under test: TLM_TEST_TLS, else off. */
static char *w_tls(void)
{
	char *t = getenv("TLM_TEST_TLS");

	return t && *t ? t : "off";
}

static void w_start_page_server(void)
{
	char spec[600], line[128];
	char *argv[] = { W->bin_ps, "--listen", "127.0.0.1:0", "--key", W->key, "--ctl",
			 W->ps_ctl, "--region", spec, "--log-level", "info", "--tls", w_tls(),
			 NULL };
	int port;

	w_region_spec(&W->vm[0], spec, sizeof(spec));
	assert_int_equal(e2e_spawn(&W->ps, "page-server", argv, NULL, W->ps_log), 0);
	if (e2e_expect(&W->ps, "port ", line, sizeof(line), 20000) != 1)
		fail_msg("tlm-page-server printed no port (see %s)", W->ps_log);
	assert_int_equal(sscanf(line, "port %d", &port), 1);
	snprintf(W->source, sizeof(W->source), "127.0.0.1:%d", port);
}

static void w_start_uffd_server(struct e2e_proc *p, const char *sock, const char *ctl,
				const char *key, const char *log, const char *tls)
{
	/* TLM_TEST_NET_IO: the bulk input path under test (ctest runs each). */
	char *net_io = getenv("TLM_TEST_NET_IO") ? getenv("TLM_TEST_NET_IO") : "syscall";
	char *argv[] = { W->bin_us, "--sock", (char *)sock, "--ctl", (char *)ctl, "--key",
			 (char *)key, "--source", W->source, "--template", W->tmpl, "--template",
			 W->tmpl2, "--log-level", "info", "--net-io", net_io, "--tls", (char *)tls,
			 NULL };
	uint64_t end = tt_now_ms() + 20000;
	char want[64], *js = NULL;

	assert_int_equal(e2e_spawn(p, "uffd-server", argv, NULL, log), 0);
	while (!js && tt_now_ms() < end) {
		usleep(50000);
		js = w_ctl(ctl, "stats");
	}
	if (!js)
		fail_msg("tlm-uffd-server does not answer on %s (see %s)", ctl, log);
	snprintf(want, sizeof(want), "\"net_io\":\"%s\"", net_io);
	if (strcmp(net_io, "auto") && !strstr(js, want))
		fail_msg("tlm-uffd-server stats lack %s: %s", want, js);
	free(js);
	/* Templates mapped at once where the kernel can, and either way the log says so. */
	if (!e2e_file_contains(log, "mapped at once (MADV_POPULATE_READ)") &&
	    !e2e_file_contains(log, "not populated (this kernel lacks MADV_POPULATE_READ)"))
		fail_msg("tlm-uffd-server does not say whether its templates were populated "
			 "(see %s)", log);
}

static void w_freeze(struct w_vm *v)
{
	char cmd[64], *r;

	kill(v->src.pid, SIGSTOP);
	snprintf(cmd, sizeof(cmd), "freeze %s", v->id);
	r = w_ctl(W->ps_ctl, cmd);
	if (!r || strncmp(r, "ok", 2) != 0)
		fail_msg("%s: freeze: %s", v->id, r ? r : "no reply");
	free(r);
}

/* deferred: TLM_ARM=deferred and the guest waits for SIGUSR1 (QEMU waiting for the
 * incoming migration) until the test has armed the region through the daemon. */
static void w_start_dest(struct w_vm *v, const char *sock, const char *tmpl, bool deferred)
{
	char e_pre[500], e_ram[400], e_tmpl[400], e_sock[400], e_vm[64], e_src[128], line[256];
	char *env[] = { e_pre, e_ram, e_tmpl, e_sock, e_vm, e_src,
			deferred ? "TLM_ARM=deferred" : "TLM_ARM=map", NULL };
	char *argv[] = { W->guest, "dest", "--ram", v->ram_dst, "--size", "64M", "--manifest",
			 v->manifest, "--write-check", "--hold",
			 deferred ? "--wait-signal" : NULL, NULL };

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", W->glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", v->ram_dst);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", tmpl);
	snprintf(e_sock, sizeof(e_sock), "TLM_SOCK=%s", sock);
	snprintf(e_vm, sizeof(e_vm), "TLM_VM_ID=%s", v->id);
	snprintf(e_src, sizeof(e_src), "TLM_SOURCE=%s", W->source);
	assert_int_equal(e2e_spawn(&v->dst, v->id, argv, env, v->log_dst), 0);
	if (e2e_expect(&v->dst, "mapped addr=", line, sizeof(line), 20000) != 1)
		fail_msg("%s: destination guest did not map its RAM (see %s)", v->id, v->log_dst);
	assert_int_equal(sscanf(line, "mapped addr=%" SCNx64, &v->dst_addr), 1);
}

/* Collect the destination guest's report until "holding". */
static void w_collect(struct w_vm *v, int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;
	char line[512];

	v->mismatches = v->shared = v->pss_kb = -1;
	while (!v->holding && tt_now_ms() < end &&
	       e2e_read_line(&v->dst, line, sizeof(line), (int)(end - tt_now_ms())) == 1) {
		sscanf(line, "verify: pages=%*u mismatches=%lld read_ms=%lf", &v->mismatches,
		       &v->read_ms);
		sscanf(line, "shared_pages=%lld", &v->shared);
		sscanf(line, "pss_kb=%lld", &v->pss_kb);
		v->holding = strcmp(line, "holding") == 0;
	}
}

/* ---- migration and its checks ----------------------------------------------------------- */

/* A raw TCP client sends a frame of an unknown type: the page-server must drop it. */
static bool w_malformed_client(void)
{
	uint8_t frame[16] = { 8, 0, 0, 0, 0x42, 0x42, 0, 0, 'g', 'a', 'r', 'b', 'a', 'g', 'e', 0 };
	uint64_t end = tt_now_ms() + 10000;
	char err[256], buf[512];
	int fd = tlm_tcp_connect(W->source, 5000, err, sizeof(err));
	bool dropped = false;

	if (fd < 0) {
		print_message("malformed client: connect: %s\n", err);
		return false;
	}
	if (tlm_write_full(fd, frame, sizeof(frame)) == 0) {
		while (!dropped && tt_now_ms() < end) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			ssize_t r;

			if (poll(&p, 1, 200) != 1)
				continue;
			r = read(fd, buf, sizeof(buf));
			dropped = r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN);
		}
	}
	close(fd);
	return dropped;
}

static void w_add_region(struct w_vm *v)
{
	char cmd[700], spec[600], *r;

	w_region_spec(v, spec, sizeof(spec));
	snprintf(cmd, sizeof(cmd), "add-region %s", spec);
	r = w_ctl(W->ps_ctl, cmd);
	if (!r || strncmp(r, "ok", 2) != 0)
		fail_msg("%s: add-region: %s", v->id, r ? r : "no reply");
	free(r);
}

/* Class counts found by the page-server equal the manifest; wire bytes within bound. */
static void w_check_source_stats(struct w_vm *v)
{
	static const char *const keys[5] = { "", "template", "zero", "ref", "data" };
	uint64_t cnt, payload = 0, overhead = 0;
	char cmd[64], *js;

	snprintf(cmd, sizeof(cmd), "stats %s", v->id);
	js = w_ctl(W->ps_ctl, cmd);
	assert_non_null(js);
	for (int c = 1; c <= 4; c++) {
		assert_int_equal(tt_json_u64(js, "pages", keys[c], &cnt), 0);
		if (cnt != v->m.count[c])
			fail_msg("%s: page-server found %llu %s pages, the manifest says %llu", v->id,
				 (unsigned long long)cnt, keys[c],
				 (unsigned long long)v->m.count[c]);
	}
	assert_int_equal(tt_json_u64(js, "bytes", "payload", &payload), 0);
	assert_int_equal(tt_json_u64(js, "bytes", "overhead", &overhead), 0);
	tt_json_u64(js, NULL, "data_sent_urgent", &v->urgent_pages);
	v->wire_src = payload + overhead;
	free(js);
}

static void w_check_dest_stats(struct w_vm *v, const char *js)
{
	uint64_t in = 0, out = 0, cerr = 1;
	char phase[32] = "";

	tt_json_str(js, NULL, "phase", phase, sizeof(phase));
	if (strcmp(phase, "complete") != 0)
		fail_msg("%s: tlm-uffd-server phase '%s', expected complete (see %s)", v->id,
			 phase, W->us_log);
	assert_int_equal(tt_json_u64(js, "wire", "in_bytes", &in), 0);
	assert_int_equal(tt_json_u64(js, "wire", "out_bytes", &out), 0);
	assert_int_equal(tt_json_u64(js, NULL, "checksum_errors", &cerr), 0);
	assert_int_equal(cerr, 0);
	v->wire_dst = in + out;
	tt_json_u64(js, NULL, "elapsed_ms", &v->dst_elapsed_ms);
	tt_json_u64(js, "faults", "total", &v->faults);
	tt_json_u64(js, "latency", "p50_us", &v->p50_us);
	tt_json_u64(js, "latency", "p99_us", &v->p99_us);
	tt_json_u64(js, "latency", "max_us", &v->max_us);
	tt_json_u64(js, NULL, "data_pages_dropped", &v->dropped);
}

static uint64_t w_bound(const struct w_vm *v)
{
	uint64_t runs = e2e_manifest_runs(&v->m);
	uint64_t map = runs * 16 + (runs / TLM_PROTO_MAX_RUNS + 1) * (TLM_PROTO_HDR_SIZE + 16);

	return v->m.count[TLM_CLASS_DATA] * E2E_PAGE * 102 / 100 + map;
}

static void w_fail_wire(const struct w_vm *v)
{
	char cmd[64], *a, *b;

	snprintf(cmd, sizeof(cmd), "stats %s", v->id);
	a = w_ctl(W->ps_ctl, cmd);
	b = w_ctl(W->us_ctl, cmd);
	print_message("page-server: %s\nuffd-server: %s\n", a ? a : "-", b ? b : "-");
	free(a);
	free(b);
	fail_msg("%s: %llu / %llu bytes on the wire (src / dst) exceed 1.02 x %llu DATA pages "
		 "x 4 KiB + class map = %llu", v->id, (unsigned long long)v->wire_src,
		 (unsigned long long)v->wire_dst,
		 (unsigned long long)v->m.count[TLM_CLASS_DATA], (unsigned long long)v->bound);
}

/* Deferred arming through the daemon: `arm ID` once the REGION is there; the guest runs
 * as soon as the glue has registered the region (its faults then wait for the daemon). */
static void w_arm(struct w_vm *v)
{
	char cmd[64], phase[32] = "", *js, *r;
	uint64_t end;

	js = w_wait_state(W->us_ctl, v->id, "phase", "waiting_uffd", NULL, 10000);
	if (js)
		tt_json_str(js, NULL, "phase", phase, sizeof(phase));
	free(js);
	if (strcmp(phase, "waiting_uffd") != 0)
		fail_msg("%s: region not waiting to be armed (phase '%s')", v->id, phase);
	snprintf(cmd, sizeof(cmd), "arm %s", v->id);
	r = w_ctl(W->us_ctl, cmd);
	if (!r || strncmp(r, "ok", 2) != 0)
		fail_msg("%s: arm: %s", v->id, r ? r : "no reply");
	free(r);
	end = tt_now_ms() + 10000;
	while (!e2e_file_contains(v->log_dst, "armed on request") && tt_now_ms() < end)
		usleep(2000);
	if (!e2e_file_contains(v->log_dst, "armed on request"))
		fail_msg("%s: the glue did not arm after `arm` (see %s)", v->id, v->log_dst);
	kill(v->dst.pid, SIGUSR1);
}

static void w_migrate(struct w_vm *v, bool with_malformed, bool deferred)
{
	uint64_t t0 = tt_now_ms();
	char *js;

	w_freeze(v);
	w_start_dest(v, W->us_sock, W->tmpl, deferred);
	if (deferred)
		w_arm(v);
	if (with_malformed)
		W->malformed_dropped = w_malformed_client();
	w_collect(v, 180000);
	js = w_wait_state(W->us_ctl, v->id, "phase", "complete", "failed", 60000);
	v->migrate_ms = (double)(tt_now_ms() - t0);
	if (!v->holding)
		fail_msg("%s: destination guest did not finish reading (see %s, %s)", v->id,
			 v->log_dst, W->us_log);
	assert_int_equal(v->mismatches, 0);
	assert_true(v->shared >= (long long)v->m.count[TLM_CLASS_TEMPLATE]);
	assert_non_null(js);
	w_check_dest_stats(v, js);
	free(js);
	w_check_source_stats(v);
	v->bound = w_bound(v);
	print_message("%s: %.0f ms, guest read %.0f ms, data pages %llu, wire src %llu dst %llu "
		      "bytes, bound %llu\n", v->id, v->migrate_ms, v->read_ms,
		      (unsigned long long)v->m.count[TLM_CLASS_DATA],
		      (unsigned long long)v->wire_src, (unsigned long long)v->wire_dst,
		      (unsigned long long)v->bound);
}

/* Checked last in each test, so that the other checks still run when it fails. */
static void w_check_wire(const struct w_vm *v)
{
	if (v->wire_src > v->bound || v->wire_dst > v->bound)
		w_fail_wire(v);
}

/* ---- sharing ------------------------------------------------------------------------------ */

static uint64_t *w_pagemap(pid_t pid, uint64_t addr)
{
	char path[64];
	uint64_t *e = malloc(W_PAGES * 8);
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0 && e);
	assert_int_equal(pread(fd, e, W_PAGES * 8, (off_t)(addr / E2E_PAGE * 8)),
			 (ssize_t)(W_PAGES * 8));
	close(fd);
	return e;
}

static long w_pss_kb(pid_t pid)
{
	char path[64], *s, *p;
	long kb = -1;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	s = e2e_read_file(path);
	p = s ? strstr(s, "\nPss:") : NULL;
	if (p)
		sscanf(p, "\nPss: %ld kB", &kb);
	free(s);
	return kb;
}

/* Template pages of both guests on the same physical frames (PFNs, root only). */
static void w_check_same_frames(struct w_vm *a, struct w_vm *b)
{
	uint64_t *ea = w_pagemap(a->dst.pid, a->dst_addr), *eb = w_pagemap(b->dst.pid, b->dst_addr);
	const uint64_t pfn = (1ull << 55) - 1, present = 1ull << 63;
	uint64_t common = 0, same = 0;

	for (uint64_t i = 0; i < W_PAGES; i++) {
		if (a->m.cls[i] != TLM_CLASS_TEMPLATE || b->m.cls[i] != TLM_CLASS_TEMPLATE)
			continue;
		common++;
		same += (ea[i] & present) && (eb[i] & present) && (ea[i] & pfn) &&
			(ea[i] & pfn) == (eb[i] & pfn);
	}
	free(ea);
	free(eb);
	print_message("template pages of both guests: %llu, on the same frame: %llu\n",
		      (unsigned long long)common, (unsigned long long)same);
	/* the write check of each guest may have copied up to 8 pages */
	assert_true(common > W_PAGES / 3 && same + 16 >= common);
}

/* Under --tls psk both daemons name the data path their sessions took (tlm_tls.h). */
static void w_check_tls_logged(void)
{
	static const char *const paths[] = { "tls: kTLS send+recv", "tls: kTLS send, userspace",
					     "tls: userspace" };
	bool ps = false, us = false;

	if (strcmp(w_tls(), "psk") != 0)
		return;
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		ps = ps || e2e_file_contains(W->ps_log, paths[i]);
		us = us || e2e_file_contains(W->us_log, paths[i]);
	}
	if (!ps || !us)
		fail_msg("no 'tls: <data path>' line in %s", !ps ? W->ps_log : W->us_log);
}

/* ---- the sequence ------------------------------------------------------------------------- */

static void test_vm1_migrates(void **state)
{
	struct w_vm *v = &W->vm[0];

	w_start_page_server();
	w_start_uffd_server(&W->us, W->us_sock, W->us_ctl, W->key, W->us_log, w_tls());
	w_migrate(v, true, false);
	if (!W->malformed_dropped)
		fail_msg("the page-server did not drop a client sending a malformed frame");
	w_check_wire(v);
	w_check_tls_logged();
}

static void test_vm2_shares_template(void **state)
{
	struct w_vm *a = &W->vm[0], *b = &W->vm[1];
	uint64_t bound_kb[2];
	long pss[2];

	assert_true(a->holding);
	w_start_source(b);
	w_add_region(b);
	w_migrate(b, false, true);     /* the deferred arming path */
	w_check_same_frames(a, b);
	for (int k = 0; k < 2; k++) {
		struct w_vm *v = &W->vm[k];
		uint64_t t = v->m.count[TLM_CLASS_TEMPLATE];

		pss[k] = w_pss_kb(v->dst.pid);
		v->pss_kb = pss[k];
		/* private pages in full, template frames shared by at least two: half each,
		 * plus 4 MiB for the program itself */
		bound_kb[k] = ((W_PAGES - t) * 4 + t * 2) + 4096;
		print_message("%s: Pss %ld kB of %llu kB RAM (bound %llu kB)\n", v->id, pss[k],
			      W_SIZE / 1024, (unsigned long long)bound_kb[k]);
		assert_true(pss[k] > 0 && (uint64_t)pss[k] <= bound_kb[k]);
	}
	w_check_wire(b);
}

static void w_assert_failed_with(const char *ctl, const char *log, const char *id,
				 const char *what, int timeout_ms)
{
	char *js = w_wait_state(ctl, id, "phase", "failed", NULL, timeout_ms);
	char phase[32] = "", error[400] = "";

	if (js) {
		tt_json_str(js, NULL, "phase", phase, sizeof(phase));
		tt_json_str(js, NULL, "error", error, sizeof(error));
	}
	free(js);
	print_message("%s: phase %s, error \"%s\"\n", id, phase, error);
	if (strcmp(phase, "failed") != 0)
		fail_msg("%s: phase '%s', expected failed (see %s)", id, phase, log);
	if (!strcasestr(error, what) && !e2e_file_contains(log, what))
		fail_msg("%s: no '%s' in the error (\"%s\") nor in %s", id, what, error, log);
}

/* The guest must stay paused on its faults: no verify line, still alive. */
static void w_assert_paused(struct w_vm *v)
{
	char line[256];

	assert_int_equal(e2e_expect(&v->dst, "verify:", line, sizeof(line), 1000), -ETIMEDOUT);
	assert_int_equal(kill(v->dst.pid, 0), 0);
	e2e_stop(&v->dst, SIGKILL, 5000);
}

static void test_wrong_key(void **state)
{
	struct w_vm *v = &W->vm[2];

	w_start_uffd_server(&W->us2, W->us2_sock, W->us2_ctl, W->key2, W->us2_log, w_tls());
	w_start_source(v);
	w_add_region(v);
	w_freeze(v);
	w_start_dest(v, W->us2_sock, W->tmpl, false);
	w_assert_failed_with(W->us2_ctl, W->us2_log, v->id, "auth", 30000);
	w_assert_paused(v);
	assert_int_equal(e2e_stop(&W->us2, SIGTERM, 10000), 0);
}

/* One daemon on TLS, the other not: refused, and each side's log says so. */
static void test_tls_mismatch(void **state)
{
	struct w_vm *v = &W->vm[4];
	bool tls = strcmp(w_tls(), "psk") == 0;
	const char *src_says = tls ? "speaks clear text, not TLS" : "peer speaks TLS, we do not";

	e2e_close(&W->us2);
	w_start_uffd_server(&W->us2, W->us2_sock, W->us2_ctl, W->key, W->us3_log,
			    tls ? "off" : "psk");
	w_start_source(v);
	w_add_region(v);
	w_freeze(v);
	w_start_dest(v, W->us2_sock, W->tmpl, false);
	w_assert_failed_with(W->us2_ctl, W->us3_log, v->id, tls ? "requires TLS" :
			     "answered in clear text, not TLS", 30000);
	if (!e2e_file_contains(W->ps_log, src_says))
		fail_msg("the page-server's log lacks '%s' (see %s)", src_says, W->ps_log);
	w_assert_paused(v);
	assert_int_equal(e2e_stop(&W->us2, SIGTERM, 10000), 0);
}

static void test_digest_mismatch(void **state)
{
	struct w_vm *v = &W->vm[3];

	w_start_source(v);
	w_add_region(v);
	w_freeze(v);
	w_start_dest(v, W->us_sock, W->tmpl2, false);
	w_assert_failed_with(W->us_ctl, W->us_log, v->id, "digest mismatch", 60000);
	w_assert_paused(v);
}

/* vm1 and vm2 are untouched by the failures; the daemons shut down cleanly. */
static void test_others_untouched(void **state)
{
	for (int k = 0; k < 2; k++) {
		struct w_vm *v = &W->vm[k];
		char cmd[64], phase[32] = "", *js;

		snprintf(cmd, sizeof(cmd), "stats %s", v->id);
		js = w_ctl(W->us_ctl, cmd);
		assert_non_null(js);
		tt_json_str(js, NULL, "phase", phase, sizeof(phase));
		free(js);
		assert_string_equal(phase, "complete");
		assert_int_equal(kill(v->dst.pid, 0), 0);
		assert_int_equal(e2e_stop(&v->dst, SIGTERM, 10000), 0);   /* exit 0: all matched */
	}
	assert_int_equal(e2e_stop(&W->us, SIGTERM, 10000), 0);
	assert_int_equal(e2e_stop(&W->ps, SIGTERM, 10000), 0);
}

/* ---- world setup ------------------------------------------------------------------------ */

static void w_vm_init(struct w_vm *v, int k)
{
	char n[64];

	snprintf(v->id, sizeof(v->id), "vm%d", k + 1);
	v->seed = (uint64_t)k + 1;
	snprintf(n, sizeof(n), "%s.src.ram", v->id);
	w_path(v->ram_src, sizeof(v->ram_src), n);
	snprintf(n, sizeof(n), "%s.dst.ram", v->id);
	w_path(v->ram_dst, sizeof(v->ram_dst), n);
	snprintf(n, sizeof(n), "%s.manifest", v->id);
	w_path(v->manifest, sizeof(v->manifest), n);
	snprintf(n, sizeof(n), "%s.src.log", v->id);
	w_path(v->log_src, sizeof(v->log_src), n);
	snprintf(n, sizeof(n), "%s.dst.log", v->id);
	w_path(v->log_dst, sizeof(v->log_dst), n);
	v->src.out = v->dst.out = -1;
}

static void w_paths(void)
{
	w_path(W->tmpl, sizeof(W->tmpl), "base.pages");
	w_path(W->tmpl2, sizeof(W->tmpl2), "other.pages");
	w_path(W->key, sizeof(W->key), "key");
	w_path(W->key2, sizeof(W->key2), "key2");
	w_path(W->ps_ctl, sizeof(W->ps_ctl), "ps/ctl.sock");
	w_path(W->us_ctl, sizeof(W->us_ctl), "us/ctl.sock");
	w_path(W->us_sock, sizeof(W->us_sock), "us/glue.sock");
	w_path(W->us2_ctl, sizeof(W->us2_ctl), "us2/ctl.sock");
	w_path(W->us2_sock, sizeof(W->us2_sock), "us2/glue.sock");
	w_path(W->ps_log, sizeof(W->ps_log), "page-server.log");
	w_path(W->us_log, sizeof(W->us_log), "uffd-server.log");
	w_path(W->us2_log, sizeof(W->us2_log), "uffd-server-wrongkey.log");
	w_path(W->us3_log, sizeof(W->us3_log), "uffd-server-othertls.log");
	W->ps.out = W->us.out = W->us2.out = -1;
	for (int k = 0; k < W_NVM; k++)
		w_vm_init(&W->vm[k], k);
}

static int w_setup(void **state)
{
	W = calloc(1, sizeof(*W));
	if (!W || e2e_bin(W->bin_ps, sizeof(W->bin_ps), "TLM_BIN_DIR", "tlm-page-server") ||
	    e2e_bin(W->bin_us, sizeof(W->bin_us), "TLM_BIN_DIR", "tlm-uffd-server") ||
	    e2e_bin(W->bin_tt, sizeof(W->bin_tt), "TLM_BIN_DIR", "tlm-template") ||
	    e2e_bin(W->guest, sizeof(W->guest), "TLM_TEST_BIN_DIR", "e2e/tlm-synth-guest") ||
	    e2e_bin(W->glue, sizeof(W->glue), "TLM_GLUE", NULL))
		return -1;
	/* userfaultfd MINOR faults need the template on tmpfs */
	W->dir = e2e_mkdtemp("/dev/shm");
	if (!W->dir)
		return -1;
	w_paths();
	w_make_template(W->tmpl, 11);
	w_make_template(W->tmpl2, 12);
	w_make_key(W->key, 1);
	w_make_key(W->key2, 2);
	w_start_source(&W->vm[0]);
	return 0;
}

static void w_summary(void)
{
	printf("\n== tlm e2e summary (%llu MiB guests, mix %s)\n", W_SIZE >> 20, W_MIX);
	for (int k = 0; k < 2; k++) {
		struct w_vm *v = &W->vm[k];

		printf("%s: migrated in %.0f ms (guest read %.0f ms), mismatches %lld, DATA pages "
		       "%llu (%.1f MiB), wire src %.2f MiB dst %.2f MiB (bound %.2f MiB), "
		       "shared pages %lld, Pss %lld kB\n", v->id, v->migrate_ms, v->read_ms,
		       v->mismatches, (unsigned long long)v->m.count[TLM_CLASS_DATA],
		       (double)v->m.count[TLM_CLASS_DATA] * E2E_PAGE / 1048576.0,
		       (double)v->wire_src / 1048576.0, (double)v->wire_dst / 1048576.0,
		       (double)v->bound / 1048576.0, v->shared, v->pss_kb);
		printf("%s: uffd-server %llu ms, %llu faults (p50 %llu us, p99 %llu us, max %llu "
		       "us), %llu pages sent on urgent, %llu DATA pages dropped as duplicates\n",
		       v->id, (unsigned long long)v->dst_elapsed_ms, (unsigned long long)v->faults,
		       (unsigned long long)v->p50_us, (unsigned long long)v->p99_us,
		       (unsigned long long)v->max_us, (unsigned long long)v->urgent_pages,
		       (unsigned long long)v->dropped);
	}
	printf("logs: %s%s\n", W->dir, getenv("TLM_KEEP_TMP") ? "" : " (removed; set "
	       "TLM_KEEP_TMP=1 to keep)");
}

static int w_teardown(void **state)
{
	if (!W)
		return 0;
	if (W->dir)
		w_summary();
	for (int k = 0; k < W_NVM; k++) {
		e2e_close(&W->vm[k].dst);
		e2e_close(&W->vm[k].src);
		e2e_manifest_free(&W->vm[k].m);
	}
	e2e_close(&W->us2);
	e2e_close(&W->us);
	e2e_close(&W->ps);
	e2e_rmrf(W->dir);
	free(W->dir);
	free(W);
	W = NULL;
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vm1_migrates),
		cmocka_unit_test(test_vm2_shares_template),
		cmocka_unit_test(test_wrong_key),
		cmocka_unit_test(test_digest_mismatch),
		cmocka_unit_test(test_tls_mismatch),
		cmocka_unit_test(test_others_untouched),
	};
	int rc;

	if ((rc = e2e_skip_unless_uffd_root("process_vm_readv of another process, pagemap PFNs")) != 0)
		return rc;
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, w_setup, w_teardown);
}
