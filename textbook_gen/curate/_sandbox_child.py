"""The first code a sandboxed exercise interpreter runs (``python -I -c <this file>``).

It lowers the process's own rlimits, confines the file system and TCP with Landlock where the
kernel has it (a real kernel boundary), installs an audit hook (defence in depth, and the only
file guard where Landlock is missing), and only then runs ``exercise.py`` from the throwaway
directory it was started in. argv: memory bytes, CPU seconds, file-size bytes. Standard
library only; not imported by the package.
"""

import os
import sys

EXIT_SANDBOX_FAILED = 97
# Landlock file-system rights (linux/landlock.h); the ABI version says which exist
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_MAKE_CHAR, _MAKE_BLOCK, _REFER, _TRUNCATE, _IOCTL_DEV = 1 << 6, 1 << 11, 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV


def set_limits(memory: int, cpu: int, fsize: int) -> None:
    import resource

    for what, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(what, (value, value))


def landlock(root: str, readable: list[str]) -> int:
    """Restrict this process: everything beneath ``root``, reading beneath ``readable``, no
    other file access, no TCP bind/connect, no signals out. Returns the ABI used, 0 if the
    kernel has no Landlock (then only the audit hook guards files)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    create, add_rule, restrict = 444, 445, 446  # the same numbers on x86_64 and arm64
    abi = libc.syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # version query
    if abi < 1:
        return 0
    fs = (1 << 13) - 1
    fs |= (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0) | (_IOCTL_DEV if abi >= 5 else 0)
    net = 0b11 if abi >= 4 else 0  # bind and connect TCP
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets and signals
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    rules = [(root, fs & ~(_EXECUTE | _MAKE_CHAR | _MAKE_BLOCK))]
    rules += [(p, _READ_FILE | _READ_DIR) for p in readable]
    rules.append(("/dev/null", _READ_FILE | _WRITE_FILE))
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a folder this machine does not have
        try:
            import stat

            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                rights &= _FILE_RIGHTS
            rule = PathBeneath(rights & fs, fd)
            if libc.syscall(add_rule, ruleset, 1, ctypes.byref(rule), 0) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
        finally:
            os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by restrict_self
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.syscall(restrict, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(ruleset)
    return abi


def audit_hook(root: str, readable: tuple[str, ...]):  # noqa: ANN201 - a closure
    """The hook refuses network, processes, ctypes, and file access outside ``root`` (reads
    also within ``readable``). Everything it uses is bound now, in the closure, so exercise
    code cannot weaken it by patching ``os``, ``os.path`` or builtins afterwards."""
    import posix

    getcwd, is_str, is_bytes = posix.getcwd, str, bytes
    blocked = frozenset({
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink",
        "os.link", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    })
    writes = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                        "os.truncate", "shutil.rmtree", "os.utime", "os.chflags", "os.lchflags",
                        "os.setxattr", "os.removexattr"})
    reads = frozenset({"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.getxattr",
                       "os.listxattr"})
    af_unix = 1
    wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def absolute(path: object) -> str | None:
        if type(path) is is_bytes:
            path = path.decode("utf-8", "surrogateescape")
        if type(path) is not is_str:
            return None
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts: list[str] = []
        for part in path.split("/"):  # lexical: no symlink can be made in the sandbox
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def beneath(path: str, roots: tuple[str, ...]) -> bool:
        for r in roots:  # noqa: SIM110 - any() is a builtin the exercise could replace
            if path == r or path.startswith(r + "/"):
                return True
        return False

    def refuse(what: str) -> None:
        raise PermissionError(f"sandbox: {what}")

    def hook(event: str, args: tuple) -> None:
        # a local AF_UNIX socket may be made (asyncio's self-pipe); it cannot connect
        local = event == "socket.__new__" and len(args) > 1 and args[1] == af_unix
        if event.startswith("socket.") and event != "socket.gethostname" and not local:
            refuse("network access is blocked")
        if event in blocked or event.startswith("ctypes."):
            refuse(f"{event} is blocked")
        if event == "open":
            path, mode, flags = args
            if type(path) is int:
                return  # an already open descriptor
            p = absolute(path)
            if p is None or beneath(p, (root,)):
                return
            writing = bool((flags or 0) & wflags) or (
                mode is not None and ("w" in mode or "a" in mode or "x" in mode or "+" in mode))
            # mode None is os.open: a descriptor of an outside folder would let dir_fd escape
            if writing or mode is None or not beneath(p, readable):
                refuse(f"no access to {p} outside the exercise folder")
        elif event in writes or event in reads:
            # descriptors (int paths) are let through: one for a folder outside could only
            # come from os.open, which is refused above
            allowed = (root,) if (event in writes or event == "os.chdir") else (root, *readable)
            for path in args[:2] if event == "os.rename" else args[:1]:
                p = absolute(path)
                if p is not None and not beneath(p, allowed):
                    refuse(f"{event} outside the exercise folder is blocked")

    return hook


def main() -> None:
    memory, cpu, fsize = (int(x) for x in sys.argv[1:4])
    root = os.path.realpath(os.getcwd())
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    readable = sorted({p for x in prefixes for p in (x, os.path.realpath(x))}
                      | {"/usr", "/lib", "/lib64"})
    try:
        landlock(root, readable)
    except OSError as e:
        print(f"sandbox: could not confine the file system: {e}", file=sys.stderr)
        raise SystemExit(EXIT_SANDBOX_FAILED) from None
    set_limits(memory, cpu, fsize)  # after ctypes is loaded, so a small memory limit leaves it room
    with open("exercise.py", encoding="utf-8") as f:
        code = compile(f.read(), "exercise.py", "exec")
    sys.addaudithook(audit_hook(root, tuple(readable)))
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
