"""medtune.threads: the cores free at start, from /proc/stat readings (faked here), and who overrides them."""

from __future__ import annotations

import pytest
import torch

from medtune import threads
from medtune.errors import ConfigError

cgroup_cpu_limit = threads.cgroup_cpu_limit  # the real reader (the fixture below fakes it)

STAT = """cpu  {u} 0 {s} {i} 0 0 0 0 0 0
cpu0 {u0} 0 {s0} {i0} 0 0 0 0 0 0
cpu1 {u1} 0 {s1} {i1} 0 0 0 0 0 0
intr 1 2 3
ctxt 99
"""


def stat(cpu0: tuple[int, int, int], cpu1: tuple[int, int, int]) -> str:
    """A /proc/stat text with (user, system, idle) jiffies for cpu0 and cpu1."""
    (u0, s0, i0), (u1, s1, i1) = cpu0, cpu1
    return STAT.format(u=u0 + u1, s=s0 + s1, i=i0 + i1, u0=u0, s0=s0, i0=i0, u1=u1, s1=s1, i1=i1)


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: [0, 1])
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(threads, "physical_cores", lambda cpus: len(cpus))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def fake_reads(tmp_path, texts: list[str]):
    """A ``read`` for free_cores that returns the parsed texts in turn (each written to a file and parsed)."""
    readings = []
    for n, text in enumerate(texts):
        path = tmp_path / f"stat{n}"
        path.write_text(text)
        readings.append(threads.read_cpu_times(path))
    it = iter(readings)
    return lambda: next(it)


def test_read_cpu_times_parses_the_per_cpu_lines(tmp_path):
    path = tmp_path / "stat"
    path.write_text(stat((100, 20, 880), (5, 5, 990)))
    assert threads.read_cpu_times(path) == {0: (120, 1000), 1: (10, 1000)}
    assert threads.read_cpu_times(tmp_path / "missing") == {}


@pytest.mark.parametrize("after, expected", [
    (((101, 1, 1028), (102, 1, 1027)), 2),      # both cores idle (3 of 30 jiffies busy each)
    (((130, 0, 1000), (102, 1, 1027)), 1),      # another process keeps cpu0 busy
    (((130, 0, 1000), (125, 5, 1000)), 1),      # both busy: still one thread, never zero
    (((115, 0, 1015), (102, 1, 1027)), 1),      # cpu0 half busy: a half-busy core still stalls the barrier
    (((105, 0, 1025), (100, 0, 1030)), 2),      # cpu0 one sixth busy: counts as free
])
def test_free_cores_leave_out_the_cores_other_processes_keep_busy(two_cpus, tmp_path, after, expected):
    read = fake_reads(tmp_path, [stat((100, 0, 1000), (100, 0, 1000)), stat(*after)])
    assert threads.free_cores(read=read, sleep=lambda s: None)["threads"] == expected


def test_own_cpu_time_is_not_counted_as_another_process(two_cpus, tmp_path):
    before = threads.read_cpu_times(_write(tmp_path / "a", stat((100, 0, 1000), (100, 0, 1000))))
    after = threads.read_cpu_times(_write(tmp_path / "b", stat((130, 0, 1000), (100, 0, 1030))))
    assert threads.busy_cores(before, after, [0, 1], own_cpu_s=0.0, hz=100) == pytest.approx(1.0)
    assert threads.busy_cores(before, after, [0, 1], own_cpu_s=0.3, hz=100) == pytest.approx(0.0)
    assert threads.busy_cores(before, after, [1], own_cpu_s=0.0, hz=100) == pytest.approx(0.0)  # affinity: cpu1 only


def _write(path, text):
    path.write_text(text)
    return path


def test_cgroup_quota_and_distributed_launch_cap_the_threads(two_cpus, tmp_path, monkeypatch):
    quiet = [stat((100, 0, 1000), (100, 0, 1000)), stat((100, 0, 1030), (100, 0, 1030))]
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.0)
    assert threads.free_cores(read=fake_reads(tmp_path, quiet), sleep=lambda s: None)["threads"] == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.free_cores(read=fake_reads(tmp_path, quiet), sleep=lambda s: None)["threads"] == 1
    cpu_max = tmp_path / "cpu.max"
    assert cgroup_cpu_limit(_write(cpu_max, "150000 100000\n")) == 1.5
    assert cgroup_cpu_limit(_write(cpu_max, "max 100000\n")) is None


def test_smt_siblings_count_once(tmp_path):
    for cpu, core in ((0, 0), (1, 1), (2, 0), (3, 1)):  # 2 cores, 2 hardware threads each
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert threads.physical_cores([0, 1, 2, 3], tmp_path) == 2
    assert threads.physical_cores([0, 2], tmp_path) == 1
    assert threads.physical_cores([0, 7], tmp_path) == 2  # topology unreadable: every CPU counts


def test_requested_then_env_then_free_cores(monkeypatch):
    sample = lambda: {"threads": 1, "cpus": 2, "busy": 1.0, "limit": None}  # noqa: E731
    monkeypatch.delenv("MEDTUNE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(None, sample) == (1, "free cores of 2 CPUs, 1.0 busy with other processes")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(None, sample) == (2, "$OMP_NUM_THREADS")
    monkeypatch.setenv("MEDTUNE_THREADS", "3")
    assert threads.choose_threads(None, sample) == (3, "$MEDTUNE_THREADS")
    assert threads.choose_threads(4, sample) == (4, "num_threads")
    monkeypatch.setenv("MEDTUNE_THREADS", "two")
    with pytest.raises(ConfigError, match="MEDTUNE_THREADS='two'"):
        threads.choose_threads(None, sample)


def test_use_free_cores_sets_torch_once_and_an_explicit_request_wins(monkeypatch):
    monkeypatch.setattr(threads, "_chosen", {})
    monkeypatch.setenv("MEDTUNE_THREADS", "1")
    saved, lines = torch.get_num_threads(), []
    try:
        assert threads.use_free_cores(log=lines.append) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("MEDTUNE_THREADS", "2")
        assert threads.use_free_cores(log=lines.append) == 1  # chosen once per process
        assert threads.use_free_cores(2, log=lines.append) == 2 and torch.get_num_threads() == 2
        assert lines == ["threads: 1 ($MEDTUNE_THREADS; $MEDTUNE_THREADS or num_threads overrides)",
                         "threads: 2 (num_threads; $MEDTUNE_THREADS or num_threads overrides)"]
    finally:
        torch.set_num_threads(saved)


def test_train_cli_logs_and_uses_num_threads(qwen_dir, sft_file, tmp_path, monkeypatch):
    # Through the CLI as a user types it: --num-threads is the train section's field; the run logs the choice.
    from typer.testing import CliRunner

    from medtune.cli import app

    monkeypatch.setattr(threads, "_chosen", {})
    saved = torch.get_num_threads()
    try:
        r = CliRunner().invoke(app, ["train", "--model", str(qwen_dir), "--train-file", str(sft_file), "--output-dir",
                                     str(tmp_path / "out"), "--max-steps", "1", "--num-threads", "1", "--save-steps", "10"])
        assert r.exit_code == 0, r.output
        assert "threads: 1 (num_threads" in r.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
