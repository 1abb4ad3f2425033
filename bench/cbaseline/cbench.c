/*
 * cbench: the C baseline for cmd/shmbench. It does the shmbench workloads the
 * way GEOPM's geopm::SharedMemory does them: shm_open, ftruncate, mmap, and a
 * PTHREAD_PROCESS_SHARED (+ ERRORCHECK, not robust) mutex in the first 64
 * bytes of the object, the data after it. It reserves nothing (ftruncate
 * only), writes no header and has no ready handshake.
 *
 * It is built by bench/run.sh (gcc -O2 -pthread), never by the Go tool:
 * this directory holds no .go file.
 *
 *   cbench -workload NAME [-n N] [-size BYTES] [-procs P] [-chunk BYTES]
 *
 * prints one line per workload, in shmbench's format:
 *   workload=<name> backend=c size=<bytes> ns_per_op=<number> [key=value...]
 *
 * Workloads: create, attach, lock, contend, fill, pingpong, notify, cond,
 * createwrite. notify and cond also print p50_ns= and p99_ns= (each round
 * trip timed, after WARM_ROUNDS untimed ones, as shmbench does).
 * Keys are /t-bench-c-<pid>-<workload>; every object is removed on exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOCK_SIZE 64 /* GEOPM's M_LOCK_SIZE: the mutex, then the data */

static const char *workload = "all";
static long n = 0;
static long size = 4096;
static int procs = 2;
static long chunk = 1 << 20;
static char key[128];

static void die(const char *what)
{
	fprintf(stderr, "cbench: %s (%s): %s\n", what, key, strerror(errno));
	shm_unlink(key);
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void setkey(const char *w)
{
	snprintf(key, sizeof key, "/t-bench-c-%d-%s", (int)getpid(), w);
}

/* A GEOPM-style region: what make_unique_owner_secure does. */
struct region {
	void *base;      /* the mapping: mutex, then data */
	size_t map_size; /* size + LOCK_SIZE */
	pthread_mutex_t *mutex;
	char *data;
};

static void owner_create(struct region *r, size_t sz)
{
	mode_t old = umask(0);
	int fd = shm_open(key, O_RDWR | O_CREAT | O_EXCL, 0600);
	umask(old);
	if (fd < 0)
		die("shm_open create");
	r->map_size = sz + LOCK_SIZE;
	if (ftruncate(fd, (off_t)r->map_size) != 0) {
		close(fd);
		die("ftruncate");
	}
	r->base = mmap(NULL, r->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r->base == MAP_FAILED) {
		close(fd);
		die("mmap");
	}
	close(fd);
	r->mutex = (pthread_mutex_t *)r->base;
	r->data = (char *)r->base + LOCK_SIZE;
	pthread_mutexattr_t attr;
	if (pthread_mutexattr_init(&attr) != 0 ||
	    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK) != 0 ||
	    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) != 0 ||
	    pthread_mutex_init(r->mutex, &attr) != 0)
		die("pthread_mutex_init");
	pthread_mutexattr_destroy(&attr);
}

/* What make_unique_user does with a timeout of 0: one try. */
static int user_attach(struct region *r)
{
	int fd = shm_open(key, O_RDWR, 0);
	if (fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) != 0 || st.st_size == 0) {
		close(fd);
		return -1;
	}
	r->map_size = (size_t)st.st_size;
	r->base = mmap(NULL, r->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (r->base == MAP_FAILED)
		return -1;
	r->mutex = (pthread_mutex_t *)r->base;
	r->data = (char *)r->base + LOCK_SIZE;
	return 0;
}

static void region_close(struct region *r)
{
	if (munmap(r->base, r->map_size) != 0)
		die("munmap");
}

static void report(const char *w, long sz, double ns, const char *extra)
{
	printf("workload=%s backend=c size=%ld ns_per_op=%.2f%s\n", w, sz, ns, extra ? extra : "");
	fflush(stdout);
}

static long pick(long def)
{
	return n > 0 ? n : def;
}

static void do_create(void)
{
	long iters = pick(2000);
	setkey("create");
	struct region r;
	/* one warm-up cycle */
	owner_create(&r, size);
	shm_unlink(key);
	region_close(&r);
	double t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		owner_create(&r, size);
		if (shm_unlink(key) != 0)
			die("shm_unlink");
		region_close(&r);
	}
	report("create", size, (now_ns() - t0) / iters, NULL);
}

static void do_attach(void)
{
	long iters = pick(5000);
	setkey("attach");
	struct region owner, u;
	owner_create(&owner, size);
	if (user_attach(&u) != 0)
		die("attach");
	region_close(&u);
	double t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		if (user_attach(&u) != 0)
			die("attach");
		region_close(&u);
	}
	double ns = (now_ns() - t0) / iters;
	shm_unlink(key);
	region_close(&owner);
	report("attach", size, ns, NULL);
}

