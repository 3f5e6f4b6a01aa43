/*
 * Static launcher of the frozen daemon (build-executables.sh compiles it with gcc -static).
 *
 * The frozen program is a PyInstaller one-folder bundle: a bootloader `lambda-rapid`, its
 * archive `lambda-rapid.pkg`, and `_internal/` with libpython, the extension modules and
 * the C library with its loader (renamed ld-lambda-rapid.so.2). The launcher runs the
 * bootloader through that loader, so nothing is needed from the image.
 *
 * Directory variant: the launcher sits in the bundle's directory and execs the loader
 * (one process, nothing unpacked). Single file: the launcher is followed by the bundle's
 * files (zstd-compressed) and then by the archive, which stays in the file (the unpacked
 * `lambda-rapid.pkg` is a symlink to it). The launcher unpacks into $TMPDIR (in two
 * processes when there is more than one CPU; a failed or interrupted unpack removes what
 * it wrote), runs the program as its child, forwards signals, reaps every child it is
 * given (it is PID 1 in a container), and removes the directory when the program exits,
 * with its status.
 *
 * The name the launcher is started under picks the program: `lambda-server`, or the daemon.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#define LOADER "_internal/ld-lambda-rapid.so.2"
#define LIBDIR "_internal"
#define PAYLOAD_MAGIC "LRPAYLD1"
/* PyInstaller's archive cookie: 8 magic bytes, then the archive length (big endian). */
static const unsigned char PKG_MAGIC[8] = {'M', 'E', 'I', 014, 013, 012, 013, 016};
#define COOKIE_SIZE 88

static const char *prog = "lambda-runtime-api-daemon";
static char unpacked[PATH_MAX];
static volatile pid_t child;
/* While unpacking: the second unpacking process, and whether this process removes the
 * half-unpacked directory when it gives up. */
