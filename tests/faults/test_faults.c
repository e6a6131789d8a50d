/*
 * test_faults.c — fault injection on the synthetic guest (label faults).
 *
 * Many short migrations, each with its own seed (reproducible: `--seed S` gives the same
 * guests, the same kinds of runs and the same proxy plans), real processes, real TCP:
 *   source:      tlm-synth-guest source + tlm-page-server
 *   in between:  tlm-fault-proxy (cuts, truncates, delays, reorders, drops connections)
 *   destination: tlm-uffd-server + tlm-synth-guest dest (glue, TLM_ARM=map)
 * Kinds of run, in turn (8 in the rotation):
 *   proxy (twice)    proxy faults only; the source is frozen (SIGSTOP + `freeze`) before
 *                    the destination starts, as in all kinds not named live+;
 *   kill-page-server tlm-page-server killed with SIGKILL, restarted on the same port with
 *                    the same region and frozen again;
 *   kill-uffd-server tlm-uffd-server killed with SIGKILL and restarted (the glue hands the
 *                    region and its uffd over again);
 *   stall            the link stalls with its connections open (the proxy is stopped with
 *                    SIGSTOP) until the destination takes the silence for a lost session
 *                    (--stall-timeout 1), then it runs on;
 *   live+...         the page server's live phase: the source guest runs (--live: it keeps
 *                    rewriting pages at 2000..20000 pages/s, its RAM tracked by the glue,
 *                    TLM_TRACK=1) and the destination is started, armed and connected
 *                    (phase mapping) before `live ID`; during the live phase, either
 *     live+kill-page-server  tlm-page-server is killed, restarted and told `live` again,
 *     live+proxy             the proxy cuts every connection (SIGUSR1), once or twice, on
 *                            top of its seeded faults, or
 *     live+kill-uffd-server  tlm-uffd-server is killed and restarted;
 *                    then, once the page server's stats say the first pass is done (and
 *                    "ready", when it reports that), the guest stops writing (SIGUSR1:
 *                    "the VM is stopped"), `freeze` follows at once, and the guest writes
 *                    the manifest of its final RAM. The page server must have used its
 *                    live result (not discarded it). `live` carries a policy word drawn
 *                    per run (post, hybrid, auto), and the page server must report it.
 * The last run is an outage: tlm-page-server killed and not restarted, the destination
 * (--outage-limit 1) must report the region "paused" (faults wait), then a new page
 * server on another port and `resume ID HOST:PORT` finish it.
 * Every run ends with the destination guest reading every page and comparing it with the
 * source's XXH3-64 (manifest; in live runs the one written at the stop): zero differences
 * allowed, and the region must be complete. A live phase that misses a write (a page
 * re-read too early, a lost collect) shows up as differing pages.
 *
 *   test_faults [--runs N] [--seed S] [--only K] [--keep]    (default 48 runs, seed 1)
 * --only K replays run K (1-based) of that campaign alone: a failure names its run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "ctl.h"
#include "tlm_test.h"
#include "json.h"
#include "e2e_manifest.h"
#include "e2e_proc.h"
#include "e2e_tmpl.h"

#define F_TMPL_SIZE (64ull << 20)
#define F_MIX "template=60,zero=10,ref=5,data=25,dirty=2"
#define F_TIMEOUT_MS 60000
#define F_RATE "24"              /* MB/s per connection: a 16 MiB run lasts ~0.2 s */

enum f_kind {
	F_PROXY = 0, F_KILL_PS, F_KILL_US, F_STALL, F_OUTAGE,
	F_LIVE_KILL_PS, F_LIVE_PROXY, F_LIVE_KILL_US,     /* during the live phase */
	F_NKINDS
};

static const char *const f_kind_names[F_NKINDS] = {
	"proxy", "kill-page-server", "kill-uffd-server", "stall", "outage",
	"live+kill-page-server", "live+proxy", "live+kill-uffd-server",
};

/* Kinds of run in turn (the last run is always F_OUTAGE). */
static const enum f_kind f_rotation[] = { F_PROXY, F_LIVE_KILL_PS, F_PROXY, F_KILL_PS,
					  F_LIVE_PROXY, F_KILL_US, F_LIVE_KILL_US, F_STALL };

/* Live runs: the source guest's writes (pages/s), the page server's --live-rate (MiB/s,
 * 0: no limit) and the policy word of `live ID POLICY`. */
static const char *const f_live_writes[] = { "2000", "8000", "20000" };
static const char *const f_live_rates[] = { "64", "256", "0" };
static const char *const f_live_policies[] = { "post", "hybrid", "auto" };

#define F_NELEM(a) (sizeof(a) / sizeof((a)[0]))

struct f_totals {
	unsigned runs, completed, resumed, by_kind[F_NKINDS];
	uint64_t faults[6];        /* cut truncate delay reorder drop conns (from the proxy) */
	uint64_t kills_ps, kills_us, stalls, pages, mismatches, reconnects;
	uint64_t live_cuts, live_writes, live_redone, live_final_dirty, live_restarts;
	uint64_t live_present, live_valid;  /* pages pre-sent; copies valid at the freeze */
	unsigned live_presend_runs;         /* live runs with policy hybrid or auto */
};

struct f_world {
	char *dir;
	char tmpl[300], key[300], ps_ctl[300], us_ctl[300], us_sock[300];
	char bin_ps[400], bin_us[400], bin_tt[400], bin_px[400], guest[400], glue[400];
	unsigned runs, only;
	uint64_t seed;
	bool keep;
	struct f_totals t;
};

