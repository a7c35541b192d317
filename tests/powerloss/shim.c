// A file layer for the power-loss test (tests/powerloss.rs), loaded with LD_PRELOAD into
// the broker. For every file under $POWERLOSS_DIR it journals, before each write, the
// bytes the write replaces (and the file's size), and marks each fsync/fdatasync. After a
// SIGKILL the test undoes, file by file, every write not covered by a later sync: what a
// power cut does to data that reached the page cache but not the disk. sync_file_range
// is passed through unmarked: it neither flushes the drive's cache nor the metadata, so
// it is not a durability point (docs/architecture.md "Storage"). A write to a descriptor
// opened O_DSYNC (or O_SYNC), or a pwritev2 with RWF_DSYNC/RWF_SYNC, is durable when it
// returns: it is marked as such and never undone. The broker's journal writes through
// io_uring, which this layer cannot see; the test runs it with the fault
// `observed_journal`, which makes it write the same blocks with pwritev2 on a descriptor
// opened here.
//
// Journal records (little-endian): 'W' u32 path_len path u64 offset u64 old_size
// u64 old_len old_bytes | 'S' u32 path_len path | 'D' u32 path_len path u64 offset
// u64 len (a durable write).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *paths[MAX_FDS];
static char durable[MAX_FDS];  // opened O_DSYNC or O_SYNC
static int journal = -1;
static const char *dir;
static size_t dir_len;

static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

__attribute__((constructor)) static void init(void) {
  real_pwrite = dlsym(RTLD_NEXT, "pwrite64");
  real_write = dlsym(RTLD_NEXT, "write");
  real_pwritev = dlsym(RTLD_NEXT, "pwritev64");
  real_pwritev2 = dlsym(RTLD_NEXT, "pwritev64v2");
  real_open = dlsym(RTLD_NEXT, "open64");
  real_openat = dlsym(RTLD_NEXT, "openat64");
  real_close = dlsym(RTLD_NEXT, "close");
  real_fsync = dlsym(RTLD_NEXT, "fsync");
  real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
  dir = getenv("POWERLOSS_DIR");
  dir_len = dir ? strlen(dir) : 0;
  const char *j = getenv("POWERLOSS_JOURNAL");
  if (dir && j) journal = real_open(j, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

static void put(const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = real_write(journal, c, n);
    if (w <= 0) abort();  // a journal that cannot be written proves nothing
    c += w;
    n -= (size_t)w;
  }
}

static void track(int fd, const char *path, int dirfd, int flags) {
  if (fd < 0 || fd >= MAX_FDS || journal < 0 || !path) return;
  char full[PATH_MAX];
  if (path[0] != '/') {
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
      if (!getcwd(base, sizeof base)) return;
    } else {
      char link[64];
      snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
      ssize_t n = readlink(link, base, sizeof base - 1);
      if (n < 0) return;
      base[n] = 0;
    }
    snprintf(full, sizeof full, "%s/%s", base, path);
    path = full;
  }
  if (strncmp(path, dir, dir_len) != 0) return;
  pthread_mutex_lock(&lock);
  free(paths[fd]);
  paths[fd] = strdup(path);
  durable[fd] = (flags & O_DSYNC) != 0;  // O_SYNC includes O_DSYNC's bit
  pthread_mutex_unlock(&lock);
}

// A write that was durable when it returned (called after it, with its result).
static void durable_write(int fd, off_t offset, ssize_t n) {
  if (n <= 0 || fd < 0 || fd >= MAX_FDS || !paths[fd]) return;
  uint32_t plen = (uint32_t)strlen(paths[fd]);
  uint64_t off = (uint64_t)offset, len = (uint64_t)n;
  put("D", 1);
  put(&plen, 4);
  put(paths[fd], plen);
  put(&off, 8);
  put(&len, 8);
}

