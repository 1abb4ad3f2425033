#!/usr/bin/env bash
# bench/run.sh (make bench): package shm against a C program that does the
# same the way GEOPM does (bench/cbaseline/cbench.c: shm_open, ftruncate,
# mmap, a PTHREAD_PROCESS_SHARED mutex in the first 64 bytes; for notify raw
# futex(2) on a shared word, for cond a PTHREAD_PROCESS_SHARED pthread_cond_t
# with that mutex), in one run; and, when libboost-dev is installed, against
# the same workloads done with Boost.Interprocess (bench/boostbaseline: a
# third column, skipped with a message otherwise).
#
# Each case runs BENCH_RUNS times (default 5), the Go and the C program
# interleaved (alternating which goes first), and the table shows the
# medians and their ratio ours/C. The machine is shared and noisy: compare
# ratios, not absolute times.
#
# Environment:
#   BENCH_RUNS=N     runs per case (default 5)
#   BENCH_SCALE=0    skip the scale report (create/attach 4 KiB..1 GiB,
#                    contend 1..8 processes x 1..64 goroutines); the whole
#                    run takes 2 to 3 minutes on 2 busy CPUs
#   BENCH_BACKENDS=0 skip the one-run-per-backend section
#   BENCH_OUT=FILE   also append the raw lines to FILE
#   BENCH_ONLY=RE    only the table's cases whose name matches RE (grep -E)
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${BENCH_RUNS:-5}
scale=${BENCH_SCALE:-1}
tmp=$(mktemp -d /tmp/t-bench-run.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

gcc -O2 -Wall -pthread -o "$tmp/cbench" bench/cbaseline/cbench.c
go build -o "$tmp/shmbench" ./cmd/shmbench
GO="$tmp/shmbench"
C="$tmp/cbench"
B=""
if bench/boostbaseline/build.sh "$tmp/bbench"; then
	B="$tmp/bbench"
else
	rc=$?
	[ $rc = 3 ] || { echo "bench: the Boost baseline failed to build ($rc)" >&2; exit 1; }
fi
raw="$tmp/raw"
: >"$raw"

# field NAME LINE: the value of NAME=... in a result line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2" | head -1; }

# one LABEL PROG ARGS...: run once, keep the line, print ns_per_op and GBps.
one() {
	local label=$1 prog=$2 line
	shift 2
	line=$("$prog" "$@" | tail -1) || { echo "bench: $label failed: $prog $*" >&2; exit 1; }
	echo "$label $line" >>"$raw"
	[ -n "${BENCH_OUT:-}" ] && echo "$label $line" >>"$BENCH_OUT"
	echo "$line"
}

# median: the median of the numbers on stdin.
median() {
	sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else printf "%.4g\n", (a[NR/2]+a[NR/2+1])/2}'
}

declare -a names ours_med c_med b_med ratios b_ratios targets mets

