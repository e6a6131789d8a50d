#!/usr/bin/env bash
# Post-copy live migration of running QEMU VMs to a destination QEMU on this host.
#
#   scripts/migrate-postcopy.sh --mode qemu|tlm|precopy [options] VM...
#   scripts/migrate-postcopy.sh --pull NAME [--timeout S]
#
#   VM                 a VM name of the run dir ($TLM_RUN_DIR, default /dev/shm/tlm/run),
#                      its run directory, or its QMP socket; the QMP socket (-qmp
#                      unix:PATH,server=on) of any other running QEMU adopts it (tlm_qemu.vm
#                      adopt: README "Migrating your own VM"). Its guest RAM must be one
#                      -object memory-backend-file,share=on,mem-path=FILE on tmpfs
#                      (hugetlbfs too for --mode qemu|precopy) used as -machine
#                      memory-backend=ID: anything else is refused with what to change,
#                      before anything starts. Its destination runs the same command line
#                      with a new RAM file, its unix sockets (QMP, serial, monitor) and
#                      -pidfile moved to the destination's run directory, file chardevs
#                      appended to, -daemonize and -S dropped, -incoming defer.
#                      Disks are not moved, in any mode: every VM's destination opens
#                      the same disk paths (shared storage, the same path on both hosts;
#                      QEMU hands the image over at the switch), and a disk it cannot
#                      open read-write is refused in one line before its QEMU starts
#   --name N           the name of a VM given by such a socket (default: its -name)
#   --dst-cmdline FILE the destination's command line (one argument per line, QEMU first),
#                      rewritten the same way: for what must differ at the destination
#                      (tap device, TCP ports, paths); one VM only
#   --check-cmd CMD    guest check: `sh -c CMD` runs before the migration and after it at
#                      the destination, with TLM_CHECK_PHASE=before|after, TLM_VM_NAME,
#                      TLM_VM_QMP (a free QMP socket of the QEMU that runs the guest) and,
#                      after, TLM_CHECK_BEFORE (its output before); a non-zero exit fails
#                      the migration. Default: the test guest's checksum for VMs started
#                      by tlm_qemu.vm, no check for others (the log says so)
#   --mode qemu        stock QEMU postcopy-ram: the whole RAM goes through QEMU's stream
#   --mode tlm         QEMU moves the device state only (x-ignore-shared), tlm moves the RAM
#                      post-copy: tlm-page-server at the source, tlm-uffd-server at the
#                      destination (libtlm-glue.so preloaded into the destination QEMU)
#   --mode precopy     stock QEMU precopy (reference: no postcopy at all)
#   --precopy S        qemu mode: seconds of precopy before migrate-start-postcopy (default 0:
#                      the switch is requested right with `migrate`, so the RAM moves post-copy)
#   --bandwidth R      max-bandwidth of QEMU's stream, MiB/s, or with a k/M/G suffix
#                      (default 10240: loopback)
#   --preempt          qemu mode: also enable postcopy-preempt (separate demand channel)
#   --timeout S        per-VM limit for the migration to complete (default 300)
#   --no-check         skip the guest checks (checksum before/after, TICKs at destination,
#                      or --check-cmd)
#   --json FILE        also write the report as JSON
#   --trace FILE       append "mode,vm,seconds,pages_present,pages_total" samples (10/s;
#                      tlm counts TEMPLATE pages left to the kernel as present)
# tlm mode:
#   --key FILE         pre-shared key of the daemons (0600); default: a new random key
#   --dst-ctl PATH --dst-sock PATH
#                      use this running tlm-uffd-server (its control and glue sockets;
#                      started with --template for the VMs' template and the same --key);
#                      default: one is started for this run and stopped after it
#   --dst-template P   the template's path at the destination (default: the source's)
#   --tls psk|off      TLS 1.3 between the daemons, keyed from --key (default off; a
#                      --dst-ctl daemon must have been started with the same)
#   --src-addr IP      address of the page server (default 127.0.0.1)
#   --dst-addr IP      address of the destination QEMU's migration port (default 127.0.0.1)
#   --src-port N       TCP port of the page server (default 0: any free port)
#   --src-reach H:P    where the destination reaches the page server, if not at
#                      --src-addr:port (NAT, a relay; the fault tests put a proxy there)
#   --dst-port N       first TCP port of the destination QEMUs (VM i uses N+i; default: any)
#   --src-netns NS, --dst-netns NS
#                      run the source / destination side in these network namespaces
#                      (emulated hosts; the source VMs must already run in --src-netns)
#   --dst-host [USER@]HOST
#                      run the destination side on HOST over ssh (one ControlMaster
#                      connection, BatchMode: a key, no password): tlm-uffd-server and the
#                      destination QEMU start there, their unix sockets are forwarded
#                      here; HOST has the same tlm install (scripts/tlm-hostcheck.sh says
#                      what differs) and the template (scripts/template-push.sh; name its
#                      path there with --dst-template). --dst-addr is HOST's address the
#                      source QEMU migrates to; --src-addr (or --src-reach) must be
#                      reachable from HOST. Not with --dst-netns
#   --dst-prefix DIR   --dst-host: HOST's tlm source tree with its build/ (default: the
#                      same paths as here)
#   --dst-run-dir DIR  --dst-host: HOST's TLM_RUN_DIR (default: its default)
#   --dst-key FILE     --dst-host: the --key file's path on HOST (default: the same path;
#                      without --key, this run's new key is copied to HOST)
#   --ssh-config FILE  --dst-host: ssh -F FILE (default $TLM_SSH_CONFIG)
#   --bulk-delay MS    the page server starts its background DATA stream MS ms after the
#                      freeze (tlm-page-server --bulk-delay; a page server restarted after
#                      a crash streams at once): until then DATA pages move on demand only
#   --no-live          no live phase: the page server classifies the whole RAM after the
#                      source stops (the downtime grows with the RAM; kept for comparison)
#   --live-rate MiB    MiB/s of the page server's live classification reads (0 = unlimited;
#                      default: the page server's)
#   --policy P         what the live phase sends the destination before the stop
#                      (tlm-page-server --policy; default auto): post = the class map
#                      only, DATA after the switch; hybrid = also DATA pages in rounds
#                      until few are left; auto = DATA rounds while they converge, judged
#                      from the measured write and send rates (a write-heavy guest
#                      switches early). The stop waits until the page server says ready
#   --before-stop CMD  test hook: run `sh -c CMD` once the destinations are armed and the
#                      live phase runs, before any source stops (same environment as
#                      --after-switch; a page server it kills is restarted and starts the
#                      live phase again)
#   --before-freeze CMD
#                      test hook: run `sh -c CMD` once per VM, after its source stopped
#                      and before its freeze (a page server it kills is restarted, and
#                      the restarted one classifies the stopped source)
#   --after-switch CMD test hook: run `sh -c CMD` once every destination runs on its faults,
#                      before the wait for completion (its output goes to stderr; a non-zero
#                      exit fails the migration). Its environment names the daemons:
#                      TLM_PAGE_SERVER_PID, TLM_PAGE_SERVER_CTL, TLM_UFFD_SERVER_PID (empty
#                      with --dst-ctl), TLM_UFFD_SERVER_CTL, and TLM_MIGRATE_WORK (work
#                      directory), TLM_MIGRATE_VMS (VM names). A daemon it kills is
#                      restarted after it. The page server holds its background DATA stream
#                      until the hook returns (tlm-page-server --bulk-hold), so pages are
#                      still missing while it runs (tests/qemu/qemu_tlm_faults.sh)
#   --split            split migration (remote paging): the switch happens as usual, but
#                      the page server holds its background DATA stream and stays, as
#                      the VM's memory host: the destination runs (and is checked; the
#                      check faults in what it reads) with only the pages it touches
#                      moved on its faults; the script returns then, printing the
#                      remote-fault latency and the pull command. Default --policy post
#                      (nothing pre-sent: hybrid/auto pre-send the DATA in rounds).
#                      A plain RAM file source's QEMU stops (the page server's mapping
#                      keeps the RAM); a glue (pid) source's QEMU stays, paused. What the
#                      pull needs is in the destination's run directory (split.json),
#                      the daemons' logs in the kept work directory. One memory host
#                      per VM; not with --dst-host
#   --pull NAME        a split VM's rest: the page server's stream released, every page
#                      settled at the destination, then the source QEMU and the daemons
#                      stop as at the end of an unsplit migration (--timeout applies)
# TLM_MIGRATE_KEEP=1 keeps the tlm mode's work directory (the daemons' logs and stats) and
# prints its path; it is kept anyway when a migration fails and something is left there.
# qemu and precopy modes take --dst-addr and --dst-netns (the destination QEMU runs there
# and listens on --dst-addr; --src-netns is accepted and unused: the source QEMU connects).
#
# tlm mode, live switch-over: a source QEMU that tracks its guest's writes (the glue with
# TLM_TRACK=1: `tlm_qemu.vm start --track`, clones of scripts/clone-start.sh) has its RAM
# classified by the page server while it runs, and the destination receives the class
# map (and, by --policy, DATA pages) meanwhile; the source is stopped once the page
# server says ready, and `freeze` reclassifies only the pages written since and sends
# only the corrections, so the downtime does not grow with the RAM. Other VMs are classified after the stop, as with --no-live.
#
# Downtime, every mode: from the source's QMP STOP event to the destination's RESUME
# event (their timestamps, host clock; recorded on each VM's qmp-mig.sock), reported as
# downtime_ms, with QEMU's own figure (query-migrate) as downtime_qemu_ms. An adopted
# source has no qmp-mig.sock: in qemu and precopy modes its downtime_ms is QEMU's figure
# (the report says so); tlm mode records the events on its one QMP socket.
#
# For every VM: start the destination QEMU (same command line, new RAM file, -incoming
# defer), set the capabilities on both sides, migrate over tcp:--dst-addr, switch to
# postcopy, wait for "completed", check the guest at the destination (it TICKs; its
# "sum" equals the one taken before; no bad page; or --check-cmd), stop the source (an
# adopted QEMU quits; its RAM file stays, it is the operator's), make the destination
# the current VM of the name, and report bytes, times, downtime and destination Pss.
# VMs migrate concurrently. A failure before the switch to postcopy cancels the migration
# and leaves the source running; after it, both sides are left as they are for inspection.
# Exit status: 0 all migrated and checked, 1 a failure (named on stderr), 2 usage.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