static void do_lock(void)
{
	long iters = pick(20000000);
	setkey("lock");
	struct region r;
	owner_create(&r, size);
	shm_unlink(key);
	double t0 = now_ns(), c0 = cpu_ns();
	for (long i = 0; i < iters; i++) {
		if (pthread_mutex_lock(r.mutex) != 0)
			die("lock");
		if (pthread_mutex_unlock(r.mutex) != 0)
			die("unlock");
	}
	double ns = (now_ns() - t0) / iters, cpu = (cpu_ns() - c0) / iters;
	region_close(&r);
	char extra[64];
	snprintf(extra, sizeof extra, " cpu_ns_per_op=%.2f", cpu);
	report("lock", size, ns, extra);
}

/* Shared words after the mutex, for the multi-process workloads. */
struct ctl {
	uint32_t ready; /* workers attached */
	uint32_t go;    /* futex: 1 once the parent starts the clock */
	uint32_t done;  /* workers finished */
	uint32_t turn;  /* pingpong: futex word, 0 = parent's turn, 1 = child's */
	uint64_t cpu_ns; /* contend: CPU time the workers spent from go to done */
	char pad[40];
	uint64_t counter; /* contend: on its own line */
	char pad2[56];
	/* notify, cond: on their own line (shmbench's offWait, 128) */
	uint32_t nturn; /* notify: futex word, 0 = parent's turn, 1 = child's */
	uint32_t cturn; /* cond: guarded by the region's mutex */
	char pad3[56];
	pthread_cond_t cond; /* cond: PTHREAD_PROCESS_SHARED */
};

static long futex(uint32_t *addr, int op, uint32_t val)
{
	return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

static void wait_while(uint32_t *w, uint32_t v)
{
	while (__atomic_load_n(w, __ATOMIC_ACQUIRE) == v)
		futex(w, FUTEX_WAIT, v);
}

static void set_wake(uint32_t *w, uint32_t v)
{
	__atomic_store_n(w, v, __ATOMIC_RELEASE);
	futex(w, FUTEX_WAKE, INT32_MAX);
}

static void wait_count(uint32_t *w, uint32_t want)
{
	uint32_t v;
	while ((v = __atomic_load_n(w, __ATOMIC_ACQUIRE)) < want)
		futex(w, FUTEX_WAIT, v);
}

static void count_wake(uint32_t *w)
{
	__atomic_fetch_add(w, 1, __ATOMIC_ACQ_REL);
	futex(w, FUTEX_WAKE, INT32_MAX);
}

static void contend_worker(long iters)
{
	struct region r;
	if (user_attach(&r) != 0)
		die("worker attach");
	struct ctl *c = (struct ctl *)r.data;
	count_wake(&c->ready);
	wait_while(&c->go, 0);
	struct timespec c0, c1;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	for (long i = 0; i < iters; i++) {
		if (pthread_mutex_lock(r.mutex) != 0)
			die("lock");
		c->counter++;
		if (pthread_mutex_unlock(r.mutex) != 0)
			die("unlock");
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	__atomic_fetch_add(&c->cpu_ns, (uint64_t)((c1.tv_sec - c0.tv_sec) * 1000000000LL + (c1.tv_nsec - c0.tv_nsec)), __ATOMIC_ACQ_REL);
	count_wake(&c->done);
	region_close(&r);
	_exit(0);
}

static void reap(int count)
{
	for (int i = 0; i < count; i++) {
		int st;
		if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "cbench: worker failed\n");
			shm_unlink(key);
			exit(1);
		}
	}
}

static void do_contend(void)
{
	long iters = pick(1000000);
	setkey("contend");
	struct region r;
	owner_create(&r, size < (long)sizeof(struct ctl) ? (long)sizeof(struct ctl) : size);
	struct ctl *c = (struct ctl *)r.data;
	for (int i = 0; i < procs; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0)
			contend_worker(iters);
	}
	wait_count(&c->ready, procs);
	double t0 = now_ns();
	set_wake(&c->go, 1);
	wait_count(&c->done, procs);
	double ns = (now_ns() - t0) / ((double)iters * procs);
	reap(procs);
	char extra[128];
	snprintf(extra, sizeof extra, " procs=%d total=%llu expected=%llu Mops=%.2f cpu_ns_per_op=%.2f", procs,
		 (unsigned long long)c->counter, (unsigned long long)iters * procs, 1e3 / ns,
		 (double)c->cpu_ns / ((double)iters * procs));
	int bad = c->counter != (uint64_t)iters * procs;
	shm_unlink(key);
	region_close(&r);
	report("contend", size, ns, extra);
	if (bad) {
		fprintf(stderr, "cbench: contend: total != expected\n");
		exit(1);
	}
}