# pair NAME TARGET GO_ARGS -- C_ARGS: run both RUNS times, interleaved.
# TARGET is "<=X" (ratio of ns/op, ours/C) or ">=X" (ratio of GBps). With
# METRIC set, the ratio is of that field instead (lock: cpu_ns_per_op).
# With C_ARGS starting with "go:", the baseline is shmbench itself. With
# EXTRA set to field names (notify, cond: "p50_ns p99_ns"), the medians of
# those fields get rows of their own, "NAME (FIELD)", without a target.
pair() {
	local name=$1 target=$2
	shift 2
	if [ -n "${BENCH_ONLY:-}" ] && ! grep -Eq -- "$BENCH_ONLY" <<<"$name"; then return; fi
	local -a gargs=() cargs=()
	while [ "$1" != "--" ]; do gargs+=("$1"); shift; done
	shift
	cargs=("$@")
	local cprog=$C bprog=$B
	if [ "${cargs[0]}" = "go:" ]; then cprog=$GO; bprog=""; cargs=("${cargs[@]:1}"); fi
	local key=${METRIC:-ns_per_op}
	[[ $target == ">="* ]] && key=GBps
	local f extra=${EXTRA:-}
	: >"$tmp/o" ; : >"$tmp/c"; : >"$tmp/b"
	for f in $extra; do : >"$tmp/o.$f"; : >"$tmp/c.$f"; : >"$tmp/b.$f"; done
	local i l
	# keep SIDE LINE: the fields of one run's line, into SIDE's files.
	keep() {
		field "$key" "$2" >>"$tmp/$1"
		for f in $extra; do field "$f" "$2" >>"$tmp/$1.$f"; done
	}
	for ((i = 0; i < runs; i++)); do
		if ((i % 2 == 0)); then
			l=$(one "$name/ours" "$GO" "${gargs[@]}"); keep o "$l"
			l=$(one "$name/base" "$cprog" "${cargs[@]}"); keep c "$l"
			if [ -n "$bprog" ]; then l=$(one "$name/boost" "$bprog" "${cargs[@]}"); keep b "$l"; fi
		else
			if [ -n "$bprog" ]; then l=$(one "$name/boost" "$bprog" "${cargs[@]}"); keep b "$l"; fi
			l=$(one "$name/base" "$cprog" "${cargs[@]}"); keep c "$l"
			l=$(one "$name/ours" "$GO" "${gargs[@]}"); keep o "$l"
		fi
	done
	local om cm bm r br met
	om=$(median <"$tmp/o")
	cm=$(median <"$tmp/c")
	bm=- br=-
	if [ -n "$bprog" ]; then bm=$(median <"$tmp/b"); br=$(ratio "$om" "$bm"); fi
	r=$(ratio "$om" "$cm")
	met=$(meets "$r" "$target")
	row "$name" "$om" "$cm" "$bm" "$r" "$br" "$target" "$met"
	for f in $extra; do
		om=$(median <"$tmp/o.$f")
		cm=$(median <"$tmp/c.$f")
		bm=- br=-
		if [ -n "$bprog" ]; then bm=$(median <"$tmp/b.$f"); br=$(ratio "$om" "$bm"); fi
		row "$name ($f)" "$om" "$cm" "$bm" "$(ratio "$om" "$cm")" "$br" "-" "-"
	done
}

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0 || a == "nan" || b == "nan") print "nan"; else printf "%.2f", a/b}'; }

# meets VALUE TARGET: yes when VALUE satisfies TARGET ("<=X" or ">=X").
meets() { awk -v r="$1" -v t="$2" 'BEGIN {op=substr(t,1,2); v=substr(t,3)+0; if (r != "nan" && ((op=="<=" && r<=v) || (op==">=" && r>=v))) print "yes"; else print "NO"}'; }

# row NAME OURS C BOOST RATIO BOOST_RATIO TARGET MET: a row of the table.
row() {
	names+=("$1"); ours_med+=("$2"); c_med+=("$3"); b_med+=("$4"); ratios+=("$5"); b_ratios+=("$6"); targets+=("$7"); mets+=("$8")
	printf '  %-34s ours %12s  C %12s  boost %12s  ratio %6s  (%s %s)\n' "$1" "$2" "$3" "$4" "$5" "$7" "$8" >&2
}

# alone NAME TARGET FIELD GO_ARGS: a row with no baseline, whose TARGET
# ("<=X") is on the median of FIELD over the runs (openwait: nothing in C
# wakes a waiting user; GEOPM's spins on shm_open).
alone() {
	local name=$1 target=$2 key=$3
	shift 3
	if [ -n "${BENCH_ONLY:-}" ] && ! grep -Eq -- "$BENCH_ONLY" <<<"$name"; then return; fi
	: >"$tmp/o"
	local i om
	for ((i = 0; i < runs; i++)); do field "$key" "$(one "$name/ours" "$GO" "$@")" >>"$tmp/o"; done
	om=$(median <"$tmp/o")
	row "$name" "$om" - - - - "$target" "$(meets "$om" "$target")"
}

echo "# shm vs C (GEOPM-style) baseline: $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3), $runs runs each" >&2
MiB=$((1 << 20))
for b in posix sysv file memfd; do
	METRIC=cpu_ns_per_op pair "lock $b (CPU ns)" "<=1.0" -backend $b -workload lock -- -workload lock
done
pair "contend 2 procs"     "<=1.0" -workload contend -procs 2 -- -workload contend -procs 2
pair "contend 8 procs"     "<=1.0" -workload contend -procs 8 -n 250000 -- -workload contend -procs 8 -n 250000
if [[ " ${names[*]} " == *"contend 2 procs"*"contend 8 procs"* ]]; then
	# Throughput at 8 over throughput at 2: ns per increment at 2 over at 8.
	for i in "${!names[@]}"; do
		[ "${names[$i]}" = "contend 2 procs" ] && c2=$i
		[ "${names[$i]}" = "contend 8 procs" ] && c8=$i
	done
	t=$(ratio "${ours_med[$c2]}" "${ours_med[$c8]}")
	tc=$(ratio "${c_med[$c2]}" "${c_med[$c8]}")
	row "contend 8 vs 2 procs (throughput)" "$t" "$tc" - - - ">=0.8" "$(meets "$t" ">=0.8")"
