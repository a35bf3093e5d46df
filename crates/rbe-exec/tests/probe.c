/* What an action can and cannot do in the sandbox: each argument names a
 * probe; each probe prints "name=ok", "name=<value>" or "name=<ERRNO>".
 * Compiled by the tests with the host's cc and run inside the sandbox. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_USER_KEYRING -4
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11

static void show(const char *name, long r) {
    if (r < 0)
        printf("%s=%s\n", name, strerrorname_np(errno));
    else
        printf("%s=ok\n", name);
}

/* Runs fn in a child so that a probe that succeeds (a new user namespace)
 * changes nothing for the next one. */
static void in_child(const char *name, long (*fn)(void)) {
    int p[2];
    if (pipe(p) != 0) abort();
    pid_t pid = fork();
    if (pid == 0) {
        long r = fn();
        int e = r < 0 ? errno : 0;
        if (write(p[1], &e, sizeof e) != sizeof e) _exit(1);
        _exit(0);
    }
    int e = -1;
    close(p[1]);
    if (read(p[0], &e, sizeof e) != sizeof e) e = EIO;
    waitpid(pid, NULL, 0);
    errno = e;
    show(name, e ? -1 : 0);
}

static long do_unshare_user(void) { return unshare(CLONE_NEWUSER); }
static long do_clone_user(void) {
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    return pid;
}
static long do_clone3(void) {
    uint64_t args[11] = {0};
    args[4] = SIGCHLD; /* exit_signal */
    long pid = syscall(SYS_clone3, args, 88);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    return pid;
}
static long do_traceme(void) { return ptrace(PTRACE_TRACEME, 0, 0, 0); }
static void *thread_fn(void *a) { return a; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        errno = 0;
        if (!strcmp(a, "session")) {
            printf("session=%ld\n", (long)getsid(0));
        } else if (!strcmp(a, "tty")) {
            show(a, open("/dev/tty", O_RDWR | O_NOCTTY));
        } else if (!strcmp(a, "tiocsti")) {
            char c = 'x';
            show(a, ioctl(0, TIOCSTI, &c));
        } else if (!strncmp(a, "keyadd:", 7)) {
            show("keyadd-user", syscall(SYS_add_key, "user", a + 7, "secret", 6,
                                        KEY_SPEC_USER_KEYRING));
            show("keyadd-session", syscall(SYS_add_key, "user", a + 7, "secret", 6,
                                           KEY_SPEC_SESSION_KEYRING));
        } else if (!strncmp(a, "keyread:", 8)) {
            int rings[2] = {KEY_SPEC_USER_KEYRING, KEY_SPEC_SESSION_KEYRING};
            const char *names[2] = {"keyread-user", "keyread-session"};
            for (int k = 0; k < 2; k++) {
                long id = syscall(SYS_keyctl, KEYCTL_SEARCH, rings[k], "user", a + 8, 0);
                if (id < 0) {
                    show(names[k], id);
                    continue;
                }
                char buf[64] = {0};
                long n = syscall(SYS_keyctl, KEYCTL_READ, id, buf, sizeof buf - 1);
                if (n < 0)
                    show(names[k], n);
                else
                    printf("%s=found:%s\n", names[k], buf);
            }
        } else if (!strcmp(a, "request_key")) {
            show(a, syscall(SYS_request_key, "user", "rbe-probe-none", NULL,
                            KEY_SPEC_SESSION_KEYRING));
        } else if (!strcmp(a, "bpf")) {
            show(a, syscall(SYS_bpf, 9999, NULL, 0));
        } else if (!strcmp(a, "perf_event_open")) {
            show(a, syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
        } else if (!strcmp(a, "userfaultfd")) {
            show(a, syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */));
        } else if (!strcmp(a, "setns")) {
            show(a, setns(-1, 0));
        } else if (!strcmp(a, "unshare_user")) {
            in_child(a, do_unshare_user);
        } else if (!strcmp(a, "clone_user")) {
            in_child(a, do_clone_user);
        } else if (!strcmp(a, "clone3")) {
            in_child(a, do_clone3);
        } else if (!strcmp(a, "thread")) {
            pthread_t t;
            errno = pthread_create(&t, NULL, thread_fn, NULL);
            show(a, errno ? -1 : pthread_join(t, NULL));
        } else if (!strcmp(a, "fork")) {
            pid_t pid = fork();
            if (pid == 0) _exit(0);
            if (pid > 0) waitpid(pid, NULL, 0);
            show(a, pid);
        } else if (!strcmp(a, "traceme")) {
            in_child(a, do_traceme);
        } else if (!strcmp(a, "ptrace_init")) {
            show(a, ptrace(PTRACE_ATTACH, 1, 0, 0));
        } else if (!strcmp(a, "init_module")) {
            show(a, syscall(SYS_init_module, NULL, 0, ""));
        } else if (!strcmp(a, "finit_module")) {
            show(a, syscall(SYS_finit_module, -1, "", 0));
        } else if (!strcmp(a, "delete_module")) {
            show(a, syscall(SYS_delete_module, "rbe_none", 0));
        } else if (!strcmp(a, "kexec_load")) {
            show(a, syscall(SYS_kexec_load, 0, 0, NULL, 0));
        } else if (!strcmp(a, "reboot")) {
            show(a, syscall(SYS_reboot, 0, 0, 0, NULL));
        } else if (!strcmp(a, "swapon")) {
            show(a, syscall(SYS_swapon, "/nonexistent", 0));
        } else if (!strcmp(a, "mount")) {
            show(a, mount("none", "/tmp", "tmpfs", 0, NULL));
        } else if (!strcmp(a, "umount2")) {
            show(a, umount2("/tmp", 0));
        } else if (!strcmp(a, "pivot_root")) {
            show(a, syscall(SYS_pivot_root, "/tmp", "/tmp"));
        } else if (!strcmp(a, "open_by_handle_at")) {
            show(a, syscall(SYS_open_by_handle_at, -1, NULL, 0));
        } else if (!strcmp(a, "acct")) {
            show(a, syscall(SYS_acct, NULL));
        } else if (!strcmp(a, "quotactl")) {
            show(a, syscall(SYS_quotactl, 0, NULL, 0, NULL));
#ifdef SYS_iopl
        } else if (!strcmp(a, "iopl")) {
            show(a, syscall(SYS_iopl, 3));
        } else if (!strcmp(a, "ioperm")) {
            show(a, syscall(SYS_ioperm, 0x80, 1, 1));
#endif
        } else if (!strcmp(a, "x32_getpid")) {
            show(a, syscall(0x40000000 | 39));
        } else if (!strcmp(a, "pty")) {
            int m = posix_openpt(O_RDWR | O_NOCTTY);
            if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) {
                show(a, -1);
                continue;
            }
            const char *s = ptsname(m);
            show(a, s ? open(s, O_RDWR | O_NOCTTY) : -1);
        } else {
            printf("%s=unknown probe\n", a);
        }
    }
    return 0;
}
