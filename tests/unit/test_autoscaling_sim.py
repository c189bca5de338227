"""The autoscaling simulation's model: queue, KEDA activation and cooldown, cold starts."""

from benchmarks.autoscaling_sim import Cluster, Setting, bursty_trace, percentile, simulate

FAST = Cluster(node_provisioning_s=100, weights_fetch_s=0, model_load_s=50, slots=2,
               mean_job_s=10, max_job_s=60)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([0.0, 10.0], 50) == 5.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_bursty_trace_is_deterministic_and_sorted() -> None:
    first = bursty_trace(seed=3, hours=2)
    assert first == bursty_trace(seed=3, hours=2)
    assert first != bursty_trace(seed=4, hours=2)
    assert [a for a, _ in first] == sorted(a for a, _ in first)
    assert all(0 < service <= Cluster().max_job_s for _, service in first)


def test_first_job_from_zero_waits_for_node_and_model_load() -> None:
    result = simulate([(30.0, 10.0)], Setting("zero", polling_s=15, cooldown_s=60), FAST)
    # Seen at the poll at 30 s, node and model ready 150 s later.
    assert result.waits == [150.0]
    assert result.cold_starts == 1


def test_always_on_capacity_starts_jobs_at_once_and_pays_for_idle_time() -> None:
    result = simulate([(10.0, 10.0)], Setting("fixed", always_on=1), FAST, tail_s=100)
    assert result.waits == [0.0]
    assert result.cold_starts == 0
    assert result.gpu_hours * 3600 >= 110
    assert result.idle_gpu_hours < result.gpu_hours


def test_scale_to_zero_releases_the_gpu_after_cooldown_and_consolidation() -> None:
    setting = Setting("zero", polling_s=15, cooldown_s=60, consolidate_after_s=30)
    result = simulate([(0.0, 10.0)], setting, FAST, tail_s=2000)
    # Up at 150 s, job done at 160 s, last active poll 150 s, cooldown to 225 s, node gone +30 s.
    assert 0.05 < result.gpu_hours < 0.1


def test_a_longer_cooldown_avoids_a_second_cold_start() -> None:
    trace = [(0.0, 10.0), (900.0, 10.0)]
    short = simulate(trace, Setting("short", cooldown_s=60, consolidate_after_s=0), FAST)
    long = simulate(trace, Setting("long", cooldown_s=1800, consolidate_after_s=0), FAST)
    assert short.cold_starts == 2
    assert long.cold_starts == 1
    assert long.waits[1] == 0.0 < short.waits[1]


def test_every_job_runs_exactly_once() -> None:
    trace = bursty_trace(seed=5, hours=1, bursts=1, burst_jobs=50)
    result = simulate(trace, Setting("default"), FAST)
    assert len(result.waits) == len(trace)
    assert result.unfinished == 0
