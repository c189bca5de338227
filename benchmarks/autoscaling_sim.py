"""Simulates GPU inference autoscaling (KEDA on the model's queue, GPU nodes from zero).

Replays a seeded, bursty day of jobs through one model's queue: KEDA polls the queue (plus the
jobs running, when the workers report them) every `polling` seconds, the HPA scales up at once
and down one worker at a time after a stabilisation window, the last worker goes after KEDA's
`cooldown`, a new worker waits for a node (provisioning) and its model load, a worker told to
stop finishes its running jobs first (warm shutdown), and an empty node is removed after
`consolidate_after`. Prints queue-wait percentiles, GPU-hours and idle GPU-hours per setting,
against always-on capacity, so the values in k8s/inference-model are chosen by evidence:

    python -m benchmarks.autoscaling_sim
"""

import argparse
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace

DAY = 24 * 3600


@dataclass(frozen=True)
class Cluster:
    """What the hardware and the model cost in time (one GPU per worker, one worker per node)."""

    node_provisioning_s: float = 150.0   # launch, boot, join, device plugin, image pull
    weights_fetch_s: float = 90.0        # first pod on a new node fills its weight cache
    model_load_s: float = 60.0           # engine start with the weights on local disk
    slots: int = 8                       # jobs one engine batches at a time
    mean_job_s: float = 20.0             # service time of one job inside a batch
    max_job_s: float = 900.0             # the longest job (terminationGracePeriod is sized on it)


@dataclass(frozen=True)
class Setting:
    """One autoscaling configuration (KEDA ScaledObject + HPA behaviour + node pool)."""

    name: str
    min_replicas: int = 0
    max_replicas: int = 8
    polling_s: int = 15
    cooldown_s: int = 600
    target_per_replica: int = 8
    scale_down_window_s: int = 300
    scale_down_period_s: int = 120        # one worker removed per period at most
    consolidate_after_s: int = 120
    count_running: bool = True            # the metric includes running jobs (the inflight list)
    always_on: int | None = None          # fixed workers, nodes never removed


@dataclass
class Result:
    """What one setting cost and how long jobs waited."""

    setting: Setting
    waits: list[float]
    gpu_seconds: float
    busy_gpu_seconds: float
    cold_starts: int
    unfinished: int = 0

    @property
    def gpu_hours(self) -> float:
        """GPU-hours paid for (node lifetime)."""
        return self.gpu_seconds / 3600

    @property
    def idle_gpu_hours(self) -> float:
        """GPU-hours paid for with no job on the GPU (provisioning, loading, idling)."""
        return (self.gpu_seconds - self.busy_gpu_seconds) / 3600

    def wait_percentile(self, q: float) -> float:
        """Queue wait (arrival to start) at percentile q (0-100)."""
        return percentile(self.waits, q)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def bursty_trace(seed: int = 7, hours: float = 24.0, base_per_min: float = 2.0,
                 bursts: int = 8, burst_jobs: int = 500, burst_minutes: float = 10.0,
                 ) -> list[tuple[float, float]]:
    """Sorted (arrival second, service seconds): a sparse daytime stream plus batch bursts.

    The stream follows a day curve (quiet at night), the bursts are batch uploads of
    `burst_jobs` jobs over `burst_minutes`; service times are log-normal, capped at the longest job.
    """
    rng = random.Random(seed)
    horizon = hours * 3600
    arrivals: list[float] = []
    t = 0.0
    peak = base_per_min / 60
    while True:
        t += rng.expovariate(peak)
        if t >= horizon:
            break
        # Thinning: a day curve from 5 % of the peak at night to the peak mid-afternoon.
        day = 0.05 + 0.95 * max(0.0, math.sin(math.pi * ((t % DAY) / DAY * 24 - 6) / 14)) ** 2
        if rng.random() < day:
            arrivals.append(t)
    for _ in range(bursts):
        start = rng.uniform(0, horizon - burst_minutes * 60)
        arrivals.extend(start + rng.uniform(0, burst_minutes * 60) for _ in range(burst_jobs))
    cluster = Cluster()
    sigma = 0.8
    mu = math.log(cluster.mean_job_s) - sigma**2 / 2
    return sorted((a, min(rng.lognormvariate(mu, sigma), cluster.max_job_s)) for a in arrivals)


@dataclass
class _Worker:
    ready_at: float            # when it can take jobs (node + weights + load)
    node_started_at: float
    running: list[float] = field(default_factory=list)   # end times of its jobs
    stopping: bool = False


