"""StageClock: a stage's time is the time of the run that did it; a rerun that finds it done says so and keeps it."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import threading
import time

import pytest

from adakd_ds.experiments.testbed.stage_clock import StageClock, StageTime, wait_child

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _burn(seconds: float, grandchild: bool = False) -> int:
    """A child that burns ``seconds`` of CPU (in a grandchild it waits for, with ``grandchild``), reaped by
    wait_child as the pipeline reaps its stages."""
    code = BURN.format(s=seconds)
    if grandchild:
        code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {code!r}], check=True)\n"
    return wait_child(subprocess.Popen([sys.executable, "-c", code]))


def test_measure_counts_the_cpu_time_of_waited_children(tmp_path):
    clock = StageClock(tmp_path / "times.json")
    before = _child_cpu()
    with clock.measure("burn"):
        assert _burn(0.6, grandchild=True) == 0  # a torchrun stage: the ranks are the launcher's children
    child = _child_cpu() - before  # the kernel's own account of the child, an independent reference
    t = clock.times["burn"]
    assert child >= 0.6 and t.cpu_s == pytest.approx(child, abs=0.25), (t, child)
    assert t.wall_s >= 0.6 and t.load_before >= 0 and t.load_after >= 0


def test_wait_child_gives_the_exit_code():
    assert wait_child(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])) == 3


def test_stages_side_by_side_get_their_own_cpu_and_the_wall_clock_counts_once(tmp_path):
    clock = StageClock(tmp_path / "times.json")

    def stage(name: str, seconds: float) -> None:
        with clock.measure(name):
            _burn(seconds)

    lanes = [threading.Thread(target=stage, args=(f"lane {k}", s)) for k, s in enumerate((0.4, 0.8))]
    t0 = time.perf_counter()
    for lane in lanes:
        lane.start()
    with clock.measure("in-process"):  # this thread's own work, as an in-process evaluation
        t = time.process_time()  # (the process's: the lanes' threads only wait)
        while time.process_time() - t < 0.3:
            pass
    for lane in lanes:
        lane.join()
    elapsed = time.perf_counter() - t0
    times = clock.times
    assert times["lane 0"].cpu_s == pytest.approx(0.4, abs=0.15), times  # not the other lane's child
    assert times["lane 1"].cpu_s == pytest.approx(0.8, abs=0.15), times
    assert times["in-process"].cpu_s == pytest.approx(0.3, abs=0.15), times
    total, missing = clock.total()
    assert missing == [] and total.cpu_s == pytest.approx(sum(t.cpu_s for t in times.values()))
    longest = max(t.wall_s for t in times.values())
    # (the union is computed from epoch start times: allow their float rounding, well under a millisecond)
    assert longest - 1e-3 <= total.wall_s <= elapsed + 0.05 < sum(t.wall_s for t in times.values()), (total, elapsed)


def test_a_rerun_keeps_the_first_time_and_says_skipped(tmp_path):
    path = tmp_path / "times.json"
    first = StageClock(path)
    with first.measure("teacher SFT"):
        subprocess.run([sys.executable, "-c", BURN.format(s=0.3)], check=True)
    with first.measure("eval"):
        pass
    recorded = first.times["teacher SFT"]
    assert json.loads(path.read_text())["teacher SFT"]["cpu_s"] == recorded.cpu_s

    rerun = StageClock(path)
    note = rerun.skip("teacher SFT")
    assert note.startswith("done earlier, skipped (it took ") and f"{recorded.wall_s:.0f} s wall" in note
    assert rerun.skip("eval").startswith("done earlier, skipped")
    total, missing = rerun.total()
    assert missing == [] and rerun.skipped == ["teacher SFT", "eval"]
    assert total.wall_s == pytest.approx(recorded.wall_s + first.times["eval"].wall_s)
    assert total.cpu_s == pytest.approx(recorded.cpu_s + first.times["eval"].cpu_s)
    assert StageClock(path).times["teacher SFT"] == recorded  # skipping wrote nothing over it


# Times whose plain sum depends on the order of addition (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1), and the kind the
# quickstart's flake had (334.1115009999999 against 334.111501).
AWKWARD = {"kd seed 4": 333.511501, "teacher": 0.3, "init": 0.2, "sft seed 4": 0.1, "adakd": 2.0 / 3.0, "eval": 1e-17}


@pytest.mark.parametrize("with_starts", [True, False], ids=["lanes", "no-start-times"])
def test_a_rerun_reports_exactly_the_first_runs_total_through_the_files(tmp_path, with_starts):
    """Issue 25: the first run records its stages in the order its lanes finish; the rerun reads them back from the
    file and skips them in another order. Both totals, each written to and read from a results JSON as the
    quickstart does, must be equal exactly, and equal to an exactly rounded sum of the stage times."""
    path = tmp_path / "stage_times.json"
    first = StageClock(path)
    for k, (name, seconds) in enumerate(AWKWARD.items()):
        start = 1_700_000_000.1 + 1000.0 * k if with_starts else None  # disjoint spans: the wall is their sum too
        first.record(name, StageTime(seconds * 3.0, seconds, 0.1 * k, 0.7 + k / 3.0, start))
    first_total = json.loads(json.dumps(first.summary()))["total"]

    rerun = StageClock(path)
    for name in reversed(AWKWARD):
        rerun.skip(name)
    again = json.loads(json.dumps(rerun.summary()))["total"]
    assert again == first_total, (again, first_total)
    assert first_total["cpu_s"] == math.fsum(AWKWARD.values())  # an independent reference, exactly rounded
    assert sum(AWKWARD.values()) != sum(reversed(AWKWARD.values()))  # the case is one a plain sum gets wrong
    if not with_starts:
        assert first_total["wall_s"] == math.fsum(3.0 * s for s in AWKWARD.values())


def test_a_stage_done_with_no_recorded_time_is_named(tmp_path):
    clock = StageClock(tmp_path / "times.json")
    assert clock.skip("old stage") == "done earlier, skipped"
    assert clock.total() == (None, ["old stage"])


def test_a_failed_stage_records_no_time(tmp_path):
    clock = StageClock(tmp_path / "times.json")
    with pytest.raises(RuntimeError), clock.measure("broken"):
        raise RuntimeError("stage failed")
    assert "broken" not in clock.times and not (tmp_path / "times.json").exists()


def test_describe_gives_wall_cpu_and_load():
    text = StageTime(12.4, 20.6, 0.5, 3.25).describe()
    assert "12 s wall" in text and "21 s CPU (user + sys)" in text and "load 0.5 -> 3.2" in text
