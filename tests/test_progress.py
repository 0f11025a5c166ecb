"""The progress line a user reads: the current image's iteration, images/s and an ETA in PGD steps."""

from types import SimpleNamespace

import torch

from facelock_pl.progress import ImagesProgress, _duration


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
