/*
 * bbench: the Boost.Interprocess baseline for cmd/shmbench, next to
 * bench/cbaseline/cbench.c. It does cbench's workloads the way a
 * Boost.Interprocess user does them, and prints cbench's lines with
 * backend=boost.
 *
 * Tested with Boost 1.74.0 (Debian libboost1.74-dev 1.74.0+ds1-21), g++ 12.2,
 * glibc 2.36, Linux x86_64. Built by bench/boostbaseline/build.sh
 * (g++ -O2 -pthread; header-only, no Boost library is linked).
 *
 * The API: shared_memory_object + mapped_region, the objects in the region
 * by placement new. That is what Boost's own documentation shows for a
 * mutex or condition in shared memory (the "anonymous mutex" and
 * "anonymous condition" examples: shared_memory_object(create_only),
 * truncate, mapped_region(shm, read_write), new (addr) T, scoped_lock), and
 * it gives the same object as cbench: the mutex in the first 64 bytes, the
 * data after it. managed_shared_memory (find_or_construct<interprocess_mutex>
 * by name) is the other common way; it adds a segment manager (an allocator
 * and a name index initialised in the segment, plus its own creation
 * handshake) to create and attach, which cbench and GEOPM do not pay, so it
 * is not measured here.
 *
 * What the calls cost, read from the 1.74 headers on Linux/glibc:
 *  - shared_memory_object(create_only, name, read_write, perm): shm_open
 *    (O_RDWR|O_CREAT|O_EXCL), then fchmod(perm) (Boost sets the mode with
 *    fchmod instead of cbench's umask(0) around shm_open); truncate():
 *    ftruncate; open_only: shm_open(O_RDWR). The name gets a leading '/'.
 *  - mapped_region(shm, read_write) with no size: fstat (for the size,
 *    on create too), then mmap(MAP_SHARED); its destructor munmaps. The
 *    shared_memory_object's destructor closes the fd (here right after the
 *    mapping, as cbench does). remove(name): shm_unlink.
 *  - interprocess_mutex: BOOST_INTERPROCESS_POSIX_PROCESS_SHARED is defined
 *    (detail/workaround.hpp), so it is ipcdetail::posix_mutex
 *    (sync/posix/mutex.hpp): a pthread_mutex_t initialised with
 *    PTHREAD_PROCESS_SHARED and the default type (PTHREAD_MUTEX_NORMAL;
 *    cbench's is ERRORCHECK), not robust. lock() is pthread_mutex_lock (a
 *    throw if it fails; no timeout unless
 *    BOOST_INTERPROCESS_ENABLE_TIMEOUT_WHEN_LOCKING), unlock()
 *    pthread_mutex_unlock. So under contention it does what glibc's normal
 *    mutex does: one compare-and-swap, then, with no spinning and no
 *    sched_yield, exchange the word to 2 and FUTEX_WAIT (shared: no
 *    FUTEX_PRIVATE_FLAG); unlock exchanges 0 and FUTEX_WAKEs one waiter if
 *    the word was 2. Boost's own spin-then-yield emulation
 *    (sync/spin/mutex.hpp) is used only without process-shared pthreads
 *    (or with BOOST_INTERPROCESS_FORCE_GENERIC_EMULATION).
 *  - interprocess_condition: ipcdetail::posix_condition, a
 *    PTHREAD_PROCESS_SHARED pthread_cond_t; wait(scoped_lock) is
 *    pthread_cond_wait on the mutex's pthread_mutex_t, notify_one
 *    pthread_cond_signal.
 *  - interprocess_semaphore (notify): ipcdetail::posix_semaphore, an
 *    unnamed sem_t, sem_init(pshared=1); post() sem_post, wait() sem_wait
 *    (glibc: atomics on the value, futex wait/wake only when needed).
 *
 *   bbench -workload NAME [-n N] [-size BYTES] [-procs P] [-chunk BYTES]
 *
 * prints one line per workload, in cbench's and shmbench's format:
 *   workload=<name> backend=boost size=<bytes> ns_per_op=<number> [key=value...]
 * with the extra fields cbench prints for that workload (lock:
 * cpu_ns_per_op; contend: procs total expected Mops cpu_ns_per_op; fill:
 * GBps chunk; createwrite: GBps; notify, cond: p50_ns p99_ns).
 *
 * Workloads, each as in cbench (same defaults for -n, same harness: a ready
 * count, a start flag and a done count on raw futex words in the region,
 * forked worker processes that attach by name):
 *   create    shared_memory_object(create_only) + truncate + mapped_region +
 *             placement-new interprocess_mutex, remove, unmap; per cycle.
 *   attach    shared_memory_object(open_only) + mapped_region, unmap.
 *   lock      scoped_lock<interprocess_mutex> in a loop (lock + unlock),
 *             also CPU ns (CLOCK_THREAD_CPUTIME_ID).
 *   contend   -procs forked processes, each -n increments of a counter
 *             under scoped_lock<interprocess_mutex>.
 *   fill      memcpy into the mapped region in -chunk pieces (GB/s).
 *   pingpong  the turn handed back and forth through a raw futex word in the
 *             region, as cbench and shmbench do (Boost has no futex): this
 *             row measures the mapping and the kernel, the same in every
 *             column.
 *   notify    the same ping-pong, each round trip timed, through Boost's
 *             wait/wake primitive without a mutex: two interprocess_semaphores
 *             in the region (post the other side's, wait on ours).
 *   cond      interprocess_condition with the region's interprocess_mutex:
 *             each side holds the mutex but while it waits, flips the turn
 *             and notify_one()s with the mutex held.
 *   createwrite  create, then fill once (not in "all"; sized for 1 GiB).
 * Names are t-bench-boost-<pid>-<workload> (/dev/shm/...); every object is
 * removed on exit. Exit status: 0 done, 1 a failure (message on stderr),
 * 2 usage.
 */
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <boost/interprocess/sync/interprocess_condition.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <boost/interprocess/sync/interprocess_semaphore.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace bip = boost::interprocess;

