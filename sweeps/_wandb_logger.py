"""Ray's W&B logger for sweep trials, in a module of its own: the driver imports it (and
wandb) when a sweep logs to W&B; trial workers, which import sweeps.engine, do not."""

from __future__ import annotations

from ray.air.integrations.wandb import WandbLoggerCallback


class SweepWandb(WandbLoggerCallback):
    """Ray's W&B logger, which tells a trial's W&B run to finish only when the trial ends:
    after Ctrl-C, the trials still running never end, and the sweep would wait for their
    runs (30 minutes) before it exits. Each run left is told to finish at the end instead."""

    def on_experiment_end(self, trials, **info):
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)