/* One migration. */
struct f_run {
	unsigned n;
	uint64_t seed, rng, size;
	enum f_kind kind;
	bool live;
	uint64_t lrng;                   /* live choices: their own stream */
	const char *writes, *live_rate, *policy;
	char id[16], ram_src[300], ram_dst[300], manifest[300], log[5][300];
	struct e2e_proc src, ps, px, us, dst;
	uint64_t src_addr;
	int ps_port, px_port;
	char source[64];
};

enum { LOG_SRC, LOG_PS, LOG_PX, LOG_US, LOG_DST };

static struct f_world F;

static bool f_is_live(enum f_kind k)
{
	return k == F_LIVE_KILL_PS || k == F_LIVE_PROXY || k == F_LIVE_KILL_US;
}

static void f_path(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", F.dir, name);
}

/* `ctl cmd` must answer "ok...". */
static void f_ctl_ok(const char *ctl, const char *cmd)
{
	char *r = e2e_ctl(ctl, cmd);

	if (!r || strncmp(r, "ok", 2) != 0)
		fail_msg("%s: %s: %s", ctl, cmd, r ? r : "no reply");
	free(r);
}

/* `ctl cmd` must be refused with "error: ...". */
static void f_ctl_refused(const char *ctl, const char *cmd)
{
	char *r = e2e_ctl(ctl, cmd);

	if (!r || strncmp(r, "error: ", 7) != 0)
		fail_msg("%s: %s: expected a refusal, got %s", ctl, cmd, r ? r : "no reply");
	free(r);
}

/* ---- processes ----------------------------------------------------------------------------- */

static void f_start_source(struct f_run *x)
{
	char e_pre[500], e_ram[400], e_tmpl[400], seed[32], size[32], line[256];
	/* live: the glue registers the RAM for dirty tracking (uffd WP_ASYNC), as in QEMU */
	char *env[] = { e_pre, e_ram, e_tmpl, "TLM_SOCK", x->live ? "TLM_TRACK=1" : NULL,
			NULL };
	char *argv[] = { F.guest, "source", "--ram", x->ram_src, "--size", size, "--template",
			 F.tmpl, "--seed", seed, "--mix", F_MIX, "--manifest", x->manifest,
			 x->live ? "--live" : NULL, (char *)x->writes, NULL };

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", F.glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", x->ram_src);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", F.tmpl);
	snprintf(seed, sizeof(seed), "%" PRIu64, x->seed);
	snprintf(size, sizeof(size), "%" PRIu64, x->size);
	assert_int_equal(e2e_spawn(&x->src, "src", argv, env, x->log[LOG_SRC]), 0);
	if (e2e_expect(&x->src, "ready addr=", line, sizeof(line), 30000) != 1)
		fail_msg("%s: source guest not ready (see %s)", x->id, x->log[LOG_SRC]);
	assert_int_equal(sscanf(line, "ready addr=%" SCNx64, &x->src_addr), 1);
}

/* port 0: any; later the same port again (a restarted page server). */
static void f_start_page_server(struct f_run *x)
{
	char spec[600], listen[64], line[128];
	char *argv[] = { F.bin_ps, "--listen", listen, "--key", F.key, "--ctl", F.ps_ctl,
			 "--region", spec, "--log-level", "info",
			 x->live ? "--live-rate" : NULL, (char *)x->live_rate, NULL };

	snprintf(listen, sizeof(listen), "127.0.0.1:%d", x->ps_port);
	snprintf(spec, sizeof(spec), "%s,pid=%d,addr=0x%" PRIx64 ",size=%" PRIu64
		 ",template=%s", x->id, (int)x->src.pid, x->src_addr, x->size, F.tmpl);
	assert_int_equal(e2e_spawn(&x->ps, "page-server", argv, NULL, x->log[LOG_PS]), 0);
	if (e2e_expect(&x->ps, "port ", line, sizeof(line), 20000) != 1)
		fail_msg("%s: tlm-page-server printed no port (see %s)", x->id, x->log[LOG_PS]);
	assert_int_equal(sscanf(line, "port %d", &x->ps_port), 1);
}

static void f_start_proxy(struct f_run *x)
{
	char listen[] = "127.0.0.1:0", up[64], seed[32], line[128];
	char *argv[] = { F.bin_px, "--listen", listen, "--upstream", up, "--seed", seed,
			 "--faults", x->kind == F_PROXY || x->kind == F_LIVE_PROXY ? "4" : "1",
			 "--rate", F_RATE, NULL };

	snprintf(up, sizeof(up), "127.0.0.1:%d", x->ps_port);
	snprintf(seed, sizeof(seed), "%" PRIu64, x->seed);
	assert_int_equal(e2e_spawn(&x->px, "proxy", argv, NULL, x->log[LOG_PX]), 0);
	if (e2e_expect(&x->px, "port ", line, sizeof(line), 10000) != 1)
		fail_msg("%s: tlm-fault-proxy printed no port (see %s)", x->id, x->log[LOG_PX]);
	assert_int_equal(sscanf(line, "port %d", &x->px_port), 1);
	snprintf(x->source, sizeof(x->source), "127.0.0.1:%d", x->px_port);
}

