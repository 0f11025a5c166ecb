"""The progress line a user reads: the current image's iteration, images/s and an ETA in PGD steps."""

from types import SimpleNamespace

import torch

from facelock_pl.progress import ImagesProgress, LogCadence, _duration


def fake_module(done: int, in_flight: list[int], capacity: int = 1, finished_mean: float = 100.0):
    occupied = torch.tensor([True] * len(in_flight) + [False] * (capacity - len(in_flight)))
    iteration = torch.tensor(in_flight + [0] * (capacity - len(in_flight)))
    attack = SimpleNamespace(config=SimpleNamespace(iterations=100), capacity=capacity, busy=bool(in_flight),
                             slots=SimpleNamespace(occupied=occupied, iteration=iteration))
    stats = SimpleNamespace(iterations_mean=lambda default: finished_mean)
    return SimpleNamespace(attack=attack, images_done=done, stats=stats)


def progress(total: int, step_seconds: float | None) -> ImagesProgress:
    bar = ImagesProgress()
    bar.total, bar.step_seconds, bar._started = total, step_seconds, 0.0
    return bar


def test_eta_counts_the_steps_left_of_images_in_flight_and_not_started():
    # 1 done, one at iteration 30, 2 not started: 70 + 2 x 100 steps at 2 s each on one slot = 540 s.
    status = progress(total=4, step_seconds=2.0).status(fake_module(done=1, in_flight=[30]))
    assert status.startswith("iteration 30/100  ")
    assert status.endswith("ETA 9:00")


def test_eta_uses_the_mean_iterations_of_finished_images_and_shares_steps_over_slots():
    # Adaptive stopping finished images after 40 iterations on average: the images in flight past that count 0.
    module = fake_module(done=2, in_flight=[10, 50], capacity=2, finished_mean=40.0)
    status = progress(total=6, step_seconds=1.0).status(module)
    assert status.startswith("iteration 50/100")
    assert status.endswith(f"ETA {_duration((30 + 0 + 2 * 40) / 2)}")


def test_between_images_the_line_says_finished_or_loading_never_idle():
    assert progress(total=3, step_seconds=1.0).status(fake_module(done=3, in_flight=[])).startswith("finished  ")
    assert progress(total=3, step_seconds=1.0).status(fake_module(done=1, in_flight=[])).startswith("loading  ")


def test_before_the_first_step_the_eta_is_unknown_and_no_rate_is_claimed():
    status = progress(total=3, step_seconds=None).status(fake_module(done=0, in_flight=[0]))
    assert status.endswith("ETA ?") and "– images/s" in status


def test_durations_read_as_clock_time():
    assert _duration(59) == "0:59" and _duration(3600 + 61) == "1:01:01" and _duration(None) == "?"


def test_a_log_gets_a_line_every_5_percent_and_after_a_minute_without_one():
    cadence = LogCadence(total=100, started=0.0)
    assert [cadence.due(done, now) for done, now in [(1, 1.0), (4, 10.0), (5, 20.0)]] == [False, False, True]
    assert not cadence.due(5, 79.0) and cadence.due(5, 80.0)  # a slow image: a line a minute after the last
    assert not cadence.due(6, 100.0) and cadence.due(10, 101.0)
    # Past ten minutes the quiet spell allowed grows with the run: a tenth of the time so far.
    assert cadence.due(10, 2800.0) and not cadence.due(10, 3000.0)  # 200 s quiet: under a tenth of 3000 s
    assert not cadence.due(10, 3110.0) and cadence.due(10, 3120.0)  # 320 s quiet: over a tenth of 3120 s


def test_the_last_unit_gets_its_line_once():
    cadence = LogCadence(total=30, started=0.0)  # every image is 5% or more: a line each
    assert [cadence.due(done, 1.0) for done in (1, 1, 2)] == [True, False, True]
    assert cadence.due(30, 2.0) and not cadence.due(30, 3.0)  # idle steps after the end add nothing


def test_a_fit_in_a_log_says_which_iteration_a_slow_image_is_at(monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr("facelock_pl.progress.time.perf_counter", lambda: clock[0])
    bar = ImagesProgress()
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(num_pending=1))
    with caplog.at_level("INFO", logger="facelock_pl"):
        bar.on_train_start(trainer, None)
        for clock[0], iteration in [(30.0, 20), (61.0, 41)]:
            bar.on_train_batch_end(trainer, fake_module(done=0, in_flight=[iteration]), None, None, 0)
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("facelock_pl: images 0/1 iteration 41/100 ") and line.endswith("elapsed 1:01")
