import torch

from hymba.training.cpu_threads import ThreadTuner


def test_the_tuner_keeps_the_faster_thread_count_and_rechecks():
    saved = torch.get_num_threads()
    try:
        tuner = ThreadTuner(candidates=(1, 2), period=5, probe_steps=3)
        cost = {1: 1.0, 2: 0.5}  # two threads twice as fast...
        used, messages = [], []
        for step in range(40):
            if step == 20:
                cost = {1: 1.0, 2: 4.0}  # ...until other work takes a core
            tuner.before_step()
            used.append(torch.get_num_threads())
            slow_first = 3.0 if step == 0 else 0.0  # a warm-up outlier does not decide
            msg = tuner.after_step(cost[used[-1]] + slow_first)
            if msg:
                messages.append(msg)
        assert used[:6] == [1, 1, 1, 2, 2, 2]  # first round: each count timed 3 times
        assert used[6:11] == [2] * 5  # then the faster one for `period` steps
        assert used[11:17] == [1, 1, 1, 2, 2, 2]  # and a new round
        assert used[-1] == 1 and messages[-1].startswith("CPU threads: 1")
        assert any(m.startswith("CPU threads: 1") and m.endswith("was 2") for m in messages)
    finally:
        torch.set_num_threads(saved)


def test_one_candidate_means_no_tuning():
    tuner = ThreadTuner(candidates=(1,))
    assert not tuner.active and tuner.after_step(1.0) is None