static void f_start_uffd_server(struct f_run *x)
{
	char *argv[] = { F.bin_us, "--sock", F.us_sock, "--ctl", F.us_ctl, "--key", F.key,
			 "--source", x->source, "--template", F.tmpl, "--outage-limit",
			 x->kind == F_OUTAGE ? "1" : "30", "--stall-timeout",
			 x->kind == F_STALL ? "1" : "10",
			 "--log-level", "info", NULL };
	uint64_t end = tt_now_ms() + 20000;
	char *js = NULL;

	assert_int_equal(e2e_spawn(&x->us, "uffd-server", argv, NULL, x->log[LOG_US]), 0);
	while (!js && tt_now_ms() < end) {
		usleep(20000);
		js = e2e_ctl(F.us_ctl, "stats");
	}
	if (!js)
		fail_msg("%s: tlm-uffd-server does not answer (see %s)", x->id, x->log[LOG_US]);
	free(js);
}

static void f_freeze(struct f_run *x)
{
	char cmd[64];

	snprintf(cmd, sizeof(cmd), "freeze %s", x->id);
	f_ctl_ok(F.ps_ctl, cmd);
}

static void f_start_dest(struct f_run *x)
{
	char e_pre[500], e_ram[400], e_tmpl[400], e_sock[400], e_vm[64], e_src[128], size[32];
	char line[256];
	char *env[] = { e_pre, e_ram, e_tmpl, e_sock, e_vm, e_src, "TLM_ARM=map", NULL };
	/* live: the destination is ready before the source stops; it reads its RAM (and
	 * the manifest the source writes at its stop) on SIGUSR1, after the freeze */
	char *argv[] = { F.guest, "dest", "--ram", x->ram_dst, "--size", size, "--manifest",
			 x->manifest, "--hold", x->live ? "--wait-signal" : NULL, NULL };

	snprintf(e_pre, sizeof(e_pre), "LD_PRELOAD=%s", F.glue);
	snprintf(e_ram, sizeof(e_ram), "TLM_RAM_PATH=%s", x->ram_dst);
	snprintf(e_tmpl, sizeof(e_tmpl), "TLM_TEMPLATE=%s", F.tmpl);
	snprintf(e_sock, sizeof(e_sock), "TLM_SOCK=%s", F.us_sock);
	snprintf(e_vm, sizeof(e_vm), "TLM_VM_ID=%s", x->id);
	snprintf(e_src, sizeof(e_src), "TLM_SOURCE=%s", x->source);
	snprintf(size, sizeof(size), "%" PRIu64, x->size);
	assert_int_equal(e2e_spawn(&x->dst, "dst", argv, env, x->log[LOG_DST]), 0);
	if (e2e_expect(&x->dst, "mapped addr=", line, sizeof(line), 20000) != 1)
		fail_msg("%s: destination guest did not map its RAM (see %s)", x->id,
			 x->log[LOG_DST]);
}

/* ---- kills ----------------------------------------------------------------------------------- */

/* Somewhere in the migration: once 5..max_pct % of the pages are settled (present, or
 * TEMPLATE left to the kernel) (or 3 s). */
static void f_kill_point(struct f_run *x, unsigned max_pct)
{
	uint64_t pct = 5 + tt_rand(&x->rng) % (max_pct - 4);
	uint64_t want = (x->size / E2E_PAGE) * pct / 100, have = 0, left = 0;
	uint64_t end = tt_now_ms() + 3000;
	char cmd[64], *js;

	snprintf(cmd, sizeof(cmd), "stats %s", x->id);
	while (have + left < want && tt_now_ms() < end) {
		js = e2e_ctl(F.us_ctl, cmd);
		if (js) {
			tt_json_u64(js, "pages", "present", &have);
			tt_json_u64(js, "pages", "template_left", &left);
		}
		free(js);
		usleep(2000);
	}
}

static void f_kill_page_server(struct f_run *x)
{
	f_kill_point(x, 99);
	e2e_stop(&x->ps, SIGKILL, 5000);
	e2e_close(&x->ps);
	F.t.kills_ps++;
	usleep((useconds_t)(tt_rand(&x->rng) % 500) * 1000);      /* the link stays down */
	f_start_page_server(x);        /* same port, same region: the source is still frozen */
	f_freeze(x);
}

static void f_kill_uffd_server(struct f_run *x)
{
	f_kill_point(x, 99);
	e2e_stop(&x->us, SIGKILL, 5000);
	e2e_close(&x->us);
	F.t.kills_us++;
	usleep((useconds_t)(tt_rand(&x->rng) % 300) * 1000);
	f_start_uffd_server(x);
}

/*
 * While the reconnection to the stalled link hangs in its handshake (up to 5 s), the
 * daemon's event loop must go on (faults, other regions, control): `stats` is answered
 * well within that.
 */
static void f_loop_alive(struct f_run *x)
{
	struct tlm_sbuf b;
	int rc;

	usleep(500000);                  /* the new attempt is under way and stuck */
	tlm_sbuf_init(&b);
	rc = tlm_ctl_request(F.us_ctl, "stats", &b, 3000);
	tlm_sbuf_fini(&b);
	if (rc < 0)
		fail_msg("%s: tlm-uffd-server does not answer while reconnecting to a stalled "
			 "link: %s", x->id, strerror(-rc));
}

/* The link stalls with its connections open (a stopped proxy: nothing flows, nothing is
 * closed) while the guest waits for a page; it runs on once the stall was noticed. */