namespace {

const std::size_t LOCK_SIZE = 64; // as cbench (GEOPM's M_LOCK_SIZE): the mutex, then the data
const int WARM_ROUNDS = 100;

std::string workload = "all";
long n = 0;
long size = 4096;
int procs = 2;
long chunk = 1 << 20;
std::string name; // without the leading '/': Boost adds it

void remove_object()
{
	if (!name.empty())
		bip::shared_memory_object::remove(name.c_str());
}

// fail: what cbench's die() does, for errors that are not exceptions.
[[noreturn]] void fail(const std::string &what)
{
	throw std::runtime_error(what + ": " + std::strerror(errno));
}

double now_ns()
{
	timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

double cpu_ns()
{
	timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

void setname(const char *w)
{
	name = "t-bench-boost-" + std::to_string((int)getpid()) + "-" + w;
}

// A region as a Boost user keeps one: the mapping, the mutex at its start,
// the data after it.
struct region {
	bip::mapped_region map;
	bip::interprocess_mutex *mutex = nullptr;
	char *data = nullptr;
};

void owner_create(region &r, std::size_t sz)
{
	bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write, bip::permissions(0600));
	shm.truncate((bip::offset_t)(sz + LOCK_SIZE));
	bip::mapped_region m(shm, bip::read_write);
	r.map.swap(m);
	r.mutex = new (r.map.get_address()) bip::interprocess_mutex;
	r.data = static_cast<char *>(r.map.get_address()) + LOCK_SIZE;
} // shm's destructor closes the fd

void user_attach(region &r)
{
	bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_write);
	bip::mapped_region m(shm, bip::read_write);
	r.map.swap(m);
	r.mutex = static_cast<bip::interprocess_mutex *>(r.map.get_address());
	r.data = static_cast<char *>(r.map.get_address()) + LOCK_SIZE;
}

void region_close(region &r)
{
	bip::mapped_region none;
	r.map.swap(none); // none's destructor munmaps
	r.mutex = nullptr;
	r.data = nullptr;
}

void report(const char *w, long sz, double ns, const std::string &extra = "")
{
	std::printf("workload=%s backend=boost size=%ld ns_per_op=%.2f%s\n", w, sz, ns, extra.c_str());
	std::fflush(stdout);
}

std::string fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char *f, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, f);
	std::vsnprintf(buf, sizeof buf, f, ap);
	va_end(ap);
	return buf;
}

long pick(long def)
{
	return n > 0 ? n : def;
}

