"""What the micro-benchmarks share to report ratios, which pytest-benchmark has no column for."""
import platform


def min_and_median(benchmark):
    """(min, median) seconds of a finished benchmark; None under --benchmark-disable (nothing timed)."""
    stats = benchmark.stats
    return None if stats is None else (stats.stats.min, stats.stats.median)


def print_after_module(request, lines) -> None:
    """Print ``lines`` from a module fixture's teardown, whose output pytest would otherwise capture
    and drop (lifting capture as capsys.disabled() does)."""
    if lines:
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n" + "\n".join(lines))


def benchmark_into(benchmark, fn, group: str, times: dict, key) -> None:
    """Benchmark ``fn`` in ``group`` and keep its (min, median) seconds as ``times[key]`` (nothing under
    --benchmark-disable)."""
    benchmark.group = group
    benchmark(fn)
    measured = min_and_median(benchmark)
    if measured is not None:
        times[key] = measured


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what platform knows), for the ratio lines."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