mode=
precopy_s=0
bandwidth=10240
preempt=0
timeout_s=300
check=1
json_out=
vms=()

usage() {
	tlm_usage
}

tlm_opts=()
common_opts=()		# passed to tlm_qemu.migrate too
check_cmd=
dst_cmdline=
adopt_name=
trace=
dst_addr=127.0.0.1
dst_netns=

while [ $# -gt 0 ]; do
	case "$1" in
	--key|--dst-ctl|--dst-sock|--dst-template|--src-addr|--dst-addr|--src-port|--dst-port|\
	--src-reach|--after-switch|--before-stop|--before-freeze|--bulk-delay|--live-rate|\
	--policy|--src-netns|--dst-netns|--dst-host|--dst-prefix|--dst-run-dir|--dst-key|\
	--ssh-config|--tls)
		[ $# -ge 2 ] || { echo "$tlm_prog: $1 needs a value" >&2; exit 2; }
		tlm_opts+=("$1" "$2")
		case "$1" in
		--dst-addr) dst_addr=$2 ;;
		--dst-netns) dst_netns=$2 ;;
		--bulk-delay|--live-rate) [[ "$2" =~ ^[0-9]+$ ]] ||
			{ echo "$tlm_prog: not a whole number: '$2'" >&2; exit 2; }
			other_opt=${other_opt:-$1} ;;
		--policy) [[ "$2" =~ ^(post|hybrid|auto)$ ]] ||
			{ echo "$tlm_prog: --policy: post, hybrid or auto, not '$2'" >&2; exit 2; }
			other_opt=${other_opt:-$1} ;;
		--tls) [[ "$2" =~ ^(psk|off)$ ]] ||
			{ echo "$tlm_prog: --tls: psk or off, not '$2'" >&2; exit 2; }
			other_opt=${other_opt:-$1} ;;
		--src-netns) ;;
		*) other_opt=${other_opt:-$1} ;;
		esac
		shift ;;
	--no-live|--split) tlm_opts+=("$1"); other_opt=${other_opt:-$1} ;;
	--pull) [ $# -ge 2 ] || { echo "$tlm_prog: $1 needs a value" >&2; exit 2; }
		pull=$2; shift ;;
	--trace) trace=${2:-}; shift ;;
	--check-cmd|--dst-cmdline|--name)
		[ $# -ge 2 ] || { echo "$tlm_prog: $1 needs a value" >&2; exit 2; }
		case "$1" in
		--check-cmd) check_cmd=$2 ;;
		--dst-cmdline) dst_cmdline=$2 ;;
		--name) adopt_name=$2 ;;
		esac
		[ "$1" = --name ] || common_opts+=("$1" "$2")
		shift ;;
	--mode) mode=${2:-}; shift ;;
	--precopy) precopy_s=${2:-}; shift ;;
	--bandwidth) bandwidth=${2:-}; shift ;;
	--preempt) preempt=1 ;;
	--timeout) timeout_s=${2:-}; shift ;;
	--no-check) check=0 ;;
	--json) json_out=${2:-}; shift ;;
	-h|--help) tlm_usage; exit 0 ;;
	-*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	*) vms+=("$1") ;;
	esac
	shift