void do_create()
{
	long iters = pick(2000);
	setname("create");
	{ // one warm-up cycle
		region r;
		owner_create(r, size);
		bip::shared_memory_object::remove(name.c_str());
	}
	double t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		region r;
		owner_create(r, size);
		if (!bip::shared_memory_object::remove(name.c_str()))
			fail("remove");
	} // r's destructor munmaps
	report("create", size, (now_ns() - t0) / iters);
}

void do_attach()
{
	long iters = pick(5000);
	setname("attach");
	region owner;
	owner_create(owner, size);
	{
		region u;
		user_attach(u);
	}
	double t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		region u;
		user_attach(u);
	}
	double ns = (now_ns() - t0) / iters;
	bip::shared_memory_object::remove(name.c_str());
	region_close(owner);
	report("attach", size, ns);
}

void do_lock()
{
	long iters = pick(20000000);
	setname("lock");
	region r;
	owner_create(r, size);
	bip::shared_memory_object::remove(name.c_str());
	double t0 = now_ns(), c0 = cpu_ns();
	for (long i = 0; i < iters; i++) {
		bip::scoped_lock<bip::interprocess_mutex> lk(*r.mutex);
	}
	double ns = (now_ns() - t0) / iters, cpu = (cpu_ns() - c0) / iters;
	region_close(r);
	report("lock", size, ns, fmt(" cpu_ns_per_op=%.2f", cpu));
}

// The words after the mutex for the multi-process workloads, at cbench's
// offsets where they are the same (the counter, the cond turn, the
// condition). The harness words are raw futex words, as in cbench.
struct ctl {
	uint32_t ready = 0;  // workers attached
	uint32_t go = 0;     // futex: 1 once the parent starts the clock
	uint32_t done = 0;   // workers finished
	uint32_t turn = 0;   // pingpong: futex word, 0 = parent's turn, 1 = child's
	uint64_t cpu_ns = 0; // contend: CPU time the workers spent from go to done
	alignas(64) uint64_t counter = 0; // contend: on its own line (64)
	alignas(64) uint32_t nturn_unused = 0; // (cbench's notify word; notify uses the semaphores)
	uint32_t cturn = 0;                    // cond: guarded by the region's mutex (132)
	alignas(64) bip::interprocess_condition cond; // cond (192)
	alignas(64) bip::interprocess_semaphore to_child{0};  // notify: the child's turn
	alignas(64) bip::interprocess_semaphore to_parent{0}; // notify: the parent's turn
};
static_assert(offsetof(ctl, counter) == 64, "counter offset");
static_assert(offsetof(ctl, cturn) == 132, "cturn offset");
static_assert(offsetof(ctl, cond) == 192, "cond offset");

long futex(uint32_t *addr, int op, uint32_t val)
{
	return syscall(SYS_futex, addr, op, val, nullptr, nullptr, 0);
}

void wait_while(uint32_t *w, uint32_t v)
{
	while (__atomic_load_n(w, __ATOMIC_ACQUIRE) == v)
		futex(w, FUTEX_WAIT, v);
}

void set_wake(uint32_t *w, uint32_t v)
{
	__atomic_store_n(w, v, __ATOMIC_RELEASE);
	futex(w, FUTEX_WAKE, INT32_MAX);
}

void wait_count(uint32_t *w, uint32_t want)
{
	uint32_t v;
	while ((v = __atomic_load_n(w, __ATOMIC_ACQUIRE)) < want)
		futex(w, FUTEX_WAIT, v);
}

void count_wake(uint32_t *w)
{
	__atomic_fetch_add(w, 1, __ATOMIC_ACQ_REL);
	futex(w, FUTEX_WAKE, INT32_MAX);
}

// ctl_region: an owner region big enough for struct ctl, with ctl in it.
ctl *ctl_region(region &r)
{
	owner_create(r, std::max<std::size_t>((std::size_t)size, sizeof(ctl)));
	return new (r.data) ctl;
}

// child: run f in a forked worker; the child never returns from here.
template <typename F> pid_t child(F f)
{
	pid_t pid = fork();
	if (pid < 0)
		fail("fork");
	if (pid == 0) {
		try {
			f();
		} catch (const std::exception &e) {
			std::fprintf(stderr, "bbench: worker (%s): %s\n", name.c_str(), e.what());
			_exit(1);
		}
		_exit(0);
	}
	return pid;
}

