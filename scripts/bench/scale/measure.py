"""How the scale benchmark (scripts/bench/bench_scale.py) runs and measures a command: each in its own child
process, with the BLAS tuning variables removed from its environment, its wall time, peak RSS and peak
anonymous memory; and the disk-side figures (a folder's size, a file's cached pages dropped, the disk's
sequential read rate)."""
import os
import re
import subprocess
import sys
import threading
import time

BLAS_TUNING = re.compile(r"^(OPENBLAS_CORETYPE|OPENBLAS_L2_SIZE|OPENBLAS_VERBOSE|GOTOBLAS_.*|GOTO_.*|"
                         r"MKL_DEBUG_CPU_TYPE|MKL_CBWR|MKL_ENABLE_INSTRUCTIONS|NVPL_.*)$")


def child_env(threads):
    env = {k: v for k, v in os.environ.items() if not BLAS_TUNING.match(k)}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               RAYON_NUM_THREADS=str(threads))
    return env


# The measured command runs as the child of this small launcher, not of the benchmark itself: Linux keeps
# a process's ru_maxrss across exec, starting it at the RSS of whatever forked it, so a child forked
# straight from this (possibly large) Python process would report at least this process's RSS.
LAUNCHER = r'''
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d %d" % (usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
'''


class StepFailed(RuntimeError):
    """A measured command exited non-zero; its wall time, stderr and peak memory (None where unknown)
    come with it."""

    def __init__(self, msg, wall, err, rss=None, anon=None):
        super().__init__(msg)
        self.wall, self.err, self.rss, self.anon = wall, err, rss, anon


def measure(cmd, env):
    """Runs cmd; returns stdout, stderr, wall seconds, peak RSS MiB (os.wait4's ru_maxrss), and the peak of
    RssAnon sampled from /proc every 50 ms, MiB. A non-zero exit raises StepFailed."""
    import tempfile
    fd, rusage = tempfile.mkstemp(prefix="bench_scale_rusage_")
    os.close(fd)
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", LAUNCHER, rusage, *cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    peak_anon, done = [0], threading.Event()
    bufs = {}

    def drain(name, stream):
        bufs[name] = stream.read().decode(errors="replace")

    def sample():
        pid = None
        while not done.is_set():
            try:
                if pid is None:
                    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                        kids = f.read().split()
                    pid = int(kids[0]) if kids else None
                if pid is not None:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("RssAnon:"):
                                peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            except OSError:
                if pid is not None:
                    return
            done.wait(0.05)
    threads = [threading.Thread(target=drain, args=("out", p.stdout)), threading.Thread(target=drain, args=("err", p.stderr)),
               threading.Thread(target=sample)]
    for th in threads:
        th.start()
    p.wait()
    wall = time.perf_counter() - t
    done.set()
    for th in threads:
        th.join()
    with open(rusage) as f:
        got = f.read().split()
    os.remove(rusage)
    if p.returncode != 0 or len(got) != 2 or got[1] != "0":
        raise StepFailed(f"{' '.join(cmd[:3])} ... exited {got[1] if len(got) == 2 else p.returncode}:\n"
                         f"{bufs['err'][-3000:]}", wall, bufs["err"],
                         int(got[0]) / 1024 if len(got) == 2 else None, peak_anon[0] / 1024 or None)
    return bufs["out"], bufs["err"], wall, int(got[0]) / 1024, peak_anon[0] / 1024


def folder_bytes(path):
    seen, total = set(), 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def drop_cached(path):
    """Asks the kernel to drop the file's cached pages (clean pages go; a hint)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def disk_read_rate(path, gib=4):
    """The disk's sequential read rate in GB/s: `dd` with direct I/O (no page cache) over the first
    `gib` GiB of the file, in 16 MiB reads; None where dd or direct I/O is not available."""
    count = min(gib * 64, max(1, os.path.getsize(path) // (16 << 20)))
    try:
        p = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", f"count={count}", "iflag=direct"],
                           capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+) bytes .*?copied, ([\d.]+) s", p.stderr)
    return int(m.group(1)) / float(m.group(2)) / 1e9 if p.returncode == 0 and m else None