static void fill_pass(char *dst, const char *src, long sz)
{
	for (long off = 0; off < sz; off += chunk) {
		long k = sz - off < chunk ? sz - off : chunk;
		memcpy(dst + off, src, (size_t)k);
	}
}

static void do_fill(void)
{
	long iters = pick(8);
	setkey("fill");
	struct region r;
	owner_create(&r, size);
	shm_unlink(key);
	char *src = malloc(chunk);
	if (!src)
		die("malloc");
	memset(src, 0xa5, chunk);
	fill_pass(r.data, src, size); /* warm-up: faults the pages in */
	double t0 = now_ns();
	for (long i = 0; i < iters; i++)
		fill_pass(r.data, src, size);
	double ns = (now_ns() - t0) / iters;
	region_close(&r);
	free(src);
	char extra[64];
	snprintf(extra, sizeof extra, " GBps=%.3f chunk=%ld", (double)size / ns, chunk);
	report("fill", size, ns, extra);
}

static void do_createwrite(void)
{
	long iters = pick(3);
	setkey("createwrite");
	char *src = malloc(chunk);
	if (!src)
		die("malloc");
	memset(src, 0x5a, chunk);
	double total = 0;
	for (long i = 0; i < iters; i++) {
		struct region r;
		double t0 = now_ns();
		owner_create(&r, size);
		fill_pass(r.data, src, size);
		total += now_ns() - t0;
		shm_unlink(key);
		region_close(&r);
	}
	free(src);
	double ns = total / iters;
	char extra[64];
	snprintf(extra, sizeof extra, " GBps=%.3f", (double)size / ns);
	report("createwrite", size, ns, extra);
}

static void do_pingpong(void)
{
	long iters = pick(20000);
	setkey("pingpong");
	struct region r;
	owner_create(&r, size < (long)sizeof(struct ctl) ? (long)sizeof(struct ctl) : size);
	struct ctl *c = (struct ctl *)r.data;
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		struct region u;
		if (user_attach(&u) != 0)
			die("worker attach");
		struct ctl *cc = (struct ctl *)u.data;
		count_wake(&cc->ready);
		for (long i = 0; i < iters; i++) {
			wait_while(&cc->turn, 0); /* wait for our turn (1) */
			set_wake(&cc->turn, 0);
		}
		region_close(&u);
		_exit(0);
	}
	wait_count(&c->ready, 1);
	double t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		set_wake(&c->turn, 1);
		wait_while(&c->turn, 1);
	}
	double ns = (now_ns() - t0) / iters;
	reap(1);
	shm_unlink(key);
	region_close(&r);
	report("pingpong", size, ns, NULL);
}

#define WARM_ROUNDS 100

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* nearest-rank percentile of sorted s */
static double percentile(const double *s, long len, int p)
{
	long i = (len * p + 99) / 100;
	return s[(i < 1 ? 1 : i) - 1];
}

static void report_latencies(const char *w, double *d, long iters)
{
	double total = 0;
	for (long i = 0; i < iters; i++)
		total += d[i];
	qsort(d, (size_t)iters, sizeof d[0], cmp_double);
	char extra[96];
	snprintf(extra, sizeof extra, " p50_ns=%.0f p99_ns=%.0f", percentile(d, iters, 50), percentile(d, iters, 99));
	report(w, size, total / iters, extra);
}

/* Attach and say so, as a shmbench worker does. */
static struct ctl *child_attach(struct region *u)
{
	if (user_attach(u) != 0)
		die("worker attach");
	struct ctl *cc = (struct ctl *)u->data;
	count_wake(&cc->ready);
	return cc;
}

/*
 * notify: pingpong with each round trip timed, and the wake-ups for one
 * waiter (FUTEX_WAKE 1), as a Futex.Wake(1) is: a word in the shared
 * mapping, FUTEX_WAIT and FUTEX_WAKE without FUTEX_PRIVATE_FLAG.
 */
