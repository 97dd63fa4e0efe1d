"""The measurements of benchmarks/ingress.py, printed as they come and returned for --json: interleaved
rounds against the three targets (and the --ack-levels ingresses, in the same passes), then (with
--senders) K concurrent senders against ours."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from dataclasses import asdict
from typing import Any

from benchmarks import ingress_acks
from benchmarks.ingress_bench import Bench
from benchmarks.ingress_bodies import Mix, generate_bodies, http_request
from benchmarks.ingress_servers import LABELS, TARGETS
from benchmarks.ingress_stats import Run, median_run

P50_TARGET = 1.10  # ours p50 / floor p50 must not exceed this (issue 12; was 1.3)
RATE_TARGET = 2.0  # ours rate / naive rate must reach this
SENDERS_P99_TARGET = 2.0  # each concurrent sender's p99 / single-sender p99 must stay under this


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run_benchmark(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    mix = Mix()
    bodies = generate_bodies(args.warmup + args.requests, seed=args.seed, prefix="b-", mix=mix)
    requests = [http_request(b) for b in bodies]
    warmup, measured = requests[: args.warmup], requests[args.warmup :]
    measured_bytes = [len(b) for b in bodies[args.warmup :]]
    cpus = os.cpu_count() or 1
    how = f", the targets alternating every {args.interleave} requests" if args.interleave else ""
    print(
        f"gms-push-relay ingress benchmark: {args.requests} requests x {args.rounds} rounds "
        f"(+{args.warmup} warm-up), 1 sequential keep-alive sender{how}, {cpus} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        f"bodies (warm-up + measured): {mix.triggers} triggers ({mix.resends} resends), "
        f"{mix.payloads} payload pushes ({mix.events} events), {mix.wakeups} wake-ups; "
        f"measured mean {statistics.fmean(measured_bytes):.0f} B, max {max(measured_bytes)} B"
    )
    print()

    per_target: dict[str, list[Run]] = {t: [] for t in TARGETS}
    # --ack-levels: more ingresses in the same interleaved passes, reported on their own below.
    per_level: dict[str, list[Run]] = {t: [] for t in bench.servers if t not in TARGETS}
    labels = {**LABELS, **ingress_acks.LABELS}
    for round_no in range(args.rounds):
        # Interleave the targets, and rotate who goes first, so drift in machine load hits all alike.
        order = TARGETS[round_no % 3 :] + TARGETS[: round_no % 3]
        interleaved = bench.run_interleaved(warmup, measured, args.interleave) if args.interleave else {}
        for target in [*order, *per_level]:
            run = interleaved.get(target) or bench.run_one(target, warmup, measured)
            per_target.get(target, per_level.get(target, [])).append(run)
            bad = f"  ({run.non_200} non-200!)" if run.non_200 else ""
            print(
                f"  round {round_no + 1}/{args.rounds}  {labels[target]:<24} p50 {run.p50_us:8.1f} us  "
                f"p99 {run.p99_us:8.1f} us  {run.rate:8.0f} req/s{bad}"
            )
    medians = {t: median_run(runs) for t, runs in per_target.items()}

    print()
    print(
        f"median of {args.rounds} rounds; p50 range: lowest-highest round (noise); "
        "CPU: CPU time per request of each process"
    )
    print(
        f"{'target':<20} {'p50 us':>9} {'p99 us':>9} {'req/s':>9} {'p50 range':>13}"
        f" {'server CPU us':>14} {'redis CPU us':>13} {'client CPU us':>14}"
    )
    for target in TARGETS:
        m = medians[target]
        p50s = [r.p50_us for r in per_target[target]]
        spread = f"{min(p50s):.0f}-{max(p50s):.0f}"
        cpu = " ".join(
            f"{m[name]:{width}.1f}" if name in m else f"{'-':>{width}}"
            for name, width in (("server_cpu_us", 14), ("redis_cpu_us", 13), ("client_cpu_us", 14))
        )
        print(
            f"{LABELS[target]:<20} {m['p50_us']:9.1f} {m['p99_us']:9.1f} {m['rate']:9.0f} {spread:>13} {cpu}"
        )
    p50_ratio = medians["ours"]["p50_us"] / medians["floor"]["p50_us"]
    rate_ratio = medians["ours"]["rate"] / medians["naive"]["rate"]
    print()
    p50_ok, rate_ok = p50_ratio <= P50_TARGET, rate_ratio >= RATE_TARGET
    print(f"ours p50 / floor p50   = {p50_ratio:5.2f}  (target <= {P50_TARGET})  {verdict(p50_ok)}")
    print(f"ours rate / naive rate = {rate_ratio:5.2f}  (target >= {RATE_TARGET})  {verdict(rate_ok)}")
    replies = per_target["ours"][-1].replies
    print("ours replied: " + ", ".join(f"{reply} x{n}" for reply, n in replies.items()))
    errors = {t: n for t, runs in per_target.items() if (n := sum(r.non_200 for r in runs))}
    if errors:
        print(f"WARNING: non-200 replies (the numbers above are not comparable): {errors}")

    results: dict[str, Any] = {
        "config": {
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "seed": args.seed,
            "cpus": cpus,
            "python": platform.python_version(),
            "mix": asdict(mix),
            "mean_body_bytes": statistics.fmean(measured_bytes),
        },
        "rounds": {t: [asdict(r) for r in runs] for t, runs in per_target.items()},
        "median": medians,
        "ratios": {
            "ours_p50_over_floor_p50": {"value": p50_ratio, "target_max": P50_TARGET, "pass": p50_ok},
            "ours_rate_over_naive_rate": {"value": rate_ratio, "target_min": RATE_TARGET, "pass": rate_ok},
        },
    }
    if per_level:
        primary = bench.redis_for[next(iter(per_level))]
        results["ack_levels"] = ingress_acks.report_ack_levels(
            args, per_target["ours"], per_level, bench.flush, primary
        )
    if args.senders > 1:
        results["senders"] = run_concurrent(args, bench, medians["ours"])
        if args.pace:
            # The same comparison at a set load per GMS node, below saturation: does a node's reply
            # time suffer because other nodes send at the same time?
            paced = [bench.run_one("ours", warmup, measured, args.pace) for _ in range(args.rounds)]
            single = median_run(paced)
            print()
            print(
                f"1 sender paced at {args.pace:.0f} req/s against ours: p50 {single['p50_us']:.1f} us, "
                f"p99 {single['p99_us']:.1f} us (median of {args.rounds} rounds)"
            )
            results["senders_paced"] = {
                "pace_per_s": args.pace,
                **run_concurrent(args, bench, single, pace_per_s=args.pace),
            }
    return results


def run_concurrent(
    args: argparse.Namespace, bench: Bench, single: dict[str, float], pace_per_s: float | None = None
) -> dict[str, Any]:
    single_p99_us = single["p99_us"]
    k = args.senders
    pace = f", each paced at {pace_per_s:.0f} req/s" if pace_per_s else ", each as fast as replies come"
    print()
    print(
        f"{k} sequential senders at once (a process and connection each{pace}) against ours, "
        f"{args.rounds} rounds"
    )
    per_sender: list[list[Run]] = [[] for _ in range(k)]
    busy: list[float] = []
    for round_no in range(args.rounds):
        runs, cpu_us = bench.run_senders(k, round_no, pace_per_s)
        for i, run in enumerate(runs):
            per_sender[i].append(run)
        total = sum(r.rate for r in runs)
        worst = max(r.p99_us for r in runs)
        busy.append(cpu_us * total / 1e6)  # fraction of one core the ingress process used
        print(
            f"  round {round_no + 1}/{args.rounds}  total {total:6.0f} req/s  worst p99 {worst:8.1f} us  "
            f"ingress CPU {cpu_us:6.1f} us/req, busy {busy[-1]:4.0%}"
        )
    print()
    print(
        f"{'sender':<10} {'p50 us':>9} {'p99 us':>9} {'req/s':>9}"
        f" {'p99 / single p99':>17} {'p50 / single p50':>17}"
    )
    senders: list[dict[str, Any]] = []
    ratios: list[float] = []
    total_rate = 0.0
    for i, runs in enumerate(per_sender):
        m = median_run(runs)
        ratio = m["p99_us"] / single_p99_us
        p50_ratio = m["p50_us"] / single["p50_us"]
        ratios.append(ratio)
        total_rate += m["rate"]
        senders.append(
            {
                **m,
                "p99_over_single_p99": ratio,
                "p50_over_single_p50": p50_ratio,
                "rounds": [asdict(r) for r in runs],
            }
        )
        print(
            f"{f'sender {i + 1}':<10} {m['p50_us']:9.1f} {m['p99_us']:9.1f} {m['rate']:9.0f} "
            f"{ratio:17.2f} {p50_ratio:17.2f}"
        )
    worst_ratio = max(ratios)
    print(f"{'all':<10} {'':>9} {'':>9} {total_rate:9.0f}")
    print()
    print(
        f"worst sender p99 / single-sender p99 ({single_p99_us:.1f} us) = {worst_ratio:5.2f}  "
        f"(target < {SENDERS_P99_TARGET})  {verdict(worst_ratio < SENDERS_P99_TARGET)}"
    )
    if statistics.median(busy) > 0.8:
        print(
            f"note: the ingress process was {statistics.median(busy):.0%} busy: with one uvicorn process, "
            f"requests from the {k} senders queue behind each other, so latency grows with the sender count"
        )
    cpus = os.cpu_count() or 1
    if cpus < k + 2:
        print(
            f"note: {cpus} CPUs for {k} senders + the ingress + redis-server: the senders compete with the "
            "server for CPU, which inflates these latencies beyond what the ingress alone would cause"
        )
    non_200 = sum(r.non_200 for runs in per_sender for r in runs)
    if non_200:
        print(f"WARNING: {non_200} non-200 replies")
    return {
        "count": k,
        "single_sender_p99_us": single_p99_us,
        "single_sender_p50_us": single["p50_us"],
        "senders": senders,
        "total_rate": total_rate,
        "ingress_busy_fraction": statistics.median(busy),
        "worst_p99_over_single_p99": {
            "value": worst_ratio,
            "target_max_exclusive": SENDERS_P99_TARGET,
            "pass": worst_ratio < SENDERS_P99_TARGET,
        },
    }
