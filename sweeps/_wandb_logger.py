"""Ray's W&B logger for sweep trials, in a module of its own: the driver imports it (and
wandb) when a sweep logs to W&B; trial workers, which import sweeps.engine, do not."""

from __future__ import annotations

import gc
import tempfile

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor


class _LoggingActor(_WandbLoggingActor):
    """Ray's W&B logging actor, which tidies up after itself once its run has finished: wandb
    leaves stopping its service (whose socket is in a folder of /tmp) and removing the two
    temporary folders it makes when imported to interpreter exit, which an actor, ended with
    its trial, never reaches (three folders left in /tmp a trial)."""

    def run(self):
        try:
            return super().run()
        finally:
            self._wandb.teardown()
            for folder in [o for o in gc.get_objects() if isinstance(o, tempfile.TemporaryDirectory)]:
                folder.cleanup()


class SweepWandb(WandbLoggerCallback):
    """Ray's W&B logger, which tells a trial's W&B run to finish only when the trial ends:
    after Ctrl-C, the trials still running never end, and the sweep would wait for their
    runs (30 minutes) before it exits. Each run left is told to finish at the end instead."""

    _logger_actor_cls = _LoggingActor

    def on_experiment_end(self, trials, **info):
        for trial in list(self._trial_queues):
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)
