import torch

from hymba.training.cpu_threads import ThreadTuner


def run(tuner, steps, cost_at):
    """Drive the tuner with step times cost_at(step, threads); return the thread count of every step."""
    used, messages = [], []
    for step in range(steps):
        tuner.before_step()
        used.append(torch.get_num_threads())
        msg = tuner.after_step(cost_at(step, used[-1]))
        if msg:
            messages.append(msg)
    return used, messages


def test_the_tuner_keeps_the_faster_count_and_reacts_when_the_machine_gets_busy():
    saved = torch.get_num_threads()
    try:
        tuner = ThreadTuner(candidates=(1, 2), period=5, probe_steps=3)

        def cost(step, threads):
            warmup = 3.0 if step == 0 else 0.0  # the first step's outlier does not decide
            if step < 20:
                return warmup + {1: 1.0, 2: 0.5}[threads]  # two threads twice as fast...
            return {1: 1.0, 2: 10.0}[threads]  # ...until other work takes a core

        used, messages = run(tuner, 32, cost)
        assert used[:6] == [1, 1, 1, 2, 2, 2]  # a round: each count timed 3 times
        assert used[6:11] == [2] * 5  # then the faster one for `period` steps
        assert used[11:17] == [1, 1, 1, 2, 2, 2]  # and another round
        assert used[17:21] == [2, 2, 2, 2]
        # step 20 is 20x slower: a new round starts at once, and two threads are dropped after one step
        assert used[21:25] == [1, 1, 1, 2] and used[25:] == [1] * 7
        assert messages[-1].startswith("CPU threads: 1") and messages[-1].endswith("was 2")
    finally:
        torch.set_num_threads(saved)


def test_one_candidate_means_no_tuning():
    tuner = ThreadTuner(candidates=(1,))
    assert not tuner.active and tuner.after_step(1.0) is None