fi
pair "create 4KiB"         "<=1.2" -workload create -size 4096 -- -workload create -size 4096
pair "attach 4KiB"         "<=1.2" -workload attach -size 4096 -- -workload attach -size 4096
pair "memfd/posix attach"  "<=3.0" -backend memfd -workload attach -size 4096 -- go: -backend posix -workload attach -size 4096
pair "fill 256MiB (GBps)"  ">=0.95" -workload fill -size $((256 * MiB)) -n 6 -- -workload fill -size $((256 * MiB)) -n 6
pair "fill 256MiB, 1020KiB chunks (GBps)" ">=0.95" -workload fill -size $((256 * MiB)) -n 6 -chunk $((1020 * 1024)) -- -workload fill -size $((256 * MiB)) -n 6 -chunk $((1020 * 1024))
pair "create+write 1GiB"   "<=1.1" -workload createwrite -size $((1024 * MiB)) -n 1 -- -workload createwrite -size $((1024 * MiB)) -n 1
pair "pingpong"            "-"     -workload pingpong -- -workload pingpong
EXTRA="p50_ns p99_ns" pair "notify"   "<=1.0" -workload notify -- -workload notify
EXTRA="p50_ns p99_ns" pair "cond"     "<=1.0" -workload cond -- -workload cond
for b in posix file memfd sysv; do
	alone "Open wake-up p99 ns, $b" "<=1000000" p99_ns -backend $b -workload openwait -procs 1 -n 100
done

echo
echo "| workload | ours | C | ratio ours/C | Boost | ratio ours/Boost | target | met? |"
echo "|---|---:|---:|---:|---:|---:|---|---|"
for i in "${!names[@]}"; do
	o=${ours_med[$i]} c=${c_med[$i]} bo=${b_med[$i]} t=${targets[$i]} m=${mets[$i]}
	unit=""
	if [[ ${names[$i]} == *GBps* ]]; then unit=" GB/s"; fi
	[ "$c" = - ] || c="$c$unit"
	[ "$bo" = - ] || bo="$bo$unit"
	[ "$t" = "-" ] && m="(no target)"
	echo "| ${names[$i]} | $o$unit | $c | ${ratios[$i]} | $bo | ${b_ratios[$i]} | $t | $m |"
done
[ -n "$B" ] || echo "(Boost column empty: libboost-dev is not installed.)"
echo
echo "memfd/posix attach compares shmbench with itself: memfd attach by key over posix attach."
echo "Rows without a backend are POSIX (/dev/shm). The lock is unguarded by default on every backend"
echo "(WithFaultGuard opts in). Boost is the same workload with Boost.Interprocess (a default-type"
echo "process-shared pthread mutex; C's is ERRORCHECK, as GEOPM's). Ratios below 1 are better than"
echo "the baseline for ns rows; 'contend 8 vs 2' is throughput at 8 processes over throughput at 2."
echo "Open wake-up: workers wait in Open for a key the parent creates 1-30 ms later; the row is the"
echo "median over runs of each run's p99 of Create's return to Open's return (ns); no baseline."
echo "fill compares bandwidth (GB/s, higher is better); every other row ns/op (lower is better)."
echo "Go's copy() moves 1 MiB and more with non-temporal stores, slower than glibc's memcpy on"
echo "some machines; the 1020 KiB row is the same fill with copies that stay under that threshold."
echo "lock is the CPU time of the locking thread per Lock+Unlock (CLOCK_THREAD_CPUTIME_ID): the"
echo "machine is shared, and wall time also counts other programs' turns (raw lines keep both)."
echo "notify and cond are ns per round trip between two processes (the mean; the (p50_ns) and"
echo "(p99_ns) rows are the medians of each run's percentiles): notify through shm.Futex against raw"
echo "futex(2) FUTEX_WAIT/FUTEX_WAKE, cond through Lock.Wait/Signal against a PTHREAD_PROCESS_SHARED"
echo "pthread_cond_t with the region's mutex, each side holding the lock but while it waits."

