"""The summary table of a loadtest/compare.sh run, from its step reports.

    python3 loadtest/compare_summary.py OUT STEP...

Each STEP names OUT/STEP.json (loadtest's --report-json) and OUT/STEP.cpu.json
(the CPU compare.sh recorded). `max-always` and `max-overflow` are the two
halves of the spool step (roles swapped) and make one row.
"""
import json
import sys

WHAT = {
    "max-nginx": ("legacy `GET /beacon/event`, max", "nginx `return 204`"),
    "max-varnish": ("legacy `GET /beacon/event`, max", "Varnish synthetic 204"),
    "max-events": ("hasty `POST /v1/events`, one event, max", "nginx 204, same POST"),
    "half-nginx": ("legacy, at 50% of beacond's max (open loop)", "nginx `return 204`"),
    "half-varnish": ("legacy, at 50% of beacond's max (open loop)", "Varnish synthetic 204"),
    "half-events": ("hasty events, at 50% of beacond's max (open loop)", "nginx 204, same POST"),
}


def load(out, step):
    with open(f"{out}/{step}.json") as r, open(f"{out}/{step}.cpu.json") as c:
        return json.load(r), json.load(c)


def latency(report):
    return f"{report['latency_ms']['p50']:.3f} / {report['latency_ms']['p99']:.3f}"


def main(out, steps):
    print(
        "| step | beacond 2xx/s | baseline 2xx/s | ratio | beacond p50 / p99 ms "
        "| baseline p50 / p99 ms | CPU, cores: beacond / baseline / loadtest "
        "| beacond peak RSS, MiB | Kafka delivered / lost / duplicated |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for step in steps:
        if step in ("max-always", "max-overflow"):
            continue
        r, c = load(out, step)
        k, b = r["kafka"], r["baseline"]
        bad += k["lost"] + k["duplicated"]
        label, base = WHAT[step]
        print(
            f"| {label} vs {base} | {r['ok_rate']:.0f} | {b['ok_rate']:.0f} | **{b['ratio']:.2f}** "
            f"| {latency(r)} | {latency(b)} "
            f"| {c['target_cpu']:.2f} / {c['baseline_cpu']:.2f} / {c['loadtest_cpu']:.2f} "
            f"| {c['target_peak_rss_mib']:.1f} "
            f"| {k['delivered']} / {k['lost']} / {k['duplicated']} |"
        )
    if "max-always" in steps and "max-overflow" in steps:
        (a, ca), (o, co) = load(out, "max-always"), load(out, "max-overflow")
        always = (a["ok_rate"] + o["baseline"]["ok_rate"]) / 2
        overflow = (o["ok_rate"] + a["baseline"]["ok_rate"]) / 2
        ka, ko = a["kafka"], o["kafka"]
        bad += ka["lost"] + ka["duplicated"] + ko["lost"] + ko["duplicated"]
        cpu_always = (ca["target_cpu"] + co["baseline_cpu"]) / 2
        cpu_overflow = (co["target_cpu"] + ca["baseline_cpu"]) / 2
        gen = (ca["loadtest_cpu"] + co["loadtest_cpu"]) / 2
        print(
            f"| legacy, `spool.mode = \"always\"` vs `\"overflow\"`, max (two halves, roles swapped) "
            f"| {always:.0f} | {overflow:.0f} | **{always / overflow:.2f}** "
            f"| {latency(a)} | {latency(o)} "
            f"| {cpu_always:.2f} / {cpu_overflow:.2f} / {gen:.2f} "
            f"| {ca['target_peak_rss_mib']:.1f} "
            f"| {ka['delivered']} + {ko['delivered']} / {ka['lost'] + ko['lost']} "
            f"/ {ka['duplicated'] + ko['duplicated']} |"
        )
    print()
    print("Ratios: beacond over its baseline, in alternating rounds of the same run. A server")
    print("using well under 1.0 core at max was held back by core 1 (loadtest and the broker")
    print("share it), not by itself: its max is then a lower bound. Peak RSS: beacond's VmHWM at the")
    print("end of the step (the process's peak so far). Kafka: every beacon and event")
    print(f"beacond acknowledged was looked for on its topic; lost or duplicated, in all: {bad}.")
    print(f"\nReports and plots: {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
