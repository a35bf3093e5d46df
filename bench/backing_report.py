#!/usr/bin/env python3
"""Tables for bench/backing.sh (standard library only).

  backing_report.py RESULTS.jsonl   markdown: per round, each mode's wall
                                    times and their ratio to mode none in
                                    the same round; then the casds' counters

A ratio is only taken within a round: on a shared machine the rounds differ
more from each other than the modes within one.
"""
import json
import statistics
import sys


def load(path):
    builds = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("bench") == "backing_build":
            builds[(r["round"], r["mode"], r["phase"])] = r
    return builds


def fmt_ratio(a, b):
    return "%.2f" % (a / b) if a and b else "—"


def main():
    builds = load(sys.argv[1])
    rounds = sorted({k[0] for k in builds})
    modes = [m for m in ("none", "cache", "jit") if any(k[1] == m for k in builds)]
    ratios = {}
    print("| round | mode | load avg (1 min) | cold | cached | warm backing, cold host "
          "| cold ÷ none | cached ÷ none | warm host ÷ none cold | warm host ÷ none cached |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rnd in rounds:
        base = {p: builds.get((rnd, "none", p), {}).get("wall_s") for p in ("cold", "cached")}
        for m in modes:
            row = {p: builds.get((rnd, m, p)) for p in ("cold", "cached", "warmhost")}
            wall = {p: (r or {}).get("wall_s") for p, r in row.items()}
            bad = [p for p, r in row.items() if r and (r["exit"] != 0)]
            la = (row["cold"] or {}).get("loadavg_before", "").split(" ")[0]
            cells = [fmt_ratio(wall["cold"], base["cold"]), fmt_ratio(wall["cached"], base["cached"]),
                     fmt_ratio(wall["warmhost"], base["cold"]), fmt_ratio(wall["warmhost"], base["cached"])]
            for name, v in zip(("cold", "cached", "warm/cold", "warm/cached"), cells):
                if v != "—":
                    ratios.setdefault((m, name), []).append(float(v))
            print("| %d | %s | %s | %s | %s | %s | %s |%s" % (
                rnd, m, la,
                *("%.1f s" % wall[p] if wall[p] else "—" for p in ("cold", "cached", "warmhost")),
                " | ".join(cells if m != "none" else ["1", "1", "—", "—"]),
                " exit≠0: " + ",".join(bad) if bad else ""))
    print()
    print("Median ratio to mode none over the rounds:")
    print()
    print("| mode | cold | cached | warm host ÷ none cold | warm host ÷ none cached |")
    print("|---|---|---|---|---|")
    for m in modes:
        if m == "none":
            continue
        med = lambda n: "%.2f" % statistics.median(ratios[(m, n)]) if ratios.get((m, n)) else "—"
        print("| %s | %s | %s | %s | %s |" % (m, med("cold"), med("cached"), med("warm/cold"), med("warm/cached")))
    print()
    print("Counters (casd Stats after each build; front = rbectl local's casd, "
          "backing = the second casd; cumulative since that casd started):")
    print()
    print("| round | mode | build | machine busy CPU | remote / cache hits | front: blobs, MB "
          "| front backing_fetches | front backing_errors | backing: blobs, MB stored | backing blobs_read |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rnd in rounds:
        for m in modes:
            for p in ("cold", "cached", "warmhost"):
                r = builds.get((rnd, m, p))
                if not r:
                    continue
                f, b = r.get("front") or {}, r.get("backing") or {}
                print("| %d | %s | %s | %.0f s | %d / %d | %s | %s | %s | %s | %s |" % (
                    rnd, m, p, r.get("machine_busy_cpu_s", 0), r["remote"], r["cache_hit"],
                    "%d, %.1f" % (f["blobs"], f["bytes"] / 1e6) if "blobs" in f else "—",
                    f.get("backing_fetches", "—") if m != "none" else "—",
                    f.get("backing_errors", "—") if m != "none" else "—",
                    "%d, %.1f" % (b["blobs"], b["bytes"] / 1e6) if "blobs" in b else "—",
                    b.get("blobs_read", "—")))


if __name__ == "__main__":
    main()
