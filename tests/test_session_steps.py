"""Step tracking of a Session: timesteps read from the scheduler's own tensor, steps counted per run."""

import torch

from headlens.attention import Plugin, Session


class StepRecorder(Plugin):
    """Records (step, timestep, num_steps) at every UNet evaluation."""

    def __init__(self):
        self.seen = []

    def on_step(self, session):
        self.seen.append((session.step, session.timestep, session.num_steps))


def test_steps_and_timesteps_follow_the_scheduler(sd_pipe):
    rec = StepRecorder()
    with Session(sd_pipe, [rec]) as session:
        for _ in range(2):  # two runs: the counter restarts at 0
            sd_pipe("a red cat", num_inference_steps=3, guidance_scale=5.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0))
    expected = [float(t) for t in sd_pipe.scheduler.timesteps]
    assert rec.seen == [(i, expected[i], 3) for i in range(3)] * 2
    # the pipeline's timestep was a view of scheduler.timesteps: read from the CPU copy, no device sync
    assert session._timesteps_cpu is not None and session._timesteps_cpu[0] is sd_pipe.scheduler.timesteps


def test_timestep_value_of_views_comes_from_a_cpu_copy(sd_pipe):
    session = Session(sd_pipe)
    ts = torch.tensor([981, 741, 501, 261, 21])
    # a plain element and a batch expand are views into the schedule: their values are found by offset
    assert session._timestep_value(ts[2], ts) == 501.0
    assert session._timestep_value(ts[4].expand(6), ts) == 21.0
    cached = session._timesteps_cpu
    assert cached is not None and cached[0] is ts and cached[2] == [981, 741, 501, 261, 21]
    # an in-place change of the schedule invalidates the copy
    ts.mul_(2)
    assert session._timestep_value(ts[1], ts) == 1482.0
    # tensors that are not views of the schedule, numbers and None still work
    assert session._timestep_value(torch.tensor([77, 77]), ts) == 77.0
    assert session._timestep_value(torch.tensor(5.5), ts) == 5.5
    assert session._timestep_value(12, ts) == 12.0
    assert session._timestep_value(None, ts) is None
    assert session._timestep_value(torch.tensor(3), None) == 3.0
