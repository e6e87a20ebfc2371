from streamvlm.vision.sampler import FrameSampler

S = 1_000_000_000


def kept(sampler: FrameSampler, stamps) -> list[int]:
    return [t for t in stamps if sampler.accept(t)]


def test_takes_the_first_frame_of_each_period():
    stamps = [i * S // 10 for i in range(35)]  # 10 fps camera
    assert kept(FrameSampler(1.0), stamps) == [0, S, 2 * S, 3 * S]


def test_zero_fps_keeps_everything():
    assert kept(FrameSampler(0.0), [0, 1, 2, 3]) == [0, 1, 2, 3]


def test_jitter_at_equal_rates_keeps_every_frame():
    # A 2 fps camera sampled at 2 fps, frames up to 20 ms early or late.
    stamps = [k * S // 2 + (-20 if k % 2 else 20) * 1_000_000 for k in range(10)]
    assert kept(FrameSampler(2.0), stamps) == stamps


def test_gap_does_not_burst():
    stamps = [0, S, 10 * S, 10 * S + S // 10, 11 * S]
    assert kept(FrameSampler(1.0), stamps) == [0, S, 10 * S, 11 * S]


def test_time_going_backwards_restarts():
    sampler = FrameSampler(1.0)
    assert kept(sampler, [100 * S, 101 * S, 5 * S, 5 * S + 1, 6 * S]) == [100 * S, 101 * S, 5 * S, 6 * S]
