/*
 * Running the umbra program for the KVM suites (kvm_run.h).
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvm_run.h"

static const char *umbra_bin(void)
{
	const char *bin = getenv("UMBRA_BIN");
	return bin ? bin : UMBRA_DEFAULT_BIN;
}

void guest_image(const char *name, char *path, size_t size)
{
	const char *dir = getenv("UMBRA_GUEST_DIR");
	snprintf(path, size, "%s/%s.elf", dir ? dir : UMBRA_DEFAULT_GUEST_DIR, name);
}

static void append(char *buf, size_t *len, const char *data, size_t n)
{
	if (n > OUTPUT_MAX - 1 - *len)
		n = OUTPUT_MAX - 1 - *len;
	memcpy(buf + *len, data, n);
	*len += n;
	buf[*len] = '\0';
}

/* Milliseconds since @since. */
static double ms_since(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - since->tv_sec) * 1e3 + (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

void run_umbra_sampled(const char *const args[], int timeout_s, run_sampler sample, void *arg, struct run_result *r)
{
	int out_pipe[2], err_pipe[2];
	const char *argv[32];
	int argc = 0;

	argv[argc++] = umbra_bin();
	for (; args[argc - 1] && argc < 31; argc++)
		argv[argc] = args[argc - 1];
	argv[argc] = NULL;
	memset(r, 0, sizeof(*r));
	ck_assert_int_eq(pipe(out_pipe), 0);
	ck_assert_int_eq(pipe(err_pipe), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(out_pipe[1], 1);
		dup2(err_pipe[1], 2);
		close(out_pipe[0]);
		close(err_pipe[0]);
		execv(argv[0], (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(out_pipe[1]);
	close(err_pipe[1]);

	struct pollfd fds[2] = { { out_pipe[0], POLLIN, 0 }, { err_pipe[0], POLLIN, 0 } };
	size_t out_len = 0, err_len = 0;
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	time_t deadline = time(NULL) + timeout_s;
	struct timespec sampled = start;
	int open_fds = 2;
	if (sample)
		sample(pid, arg);
	while (open_fds > 0) {
		int left = (int)(deadline - time(NULL));
		if (left <= 0) {
			kill(pid, SIGKILL);
			r->timed_out = 1;
			break;
		}
		if (poll(fds, 2, sample ? RUN_SAMPLE_MS : left * 1000) < 0 && errno != EINTR)
			break;
		if (sample && ms_since(&sampled) >= RUN_SAMPLE_MS) {
			clock_gettime(CLOCK_MONOTONIC, &sampled);
			sample(pid, arg);
		}
		for (int i = 0; i < 2; i++) {
			if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP)))
				continue;
			char chunk[4096];
			ssize_t n = read(fds[i].fd, chunk, sizeof(chunk));
			if (n <= 0) {
				close(fds[i].fd);
				fds[i].fd = -1;
				open_fds--;
			} else if (i == 0) {
				append(r->out, &out_len, chunk, (size_t)n);
			} else {
				append(r->err, &err_len, chunk, (size_t)n);
			}
		}
	}
	for (int i = 0; i < 2; i++)
		if (fds[i].fd >= 0)
			close(fds[i].fd);
	int wstatus;
	ck_assert_int_eq(waitpid(pid, &wstatus, 0), pid);
	r->status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
	clock_gettime(CLOCK_MONOTONIC, &end);
	r->seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
}

struct json_object *run_umbra_stats(const char *const args[], int timeout_s, run_sampler sample, void *arg,
				    struct run_result *r)
{
	static char stats_path[sizeof(tmpdir) + 16];
	const char *argv[32];
	int n = 0;

	for (; args[n]; n++) {
		ck_assert_int_lt(n, 28);
		argv[n] = args[n];
	}
	snprintf(stats_path, sizeof(stats_path), "%s/stats.json", tmpdir);
	unlink(stats_path);
	argv[n++] = "--stats-json";
	argv[n++] = stats_path;
	argv[n] = NULL;
	run_umbra_sampled(argv, timeout_s, sample, arg, r);
	printf("%s: %.1f s, exit status %d\n", tcase_name(), r->seconds, r->status);
	ck_assert_msg(!r->timed_out, "umbra did not exit within %d s\nstdout:\n%s\nstderr:\n%s", timeout_s, r->out,
		      r->err);
	struct json_object *root = json_object_from_file(stats_path);
	ck_assert_msg(root, "no statistics in %s (exit status %d)\nstdout:\n%s\nstderr:\n%s", stats_path, r->status,
		      r->out, r->err);
	return root;
}

void run_umbra_timeout(const char *const args[], int timeout_s, struct run_result *r)
{
	run_umbra_sampled(args, timeout_s, NULL, NULL, r);
}

void run_umbra(const char *const args[], struct run_result *r)
{
	run_umbra_timeout(args, RUN_TIMEOUT_S, r);
}

void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
}

