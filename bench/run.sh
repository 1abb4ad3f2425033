#!/usr/bin/env bash
# bench/run.sh (make bench): package shm against a C program that does the
# same the way GEOPM does (bench/cbaseline/cbench.c: shm_open, ftruncate,
# mmap, a PTHREAD_PROCESS_SHARED mutex in the first 64 bytes; for notify raw
# futex(2) on a shared word, for cond a PTHREAD_PROCESS_SHARED pthread_cond_t
# with that mutex), in one run.
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

declare -a names ours_med c_med ratios targets mets

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
	local cprog=$C
	if [ "${cargs[0]}" = "go:" ]; then cprog=$GO; cargs=("${cargs[@]:1}"); fi
	local key=${METRIC:-ns_per_op}
	[[ $target == ">="* ]] && key=GBps
	local f extra=${EXTRA:-}
	: >"$tmp/o" ; : >"$tmp/c"
	for f in $extra; do : >"$tmp/o.$f"; : >"$tmp/c.$f"; done
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
		else
			l=$(one "$name/base" "$cprog" "${cargs[@]}"); keep c "$l"
			l=$(one "$name/ours" "$GO" "${gargs[@]}"); keep o "$l"
		fi
	done
	local om cm r met
	om=$(median <"$tmp/o")
	cm=$(median <"$tmp/c")
	r=$(awk -v a="$om" -v b="$cm" 'BEGIN {printf "%.2f", a/b}')
	met=$(awk -v r="$r" -v t="$target" 'BEGIN {op=substr(t,1,2); v=substr(t,3)+0; if ((op=="<=" && r<=v) || (op==">=" && r>=v)) print "yes"; else print "NO"}')
	names+=("$name"); ours_med+=("$om"); c_med+=("$cm"); ratios+=("$r"); targets+=("$target"); mets+=("$met")
	printf '  %-26s ours %12s  base %12s  ratio %6s  (%s)\n' "$name" "$om" "$cm" "$r" "$met" >&2
	for f in $extra; do
		om=$(median <"$tmp/o.$f")
		cm=$(median <"$tmp/c.$f")
		r=$(awk -v a="$om" -v b="$cm" 'BEGIN {printf "%.2f", a/b}')
		names+=("$name ($f)"); ours_med+=("$om"); c_med+=("$cm"); ratios+=("$r"); targets+=("-"); mets+=("-")
		printf '  %-26s ours %12s  base %12s  ratio %6s\n' "$name ($f)" "$om" "$cm" "$r" >&2
	done
}

echo "# shm vs C (GEOPM-style) baseline: $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3), $runs runs each" >&2
MiB=$((1 << 20))
METRIC=cpu_ns_per_op pair "lock (CPU ns)" "<=1.0" -workload lock -- -workload lock
METRIC=cpu_ns_per_op pair "lock memfd (CPU ns)" "<=1.0" -backend memfd -workload lock -- -workload lock
pair "contend 2 procs"     "<=1.0" -workload contend -procs 2 -- -workload contend -procs 2
pair "create 4KiB"         "<=1.0" -workload create -size 4096 -- -workload create -size 4096
pair "attach 4KiB"         "<=1.0" -workload attach -size 4096 -- -workload attach -size 4096
pair "fill 256MiB (GBps)"  ">=0.95" -workload fill -size $((256 * MiB)) -n 6 -- -workload fill -size $((256 * MiB)) -n 6
pair "fill 256MiB, 1020KiB chunks (GBps)" ">=0.95" -workload fill -size $((256 * MiB)) -n 6 -chunk $((1020 * 1024)) -- -workload fill -size $((256 * MiB)) -n 6 -chunk $((1020 * 1024))
pair "create+write 1GiB"   "<=1.1" -workload createwrite -size $((1024 * MiB)) -n 1 -- -workload createwrite -size $((1024 * MiB)) -n 1
pair "pingpong"            "-"     -workload pingpong -- -workload pingpong
EXTRA="p50_ns p99_ns" pair "notify"   "<=1.0" -workload notify -- -workload notify
EXTRA="p50_ns p99_ns" pair "cond"     "<=1.0" -workload cond -- -workload cond
pair "memfd/posix attach"  "<=3.0" -backend memfd -workload attach -size 4096 -- go: -backend posix -workload attach -size 4096

echo
echo "| workload | ours ns/op | C ns/op | ratio ours/C | target | met? |"
echo "|---|---:|---:|---:|---|---|"
for i in "${!names[@]}"; do
	o=${ours_med[$i]} c=${c_med[$i]} t=${targets[$i]} m=${mets[$i]}
	unit=""
	if [[ ${names[$i]} == *GBps* ]]; then unit=" GB/s"; fi
	[ "$t" = "-" ] && m="(no target)"
	echo "| ${names[$i]} | $o$unit | $c$unit | ${ratios[$i]} | $t | $m |"
done
echo
echo "memfd/posix attach compares shmbench with itself: memfd attach by key over posix attach."
echo "Rows without a backend are POSIX (/dev/shm). POSIX and file regions can be truncated by"
echo "another process, so their Lock/Unlock run under a fault guard; memfd and SysV ones cannot."
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
fi