static void f_stall(struct f_run *x)
{
	uint64_t end;
	bool seen;

	f_kill_point(x, 60);
	kill(x->px.pid, SIGSTOP);
	F.t.stalls++;
	end = tt_now_ms() + 10000;
	/* open sessions: unanswered demands; a reconnection under way: its handshake */
	while (!(seen = e2e_file_contains(x->log[LOG_US], "no reply to") ||
		 e2e_file_contains(x->log[LOG_US], "handshake timed out")) &&
	       tt_now_ms() < end)
		usleep(20000);
	if (seen)
		f_loop_alive(x);
	kill(x->px.pid, SIGCONT);
	if (!seen)
		fail_msg("%s (seed %" PRIu64 "): a stalled link was not noticed (see %s)", x->id,
			 x->seed, x->log[LOG_US]);
}

/* Poll `stats ID` until the phase is want (or timeout); the last JSON (caller frees). */
static char *f_wait_phase(struct f_run *x, const char *want, int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;
	char cmd[64], phase[32] = "", *js = NULL;

	snprintf(cmd, sizeof(cmd), "stats %s", x->id);
	for (;;) {
		free(js);
		js = e2e_ctl(F.us_ctl, cmd);
		if (!js || tt_json_str(js, NULL, "phase", phase, sizeof(phase)) < 0)
			phase[0] = '\0';
		if (strcmp(phase, want) == 0 || tt_now_ms() >= end)
			return js;
		usleep(20000);
	}
}

/* The source stays away past --outage-limit: paused, reported; then resumed elsewhere. */
static void f_outage(struct f_run *x)
{
	char cmd[128], phase[32] = "", why[256] = "", *js;

	f_kill_point(x, 80);
	e2e_stop(&x->ps, SIGKILL, 5000);
	e2e_close(&x->ps);
	F.t.kills_ps++;
	js = f_wait_phase(x, "paused", 15000);
	if (js) {
		tt_json_str(js, NULL, "phase", phase, sizeof(phase));
		tt_json_str(js, NULL, "error", why, sizeof(why));
	}
	free(js);
	if (strcmp(phase, "paused") != 0 || !strstr(why, "unreachable"))
		fail_msg("%s: after the outage: phase '%s' (%s), expected paused (see %s)", x->id,
			 phase, why, x->log[LOG_US]);
	if (!e2e_file_contains(x->log[LOG_US], "paused, guest faults wait"))
		fail_msg("%s: the pause is not in the log %s", x->id, x->log[LOG_US]);
	snprintf(cmd, sizeof(cmd), "resume %s no-port", x->id);
	f_ctl_refused(F.us_ctl, cmd);
	f_ctl_refused(F.us_ctl, "resume no-such-vm");
	x->ps_port = 0;                /* a new page server elsewhere */
	f_start_page_server(x);
	f_freeze(x);
	snprintf(cmd, sizeof(cmd), "resume %s 127.0.0.1:%d", x->id, x->ps_port);
	f_ctl_ok(F.us_ctl, cmd);
	F.t.resumed++;
}

/* ---- live phase (the source guest runs and writes) ------------------------------------------ */

/* The "live" object of the page server's region stats (a new reference), or NULL with
 * why (no reply, or a reply that is not JSON: jansson takes no integer past INT64_MAX). */
static json_t *f_ps_live(struct f_run *x, char *why, size_t len)
{
	char cmd[64], *js;
	json_error_t je;
	json_t *root, *live;

	snprintf(cmd, sizeof(cmd), "stats %s", x->id);
	js = e2e_ctl(F.ps_ctl, cmd);
	root = js ? json_loads(js, 0, &je) : NULL;
	if (!root && why)
		snprintf(why, len, js ? "stats reply is not JSON: %s at %d" : "stats: no reply",
			 je.text, je.position);
	free(js);
	live = json_object_get(json_array_get(json_object_get(root, "regions"), 0), "live");
	if (root && !live && why)
		snprintf(why, len, "stats: no \"live\" object");
	json_incref(live);
	json_decref(root);
	return live;
}

static uint64_t f_json_u64(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_integer(v) && json_integer_value(v) > 0 ?
	       (uint64_t)json_integer_value(v) : 0;
}

/* `live ID POLICY`: the region must go live under dirty tracking, not fall back to
 * post-copy. */
static void f_live_start(struct f_run *x)
{
	char cmd[96], *r;

	snprintf(cmd, sizeof(cmd), "live %s %s", x->id, x->policy);
	r = e2e_ctl(F.ps_ctl, cmd);
	if (!r || strncmp(r, x->id, strlen(x->id)) != 0 || !strstr(r, " live: "))
		fail_msg("%s (%s, seed %" PRIu64 "): `%s`: %s (tracking by the glue, TLM_TRACK=1: "
			 "see %s, %s)", x->id, f_kind_names[x->kind], x->seed, cmd,
			 r ? r : "no reply", x->log[LOG_PS], x->log[LOG_SRC]);
	free(r);
}

/* Until the page server's live phase has its first pass done and, when it reports a
 * switch policy ("ready"), is ready for the stop. */