static void do_notify(void)
{
	long iters = pick(20000);
	setkey("notify");
	struct region r;
	owner_create(&r, size < (long)sizeof(struct ctl) ? (long)sizeof(struct ctl) : size);
	struct ctl *c = (struct ctl *)r.data;
	double *d = malloc(sizeof(double) * (size_t)iters);
	if (!d)
		die("malloc");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		struct region u;
		struct ctl *cc = child_attach(&u);
		for (long i = 0; i < iters + WARM_ROUNDS; i++) {
			while (__atomic_load_n(&cc->nturn, __ATOMIC_ACQUIRE) == 0)
				futex(&cc->nturn, FUTEX_WAIT, 0);
			__atomic_store_n(&cc->nturn, 0, __ATOMIC_RELEASE);
			futex(&cc->nturn, FUTEX_WAKE, 1);
		}
		region_close(&u);
		_exit(0);
	}
	wait_count(&c->ready, 1);
	for (long i = -WARM_ROUNDS; i < iters; i++) {
		double t0 = now_ns();
		__atomic_store_n(&c->nturn, 1, __ATOMIC_RELEASE);
		futex(&c->nturn, FUTEX_WAKE, 1);
		while (__atomic_load_n(&c->nturn, __ATOMIC_ACQUIRE) == 1)
			futex(&c->nturn, FUTEX_WAIT, 1);
		if (i >= 0)
			d[i] = now_ns() - t0;
	}
	reap(1);
	shm_unlink(key);
	region_close(&r);
	report_latencies("notify", d, iters);
	free(d);
}

/*
 * cond: a PTHREAD_PROCESS_SHARED condition variable with the region's
 * mutex (GEOPM-style code): each process holds the mutex but while it
 * sleeps in pthread_cond_wait, flips the turn and signals with the mutex
 * held.
 */
static void do_cond(void)
{
	long iters = pick(20000);
	setkey("cond");
	struct region r;
	owner_create(&r, size < (long)sizeof(struct ctl) ? (long)sizeof(struct ctl) : size);
	struct ctl *c = (struct ctl *)r.data;
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED) != 0 ||
	    pthread_cond_init(&c->cond, &ca) != 0)
		die("pthread_cond_init");
	pthread_condattr_destroy(&ca);
	double *d = malloc(sizeof(double) * (size_t)iters);
	if (!d)
		die("malloc");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		struct region u;
		struct ctl *cc = child_attach(&u);
		if (pthread_mutex_lock(u.mutex) != 0)
			die("lock");
		for (long i = 0; i < iters + WARM_ROUNDS; i++) {
			while (cc->cturn == 0)
				if (pthread_cond_wait(&cc->cond, u.mutex) != 0)
					die("pthread_cond_wait");
			cc->cturn = 0;
			if (pthread_cond_signal(&cc->cond) != 0)
				die("pthread_cond_signal");
		}
		if (pthread_mutex_unlock(u.mutex) != 0)
			die("unlock");
		region_close(&u);
		_exit(0);
	}
	wait_count(&c->ready, 1);
	if (pthread_mutex_lock(r.mutex) != 0)
		die("lock");
	for (long i = -WARM_ROUNDS; i < iters; i++) {
		double t0 = now_ns();
		c->cturn = 1;
		if (pthread_cond_signal(&c->cond) != 0)
			die("pthread_cond_signal");
		while (c->cturn == 1)
			if (pthread_cond_wait(&c->cond, r.mutex) != 0)
				die("pthread_cond_wait");
		if (i >= 0)
			d[i] = now_ns() - t0;
	}
	if (pthread_mutex_unlock(r.mutex) != 0)
		die("unlock");
	reap(1);
	pthread_cond_destroy(&c->cond);
	shm_unlink(key);
	region_close(&r);
	report_latencies("cond", d, iters);
	free(d);
}

static void usage(void)
{
	fprintf(stderr, "usage: cbench [-workload create|attach|lock|contend|fill|pingpong|notify|cond|createwrite|all] "
			"[-n N] [-size BYTES] [-procs P] [-chunk BYTES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] == '-' && a[1] == '-')
			a++;
		if (i + 1 >= argc)
			usage();
		if (strcmp(a, "-workload") == 0)
			workload = argv[++i];
		else if (strcmp(a, "-n") == 0)
			n = atol(argv[++i]);
		else if (strcmp(a, "-size") == 0)
			size = atol(argv[++i]);
		else if (strcmp(a, "-procs") == 0)
			procs = atoi(argv[++i]);
		else if (strcmp(a, "-chunk") == 0)
			chunk = atol(argv[++i]);
		else
			usage();
	}
	if (size < 1 || procs < 1 || chunk < 1)
		usage();
	int all = strcmp(workload, "all") == 0;
	int ran = 0;
#define RUN(name, fn)                                   \
	if (all || strcmp(workload, name) == 0) {      \
		fn();                                   \
		ran = 1;                                \
	}
	RUN("create", do_create);
	RUN("attach", do_attach);
	RUN("lock", do_lock);
	RUN("contend", do_contend);
	RUN("fill", do_fill);
	RUN("pingpong", do_pingpong);
	RUN("notify", do_notify);
	RUN("cond", do_cond);
	if (strcmp(workload, "createwrite") == 0) { /* not in "all": it is sized for 1 GiB */
		do_createwrite();
		ran = 1;
	}
	if (!ran)
		usage();
	return 0;
}
