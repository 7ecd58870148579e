"""diffusion_studio.core.threads.AdaptiveThreads on a simulated machine: step times depend on the thread count
and on whether another program keeps a core busy; a fake clock advances by the step times."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_studio.core.threads import AdaptiveThreads, IdleCores, fixed_thread_count


class FakeMachine:
    """Two cores. Quiet: 2 threads take 1.0 s a step, 1 thread 1.8 s. Busy: 2 threads 4.0 s
    (OpenMP waits for the thread that shares the busy core), 1 thread 1.8 s."""

    QUIET = {1: 1.8, 2: 1.0}
    BUSY = {1: 1.8, 2: 4.0}

    def __init__(self) -> None:
        self.threads = 2
        self.busy = False
        self.now = 0.0
        self.set_calls: list[int] = []
        self.readable_idle = True

    def set_threads(self, count: int) -> None:
        self.set_calls.append(count)
        self.threads = count

    def get_threads(self) -> int:
        return self.threads

    def clock(self) -> float:
        return self.now

    def idle_cores(self) -> float | None:
        """What /proc/stat would show: a core idle only while quiet and one thread computes."""
        if not self.readable_idle:
            return None
        return 1.0 if (not self.busy and self.threads == 1) else 0.0

    def step(self, tuner: AdaptiveThreads) -> int:
        """One step under the tuner; returns the count it ran with."""
        tuner.before_step()
        seconds = (self.BUSY if self.busy else self.QUIET)[self.threads]
        self.now += seconds
        tuner.after_step(seconds)
        return self.threads


def make_tuner(machine: FakeMachine, **kwargs) -> AdaptiveThreads:
    return AdaptiveThreads(
        fixed=kwargs.pop("fixed", None),
        set_threads=machine.set_threads,
        get_threads=machine.get_threads,
        clock=machine.clock,
        idle_cores=machine.idle_cores,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def no_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def run(machine: FakeMachine, tuner: AdaptiveThreads, steps: int) -> list[int]:
    return [machine.step(tuner) for _ in range(steps)]


def steps_within(machine: FakeMachine, tuner: AdaptiveThreads, seconds: float) -> int:
    """Steps the tuner makes in `seconds` of simulated time."""
    steps = 0
    while machine.now < seconds:
        machine.step(tuner)
        steps += 1
    return steps


@pytest.mark.parametrize("busy", [False, True])
def test_at_least_90_percent_of_the_best_fixed_count(busy: bool) -> None:
    """Over ten simulated minutes, probes included (issue 14's target, here exactly)."""
    machine = FakeMachine()
    machine.busy = busy
    table = machine.BUSY if busy else machine.QUIET
    best_fixed_steps = 600.0 / min(table.values())
    steps = steps_within(machine, make_tuner(machine), 600.0)
    assert steps >= 0.9 * best_fixed_steps


def test_a_quiet_machine_keeps_every_core() -> None:
    machine = FakeMachine()
    tuner = make_tuner(machine)
    counts = run(machine, tuner, 60)
    assert tuner.probes >= 1
    assert tuner.chosen == 2
    assert counts[-5:] == [2] * 5
    assert not tuner.state().contended


def test_a_busy_machine_gets_one_thread_and_is_reported_contended() -> None:
    machine = FakeMachine()
    machine.busy = True
    tuner = make_tuner(machine)
    counts = run(machine, tuner, 30)
    assert tuner.chosen == 1
    assert counts.count(1) >= 25
    state = tuner.state()
    assert state.contended and state.threads == 1 and state.available == 2


def test_load_that_arrives_is_noticed_from_the_falling_rate() -> None:
    machine = FakeMachine()
    tuner = make_tuner(machine, min_wait_s=1000.0, max_wait_s=1000.0)  # no timed re-probe
    run(machine, tuner, 20)
    assert tuner.chosen == 2
    probes = tuner.probes
    machine.busy = True
    counts = run(machine, tuner, 20)
    assert tuner.probes == probes + 1  # the drop started a probe without waiting
    assert counts[-5:] == [1] * 5


def test_load_that_leaves_is_found_from_an_idle_core() -> None:
    machine = FakeMachine()
    machine.busy = True
    tuner = make_tuner(machine, min_wait_s=10.0, max_wait_s=10_000.0)
    run(machine, tuner, 120)  # long enough for the timed waits to grow past the test
    assert tuner.chosen == 1
    machine.busy = False
    left_at = machine.now
    while tuner.chosen != 2:
        machine.step(tuner)
        assert machine.now - left_at < 30.0, "a free core went unnoticed"
    assert not tuner.state().contended


def test_load_that_leaves_is_found_by_a_later_probe() -> None:
    """Where idle cores cannot be read (not Linux), timed probes find it."""
    machine = FakeMachine()
    machine.readable_idle = False
    machine.busy = True
    tuner = make_tuner(machine, min_wait_s=10.0, max_wait_s=40.0)
    run(machine, tuner, 20)
    assert tuner.chosen == 1
    machine.busy = False  # a one-thread rate does not change: only a timed probe finds it
    counts = run(machine, tuner, 60)
    assert tuner.chosen == 2
    assert counts[-10:].count(2) >= 7  # (a later probe may time one thread again)
    assert not tuner.state().contended


def test_probes_confirming_the_choice_come_less_often() -> None:
    machine = FakeMachine()
    tuner = make_tuner(machine, min_wait_s=10.0, max_wait_s=80.0)
    probe_times: list[float] = []
    for _ in range(400):
        before = tuner.probes
        machine.step(tuner)
        if tuner.probes > before:
            probe_times.append(machine.now)
    gaps = [b - a for a, b in zip(probe_times, probe_times[1:])]
    assert len(gaps) >= 3
    assert gaps[1] > gaps[0] and gaps[2] > gaps[1]  # the wait doubles...
    assert max(gaps) < 80.0 + 20.0  # ...up to max_wait_s (plus the probe's own steps)


def test_the_step_after_a_change_of_count_is_not_timed() -> None:
    machine = FakeMachine()
    tuner = make_tuner(machine, probe_steps=2)
    seen: list[tuple[int, float]] = []
    for _ in range(6):  # the first probe: 1 thread (1 skipped + 2 timed), 2 threads (same)
        tuner.before_step()
        seconds = 100.0 if machine.set_calls and seen == [] else 1.0
        # the first step with one thread is slow (OpenMP wakes up): it must not count
        seen.append((machine.threads, seconds))
        machine.now += seconds
        tuner.after_step(seconds)
    assert tuner.probes == 1
    assert tuner.chosen_rate == pytest.approx(1.0)


def test_a_fixed_count_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = FakeMachine()
    machine.busy = True
    tuner = make_tuner(machine, fixed=2)
    assert run(machine, tuner, 30) == [2] * 30
    assert not tuner.state().adaptive and not tuner.state().contended

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    machine = FakeMachine()
    tuner = make_tuner(machine)
    assert run(machine, tuner, 20) == [1] * 20
    assert machine.set_calls == [1]


def test_one_core_means_nothing_to_choose() -> None:
    machine = FakeMachine()
    machine.threads = 1
    tuner = make_tuner(machine)
    assert run(machine, tuner, 20) == [1] * 20
    assert machine.set_calls == []
    assert not tuner.state().adaptive


@pytest.mark.parametrize(
    ("text", "count"), [("", None), ("abc", None), ("0", None), ("-2", None), ("3", 3)]
)
def test_fixed_thread_count_reads_omp_num_threads(
    monkeypatch: pytest.MonkeyPatch, text: str, count: int | None
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", text)
    assert fixed_thread_count() == count


def test_idle_cores_reads_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    idle = IdleCores(str(stat))
    stat.write_text("cpu  200 0 100 850 50 0 0 0 0 0\n")  # +150 busy, +50 idle of +200
    assert idle() == pytest.approx(2 * 50 / 200)
    stat.write_text("garbage\n")
    assert idle() is None
    assert IdleCores(str(tmp_path / "missing"))() is None


class CountingTuner(AdaptiveThreads):
    """A tuner that records its calls and changes the count on its first step."""

    def __init__(self) -> None:
        super().__init__(fixed=1)
        self.calls: list[str] = []

    def before_step(self) -> None:
        self.calls.append("before")
        super().before_step()

    def after_step(self, seconds: float) -> None:
        self.calls.append("after")
        super().after_step(seconds)


def _tiny_sampling_run(threads: AdaptiveThreads | None) -> int:
    import torch

    from diffusion_studio.core.models import MLPConfig, build_model
    from diffusion_studio.core.samplers import SamplerConfig, make_sampler
    from diffusion_studio.core.sampling import sample
    from diffusion_studio.core.schedule import NoiseSchedule

    schedule = NoiseSchedule.from_kind("linear", 50)
    model = build_model(MLPConfig(hidden=16, layers=1))
    sampler = make_sampler(SamplerConfig("ddim", 5), schedule, "epsilon")
    frames = list(
        sample(model, schedule, sampler, 4, (2,), torch.Generator().manual_seed(0), threads=threads)
    )
    return len(frames)


def test_sampling_times_every_step_with_the_given_tuner() -> None:
    tuner = CountingTuner()
    frames = _tiny_sampling_run(tuner)
    assert tuner.calls == ["before", "after"] * (frames - 1)  # the final frame is no step


def test_sampling_gives_the_thread_its_count_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before + 1))  # the run's own tuner changes it
    try:
        _tiny_sampling_run(None)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_training_reports_its_threads_and_gives_the_count_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from diffusion_studio.core.training import Trainer, TrainProgress
    from tests.core.test_training import points_config

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(before + 1))  # the trainer fixes another count
    try:
        records = list(Trainer(points_config(max_steps=5, preview_every=0)).run())
        states = [r.threads for r in records if isinstance(r, TrainProgress)]
        assert [s.threads for s in states] == [before + 1] * 5
        assert not any(s.adaptive or s.contended for s in states)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_restore_only_in_the_thread_that_computed() -> None:
    import threading

    machine = FakeMachine()
    tuner = make_tuner(machine, fixed=1)
    machine.step(tuner)
    assert machine.threads == 1
    other = threading.Thread(target=tuner.restore)
    other.start()
    other.join()
    assert machine.threads == 1  # a collector in another thread changed nothing
    tuner.restore()
    assert machine.threads == 2


def test_a_contended_state_says_so_in_the_status_line() -> None:
    from diffusion_studio.core.threads import ThreadState

    assert ThreadState(2, 2, contended=False, adaptive=True).note() == ""
    note = ThreadState(1, 2, contended=True, adaptive=True).note()
    assert "CPU busy" in note and "1 of 2" in note