static void f_live_wait(struct f_run *x, bool need_ready, int timeout_ms)
{
	uint64_t end = tt_now_ms() + (uint64_t)timeout_ms;
	char state[96] = "no stats", why[160] = "";
	bool bad = false;               /* the last reply gave no "live" object (why) */

	for (;;) {
		json_t *lv = f_ps_live(x, why, sizeof(why)), *ready = json_object_get(lv, "ready");
		bool ok = json_is_true(json_object_get(lv, "pass_done")) &&
			  (!need_ready || !ready || json_is_true(ready));

		bad = !lv;
		if (lv)
			snprintf(state, sizeof(state), "%s, %" PRIu64 " pages classified%s",
				 json_string_value(json_object_get(lv, "state")) ?: "?",
				 f_json_u64(lv, "classified"),
				 ready && !json_is_true(ready) ? ", not ready" : "");
		json_decref(lv);
		if (ok)
			return;
		if (tt_now_ms() >= end)
			fail_msg("%s (%s, seed %" PRIu64 "): the live phase is not %s after %d ms "
				 "(%s%s%s; see %s)", x->id, f_kind_names[x->kind], x->seed,
				 need_ready ? "ready" : "past its first pass", timeout_ms,
				 bad ? why : state, bad ? "; the last readable stats: " : "",
				 bad ? state : "", x->log[LOG_PS]);
		usleep(5000);
	}
}

/* A moment of the live phase: in the first pass (once 0..99 % of the pages are
 * classified; an unlimited --live-rate often finishes first) or 0..300 ms after it. */
static void f_live_point(struct f_run *x)
{
	uint64_t want, end;

	if (tt_rand(&x->lrng) % 2) {
		f_live_wait(x, false, 20000);
		usleep((useconds_t)(tt_rand(&x->lrng) % 300) * 1000);
		return;
	}
	want = x->size / E2E_PAGE * (tt_rand(&x->lrng) % 100) / 100;
	end = tt_now_ms() + 5000;
	while (tt_now_ms() < end) {
		json_t *lv = f_ps_live(x, NULL, 0);
		bool past = f_json_u64(lv, "classified") >= want ||
			    json_is_true(json_object_get(lv, "pass_done"));

		json_decref(lv);
		if (past)
			return;
		usleep(1000);
	}
}

/* The destination is ready before the source stops: both sessions to the page server
 * open (phase mapping: it waits for the class map). */
static void f_dest_connected(struct f_run *x)
{
	char phase[32] = "", *js = f_wait_phase(x, "mapping", 15000);

	if (js)
		tt_json_str(js, NULL, "phase", phase, sizeof(phase));
	free(js);
	if (strcmp(phase, "mapping") != 0)
		fail_msg("%s (%s, seed %" PRIu64 "): the destination is not connected before the "
			 "stop: phase '%s' (see %s)", x->id, f_kind_names[x->kind], x->seed, phase,
			 x->log[LOG_US]);
}

/* The fault of the run, somewhere in the live phase. */
static void f_live_fault(struct f_run *x)
{
	unsigned cuts = 1 + (unsigned)(tt_rand(&x->lrng) % 2);

	switch (x->kind) {
	case F_LIVE_KILL_PS:        /* a new page server on the same port, `live` again */
		f_live_point(x);
		e2e_stop(&x->ps, SIGKILL, 5000);
		e2e_close(&x->ps);
		F.t.kills_ps++;
		usleep((useconds_t)(tt_rand(&x->lrng) % 500) * 1000);
		f_start_page_server(x);
		f_live_start(x);
		F.t.live_restarts++;
		break;
	case F_LIVE_PROXY:          /* the link breaks (every connection), once or twice */
		for (unsigned i = 0; i < cuts; i++) {
			f_live_point(x);
			kill(x->px.pid, SIGUSR1);
			F.t.live_cuts++;
		}
		break;
	case F_LIVE_KILL_US:        /* the glue hands region and uffd to the new daemon */
		f_live_point(x);
		e2e_stop(&x->us, SIGKILL, 5000);
		e2e_close(&x->us);
		F.t.kills_us++;
		usleep((useconds_t)(tt_rand(&x->lrng) % 300) * 1000);
		f_start_uffd_server(x);
		f_dest_connected(x);
		break;
	default:
		break;
	}
}

/* "The VM is stopped": the guest writes nothing more from its "stopped" line on; the
 * freeze follows at once (the guest hashes its RAM for the manifest meanwhile). */
static void f_live_stop(struct f_run *x)
{
	long long w = -1;
	char line[256];

	kill(x->src.pid, SIGUSR1);
	if (e2e_expect(&x->src, "stopped ", line, sizeof(line), 20000) != 1 ||
	    sscanf(line, "stopped writes=%lld", &w) != 1 || w < 0)
		fail_msg("%s (seed %" PRIu64 "): the source guest did not stop (see %s)", x->id,
			 x->seed, x->log[LOG_SRC]);
	F.t.live_writes += (uint64_t)w;
}

/* The final manifest is written; then the source process stops like a stopped VM. */
static void f_live_manifest(struct f_run *x)
{
	char line[256];

	if (e2e_expect(&x->src, "manifest: ", line, sizeof(line), 20000) != 1)
		fail_msg("%s (seed %" PRIu64 "): the source guest wrote no final manifest (see "
			 "%s)", x->id, x->seed, x->log[LOG_SRC]);
	kill(x->src.pid, SIGSTOP);
}

/* After the freeze: the live result was used (not discarded for a full classification),
 * and what the tracking caught. */