size_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ck_assert_msg(fd >= 0, "cannot open %s", path);
	ssize_t n = read(fd, buf, size);
	close(fd);
	ck_assert_int_gt(n, 0);
	return (size_t)n;
}

char tmpdir[64];

void tmpdir_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/umbra-kvm-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

void tmpdir_teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

/* FNV-1a 64, as the guest images compute it. */
uint64_t fnv1a(uint64_t hash, const uint8_t *p, size_t len)
{
	while (len--) {
		hash ^= *p++;
		hash *= 0x100000001b3ull;
	}
	return hash;
}

void fill_pattern(uint8_t *data, size_t len, uint64_t x)
{
	for (size_t i = 0; i < len; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(data + i, &x, 8);
	}
}

/* Writes @len bytes of @data to @name in the test's directory and returns
 * their FNV-1a sum (what segread computes over a segment of that size). */
uint64_t write_segment_file(const char *name, const void *data, size_t len)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	write_file(path, data, len);
	return fnv1a(0xcbf29ce484222325ull, data, len);
}

/* The directory of the guest images. */
void guest_image_dir(char *dir, size_t size)
{
	guest_image("segread", dir, size);
	*strrchr(dir, '/') = '\0';
}

unsigned long stat_value(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	unsigned long v = 0;

	ck_assert_msg(p && sscanf(p + strlen(key), "%lu", &v) == 1, "no \"%s\" in:\n%s", key, text);
	return v;
}

/* The integer at @path ("a.b.c") of JSON object @o; fails the test if absent. */
uint64_t json_u64(struct json_object *o, const char *path)
{
	char buf[128], *save = NULL;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *key = strtok_r(buf, ".", &save); key; key = strtok_r(NULL, ".", &save)) {
		struct json_object *next;

		ck_assert_msg(json_object_object_get_ex(o, key, &next), "statistics: no \"%s\" (in %s)", key, path);
		o = next;
	}
	return (uint64_t)json_object_get_uint64(o);
}

/* The table pool's memfd (shadow/pool.c): umbra's tables, not guest memory. */
#define SHADOW_POOL_MEMFD "/memfd:umbra-shadow-pool"

/* The host memory of umbra's guest memfds (RAM and segments: every
 * descriptor whose link is "/memfd:...", but the table pool), as
 * st_blocks * 512, each memfd counted once however many descriptors it
 * has. A run_sampler. */
void sample_memfds(pid_t pid, void *arg)
{
	struct memfd_samples *s = arg;
	char dir[64], path[320], link[256];
	unsigned long inodes[256];
	unsigned int nr_inodes = 0;
	uint64_t bytes = 0;
	struct timespec now;
	struct dirent *e;
	DIR *d;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (s->last.tv_sec) {
		double gap = (double)(now.tv_sec - s->last.tv_sec) * 1e3 + (double)(now.tv_nsec - s->last.tv_nsec) / 1e6;

		if (gap > s->max_gap_ms)
			s->max_gap_ms = gap;
	}
	s->last = now;
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	if (!(d = opendir(dir)))
		return;
	while ((e = readdir(d))) {
		struct stat st;
		ssize_t n;
		unsigned int i;

		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (e->d_name[0] == '.' || (n = readlink(path, link, sizeof(link) - 1)) <= 0)
			continue;
		link[n] = '\0';
		if (strncmp(link, "/memfd:", 7) != 0 || strncmp(link, SHADOW_POOL_MEMFD, strlen(SHADOW_POOL_MEMFD)) == 0 ||
		    stat(path, &st) != 0)
			continue;
		for (i = 0; i < nr_inodes && inodes[i] != (unsigned long)st.st_ino; i++)
			;
		if (i < nr_inodes || nr_inodes == sizeof(inodes) / sizeof(inodes[0]))
			continue;
		inodes[nr_inodes++] = (unsigned long)st.st_ino;
		bytes += (uint64_t)st.st_blocks * 512;
	}
	closedir(d);
	if (nr_inodes == 0)
		return;
	s->count++;
	if (bytes > s->max)
		s->max = bytes;
}

void kvm_add_case(Suite *s, const char *name, const TTest *test, int timeout_s, SFun teardown)
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, tmpdir_setup, teardown);
	tcase_add_test(tc, test);
	tcase_set_timeout(tc, timeout_s);
	suite_add_tcase(s, tc);
}
