#!/usr/bin/env python3
"""Helpers for bench/cas.sh (standard library only).

  report.py machine                 JSON line with machine facts
  report.py openssl FILE RUNS       JSON line: `openssl dgst -sha256 FILE` MiB/s
  report.py rss LABEL DAEMON PID..  JSON line: VmRSS/VmHWM of the PIDs (summed)
  report.py table RESULTS.jsonl     markdown table of everything collected
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line
                break
    fs = subprocess.run(["df", "-T", "/var/tmp"], capture_output=True, text=True).stdout
    fs_line = fs.strip().splitlines()[-1].split() if fs.strip() else ["?", "?"]
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    emit({
        "bench": "machine",
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "sha_ni": " sha_ni" in flags,
        "kernel": platform.release(),
        "var_tmp_fs": fs_line[1] if len(fs_line) > 1 else "?",
        "var_tmp_device": fs_line[0],
        "mem_gib": round(mem_kib / 1048576, 1),
        "openssl": ossl,
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    })


def openssl(path, runs):
    size = os.path.getsize(path)
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", path], check=True, capture_output=True)
        rates.append(size / 1048576 / (time.perf_counter() - t))
    emit({"bench": "openssl", "size_bytes": size, "mibs": rates,
          "mibs_median": statistics.median(rates)})


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss(label, daemon, pids):
    pids = [int(p) for p in pids if p]
    emit({"bench": "rss", "label": label, "daemon": daemon, "pids": pids,
          "rss_kib": sum(status_kib(p, "VmRSS") for p in pids),
          "hwm_kib": sum(status_kib(p, "VmHWM") for p in pids)})


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def table(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]

    def find(bench, **kw):
        for r in rows:
            if r.get("bench") == bench and all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    m = find("machine") or {}
    o = find("openssl") or {}
    out = []
    out.append(f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}, sha_ni={m.get('sha_ni')}), "
               f"{m.get('mem_gib')} GiB RAM, kernel {m.get('kernel')}, /var/tmp on "
               f"{m.get('var_tmp_fs')} ({m.get('var_tmp_device')}), {m.get('openssl')}; "
               f"load average at start {' '.join(m.get('loadavg_at_start', []))}; {m.get('date')}")
    out.append("")
    out.append(f"openssl dgst -sha256 on the {fmt(o.get('size_bytes', 0) / 1048576)} MiB file: "
               f"median {fmt(o.get('mibs_median'))} MiB/s (runs: "
               f"{', '.join(fmt(x) for x in o.get('mibs', []))}); ByteStream ratios below are "
               "paired: each run is divided by an openssl run made just before it, and the "
               "median of those ratios is shown.")
    out.append("")
    out.append("| Figure | Aim | rbe | BuildGrid 0.9.1 |")
    out.append("|---|---|---|---|")

    def bs(label, function, key):
        r = find("bytestream", label=label, function=function)
        if not r:
            return "n/a"
        mibs = r.get(f"{key}_mibs_median")
        ratio = r.get(f"{key}_ratio_vs_openssl_median")
        s = f"{fmt(mibs)} MiB/s"
        if ratio is not None:
            s += f" (**{ratio:.2f}x** openssl)"
        return s

    def bs_client(label, function, key):
        r = find("bytestream", label=label, function=function)
        if not r:
            return "n/a"
        return (f"{fmt(r.get(f'{key}_mibs_median'))} MiB/s "
                f"({r[f'{key}_mibs_median'] / r['client_hash_mibs']:.2f}x in-process {function})")

    size = fmt(o.get("size_bytes", 0) / 1048576)
    out.append(f"| ByteStream Write, {size} MiB, SHA-256 | >= 0.5x openssl | "
               f"{bs('rbe', 'sha256', 'write')} | {bs('buildgrid', 'sha256', 'write')} |")
    out.append(f"| ByteStream Read, {size} MiB, SHA-256 (rbe: verify_reads=true, the default) | "
               f">= 1.0x openssl | {bs('rbe', 'sha256', 'read')} | {bs('buildgrid', 'sha256', 'read')} |")
    if find("bytestream", label="rbe-noverify"):
        out.append(f"| ByteStream Read, SHA-256, rbe with verify_reads=false | >= 1.0x openssl | "
                   f"{bs('rbe-noverify', 'sha256', 'read')} | |")
    for lab, what in (("rbe-casd-direct", "verify_reads=true"),
                      ("rbe-casd-direct-noverify", "verify_reads=false")):
        if find("bytestream", label=lab):
            out.append(f"| (diagnostic) straight to casd's Unix socket, no frontend, {what}: write / read | | "
                       f"{bs(lab, 'sha256', 'write')} / {bs(lab, 'sha256', 'read')} | |")
    out.append(f"| ByteStream Write, {size} MiB, BLAKE3 | | {bs_client('rbe', 'blake3', 'write')}; "
               f"{bs('rbe', 'blake3', 'write')} | not supported |")
    out.append(f"| ByteStream Read, {size} MiB, BLAKE3 | | {bs_client('rbe', 'blake3', 'read')}; "
               f"{bs('rbe', 'blake3', 'read')} | not supported |")

    def batch(label):
        r = find("batch", label=label)
        if not r:
            return "n/a"
        return (f"**{fmt(r['blobs_per_s'])}/s** ({r['count']:,} in {r['seconds']:.2f} s, "
                f"{r['requests']} requests <= {r['max_batch_bytes']:,} B, concurrency {r['concurrency']})")

    b = find("batch", label="rbe") or find("batch", label="buildgrid") or {}
    out.append(f"| BatchUpdateBlobs, {b.get('count', 0):,} x {b.get('size_bytes', 0)} B | >= 20,000 blobs/s | "
               f"{batch('rbe')} | {batch('buildgrid')} |")

    def fmb(label):
        r = find("fmb", label=label)
        if not r:
            return "n/a"
        return (f"**p50 {r['ms_p50']:.1f} ms** (p90 {r['ms_p90']:.1f}, min {r['ms_min']:.1f}; "
                f"{r['calls']} calls)")

    f = find("fmb", label="rbe") or {}
    out.append(f"| FindMissingBlobs, {f.get('count', 0):,} digests, half present | p50 <= 10 ms | "
               f"{fmb('rbe')} | {fmb('buildgrid')} |")

    mem = find("memory")
    if mem:
        out.append(f"| Memory per indexed blob ({mem['blobs']:,} blobs of {mem['blob_bytes']} B) | <= 128 B | "
                   f"**{mem['bytes_per_blob']:.0f} B** (casd RSS {mem['rss0_kib'] / 1024:.1f} -> "
                   f"{mem['rssn_kib'] / 1024:.1f} MiB; peak while loading {mem['hwmn_kib'] / 1024:.1f} MiB) | n/a |")
        out.append(f"| Index load at startup, {mem['blobs']:,} blobs ({mem['cache']} cache) | | "
                   f"{mem['index_elapsed_ms'] / 1000:.2f} s (casd log); ready for FindMissingBlobs "
                   f"{mem['ready_s']:.2f} s after `rbectl local` was started | n/a |")

    def rssv(label, daemon):
        r = find("rss", label=label, daemon=daemon)
        return f"**{r['rss_kib'] / 1024:.1f} MiB**" if r else "n/a"

    out.append(f"| Idle RSS right after start | <= 30 MiB each | rbe-casd {rssv('rbe', 'rbe-casd')}, "
               f"rbe-frontend {rssv('rbe', 'rbe-frontend')} | {rssv('buildgrid', 'bgd')} (one process) |")
    print("\n".join(out))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "machine":
        machine()
    elif cmd == "openssl":
        openssl(sys.argv[2], int(sys.argv[3]))
    elif cmd == "rss":
        rss(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "table":
        table(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