// Attach and say so, as a cbench worker does.
ctl *child_attach(region &u)
{
	user_attach(u);
	ctl *cc = reinterpret_cast<ctl *>(u.data);
	count_wake(&cc->ready);
	return cc;
}

void reap(int count)
{
	for (int i = 0; i < count; i++) {
		int st;
		if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			throw std::runtime_error("worker failed");
	}
}

void do_contend()
{
	long iters = pick(1000000);
	setname("contend");
	region r;
	ctl *c = ctl_region(r);
	for (int i = 0; i < procs; i++)
		child([iters] {
			region u;
			ctl *cc = child_attach(u);
			wait_while(&cc->go, 0);
			timespec c0, c1;
			clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
			for (long k = 0; k < iters; k++) {
				bip::scoped_lock<bip::interprocess_mutex> lk(*u.mutex);
				cc->counter++;
			}
			clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
			__atomic_fetch_add(&cc->cpu_ns,
					   (uint64_t)((c1.tv_sec - c0.tv_sec) * 1000000000LL + (c1.tv_nsec - c0.tv_nsec)),
					   __ATOMIC_ACQ_REL);
			count_wake(&cc->done);
		});
	wait_count(&c->ready, procs);
	double t0 = now_ns();
	set_wake(&c->go, 1);
	wait_count(&c->done, procs);
	double ns = (now_ns() - t0) / ((double)iters * procs);
	reap(procs);
	uint64_t total = c->counter, expected = (uint64_t)iters * procs;
	std::string extra = fmt(" procs=%d total=%llu expected=%llu Mops=%.2f cpu_ns_per_op=%.2f", procs,
				(unsigned long long)total, (unsigned long long)expected, 1e3 / ns,
				(double)c->cpu_ns / ((double)iters * procs));
	bip::shared_memory_object::remove(name.c_str());
	region_close(r);
	report("contend", size, ns, extra);
	if (total != expected)
		throw std::runtime_error("contend: total != expected");
}

void fill_pass(char *dst, const char *src, long sz)
{
	for (long off = 0; off < sz; off += chunk) {
		long k = sz - off < chunk ? sz - off : chunk;
		std::memcpy(dst + off, src, (std::size_t)k);
	}
}

void do_fill()
{
	long iters = pick(8);
	setname("fill");
	region r;
	owner_create(r, size);
	bip::shared_memory_object::remove(name.c_str());
	std::vector<char> src((std::size_t)chunk, (char)0xa5);
	fill_pass(r.data, src.data(), size); // warm-up: faults the pages in
	double t0 = now_ns();
	for (long i = 0; i < iters; i++)
		fill_pass(r.data, src.data(), size);
	double ns = (now_ns() - t0) / iters;
	region_close(r);
	report("fill", size, ns, fmt(" GBps=%.3f chunk=%ld", (double)size / ns, chunk));
}

void do_createwrite()
{
	long iters = pick(3);
	setname("createwrite");
	std::vector<char> src((std::size_t)chunk, (char)0x5a);
	double total = 0;
	for (long i = 0; i < iters; i++) {
		region r;
		double t0 = now_ns();
		owner_create(r, size);
		fill_pass(r.data, src.data(), size);
		total += now_ns() - t0;
		bip::shared_memory_object::remove(name.c_str());
	}
	double ns = total / iters;
	report("createwrite", size, ns, fmt(" GBps=%.3f", (double)size / ns));
}

void do_pingpong()
{
	long iters = pick(20000);
	setname("pingpong");
	region r;
	ctl *c = ctl_region(r);
	child([iters] {
		region u;
		ctl *cc = child_attach(u);
		for (long i = 0; i < iters; i++) {
			wait_while(&cc->turn, 0); // wait for our turn (1)
			set_wake(&cc->turn, 0);
		}
	});
	wait_count(&c->ready, 1);
	double t0 = now_ns();
	for (long i = 0; i < iters; i++) {
		set_wake(&c->turn, 1);
		wait_while(&c->turn, 1);
	}
	double ns = (now_ns() - t0) / iters;
	reap(1);
	bip::shared_memory_object::remove(name.c_str());
	region_close(r);
	report("pingpong", size, ns);
}

// nearest-rank percentile of sorted s, as cbench
double percentile(const std::vector<double> &s, int p)
{
	long len = (long)s.size();
	long i = (len * p + 99) / 100;
	return s[(std::size_t)((i < 1 ? 1 : i) - 1)];
}