static void f_live_after_freeze(struct f_run *x)
{
	char why[160], said[32];
	json_t *lv = f_ps_live(x, why, sizeof(why));
	uint64_t redone = f_json_u64(lv, "redone"), fin = f_json_u64(lv, "final_dirty");
	uint64_t pre = f_json_u64(lv, "presend_bytes") / E2E_PAGE;
	uint64_t valid = f_json_u64(lv, "valid_at_freeze");
	const char *pol = json_string_value(json_object_get(lv, "policy"));

	if (!lv)
		fail_msg("%s (%s, seed %" PRIu64 "): after the freeze: %s (see %s)", x->id,
			 f_kind_names[x->kind], x->seed, why, x->log[LOG_PS]);
	snprintf(said, sizeof(said), "%s", pol ? pol : "");
	json_decref(lv);
	/* the page server ran the policy it was told */
	if (strcmp(said, x->policy) != 0)
		fail_msg("%s (seed %" PRIu64 "): `live %s %s` ran policy '%s' (see %s)", x->id,
			 x->seed, x->id, x->policy, said, x->log[LOG_PS]);
	if (e2e_file_contains(x->log[LOG_PS], "live result is discarded"))
		fail_msg("%s (%s, seed %" PRIu64 "): the page server discarded its live result "
			 "(see %s)", x->id, f_kind_names[x->kind], x->seed, x->log[LOG_PS]);
	F.t.live_redone += redone;
	F.t.live_final_dirty += fin;
	F.t.live_present += pre;
	F.t.live_presend_runs += strcmp(x->policy, "post") != 0;
	F.t.live_valid += valid;
	print_message("  live: %" PRIu64 " pages redone while running, %" PRIu64 " at the "
		      "freeze; %" PRIu64 " pre-sent, %" PRIu64 " valid at the freeze\n", redone,
		      fin, pre, valid);
}

/* A live run up to the destination reading its RAM: everything ready and armed, `live`,
 * the fault, the first pass done, the stop, the freeze. */
static void f_run_live(struct f_run *x)
{
	f_start_source(x);
	f_start_page_server(x);
	f_start_proxy(x);
	f_start_uffd_server(x);
	f_start_dest(x);
	f_dest_connected(x);
	f_live_start(x);
	f_live_fault(x);
	f_live_wait(x, true, 20000);
	usleep((useconds_t)(20 + tt_rand(&x->lrng) % 180) * 1000);   /* rounds, writes */
	f_live_stop(x);
	f_freeze(x);
	f_live_after_freeze(x);
	f_live_manifest(x);
	kill(x->dst.pid, SIGUSR1);        /* the destination VM starts */
}

/* ---- checks ----------------------------------------------------------------------------------- */

/* "running", or how a daemon ended that nobody here stopped (something else killed it). */
static const char *f_alive(struct e2e_proc *p, char *buf, size_t len)
{
	if (e2e_wait(p, 0, NULL) == -ETIMEDOUT)
		return "running";
	if (WIFSIGNALED(p->status))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(p->status));
	else
		snprintf(buf, len, "exited with %d", WEXITSTATUS(p->status));
	return buf;
}

/* The guest reads and compares every page, then holds. */
static void f_verify_guest(struct f_run *x)
{
	uint64_t end = tt_now_ms() + F_TIMEOUT_MS;
	long long pages = -1, mism = -1;
	bool holding = false;
	char line[512];

	while (!holding && tt_now_ms() < end &&
	       e2e_read_line(&x->dst, line, sizeof(line), (int)(end - tt_now_ms())) == 1) {
		sscanf(line, "verify: pages=%lld mismatches=%lld", &pages, &mism);
		holding = strcmp(line, "holding") == 0;
	}
	if (pages < 0 || mism < 0) {
		char a[64], b[64];

		fail_msg("%s (%s, seed %" PRIu64 "): the destination guest did not finish "
			 "reading its RAM; tlm-uffd-server %s, tlm-page-server %s (see %s, %s)",
			 x->id, f_kind_names[x->kind], x->seed, f_alive(&x->us, a, sizeof(a)),
			 f_alive(&x->ps, b, sizeof(b)), x->log[LOG_DST], x->log[LOG_US]);
	}
	F.t.pages += (uint64_t)pages;
	F.t.mismatches += (uint64_t)mism;
	if (mism || (uint64_t)pages != x->size / E2E_PAGE)
		fail_msg("%s (seed %" PRIu64 "): %lld of %lld pages differ from the source",
			 x->id, x->seed, mism, pages);
}

/* The region completes (every page present, DONE received). */
static void f_check_complete(struct f_run *x)
{
	char phase[32] = "", *js = f_wait_phase(x, "complete", 15000);
	uint64_t rec = 0;

	if (js)
		tt_json_str(js, NULL, "phase", phase, sizeof(phase));
	if (strcmp(phase, "complete") != 0)
		fail_msg("%s (seed %" PRIu64 "): region phase '%s', expected complete (see %s)",
			 x->id, x->seed, phase, x->log[LOG_US]);
	if (js && tt_json_u64(js, NULL, "reconnects", &rec) == 0)
		F.t.reconnects += rec;
	free(js);
	F.t.completed++;
}