// Journals what [offset, offset + len) of fd's file holds now.
static void before_write(int fd, off_t offset, size_t len) {
  if (fd < 0 || fd >= MAX_FDS || !paths[fd]) return;
  struct stat st;
  if (fstat(fd, &st) != 0) return;
  uint64_t size = (uint64_t)st.st_size, off = (uint64_t)offset;
  uint64_t old_len = off >= size ? 0 : (size - off < len ? size - off : len);
  char *old = malloc(old_len ? old_len : 1);
  if (old_len && pread(fd, old, old_len, offset) != (ssize_t)old_len) {
    // A write-only descriptor (the broker's journal is one): read through a second one.
    // Journaling nothing here would make the write impossible to undo.
    int r = real_open(paths[fd], O_RDONLY | O_CLOEXEC);
    ssize_t got = r < 0 ? -1 : pread(r, old, old_len, offset);
    if (r >= 0) real_close(r);
    if (got != (ssize_t)old_len) {
      fprintf(stderr, "powerloss shim: cannot read what a write to %s replaces\n", paths[fd]);
      abort();
    }
  }
  uint32_t plen = (uint32_t)strlen(paths[fd]);
  put("W", 1);
  put(&plen, 4);
  put(paths[fd], plen);
  put(&off, 8);
  put(&size, 8);
  put(&old_len, 8);
  put(old, old_len);
  free(old);
}

static void synced(int fd) {
  if (fd < 0 || fd >= MAX_FDS || !paths[fd]) return;
  uint32_t plen = (uint32_t)strlen(paths[fd]);
  put("S", 1);
  put(&plen, 4);
  put(paths[fd], plen);
}

static int is_durable(int fd) { return fd >= 0 && fd < MAX_FDS && durable[fd]; }

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
  pthread_mutex_lock(&lock);
  int d = is_durable(fd);
  if (!d) before_write(fd, off, n);
  ssize_t r = real_pwrite(fd, buf, n, off);
  if (d) durable_write(fd, off, r);
  pthread_mutex_unlock(&lock);
  return r;
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return pwrite64(fd, buf, n, off); }

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) {
  size_t n = 0;
  for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
  pthread_mutex_lock(&lock);
  int d = is_durable(fd);
  if (!d) before_write(fd, off, n);
  ssize_t r = real_pwritev(fd, iov, cnt, off);
  if (d) durable_write(fd, off, r);
  pthread_mutex_unlock(&lock);
  return r;
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) { return pwritev64(fd, iov, cnt, off); }

#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif
#ifndef RWF_SYNC
#define RWF_SYNC 0x00000004
#endif

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  size_t n = 0;
  for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
  pthread_mutex_lock(&lock);
  int d = is_durable(fd) || (flags & (RWF_DSYNC | RWF_SYNC)) != 0;
  if (!d) before_write(fd, off, n);
  ssize_t r = real_pwritev2(fd, iov, cnt, off, flags);
  if (d) durable_write(fd, off, r);
  pthread_mutex_unlock(&lock);
  return r;
}
ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
  return pwritev64v2(fd, iov, cnt, off, flags);
}

ssize_t write(int fd, const void *buf, size_t n) {
  if (fd < 0 || fd >= MAX_FDS || !paths[fd]) return real_write(fd, buf, n);
  pthread_mutex_lock(&lock);
  off_t at = lseek(fd, 0, SEEK_CUR);
  int d = is_durable(fd);
  if (at >= 0 && !d) before_write(fd, at, n);
  ssize_t r = real_write(fd, buf, n);
  if (at >= 0 && d) durable_write(fd, at, r);
  pthread_mutex_unlock(&lock);
  return r;
}

int open64(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  int fd = real_open(path, flags, mode);
  track(fd, path, AT_FDCWD, flags);
  return fd;
}
int open(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return open64(path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  int fd = real_openat(dirfd, path, flags, mode);
  track(fd, path, dirfd, flags);
  return fd;
}
int openat(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return openat64(dirfd, path, flags, mode);
}

int close(int fd) {
  if (fd >= 0 && fd < MAX_FDS && paths[fd]) {
    pthread_mutex_lock(&lock);
    free(paths[fd]);
    paths[fd] = NULL;
    durable[fd] = 0;
    pthread_mutex_unlock(&lock);
  }
  return real_close(fd);
}

// The mark goes in before the call: a sync covers only what was written before it
// started (a write racing with it may or may not be on disk, so it counts as not).
int fsync(int fd) {
  pthread_mutex_lock(&lock);
  synced(fd);
  pthread_mutex_unlock(&lock);
  return real_fsync(fd);
}

int fdatasync(int fd) {
  pthread_mutex_lock(&lock);
  synced(fd);
  pthread_mutex_unlock(&lock);
  return real_fdatasync(fd);
}