void report_latencies(const char *w, std::vector<double> &d)
{
	double total = 0;
	for (double x : d)
		total += x;
	std::sort(d.begin(), d.end());
	report(w, size, total / (double)d.size(),
	       fmt(" p50_ns=%.0f p99_ns=%.0f", percentile(d, 50), percentile(d, 99)));
}

void do_notify()
{
	long iters = pick(20000);
	setname("notify");
	region r;
	ctl *c = ctl_region(r);
	std::vector<double> d((std::size_t)iters);
	child([iters] {
		region u;
		ctl *cc = child_attach(u);
		for (long i = 0; i < iters + WARM_ROUNDS; i++) {
			cc->to_child.wait();
			cc->to_parent.post();
		}
	});
	wait_count(&c->ready, 1);
	for (long i = -WARM_ROUNDS; i < iters; i++) {
		double t0 = now_ns();
		c->to_child.post();
		c->to_parent.wait();
		if (i >= 0)
			d[(std::size_t)i] = now_ns() - t0;
	}
	reap(1);
	bip::shared_memory_object::remove(name.c_str());
	region_close(r);
	report_latencies("notify", d);
}

void do_cond()
{
	long iters = pick(20000);
	setname("cond");
	region r;
	ctl *c = ctl_region(r);
	std::vector<double> d((std::size_t)iters);
	child([iters] {
		region u;
		ctl *cc = child_attach(u);
		bip::scoped_lock<bip::interprocess_mutex> lk(*u.mutex);
		for (long i = 0; i < iters + WARM_ROUNDS; i++) {
			while (cc->cturn == 0)
				cc->cond.wait(lk);
			cc->cturn = 0;
			cc->cond.notify_one();
		}
	});
	wait_count(&c->ready, 1);
	{
		bip::scoped_lock<bip::interprocess_mutex> lk(*r.mutex);
		for (long i = -WARM_ROUNDS; i < iters; i++) {
			double t0 = now_ns();
			c->cturn = 1;
			c->cond.notify_one();
			while (c->cturn == 1)
				c->cond.wait(lk);
			if (i >= 0)
				d[(std::size_t)i] = now_ns() - t0;
		}
	}
	reap(1);
	c->~ctl();
	bip::shared_memory_object::remove(name.c_str());
	region_close(r);
	report_latencies("cond", d);
}

[[noreturn]] void usage()
{
	std::fprintf(stderr, "usage: bbench [-workload create|attach|lock|contend|fill|pingpong|notify|cond|createwrite|all] "
			     "[-n N] [-size BYTES] [-procs P] [-chunk BYTES]\n");
	std::exit(2);
}

} // namespace

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] == '-' && a[1] == '-')
			a++;
		if (i + 1 >= argc)
			usage();
		if (std::strcmp(a, "-workload") == 0)
			workload = argv[++i];
		else if (std::strcmp(a, "-n") == 0)
			n = std::atol(argv[++i]);
		else if (std::strcmp(a, "-size") == 0)
			size = std::atol(argv[++i]);
		else if (std::strcmp(a, "-procs") == 0)
			procs = std::atoi(argv[++i]);
		else if (std::strcmp(a, "-chunk") == 0)
			chunk = std::atol(argv[++i]);
		else
			usage();
	}
	if (size < 1 || procs < 1 || chunk < 1)
		usage();
	struct {
		const char *name;
		void (*fn)();
	} const all[] = {
		{"create", do_create}, {"attach", do_attach},     {"lock", do_lock},     {"contend", do_contend},
		{"fill", do_fill},     {"pingpong", do_pingpong}, {"notify", do_notify}, {"cond", do_cond},
	};
	bool every = workload == "all", ran = false;
	try {
		for (const auto &w : all)
			if (every || workload == w.name) {
				w.fn();
				ran = true;
			}
		if (workload == "createwrite") { // not in "all": it is sized for 1 GiB
			do_createwrite();
			ran = true;
		}
	} catch (const std::exception &e) {
		std::fprintf(stderr, "bbench: %s (%s): %s\n", workload.c_str(), name.c_str(), e.what());
		remove_object();
		return 1;
	}
	if (!ran)
		usage();
	return 0;
}