/* The proxy's closing line: faults that took effect. */
static void f_proxy_counts(struct f_run *x)
{
	unsigned long long v[6] = { 0 };
	char line[256];

	kill(x->px.pid, SIGTERM);
	if (e2e_expect(&x->px, "faults ", line, sizeof(line), 5000) == 1 &&
	    sscanf(line, "faults cut=%llu truncate=%llu delay=%llu reorder=%llu drop=%llu "
		   "conns=%llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) == 6)
		for (int i = 0; i < 6; i++)
			F.t.faults[i] += v[i];
	assert_int_equal(e2e_stop(&x->px, SIGTERM, 5000), 0);
}

/* ---- one run ---------------------------------------------------------------------------------- */

static void f_run_init(struct f_run *x, unsigned n)
{
	static const char *const logs[5] = { "src", "ps", "proxy", "us", "dst" };

	memset(x, 0, sizeof(*x));
	x->n = n;
	x->seed = F.seed * 1000003ull + n;
	x->rng = x->seed;
	x->kind = f_rotation[n % F_NELEM(f_rotation)];
	if (n + 1 == F.runs)
		x->kind = F_OUTAGE;
	x->live = f_is_live(x->kind);
	x->lrng = x->seed ^ 0x6c6976656c697665ull;
	x->writes = f_live_writes[tt_rand(&x->lrng) % F_NELEM(f_live_writes)];
	x->live_rate = f_live_rates[tt_rand(&x->lrng) % F_NELEM(f_live_rates)];
	x->policy = f_live_policies[tt_rand(&x->lrng) % F_NELEM(f_live_policies)];
	x->size = (tt_rand(&x->rng) % 8 == 0 ? 64ull : 16ull) << 20;
	snprintf(x->id, sizeof(x->id), "f%u", n);
	e2e_pathf(x->ram_src, sizeof(x->ram_src), F.dir, "%s.src.ram", x->id);
	e2e_pathf(x->ram_dst, sizeof(x->ram_dst), F.dir, "%s.dst.ram", x->id);
	e2e_pathf(x->manifest, sizeof(x->manifest), F.dir, "%s.manifest", x->id);
	for (int i = 0; i < 5; i++)
		e2e_pathf(x->log[i], sizeof(x->log[i]), F.dir, "%s.%s.log", x->id, logs[i]);
	x->src.out = x->ps.out = x->px.out = x->us.out = x->dst.out = -1;
}

static void f_run_fini(struct f_run *x)
{
	struct e2e_proc *all[] = { &x->dst, &x->us, &x->px, &x->ps, &x->src };

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		e2e_close(all[i]);         /* SIGTERM, then SIGKILL */
	unlink(x->ram_src);
	unlink(x->ram_dst);
	unlink(x->manifest);
	if (!F.keep)
		for (int i = 0; i < 5; i++)
			unlink(x->log[i]);
}

static void f_run_one(struct f_run *x)
{
	if (x->live) {
		f_run_live(x);
		goto verify;
	}
	f_start_source(x);
	f_start_page_server(x);
	f_start_proxy(x);
	f_start_uffd_server(x);
	kill(x->src.pid, SIGSTOP);
	f_freeze(x);
	f_start_dest(x);
	if (x->kind == F_KILL_PS)
		f_kill_page_server(x);
	else if (x->kind == F_KILL_US)
		f_kill_uffd_server(x);
	else if (x->kind == F_STALL)
		f_stall(x);
	else if (x->kind == F_OUTAGE)
		f_outage(x);
verify:
	f_verify_guest(x);
	f_check_complete(x);
	if (x->kind == F_OUTAGE) {
		char cmd[64];

		snprintf(cmd, sizeof(cmd), "resume %s", x->id);
		f_ctl_refused(F.us_ctl, cmd);     /* complete: nothing to resume */
	}
	f_proxy_counts(x);
	assert_int_equal(e2e_stop(&x->dst, SIGTERM, 10000), 0);   /* exit 0: all matched */
	assert_int_equal(e2e_stop(&x->us, SIGTERM, 10000), 0);
	assert_int_equal(e2e_stop(&x->ps, SIGTERM, 10000), 0);
}

static void test_campaign(void **state)
{
	uint64_t t0 = tt_now_ms();

	(void)state;
	for (unsigned n = 0; n < F.runs; n++) {
		struct f_run x;

		if (F.only && n + 1 != F.only)
			continue;
		f_run_init(&x, n);
		F.t.runs++;
		F.t.by_kind[x.kind]++;
		print_message("run %u/%u: %s, %" PRIu64 " MiB, seed %" PRIu64 "\n", n + 1, F.runs,
			      f_kind_names[x.kind], x.size >> 20, x.seed);
		if (x.live)
			print_message("  live: guest writes %s pages/s, --live-rate %s, policy %s\n",
				      x.writes, x.live_rate, x.policy);
		f_run_one(&x);
		f_run_fini(&x);
	}
	print_message("campaign: %u runs in %.1f s\n", F.t.runs,
		      (double)(tt_now_ms() - t0) / 1000.0);
	assert_int_equal(F.t.mismatches, 0);
	assert_int_equal(F.t.completed, F.t.runs);
	/* the live runs exercised the tracking: writes after a page's read were caught */
	if (F.t.by_kind[F_LIVE_KILL_PS] + F.t.by_kind[F_LIVE_PROXY] + F.t.by_kind[F_LIVE_KILL_US])
		assert_true(F.t.live_redone + F.t.live_final_dirty > 0);
	/* and the hybrid and auto runs pre-sent DATA */
	if (F.t.live_presend_runs)
		assert_true(F.t.live_present > 0);
}

/* ---- setup ------------------------------------------------------------------------------------ */

static int f_setup(void **state)
{
	char log[300];
	char *argv[] = { F.bin_tt, "build", "--from", F.tmpl, NULL };

	(void)state;
	if (e2e_bin(F.bin_ps, sizeof(F.bin_ps), "TLM_BIN_DIR", "tlm-page-server") ||
	    e2e_bin(F.bin_us, sizeof(F.bin_us), "TLM_BIN_DIR", "tlm-uffd-server") ||
	    e2e_bin(F.bin_tt, sizeof(F.bin_tt), "TLM_BIN_DIR", "tlm-template") ||
	    e2e_bin(F.bin_px, sizeof(F.bin_px), "TLM_TEST_BIN_DIR", "faults/tlm-fault-proxy") ||
	    e2e_bin(F.guest, sizeof(F.guest), "TLM_TEST_BIN_DIR", "e2e/tlm-synth-guest") ||
	    e2e_bin(F.glue, sizeof(F.glue), "TLM_GLUE", NULL))
		return -1;
	F.dir = e2e_mkdtemp("/dev/shm");       /* MINOR faults need the template on tmpfs */
	if (!F.dir)
		return -1;
	f_path(F.tmpl, sizeof(F.tmpl), "base.pages");
	f_path(F.key, sizeof(F.key), "key");
	f_path(F.ps_ctl, sizeof(F.ps_ctl), "ps/ctl.sock");
	f_path(F.us_ctl, sizeof(F.us_ctl), "us/ctl.sock");
	f_path(F.us_sock, sizeof(F.us_sock), "us/glue.sock");
	f_path(log, sizeof(log), "tlm-template.log");
	if (e2e_make_key(F.key, 7) < 0 ||
	    e2e_make_pages(F.tmpl, F_TMPL_SIZE / E2E_PAGE, F.seed) < 0 ||
	    e2e_run(argv, log, 60000) != 0)
		return -1;
	return 0;
}

static int f_teardown(void **state)
{
	const struct f_totals *t = &F.t;

	(void)state;
	printf("\n== tlm fault injection summary (seed %" PRIu64 ")\n", F.seed);
	printf("runs: %u (proxy faults %u, page-server killed %u, uffd-server killed %u, "
	       "link stalled %u, outage past the limit %u: paused and resumed %u; "
	       "live phase with page-server killed %u, link faults %u, uffd-server killed %u)\n",
	       t->runs, t->by_kind[F_PROXY], t->by_kind[F_KILL_PS], t->by_kind[F_KILL_US],
	       t->by_kind[F_STALL], t->by_kind[F_OUTAGE], t->resumed,
	       t->by_kind[F_LIVE_KILL_PS], t->by_kind[F_LIVE_PROXY], t->by_kind[F_LIVE_KILL_US]);
	printf("live phase: guest writes %" PRIu64 ", pages redone while running %" PRIu64
	       ", at the freeze %" PRIu64 "; page servers restarted and live again %" PRIu64
	       ", links cut %" PRIu64 "; pages pre-sent %" PRIu64 ", valid at the freeze %"
	       PRIu64 "\n", t->live_writes, t->live_redone, t->live_final_dirty,
	       t->live_restarts, t->live_cuts, t->live_present, t->live_valid);
	printf("faults injected: cut %" PRIu64 ", truncate %" PRIu64 ", delay %" PRIu64
	       ", reorder %" PRIu64 ", drop %" PRIu64 " (over %" PRIu64 " connections); "
	       "kill -9 page-server %" PRIu64 ", uffd-server %" PRIu64 "; link stalls %" PRIu64
	       "\n", t->faults[0], t->faults[1], t->faults[2], t->faults[3], t->faults[4],
	       t->faults[5], t->kills_ps, t->kills_us, t->stalls);
	printf("migrations completed: %u of %u; source reconnects at the destination: %" PRIu64
	       "\n", t->completed, t->runs, t->reconnects);
	printf("pages compared: %" PRIu64 ", mismatches: %" PRIu64 "\n", t->pages,
	       t->mismatches);
	printf("logs: %s%s\n", F.dir ? F.dir : "-", F.keep ? "" : " (removed; --keep keeps them)");
	if (F.dir && !F.keep)
		e2e_rmrf(F.dir);
	free(F.dir);
	return 0;
}

static int f_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "runs", required_argument, NULL, 'r' },
		{ "seed", required_argument, NULL, 's' },
		{ "keep", no_argument, NULL, 'k' },
		{ "only", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	F.runs = 48;
	F.seed = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		if (c == 'r')
			F.runs = (unsigned)strtoul(optarg, NULL, 0);
		else if (c == 's')
			F.seed = strtoull(optarg, NULL, 0);
		else if (c == 'k')
			F.keep = true;
		else if (c == 'o')
			F.only = (unsigned)strtoul(optarg, NULL, 0);
		else
			return -1;
	}
	return F.runs && F.only <= F.runs ? 0 : -1;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = { cmocka_unit_test(test_campaign) };
	int rc;

	if (f_args(argc, argv) < 0) {
		fprintf(stderr, "usage: test_faults [--runs N>0] [--seed S] [--only K<=N] "
			"[--keep]\n");
		return 2;
	}
	if ((rc = e2e_skip_unless_uffd_root("process_vm_readv of another process, its pagemap")) != 0)
		return rc;
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, f_setup, f_teardown);
}