done
for n in "$precopy_s" "$timeout_s"; do
	[[ "$n" =~ ^[0-9]+$ ]] || { echo "$tlm_prog: not a whole number: '$n'" >&2; exit 2; }
done
if [ -n "${pull:-}" ]; then
	[ -z "$mode${other_opt:-}" ] && [ ${#vms[@]} = 0 ] ||
		{ echo "$tlm_prog: --pull NAME takes --timeout only" >&2; exit 2; }
	tlm_py migrate --pull "$pull" --timeout "$timeout_s" || exit 1
	exit 0
fi
case "$mode" in
qemu|tlm|precopy) ;;
"") echo "$tlm_prog: --mode qemu|tlm|precopy is required (try --help)" >&2; exit 2 ;;
*) echo "$tlm_prog: --mode must be qemu, tlm or precopy, not '$mode'" >&2; exit 2 ;;
esac
if [ "$mode" != tlm ] && [ -n "${other_opt:-}" ]; then
	echo "$tlm_prog: $other_opt is a tlm-mode option" >&2; exit 2
fi
bandwidth_bps=$bandwidth
[[ "$bandwidth" =~ ^[0-9]+$ ]] && bandwidth_bps+=M
bandwidth_bps=$(numfmt --from=iec "${bandwidth_bps^^}" 2>/dev/null) && [ "$bandwidth_bps" -gt 0 ] ||
	{ echo "$tlm_prog: --bandwidth: not a rate: '$bandwidth' (MiB/s, or k/M/G suffix)" >&2; exit 2; }