static pid_t helper;
static int owns_unpacked;
static int is_helper; /* the second unpacking process: its failure is told by its status */
/* A stop signal that came before the program was started: the start is given up. */
static volatile sig_atomic_t stopping;
static const int SIGNALS[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define SIGNAL_COUNT (sizeof SIGNALS / sizeof *SIGNALS)

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_unpacked(void) {
    nftw(unpacked, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Before giving up a start: no second unpacking process outlives us, nothing unpacked stays. */
static void undo_start(void) {
    if (helper > 0) {
        kill(helper, SIGKILL);
        waitpid(helper, NULL, 0);
        helper = 0;
    }
    if (owns_unpacked) remove_unpacked();
}

static void die(const char *what, const char *path) {
    if (is_helper) _exit(errno > 0 && errno < 256 ? errno : EIO);
    fprintf(stderr, "%s: error: %s %s: %s\n", prog, what, path, strerror(errno));
    undo_start();
    exit(2);
}

/* Give up the start if a stop signal came. */
static void check_stop(void) {
    if (!stopping) return;
    if (is_helper) _exit(EINTR);
    undo_start();
    exit(128 + stopping);
}

/* buf = a + "/" + b, or a clear error when that is longer than a path may be. */
static void join(char *buf, size_t size, const char *a, const char *b) {
    int n = snprintf(buf, size, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        die("path too long:", a);
    }
}

static uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

static int read_at(int fd, void *buf, size_t len, off_t at) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, at + (off_t)done);
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

/* The offset of the appended files, or -1 when there are none (the directory variant). */
static off_t payload_offset(int fd) {
    struct stat st;
    unsigned char cookie[COOKIE_SIZE], trailer[16];
    if (fstat(fd, &st) < 0 || st.st_size < COOKIE_SIZE + 16) return -1;
    if (read_at(fd, cookie, COOKIE_SIZE, st.st_size - COOKIE_SIZE) < 0) return -1;
    if (memcmp(cookie, PKG_MAGIC, 8) != 0) return -1;
    uint32_t pkg_length = (uint32_t)cookie[8] << 24 | cookie[9] << 16 | cookie[10] << 8 | cookie[11];
    off_t pkg_start = st.st_size - (off_t)pkg_length;
    if (pkg_start < 16 || read_at(fd, trailer, 16, pkg_start - 16) < 0) return -1;
    if (memcmp(trailer, PAYLOAD_MAGIC, 8) != 0) return -1;
    return (off_t)be64(trailer + 8);
}

static void write_all(int out, const unsigned char *buf, size_t len, const char *path) {
    while (len > 0) {
        ssize_t n = write(out, buf, len);
        if (n < 0) die("cannot unpack into TMPDIR (or /tmp)", path);
        buf += n;
        len -= (size_t)n;
    }
}

/* Decompress the `csize` bytes of zstd frame of `in` at `at` into the file `path`. */
static void unpack_file(ZSTD_DStream *z, int in, off_t at, uint64_t csize, const char *path,
                        mode_t mode) {
    static unsigned char src[1 << 17], dst[1 << 18];
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (out < 0) die("cannot unpack into TMPDIR (or /tmp)", path);
    ZSTD_DCtx_reset(z, ZSTD_reset_session_only);
    while (csize > 0) {
        check_stop();
        size_t chunk = csize < sizeof src ? (size_t)csize : sizeof src;
        if (read_at(in, src, chunk, at) < 0) die("cannot read", "the executable");
        at += (off_t)chunk;
        csize -= chunk;
        ZSTD_inBuffer input = {src, chunk, 0};
        while (input.pos < input.size) {
            ZSTD_outBuffer output = {dst, sizeof dst, 0};
            if (ZSTD_isError(ZSTD_decompressStream(z, &output, &input))) {
                errno = EINVAL;
                die("corrupt bundle entry", path);
            }
            write_all(out, dst, output.pos, path);
        }
    }
    if (close(out) < 0) die("cannot unpack into TMPDIR (or /tmp)", path);
}

/* A file of the bundle still to unpack: where its zstd frame is, and where it goes. */
struct entry {
    off_t at;
    uint64_t size;
    mode_t mode;
    char *path;
};

static int larger_first(const void *a, const void *b) {
    uint64_t x = ((const struct entry *)a)->size, y = ((const struct entry *)b)->size;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Unpack the files of `files` (largest first) whose worker is `worker` (of `workers`):
 * each goes to the worker with the fewest compressed bytes so far. */
static void unpack_files(int fd, struct entry *files, size_t count, int worker, int workers) {
    uint64_t load[2] = {0, 0};
    ZSTD_DStream *z = ZSTD_createDStream();
    if (!z) die("out of memory unpacking", "");
    for (size_t i = 0; i < count; i++) {
        check_stop();
        int to = workers > 1 && load[1] < load[0] ? 1 : 0;
        load[to] += files[i].size;
        if (to == worker) {
            unpack_file(z, fd, files[i].at, files[i].size, files[i].path, files[i].mode);
        }
    }
    ZSTD_freeDStream(z);
}

/* Entries: type (f file, d directory, l symlink), mode (4), name length (2), data length
 * (8), name, data (zstd frame for a file, target for a symlink); all big endian.
 * Directories and symlinks are made in order; the files are then unpacked by two
 * processes at once when there is more than one CPU (decompressing is most of a start). */
static void unpack(int fd, off_t at, const char *dir) {
    char path[PATH_MAX], name[PATH_MAX];
    unsigned char head[15];
    struct entry *files = NULL;
    size_t count = 0, capacity = 0;
    for (;;) {
        if (read_at(fd, head, sizeof head, at) < 0) die("cannot read", "the executable");
        if (head[0] == 'e') break;
        mode_t mode = (mode_t)(head[1] << 24 | head[2] << 16 | head[3] << 8 | head[4]);
        size_t name_len = (size_t)(head[5] << 8 | head[6]);
        uint64_t size = be64(head + 7);
        if (name_len >= sizeof name || read_at(fd, name, name_len, at + 15) < 0)
            die("cannot read", "the executable");
        name[name_len] = 0;
        at += 15 + (off_t)name_len;
        join(path, sizeof path, dir, name);
        if (head[0] == 'd') {
            if (mkdir(path, mode) < 0) die("cannot unpack into TMPDIR (or /tmp)", path);
        } else if (head[0] == 'l') {
            char target[PATH_MAX];
            if (size >= sizeof target || read_at(fd, target, (size_t)size, at) < 0)
                die("cannot read", "the executable");
            target[size] = 0;
            if (symlink(target, path) < 0) die("cannot unpack into TMPDIR (or /tmp)", path);
        } else {
            if (count == capacity) {
                capacity = capacity ? 2 * capacity : 64;
                files = realloc(files, capacity * sizeof *files);
                if (!files) die("out of memory unpacking", path);
            }
            files[count++] = (struct entry){at, size, mode, strdup(path)};
            if (!files[count - 1].path) die("out of memory unpacking", path);
        }
        at += (off_t)size;
    }
    qsort(files, count, sizeof *files, larger_first);
    int workers = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 2 : 1;
    pid_t parent = getpid();
    pid_t forked = workers > 1 ? fork() : 0;
    if (forked < 0) workers = 1; /* no second process: unpack everything here */
    if (forked == 0 && workers > 1) {
        owns_unpacked = 0; /* the first process cleans up after a failure */
        is_helper = 1;
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* it never outlives the launcher */
        if (getppid() != parent) _exit(EINTR);
        unpack_files(fd, files, count, 1, workers);
        _exit(0);
    }
    helper = forked > 0 ? forked : 0;
    unpack_files(fd, files, count, 0, workers);
    if (helper > 0) {
        int status;
        pid_t done;
        while ((done = waitpid(helper, &status, 0)) < 0 && errno == EINTR) {
        }
        helper = 0;
        check_stop();
        if (done < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            errno = done >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : EINTR;
            die("cannot unpack into TMPDIR (or /tmp)", dir);
        }
    }
    for (size_t i = 0; i < count; i++) free(files[i].path);
    free(files);
}

static void forward(int sig) {
    if (child > 0) {
        kill(child, sig);
    } else {
        stopping = sig;
    }
}

/* Overwrite this process's copies of the arguments and environment: the program has its
 * own, and a password given in them must not stay readable in /proc/<pid>/environ. */
static void forget(int argc, char **argv, char **envp) {
    for (int i = 1; i < argc; i++) memset(argv[i], 0, strlen(argv[i]));
    for (char **e = envp; *e; e++) memset(*e, 0, strlen(*e));
}

static int wait_for_program(void) {
    int status;
    for (;;) {
        pid_t pid = waitpid(-1, &status, 0);
        if (pid == child) break;
        if (pid < 0 && errno != EINTR) return 1;
    }
    remove_unpacked();
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static void run(const char *bundle, char **argv) {
    char loader[PATH_MAX], libdir[PATH_MAX], name[PATH_MAX];
    join(loader, sizeof loader, bundle, LOADER);
    join(libdir, sizeof libdir, bundle, LIBDIR);
    /* PyInstaller finds its archive from argv[0] (a symlink to the bootloader) when it runs
     * under a loader; the daemon picks its program from that name. */
    join(name, sizeof name, libdir, "names");
    join(name, sizeof name, strdup(name), prog);
    int argc = 0;
    while (argv[argc]) argc++;
    char **args = calloc((size_t)argc + 5, sizeof *args);
    if (!args) die("out of memory", "");
    args[0] = loader;
    args[1] = "--library-path";
    args[2] = libdir;
    args[3] = name;
    for (int i = 1; i < argc; i++) args[i + 3] = argv[i];
    execv(loader, args);
    die("cannot start", loader);
}

int main(int argc, char **argv, char **envp) {
    char self[PATH_MAX];
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strcmp(base, "lambda-server") == 0) prog = "lambda-server";
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
    } else if (!realpath(argv[0], self)) {
        die("cannot find this executable (is /proc mounted?)", argv[0]);
    }
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open", self);
    off_t at = payload_offset(fd);
    if (at < 0) {
        /* The directory variant: run the bundle beside this file, in this process. */
        *strrchr(self, '/') = 0;
        run(self, argv);
    }

    /* From here a stop signal is forwarded to the program, or, before it runs, gives up
     * the start cleanly (checked between the chunks unpacked). */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigset_t blocked, previous;
    sigemptyset(&blocked);
    for (size_t i = 0; i < SIGNAL_COUNT; i++) {
        sigaction(SIGNALS[i], &action, NULL);
        sigaddset(&blocked, SIGNALS[i]);
    }

    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    join(unpacked, sizeof unpacked, tmp, "lambda-rapid-XXXXXX");
    if (!mkdtemp(unpacked)) die("cannot unpack into TMPDIR (or /tmp)", tmp);
    owns_unpacked = 1;
    chmod(unpacked, 0755);
    unpack(fd, at, unpacked);
    close(fd);
    char pkg[PATH_MAX];
    join(pkg, sizeof pkg, unpacked, "lambda-rapid.pkg");
    if (symlink(self, pkg) < 0) die("cannot unpack into TMPDIR (or /tmp)", pkg);
    /* For KUBERNETES_INIT_CONTAINER: the file to copy is this one. */
    setenv("LAMBDA_RAPID_EXECUTABLE", self, 1);

    /* A signal between the last check and `child` being set would be lost: none comes
     * in between (blocked, it waits and is forwarded once the program runs). */
    sigprocmask(SIG_BLOCK, &blocked, &previous);
    check_stop();
    child = fork();
    if (child < 0) die("cannot fork", "");
    if (child == 0) {
        for (size_t i = 0; i < SIGNAL_COUNT; i++) signal(SIGNALS[i], SIG_DFL);
        sigprocmask(SIG_SETMASK, &previous, NULL);
        run(unpacked, argv);
    }
    sigprocmask(SIG_SETMASK, &previous, NULL);
    forget(argc, argv, envp);
    return wait_for_program();
}