if [ "${BENCH_BACKENDS:-1}" != 0 ]; then
	echo
	echo "## Every backend, one run each (4 KiB; fill 64 MiB)"
	echo
	echo '```'
	for b in posix sysv file memfd auto; do
		for w in create attach lock contend pingpong notify cond; do
			"$GO" -backend "$b" -workload "$w" || echo "backend=$b workload=$w FAILED"
		done
		"$GO" -backend "$b" -workload fill -size $((64 * MiB)) -n 4 || echo "backend=$b workload=fill FAILED"
	done
	echo '```'
fi

if [ "$scale" = 1 ]; then
	echo
	echo "## Scale: create and attach, POSIX (median of 3)"
	echo
	echo "| size | create ours ns | create C ns | ratio | attach ours ns | attach C ns | ratio |"
	echo "|---:|---:|---:|---:|---:|---:|---:|"
	for s in 4096 65536 $MiB $((16 * MiB)) $((256 * MiB)) $((1024 * MiB)); do
		for w in create attach; do
			# Create reserves (and above 1 MiB maps) every page: fewer
			# cycles for big regions. Attach costs the same at any size.
			n=2000
			if [ $w = create ]; then n=$((2000 * 4096 / s)); ((n < 3)) && n=3; fi
			: >"$tmp/o"; : >"$tmp/c"
			for ((i = 0; i < 3; i++)); do
				field ns_per_op "$(one "scale-$w-$s/ours" "$GO" -workload $w -size $s -n $n)" >>"$tmp/o"
				field ns_per_op "$(one "scale-$w-$s/base" "$C" -workload $w -size $s -n $n)" >>"$tmp/c"
			done
			eval "${w}_o=\$(median <\"\$tmp/o\")"
			eval "${w}_c=\$(median <\"\$tmp/c\")"
		done
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$create_o" "$create_c" \
			"$(awk -v a="$create_o" -v b="$create_c" 'BEGIN {printf "%.2f", a/b}')" "$attach_o" "$attach_c" \
			"$(awk -v a="$attach_o" -v b="$attach_c" 'BEGIN {printf "%.2f", a/b}')"
	done

	echo
	echo "## Scale: contend, POSIX (one run each; n = 200000 increments per process)"
	echo
	echo "| procs | goroutines/proc | ours ns/incr | ours Mops/s | threads/proc | C ns/incr | C Mops/s |"
	echo "|---:|---:|---:|---:|---:|---:|---:|"
	for p in 1 2 4 8; do
		cl=$(one "scale-contend-$p/base" "$C" -workload contend -procs $p -n 200000)
		for g in 1 4 16 64; do
			l=$(one "scale-contend-$p-$g/ours" "$GO" -workload contend -procs $p -goroutines $g -n 200000)
			printf '| %s | %s | %s | %s | %s | %s | %s |\n' $p $g "$(field ns_per_op "$l")" "$(field Mops "$l")" \
				"$(field threads "$l")" "$(field ns_per_op "$cl")" "$(field Mops "$cl")"
		done
	done

	echo
	echo "## Scale: Open wake-up with 1, 10 and 100 users waiting (one run each, ns)"
	echo
	echo "| backend | waiters | p50 | p99 | max |"
	echo "|---|---:|---:|---:|---:|"
	for b in posix memfd; do
		for w in 1 10 100; do
			n=$((300 / w)); ((n < 10)) && n=10
			l=$(one "scale-openwait-$b-$w/ours" "$GO" -backend $b -workload openwait -procs $w -n $n)
			printf '| %s | %s | %s | %s | %s |\n' $b $w "$(field p50_ns "$l")" "$(field p99_ns "$l")" "$(field max_ns "$l")"
		done
	done

	echo
	echo "## Scale: 10,000 regions of 4 KiB open in one process (one run each)"
	echo
	echo "| backend | made | ns per Create | threads | descriptors | List ms | listed | stopped by |"
	echo "|---|---:|---:|---:|---:|---:|---:|---|"
	for b in posix sysv file memfd; do
		l=$(one "scale-many-$b/ours" "$GO" -backend $b -workload many -n 10000)
		printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' $b "$(field made "$l")" "$(field ns_per_op "$l")" "$(field threads "$l")" \
			"$(field fds "$l")" "$(field list_ms "$l")" "$(field listed "$l")" "$(field stopped "$l" | tr _ ' ')"
	done
	echo
	echo "Descriptor limit of these runs: $(ulimit -Hn) (Go raises the soft limit to it); SysV segments: kernel.shmmni = $(cat /proc/sys/kernel/shmmni)."
fi