[ ${#vms[@]} -gt 0 ] || { echo "$tlm_prog: no VM given (try --help)" >&2; exit 2; }
if [ ${#vms[@]} -gt 1 ] && [ -n "$dst_cmdline$adopt_name" ]; then
	echo "$tlm_prog: --dst-cmdline and --name name one VM, not ${#vms[@]}" >&2; exit 2
fi
if [ -n "$dst_cmdline" ]; then	# its guest RAM, before anything starts
	err=$(tlm_py cmdline check-file "$dst_cmdline" 2>&1) || tlm_die "$err"
fi

# A QMP socket of a QEMU that tlm_qemu.vm did not start: adopt it (its RAM is checked for
# this mode, nothing is started; the VM goes on by its run directory).
for i in "${!vms[@]}"; do
	if [ -S "${vms[$i]}" ] && ! tlm_vm info "${vms[$i]}" --get dir >/dev/null 2>&1; then
		vms[$i]=$(tlm_vm adopt "${vms[$i]}" --mode "$mode" \
			${adopt_name:+--name "$adopt_name"} 2>&1) ||
			tlm_die "${vms[$i]#tlm_qemu.vm: error: }"
	elif [ -n "$adopt_name" ]; then
		tlm_die "--name names a VM given by the QMP socket of a QEMU not started by" \
			"tlm_qemu.vm; ${vms[$i]} is one of tlm's VMs"
	fi
done

# ---- tlm mode: qemu-glue/tlm_qemu/migrate.py runs it (the order of its steps is documented there)
migrate_tlm() {
	local bin=${TLM_BIN_DIR:-$tlm_root/build/runtime} glue=${TLM_GLUE:-$tlm_root/build/qemu-glue/libtlm-glue.so}
	local work rc=0 args=()

	for f in "$bin/tlm-page-server" "$bin/tlm-uffd-server" "$glue"; do
		[ -e "$f" ] || tlm_die "$f is missing: build tlm first (scripts/setup.sh)"
	done
	[ "$check" = 1 ] || args+=(--no-check)
	[ -z "$json_out" ] || args+=(--json "$json_out")
	[ -z "$trace" ] || args+=(--trace "$trace")
	work=$(mktemp -d "${TMPDIR:-/tmp}/tlm-migrate.XXXXXX")
	tlm_py migrate --work "$work" --bin-dir "$bin" \
		--glue "$glue" --timeout "$timeout_s" ${tlm_opts[@]+"${tlm_opts[@]}"} \
		${common_opts[@]+"${common_opts[@]}"} \
		${args[@]+"${args[@]}"} "${vms[@]}" || rc=$?
	if [ -e "$work/.keep" ] || [ "${TLM_MIGRATE_KEEP:-0}" = 1 ]; then
		tlm_log "work directory kept: $work"
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
[ "$mode" = tlm ] && migrate_tlm

# ---- qemu mode ----------------------------------------------------------------------------
names=() src_dirs=() dst_dirs=() phases=() befores=()
declare -A recorders=()		# "I.src" / "I.dst" -> pid of its tlm_qemu.events
work=$(mktemp -d "${TMPDIR:-/tmp}/tlm-migrate.XXXXXX")

# Undo what can be undone for every VM that did not finish (runs on any exit).
cleanup() {
	local rc=$? i

	for i in "${!names[@]}"; do
		case "${phases[$i]}" in
		prepared)	# destination started, source untouched
			tlm_vm stop "${dst_dirs[$i]}" >/dev/null 2>&1 || true ;;
		precopy)	# the source still runs the guest: cancel, drop the destination
			tlm_qmp "${src_dirs[$i]}/qmp.sock" migrate_cancel >/dev/null 2>&1 || true
			tlm_vm wait-migration "${src_dirs[$i]}" --until cancelled,completed,none,failed \
				--timeout 30 >/dev/null 2>&1 || true
			tlm_vm stop "${dst_dirs[$i]}" >/dev/null 2>&1 || true
			tlm_log "${names[$i]}: migration cancelled; the source keeps running" ;;
		postcopy)	# did the switch happen? the source runs on if it did not
			if [ "$(tlm_qmp "${src_dirs[$i]}/qmp.sock" query-status --get status \
				2>/dev/null)" = running ]; then
				tlm_vm stop "${dst_dirs[$i]}" >/dev/null 2>&1 || true
				tlm_log "${names[$i]}: migration failed before the switch; the" \
					"source keeps running"
			else
				tlm_log "${names[$i]}: failed after the switch to postcopy; source" \
					"${src_dirs[$i]} and destination ${dst_dirs[$i]} left as they are"
			fi ;;
		esac
	done
	for i in ${recorders[@]+"${recorders[@]}"}; do
		kill "$i" 2>/dev/null || true
	done
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# x-ignore-shared off: a clone started from a template has it on, and QEMU refuses it
# together with postcopy-ram (docs/ARCHITECTURE.md F4); stock postcopy moves all RAM.
caps_json() {
	local caps='{"capability":"x-ignore-shared","state":false}'

	caps+=",{\"capability\":\"postcopy-ram\",\"state\":$([ "$mode" = qemu ] && echo true ||
		echo false)}"
	[ "$preempt" = 1 ] && caps+=',{"capability":"postcopy-preempt","state":true}'
	echo "{\"capabilities\":[$caps]}"
}

# Destination QEMU: same machine as the source, its own RAM file, waiting for the stream.
prepare() {
	local i=$1 vm=${vms[$1]} src dst

	src=$(tlm_vm info "$vm" --get dir) || exit 1
	[ "$(tlm_vm info "$src" --get running)" = true ] || tlm_die "$vm: QEMU is not running"
	[ ! -e "$src/split.json" ] || tlm_die "$vm is split: part of its RAM is at a memory" \
		"host; \`migrate-postcopy.sh --pull $vm\` first"
	names[$i]=$(tlm_vm info "$src" --get name)
	src_dirs[$i]=$src
	phases[$i]=none
	if [ "$check" = 1 ]; then
		befores[$i]=$(guest_check "$src" --phase before) || exit 1
	fi
	dst=$(tlm_vm start "${names[$i]}" --like "$src" --incoming defer --no-link \
		${dst_netns:+--netns "$dst_netns"} ${dst_cmdline:+--cmdline "$dst_cmdline"} \
		2>"$work/$i.start.err") ||
		tlm_die "${names[$i]}: the destination QEMU did not start:" \
			"$(sed -n 's/^tlm_qemu.vm: error: //p' "$work/$i.start.err" | tail -n 1)"
	dst_dirs[$i]=$dst
	phases[$i]=prepared
	tlm_qmp "$src/qmp.sock" migrate-set-capabilities "$(caps_json)" >/dev/null
	tlm_qmp "$dst/qmp.sock" migrate-set-capabilities "$(caps_json)" >/dev/null
	tlm_qmp "$src/qmp.sock" migrate-set-parameters \
		"{\"max-bandwidth\": $bandwidth_bps}" >/dev/null
	tlm_qmp "$dst/qmp.sock" migrate-incoming "{\"uri\":\"tcp:$dst_addr:0\"}" >/dev/null
}

# The downtime's ends: the source's STOP and the destination's RESUME, with QEMU's
# timestamps, recorded by `tlm_qemu.events` on qmp-mig.sock (the other QMP socket stays
# free for the commands here) into WORK/I.src.events and WORK/I.dst.events. Started before
# `migrate`: each recorder's file exists once it is connected. A VM started without
# qmp-mig.sock gets no recorder (the report then gives QEMU's downtime figure).
start_events() {
	local i=$1 side dir until n

	for side in src dst; do
		[ "$side" = src ] && dir=${src_dirs[$i]} until=STOP || dir=${dst_dirs[$i]} until=RESUME
		[ -S "$dir/qmp-mig.sock" ] || continue
		tlm_py events "$dir/qmp-mig.sock" "$work/$i.$side.events" --until "$until" \
			--timeout $((timeout_s + 120)) --label "$side" &
		recorders[$i.$side]=$!
		for n in $(seq 100); do
			[ -e "$work/$i.$side.events" ] && break
			sleep 0.05
		done
		[ -e "$work/$i.$side.events" ] ||
			tlm_die "${names[$i]}: no QMP event recorder on $dir/qmp-mig.sock"
	done
}

# The destination runs: its RESUME is recorded (the recorder exits after it).
wait_events() {
	local i=$1 k n

	for k in "$i.src" "$i.dst"; do
		[ -n "${recorders[$k]:-}" ] || continue
		for n in $(seq 100); do
			kill -0 "${recorders[$k]}" 2>/dev/null || break
			sleep 0.05
		done
		kill "${recorders[$k]}" 2>/dev/null || true
		wait "${recorders[$k]}" 2>/dev/null || true
		unset "recorders[$k]"
	done
}

# With --precopy 0 the switch request follows `migrate` in the same QMP session: over
# loopback a 256 MiB guest can finish precopy before a second tlm_qmp call even starts.
start_migration() {
	local i=$1 port uri

	port=$(tlm_qmp "${dst_dirs[$i]}/qmp.sock" query-migrate --get socket-address.0.port) ||
		tlm_die "${names[$i]}: the destination does not listen"
	uri="{\"uri\":\"tcp:$dst_addr:$port\"}"
	start_events "$i"
	date +%s.%N > "$work/$i.start"
	phases[$i]=precopy
	if [ "$mode" = precopy ]; then		# no switch: QEMU stops the source at the end
		tlm_qmp "${src_dirs[$i]}/qmp.sock" migrate "$uri" >/dev/null ||
			tlm_die "${names[$i]}: migrate failed"
		return 0
	fi
	if [ "$precopy_s" = 0 ]; then
		printf 'migrate %s\nmigrate-start-postcopy\n' "$uri" |
			tlm_qmp --batch "${src_dirs[$i]}/qmp.sock" >/dev/null ||
			tlm_die "${names[$i]}: migrate + migrate-start-postcopy failed"
		phases[$i]=postcopy
		return 0
	fi
	tlm_qmp "${src_dirs[$i]}/qmp.sock" migrate "$uri" >/dev/null
	tlm_vm wait-migration "${src_dirs[$i]}" --until active,postcopy-active,completed \
		--timeout 30 >/dev/null || tlm_die "${names[$i]}: precopy did not start"
}

# The --precopy seconds, watching for failures (a lost destination ends it at once).
precopy_wait() {
	local deadline=$(($(date +%s) + precopy_s)) i left

	for i in "${!vms[@]}"; do
		[ "${phases[$i]}" = precopy ] || continue
		left=$((deadline - $(date +%s)))
		tlm_vm wait-migration "${src_dirs[$i]}" --until completed \
			--timeout "$((left > 0 ? left : 0))" --timeout-ok >/dev/null ||
			tlm_die "${names[$i]}: migration failed during precopy"
	done
}

switch_to_postcopy() {
	local i=$1 st

	[ "${phases[$i]}" = precopy ] || return 0
	st=$(tlm_qmp "${src_dirs[$i]}/qmp.sock" query-migrate --get status)
	if [ "$st" = completed ]; then
		tlm_log "${names[$i]}: precopy completed before the switch (no postcopy phase)"
	elif [ "$st" != active ]; then
		tlm_die "${names[$i]}: migration is '$st' at the switch to postcopy:" \
			"$(tlm_qmp "${src_dirs[$i]}/qmp.sock" query-migrate --get error-desc 2>&1)"
	else
		tlm_qmp "${src_dirs[$i]}/qmp.sock" migrate-start-postcopy >/dev/null ||
			tlm_die "${names[$i]}: migrate-start-postcopy failed"
	fi
	phases[$i]=postcopy
}

wait_completed() {
	local i=$1

	tlm_vm wait-migration "${src_dirs[$i]}" --until completed --timeout "$timeout_s" \
		${trace:+--trace "$trace" --trace-label "$mode,${names[$i]},$(cat "$work/$i.start")"} \
		> "$work/$i.migrate.json" || tlm_die "${names[$i]}: migration did not complete"
	date +%s.%N > "$work/$i.end"
}

finish() {
	local i=$1 src=${src_dirs[$1]} dst=${dst_dirs[$1]} st

	st=$(tlm_qmp "$dst/qmp.sock" query-status --get status 2>&1) ||
		tlm_die "${names[$i]}: the destination QEMU does not answer: $st"
	[ "$st" = running ] || tlm_die "${names[$i]}: destination is '$st', not running"
	wait_events "$i"
	phases[$i]=migrated
	if [ "$check" = 1 ]; then
		guest_check "$dst" --phase after --before "${befores[$i]}" > "$work/$i.check" ||
			exit 1
	fi
	tlm_vm pss "$dst" > "$work/$i.pss"
	tlm_vm stop "$src" || tlm_die "${names[$i]}: cannot stop the source"
	tlm_vm link "$dst"
	phases[$i]="done"
}

# The guest check of VM (tlm_vm check: the checksum, --check-cmd or none), its messages
# and failure as ours. Guest checks read every page: ~10 s for 2 GiB under TCG.
guest_check() {
	local vm=$1 err rc=0

	shift
	err=$(mktemp "$work/check.XXXXXX")
	tlm_vm check "$vm" ${check_cmd:+--cmd "$check_cmd"} "$@" \
		--timeout $((30 + $(tlm_vm info "$vm" --get mem_mib) / 16)) 2> "$err" || rc=$?
	sed -e "s/^tlm_qemu.vm: error: /$tlm_prog: error: /" -e "s/^tlm_qemu.vm: /$tlm_prog: /" \
		"$err" >&2
	return "$rc"
}

report() {
	tlm_py report "$mode" "$work" "$json_out" "${names[@]}"
}

for i in "${!vms[@]}"; do prepare "$i"; done
for i in "${!vms[@]}"; do start_migration "$i"; done
if [ "$mode" = qemu ]; then
	precopy_wait
	for i in "${!vms[@]}"; do switch_to_postcopy "$i"; done
fi
for i in "${!vms[@]}"; do wait_completed "$i"; done
for i in "${!vms[@]}"; do finish "$i"; done
report