def simulate(trace: list[tuple[float, float]], setting: Setting,
             cluster: Cluster = Cluster(), tail_s: float = 3600.0) -> Result:
    """Replays the trace second by second under one setting."""
    horizon = (trace[-1][0] if trace else 0.0) + tail_s
    queue: deque[tuple[float, float]] = deque()
    workers: list[_Worker] = []
    # Empty nodes waiting to be consolidated: (removal time, started at); weights stay cached.
    idle_nodes: list[tuple[float, float]] = []
    waits: list[float] = []
    gpu_seconds = busy = 0.0
    cold_starts = 0
    history: deque[tuple[float, int]] = deque()   # (time, desired) for the stabilisation window
    last_active = -math.inf
    last_scale_down = -math.inf
    fixed = setting.always_on
    next_arrival = 0

    def start_worker(now: float) -> None:
        nonlocal cold_starts
        if idle_nodes:
            # A node still up from an earlier worker: weights are cached, only the load remains.
            _, started = heapq.heappop(idle_nodes)
            workers.append(_Worker(now + cluster.model_load_s, started))
        else:
            cold_starts += 1
            delay = cluster.node_provisioning_s + cluster.weights_fetch_s + cluster.model_load_s
            workers.append(_Worker(now + delay, now))

    for _ in range(fixed or setting.min_replicas):
        workers.append(_Worker(0.0, 0.0))
    t = 0.0
    while t < horizon or any(w.running for w in workers) or queue:
        while next_arrival < len(trace) and trace[next_arrival][0] <= t:
            queue.append(trace[next_arrival])
            next_arrival += 1
        for worker in workers:
            worker.running = [end for end in worker.running if end > t]
        # Workers that were told to stop and have finished leave; their node starts idling.
        for worker in [w for w in workers if w.stopping and not w.running]:
            workers.remove(worker)
            heapq.heappush(idle_nodes, (t + setting.consolidate_after_s, worker.node_started_at))
        while idle_nodes and idle_nodes[0][0] <= t:
            removed_at, started = heapq.heappop(idle_nodes)
            gpu_seconds += removed_at - started
        for worker in workers:
            if worker.stopping or worker.ready_at > t:
                continue
            while queue and len(worker.running) < cluster.slots:
                arrival, service = queue.popleft()
                waits.append(t - arrival)
                worker.running.append(t + service)
        # A GPU counts as busy for each second it runs at least one job.
        busy += sum(1 for w in workers if w.running)
        if fixed is None and int(t) % setting.polling_s == 0:
            running = sum(len(w.running) for w in workers)
            metric = len(queue) + (running if setting.count_running else 0)
            active = [w for w in workers if not w.stopping]
            if metric > 0:
                last_active = t
            desired = min(setting.max_replicas, max(setting.min_replicas,
                                                    math.ceil(metric / setting.target_per_replica)))
            if not active and metric > 0:
                desired = max(desired, 1)          # KEDA's activation from zero
            history.append((t, desired))
            while history and history[0][0] < t - setting.scale_down_window_s:
                history.popleft()
            if len(active) > 0 and desired == 0:
                if t - last_active < setting.cooldown_s:
                    desired = max(1, setting.min_replicas)   # the HPA keeps at least one
            elif active:
                desired = max(desired, max(d for _, d in history), 1 if desired else 0)
            if desired > len(active):
                for _ in range(desired - len(active)):
                    start_worker(t)
            elif desired < len(active) and (desired == 0
                                           or t - last_scale_down >= setting.scale_down_period_s):
                # The ReplicaSet removes the least settled pod; warm shutdown lets it finish.
                count = len(active) - desired if desired == 0 else 1
                for worker in sorted(active, key=lambda w: (-w.ready_at, len(w.running)))[:count]:
                    worker.stopping = True
                last_scale_down = t
        t += 1.0
        if t > horizon + 10 * DAY:
            break
    end = t
    gpu_seconds += sum(end - w.node_started_at for w in workers)
    gpu_seconds += sum(min(removed_at, end) - started for removed_at, started in idle_nodes)
    return Result(setting, waits, gpu_seconds, busy, cold_starts,
                  unfinished=len(queue))


SETTINGS = [
    Setting("always-on 1", always_on=1),
    Setting("always-on 2", always_on=2),
    Setting("always-on 4", always_on=4),
    Setting("min 1, poll 15 s", min_replicas=1),
    Setting("min 0, poll 15 s, cooldown 300 s", cooldown_s=300),
    Setting("min 0, poll 15 s, cooldown 600 s"),
    Setting("min 0, poll 15 s, cooldown 1800 s", cooldown_s=1800),
    Setting("min 0, poll 15 s, cooldown 1800 s, down window 600 s", cooldown_s=1800,
            scale_down_window_s=600),
    Setting("min 0, poll 60 s, cooldown 600 s", polling_s=60),
    Setting("min 0, poll 15 s, cooldown 600 s, target 4", target_per_replica=4),
    Setting("min 0, poll 15 s, cooldown 600 s, target 16", target_per_replica=16),
    Setting("min 0, poll 15 s, cooldown 600 s, lists only", count_running=False),
]


def table(results: list[Result]) -> str:
    """A Markdown table of the results."""
    lines = ["| setting | wait p50 s | wait p95 s | wait p99 s | wait max s | GPU-h | idle GPU-h "
             "| cold starts |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        lines.append(f"| {r.setting.name} | {r.wait_percentile(50):.0f} | "
                     f"{r.wait_percentile(95):.0f} | {r.wait_percentile(99):.0f} | "
                     f"{max(r.waits, default=0):.0f} | {r.gpu_hours:.1f} | "
                     f"{r.idle_gpu_hours:.1f} | {r.cold_starts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table for the default trace."""
    parser = argparse.ArgumentParser(description="GPU autoscaling simulation")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--quick", action="store_true", help="a 3-hour trace (a smoke test)")
    args = parser.parse_args(argv)
    hours = 3.0 if args.quick else args.hours
    trace = bursty_trace(args.seed, hours=hours, bursts=max(1, round(8 * hours / 24)))
    cluster = Cluster()
    print(f"{len(trace)} jobs over {hours:g} h (seed {args.seed}); cold start "
          f"{cluster.node_provisioning_s + cluster.weights_fetch_s + cluster.model_load_s:.0f} s, "
          f"{cluster.slots} jobs per GPU, mean job {cluster.mean_job_s:.0f} s\n")
    print(table([simulate(trace, s, cluster) for s in SETTINGS]))


__all__ = ["Cluster", "Result", "Setting", "bursty_trace", "percentile", "replace", "simulate"]

if __name__ == "__main__":
    main()
